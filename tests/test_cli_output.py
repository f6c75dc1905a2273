"""What a command prints: FuseRank's lines and real problems by default, the libraries' chatter only with
--verbose; and the demo refuses a taken API port before running the pipeline."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Lines the libraries print on their own: TensorFlow's C++ banners, Keras' UserWarnings, Beam's notes, Comet.
CHATTER = ("cpu_feature_guard", "oneDNN", "absl::InitializeLog", "UserWarning", "COMET ", "apache_beam", "apitools")


def fuserank(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "COMET_LOGGING_CONSOLE")}
    return subprocess.run([sys.executable, "-m", "fuserank", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def chatter(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(mark in line for mark in CHATTER)]


@pytest.fixture(scope="module")
def runs(sample_data, redis_url, tmp_path_factory):
    """train (1 epoch each objective) and precompute, quiet and --verbose."""
    out = tmp_path_factory.mktemp("quiet")
    got = {}
    for mode in ("quiet", "verbose"):
        flags = ["--verbose"] if mode == "verbose" else []
        got["train", mode] = fuserank(*flags, "train", "--data", sample_data, "--out", str(out / f"m-{mode}"),
                                      "--objective", "ranking", "--epochs", "1")
        got["precompute", mode] = fuserank(*flags, "precompute", "--model", str(out / f"m-{mode}"),
                                           "--redis-url", redis_url, "--top-n", "5", "--neighbours", "5")
    return got


@pytest.mark.parametrize("command", ["train", "precompute"])
def test_library_chatter_is_out_by_default_and_back_with_verbose(runs, command):
    quiet, verbose = runs[command, "quiet"], runs[command, "verbose"]
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    assert chatter(quiet.stdout + quiet.stderr) == []
    assert chatter(verbose.stdout + verbose.stderr), verbose.stderr[-3000:]
    assert "fuserank." in quiet.stderr          # FuseRank's own progress lines stay


def test_demo_refuses_a_taken_api_port_before_the_pipeline(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = fuserank("demo", "--port", str(port), "--work-dir", str(tmp_path / "demo"), timeout=300)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(errors) == 1 and f"127.0.0.1:{port} is taken" in errors[0] and "--port" in errors[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "demo").exists()        # nothing ran
