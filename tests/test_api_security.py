"""Security basics of the API: optional API key on POST, a per-client rate limit shared through a real Redis
(fail open but locally bounded when Redis is down), and Redis credentials / TLS from the URL only."""
from __future__ import annotations

import logging
import shutil
import subprocess
import time

import pytest

from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.errors import FuseRankError
from fuserank.redis_server import free_port
from tests.factories import FakeClock, api_app, random_artifact
from tests.test_api_redis_outage import RedisProcess

SETTINGS = HybridSettings(top_n=10, neighbours=5)
BODY = {"ratings": [{"anime_id": 1001, "rating": 9}, {"anime_id": 1002, "rating": 4}], "n": 5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("security") / "m", n_users=30, n_anime=40)


@pytest.fixture
def app_of(model_dir, redis_client, redis_url):
    """``app_of(**settings)``: a fresh app on the test Redis (its db flushed) with ServeSettings overrides."""
    def make(url=redis_url, **settings):
        return api_app(model_dir, url, SETTINGS, **settings)
    return make


def _post(client, headers=None, addr="10.0.0.1"):
    return client.post("/v1/recommendations", json=BODY, headers=headers or {}, environ_base={"REMOTE_ADDR": addr})


def test_post_is_open_without_a_configured_key(app_of):
    assert _post(app_of().test_client()).status_code == 200


def test_a_configured_api_key_is_required_on_post(app_of):
    client = app_of(api_key=("s3cret-one", "s3cret-two")).test_client()
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"X-API-Key": "s3cret-one,s3cret-two"}):
        r = _post(client, headers)
        assert r.status_code == 401 and r.is_json and "X-API-Key" in r.get_json()["error"]["message"]
        assert "s3cret" not in r.get_data(as_text=True)
    assert _post(client, {"X-API-Key": "s3cret-one"}).status_code == 200
    assert _post(client, {"X-API-Key": "s3cret-two"}).status_code == 200
    assert client.get("/v1/users/100/recommendations").status_code == 200      # GETs stay open


def test_rate_limit_is_per_client_and_shared_across_workers(app_of, redis_client):
    # two apps = two workers (or pods) sharing one Redis
    a = app_of(rate_limit=3, rate_window_s=60).test_client()
    b = app_of(rate_limit=3, rate_window_s=60).test_client()
    assert [_post(c).status_code for c in (a, b, a)] == [200, 200, 200]
    limited = _post(b)
    assert limited.status_code == 429 and limited.is_json
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "rate limit" in limited.get_json()["error"]["message"]
    assert _post(a, addr="10.0.0.2").status_code == 200          # another client has its own counter
    assert _post(a).status_code == 429
    assert a.get("/v1/users/100/recommendations").status_code == 200   # GETs are not limited
    assert list(redis_client.scan_iter(match="fuserank:ratelimit:*"))


def test_rate_limit_per_api_key(app_of):
    client = app_of(api_key=("k1", "k2"), rate_limit=2).test_client()
    assert [_post(client, {"X-API-Key": "k1"}, addr=f"10.1.0.{i}").status_code for i in range(3)] == [200, 200, 429]
    assert _post(client, {"X-API-Key": "k2"}).status_code == 200


def test_rate_limit_window_resets(app_of):
    clock = FakeClock(now=3_000_000.0)      # the start of a window
    client = app_of(rate_limit=1, rate_window_s=10, clock=clock).test_client()
    assert _post(client).status_code == 200
    limited = _post(client)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "10"
    clock.advance(9.5)
    assert _post(client).status_code == 429
    clock.advance(0.5)
    assert _post(client).status_code == 200


def test_rate_limit_fails_open_but_locally_bounded_without_redis(model_dir):
    client = api_app(model_dir, f"redis://127.0.0.1:{free_port()}/0", SETTINGS, rate_limit=3).test_client()
    assert [_post(client).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_bad_rate_limit_setting_fails_at_start(model_dir, redis_url):
    with pytest.raises(ValueError, match="rate_limit"):
        api_app(model_dir, redis_url, SETTINGS, rate_limit=-1)


# ------------------------------------------------------------------------------------------------
# Redis credentials and TLS come from REDIS_URL
# ------------------------------------------------------------------------------------------------
def test_redis_url_with_a_password(model_dir, caplog):
    port = free_port()
    url = f"redis://:pa55-w0rd@127.0.0.1:{port}/0"
    server = RedisProcess("--requirepass", "pa55-w0rd", port=port, client_url=url)
    try:
        precompute(model_dir, url, SETTINGS)
        with caplog.at_level(logging.INFO):
            client = api_app(model_dir, url, SETTINGS).test_client()
            body = client.get("/v1/users/100/recommendations").get_json()
        assert body["source"] == "precomputed"
        assert "pa55-w0rd" not in caplog.text
        ready = client.get("/readyz")
        assert ready.get_json()["redis"] == "up" and "pa55-w0rd" not in ready.get_data(as_text=True)
        # a wrong password is an unusable Redis: live answers, never an error
        wrong = api_app(model_dir, f"redis://:nope@127.0.0.1:{server.port}/0", SETTINGS).test_client()
        body = wrong.get("/v1/users/100/recommendations").get_json()
        assert body["source"] == "live" and body["degraded"] is True
        assert wrong.get("/readyz").get_json()["redis"] == "down"
    finally:
        server.close()


def _certificates(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def test_rediss_url_over_tls(model_dir, tmp_path):
    key, cert = _certificates(tmp_path)
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    try:
        server = RedisProcess("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file",
                              str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                              port=port, client_url=url)
    except FuseRankError as exc:
        pytest.skip(f"this redis-server has no TLS support: {str(exc)[-200:]}")
    try:
        precompute(model_dir, url, SETTINGS)
        client = api_app(model_dir, url, SETTINGS).test_client()
        body = client.get("/v1/users/100/recommendations").get_json()
        assert body["source"] == "precomputed"
        assert client.get("/readyz").get_json()["redis"] == "up"
        # a plain-text client on the TLS port gets nothing: the API answers live, degraded, within bounds
        plain = api_app(model_dir, f"redis://127.0.0.1:{port}/0", SETTINGS).test_client()
        t0 = time.monotonic()
        body = plain.get("/v1/users/100/recommendations").get_json()
        assert body["degraded"] is True and time.monotonic() - t0 < 2.0
    finally:
        server.close()
