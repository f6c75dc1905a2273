"""The CLI contract: every command has --help, flags are strict and errors name the flag."""
import subprocess
import sys

import pytest

from fuserank.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "fuserank", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command,flags", [
    ("ingest", ["--ratings", "--anime", "--out", "--min-user-ratings"]),
    ("train", ["--data", "--out", "--epochs", "--embedding-dim", "--seed", "--objective"]),
    ("precompute", ["--model", "--redis-url", "--top-n", "--neighbours", "--allow-eviction"]),
    ("serve", ["--redis-url", "--model", "--host", "--port"]),
    ("demo", ["--redis-url", "--no-serve"]),
    ("publish", ["--redis-url", "--version", "--allow-eviction"]),
    ("cleanup", ["--redis-url", "--keep", "--batch-size", "--scan-count", "--dry-run", "--version"]),
])
def test_every_command_has_help_listing_its_flags(command, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out


def test_unknown_flag_fails_with_its_name(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "d", "--out", "o", "--epoch", "3"])
    assert exc.value.code == 2
    assert "--epoch" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [
    (["train", "--data", "d", "--out", "o", "--epochs", "zero"], "--epochs"),
    (["train", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs"),
    (["train", "--data", "d", "--out", "o", "--objective", "magic"], "--objective"),
    (["ingest", "--ratings", "r.csv", "--out", "o", "--min-user-ratings", "-3"], "--min-user-ratings"),
    (["precompute", "--model", "m", "--redis-url", "redis://x", "--top-n", "0"], "--top-n"),
    (["serve", "--model", "m", "--redis-url", "redis://x", "--port", "70000"], "--port"),
    (["cleanup", "--redis-url", "redis://x", "--keep", "1"], "--keep"),
])
def test_invalid_values_fail_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.slow   # `fuserank train` in a child process imports TensorFlow
def test_unknown_command_and_missing_inputs_are_clear_errors(tmp_path):
    r = run("frobnicate")
    assert r.returncode == 2 and "frobnicate" in r.stderr
    r = run("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_precompute_passes_arguments_after_double_dash_to_beam():
    from fuserank.batch.pipeline import pipeline_options
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions
    options, runner = pipeline_options(["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
                                        "--temp_location", "gs://b/tmp"])
    assert runner is None
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "p"
    local_options, local_runner = pipeline_options([])
    assert type(local_runner).__name__ == "FnApiRunner"
