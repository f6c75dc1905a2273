"""Every command that cannot reach or use Redis, Google Cloud Storage or a file answers with one line naming
what it tried (a Redis password masked) and what to do, exit status 2, no traceback; ``--debug`` shows it.

Real parts throughout: a closed port, a real redis-server that wants a password, paths that do not exist,
and the Google client without credentials.
"""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from fuserank.cli import COMMANDS, main
from fuserank.redis_server import LocalRedis, find_redis_server, free_port
from tests.conftest import ANIME_2020, SAMPLE_2020

DOWN = f"redis://:s3cret@127.0.0.1:{free_port()}/0"          # nothing listens there
HTTP = "http://user:s3cret@127.0.0.1:8080/"


@pytest.fixture(scope="module")
def locked_redis():
    """A real redis-server that requires a password."""
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--requirepass", "right"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    from fuserank.redis_server import wait_until_answers
    try:
        wait_until_answers(proc, redis.Redis(port=port, password="right", socket_connect_timeout=0.2))
        yield f"redis://:wrong@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def one_line(capsys, argv, *expected):
    """Run ``fuserank ARGV`` in-process: exit 2, one error line holding ``expected``, no traceback, no password."""
    try:
        code = main(list(argv))
    except SystemExit as exc:       # argparse's errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"fuserank {argv[0]}" in line and "error:" in line]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err and "s3cret" not in err and "wrong@" not in err, err[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


REDIS_DOWN = {
    "ingest": ["--ratings", str(SAMPLE_2020), "--out", "{tmp}/data"],
    "precompute": ["--model", "{tmp}/model"],
    "publish": ["--version", "v1"],
    "rollback": [],
    "cleanup": [],
    "forget": ["--user", "1"],
    "inspect": ["versions"],
    "demo": ["--no-serve", "--work-dir", "{tmp}/demo"],
}


def _args(args, tmp_path):
    return [a.format(tmp=tmp_path) for a in args]


@pytest.mark.parametrize("command", sorted(REDIS_DOWN))
def test_redis_down_is_one_line_with_the_masked_url(command, tmp_path, capsys):
    argv = [command, *_args(REDIS_DOWN[command], tmp_path), "--redis-url", DOWN]
    if command == "inspect":
        argv = ["inspect", "versions", "--redis-url", DOWN]
    line = one_line(capsys, argv, "cannot reach Redis at redis://:***@127.0.0.1:", "fuserank redis")


@pytest.mark.parametrize("command", ["precompute", "forget", "cleanup", "inspect", "publish", "ingest"])
def test_a_wrong_redis_password_is_one_line(command, locked_redis, tmp_path, capsys):
    argv = [command, *_args(REDIS_DOWN[command], tmp_path), "--redis-url", locked_redis]
    if command == "inspect":
        argv = ["inspect", "versions", "--redis-url", locked_redis]
    one_line(capsys, argv, "redis://:***@127.0.0.1", "password")


REDIS_COMMANDS = {**REDIS_DOWN, "serve": ["--model", "{tmp}/model"]}


@pytest.mark.parametrize("command", sorted(REDIS_COMMANDS))
def test_a_non_redis_url_is_refused_naming_the_flag(command, tmp_path, capsys):
    argv = [command, *_args(REDIS_COMMANDS[command], tmp_path), "--redis-url", HTTP]
    if command == "inspect":
        argv = ["inspect", "versions", "--redis-url", HTTP]
    one_line(capsys, argv, "--redis-url", "redis://", "http://user:***@127.0.0.1:8080/")


def test_a_url_without_a_scheme_is_one_line(capsys):
    one_line(capsys, ["forget", "--user", "1", "--redis-url", "127.0.0.1:6379"], "Redis at 127.0.0.1:6379",
             "redis://HOST:PORT/DB")


def test_a_non_redis_url_from_the_environment_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", HTTP)
    one_line(capsys, ["rollback"], "--redis-url", "environment REDIS_URL")


MISSING = {
    "ingest": (["--ratings", "{tmp}/none.csv", "--out", "{tmp}/data"], "none.csv"),
    "train": (["--data", "{tmp}/none", "--out", "{tmp}/model"], "none"),
    "precompute": (["--model", "{tmp}/none", "--redis-url", "{redis}"], "none"),
    "serve": (["--model", "{tmp}/none", "--redis-url", "{redis}"], "none"),
    "evaluate": (["--ratings", "{tmp}/none.csv", "--out", "{tmp}/eval"], "none.csv"),
    "inspect": (["user", "1", "--model", "{tmp}/none", "--redis-url", "{redis}"], "none"),
    "demo": (["--ratings", "{tmp}/none.csv", "--no-serve", "--work-dir", "{tmp}/demo"], "none.csv"),
}


@pytest.mark.parametrize("command", sorted(MISSING))
def test_a_missing_file_is_one_line_naming_it(command, tmp_path, redis_url, capsys):
    args, name = MISSING[command]
    argv = [command, *[a.format(tmp=tmp_path, redis=redis_url) for a in args]]
    one_line(capsys, argv, str(tmp_path / name))


GCS = {
    "ingest": ["--ratings", "gs://fuserank-none/r.csv", "--out", "{tmp}/data"],
    "precompute": ["--model", "gs://fuserank-none/models/v1", "--redis-url", "{redis}"],
    "serve": ["--model", "gs://fuserank-none/models/v1", "--redis-url", "{redis}"],
    "inspect": ["user", "1", "--model", "gs://fuserank-none/models/v1", "--redis-url", "{redis}"],
}


@pytest.fixture
def no_google_credentials(monkeypatch, tmp_path):
    from fuserank import storage
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv(storage.EMULATOR_ENV, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))        # no application-default login
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")    # not on Google Cloud
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    storage._make_client.cache_clear()
    yield
    storage._make_client.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(GCS))
def test_gcs_without_credentials_is_one_line(command, tmp_path, redis_url, no_google_credentials, capsys):
    argv = [command, *[a.format(tmp=tmp_path, redis=redis_url) for a in GCS[command]]]
    one_line(capsys, argv, "gs://fuserank-none/", "credentials")


def test_a_missing_gcs_object_is_one_line(gcs_emulator, tmp_path, capsys):
    one_line(capsys, ["ingest", "--ratings", "gs://fuserank-models/none.csv", "--out", str(tmp_path / "d")],
             "gs://fuserank-models/none.csv", "not found")


def test_unreachable_gcs_names_the_endpoint():
    import requests
    from google.api_core import exceptions as api
    from fuserank.failures import Tried, explain
    exc = api.RetryError("Timeout of 120.0s exceeded", requests.exceptions.ConnectionError("refused"))
    line = explain(exc, Tried(gcs_path="gs://b/k.csv", gcs_endpoint="http://127.0.0.1:9"))
    assert line.startswith("gs://b/k.csv: cannot reach http://127.0.0.1:9 (ConnectionError)")


def test_every_command_is_checked():
    checked = set(REDIS_COMMANDS) | set(MISSING) | set(GCS)
    offline = {"redis", "config"}   # `fuserank redis` starts the server itself (its failure: a taken port, below)
    assert set(COMMANDS) <= checked | offline, set(COMMANDS) - checked


def test_debug_shows_the_traceback():
    r = subprocess.run([sys.executable, "-m", "fuserank", "--debug", "forget", "--user", "1", "--redis-url", DOWN],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConnectionError" in r.stderr


def test_fuserank_redis_prints_its_url_and_stops_on_ctrl_c(redis_url):
    import redis
    import signal
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fuserank", "redis", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        assert client.ping() and client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with socket.socket() as s:          # the server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_fuserank_redis_on_a_taken_port_is_one_line(capsys):
    with LocalRedis() as server:
        one_line(capsys, ["redis", "--port", str(server.port)], f"127.0.0.1:{server.port} is taken", "--port")
