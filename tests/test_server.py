"""The real thing once: `fuserank serve` under gunicorn, over HTTP on 127.0.0.1."""
import json
import os
import signal
import urllib.error
import urllib.request

import pytest

from fuserank.batch.pipeline import precompute
from tests.factories import empty_db, start_server, stop_server


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), json.loads(e.read())


@pytest.fixture
def server(trained_model, redis_url):
    url = empty_db(redis_url, 4)
    precompute(trained_model[0], url)
    base, proc = start_server(trained_model[0], url)
    yield base, proc
    stop_server(proc)


def test_gunicorn_serves_named_recommendations(server, trained_model):
    base, proc = server
    from fuserank.artifacts import ModelArtifact
    uid = int(ModelArtifact.load(trained_model[0]).user_ids[0])
    status, ctype, body = get(f"{base}/v1/users/{uid}/recommendations?n=10")
    assert status == 200 and ctype.startswith("application/json")
    assert body["source"] == "precomputed" and len(body["items"]) == 10
    assert all(item["name"] for item in body["items"])
    assert get(f"{base}/readyz")[0] == 200
    status, ctype, body = get(f"{base}/v1/users/abc/recommendations")
    assert status == 400 and ctype.startswith("application/json") and body["error"]["parameter"] == "user_id"
    status, _, body = get(f"{base}/v1/anime/424242424/similar")
    assert status == 404 and "error" in body
    for _ in range(20):  # both workers answer
        assert get(f"{base}/v1/users/{uid}/recommendations?n=3")[0] == 200


@pytest.mark.slow
def test_sigint_stops_gunicorn(server):
    base, proc = server
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0


@pytest.mark.slow
def test_no_control_socket_error_without_a_home(trained_model, redis_url, tmp_path):
    """The images run as a user whose $HOME (/nonexistent) cannot be created: gunicorn must not try to."""
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    base, proc = start_server(trained_model[0], empty_db(redis_url, 5), env={**env, "HOME": str(home)})
    assert get(f"{base}/healthz")[0] == 200
    stop_server(proc)
    out = proc.stdout.read().decode()
    assert "Control server" not in out and "control" not in out.lower(), out[-3000:]
