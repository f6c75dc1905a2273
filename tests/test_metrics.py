"""Prometheus metrics at /metrics: by route, source and degradation; Redis errors; the served list version and
its age; and, under gunicorn, the sum over every worker (prometheus_client multiprocess mode)."""
from __future__ import annotations

import glob
import json
import os
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fuserank.api.metrics import ApiMetrics
from fuserank.batch.pipeline import precompute
from fuserank.redis_server import LocalRedis
from tests.factories import api_app, empty_db, random_artifact, start_server

USER_ROUTE = "/v1/users/<user_id>/recommendations"


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scraped: dict, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("metrics") / "model", n_users=40, n_anime=30)


@pytest.fixture(scope="module")
def metrics_redis(redis_url):
    return empty_db(redis_url, 13)


@pytest.fixture(scope="module")
def published(model_dir, metrics_redis):
    return precompute(model_dir, metrics_redis)


@pytest.fixture
def client(model_dir, metrics_redis, published):
    return api_app(model_dir, metrics_redis).test_client()


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    return samples(r.get_data(as_text=True))


@pytest.mark.parametrize("hot_route", [True, False], ids=["hot-route", "flask-dispatch"])
def test_requests_are_counted_by_route_source_and_status(model_dir, metrics_redis, published, hot_route):
    client = api_app(model_dir, metrics_redis, hot_route=hot_route).test_client()
    before = scrape(client)
    for _ in range(3):
        assert client.get("/v1/users/100/recommendations?n=5").get_json()["source"] == "precomputed"
    client.get("/v1/users/100/recommendations?n=5&source=live")
    client.get("/v1/users/987654/recommendations")
    client.get("/v1/users/abc/recommendations")
    client.get("/nowhere")
    after = scrape(client)

    def delta(**labels):
        return (value(after, "fuserank_http_requests_total", **labels)
                - value(before, "fuserank_http_requests_total", **labels))

    assert delta(route=USER_ROUTE, source="precomputed", status="200", degraded="false") == 3
    assert delta(route=USER_ROUTE, source="live", status="200") == 1
    assert delta(route=USER_ROUTE, source="popular", status="200") == 1
    assert delta(route=USER_ROUTE, status="400", source="none") == 1
    assert delta(route="unmatched", status="404") == 1
    hist = "fuserank_http_request_duration_seconds_count"
    assert value(after, hist, route=USER_ROUTE, source="precomputed") - \
        value(before, hist, route=USER_ROUTE, source="precomputed") == 3
    assert value(after, "fuserank_http_request_duration_seconds_bucket", route=USER_ROUTE, source="precomputed",
                 le="+Inf") >= 3


def test_served_list_version_and_its_age(client, published):
    client.get("/v1/users/100/recommendations")
    scraped = scrape(client)
    assert value(scraped, "fuserank_list_version_info", list_version=published["version"],
                 list_model_version=published["model_version"]) == 1
    assert value(scraped, "fuserank_model_info", model_version=published["model_version"]) == 1
    age = value(scraped, "fuserank_list_version_age_seconds")
    assert 0 <= age < 600
    published_at = value(scraped, "fuserank_list_version_published_timestamp_seconds")
    assert abs(published_at - time.time()) < 600


def test_redis_error_series_exist_at_zero_before_any_error(client):
    scraped = scrape(client)
    for error in ("ConnectionError", "TimeoutError"):
        assert (("fuserank_redis_errors_total", frozenset({("error", error)})) in scraped), error
        assert value(scraped, "fuserank_redis_errors_total", error=error) == 0


def test_degraded_answers_and_redis_errors_while_redis_is_down(model_dir):
    server = LocalRedis()
    try:
        precompute(model_dir, server.url)
        client = api_app(model_dir, server.url).test_client()
        assert client.get("/v1/users/100/recommendations").get_json()["source"] == "precomputed"
        server.stop()
        body = client.get("/v1/users/100/recommendations").get_json()
        assert body["source"] == "live" and body["degraded"] is True
        scraped = scrape(client)
    finally:
        server.stop()
    assert value(scraped, "fuserank_degraded_answers_total", route=USER_ROUTE) >= 1
    assert value(scraped, "fuserank_http_requests_total", route=USER_ROUTE, source="live", degraded="true") >= 1
    assert value(scraped, "fuserank_redis_errors_total", error="ConnectionError") >= 1
    assert value(scraped, "fuserank_list_version_info") == 1  # the version still answered from (live)


def test_per_request_cost_is_a_few_microseconds(model_dir, metrics_redis, published):
    """The hot path's share: a counter and a histogram observation through prometheus_client's public API."""
    metrics = ApiMetrics(api_app(model_dir, metrics_redis, instrument=False).extensions["fuserank"])
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.observe(USER_ROUTE, "GET", 200, "precomputed", False, 0.0012)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 20e-6, f"{per_call * 1e6:.1f} us per request"
    scraped = samples(metrics.exposition().decode())
    assert value(scraped, "fuserank_http_request_duration_seconds_count", route=USER_ROUTE) == n
    assert value(scraped, "fuserank_http_request_duration_seconds_bucket", route=USER_ROUTE, le="0.001") == 0
    assert value(scraped, "fuserank_http_request_duration_seconds_bucket", route=USER_ROUTE, le="0.002") == n
    assert abs(value(scraped, "fuserank_http_request_duration_seconds_sum", route=USER_ROUTE) - n * 0.0012) < 1e-6


# -- under gunicorn: every worker's counts in one scrape ------------------------------------------------
def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return {int(p) for p in fh.read().split()}


@pytest.mark.slow
def test_gunicorn_workers_are_summed_and_the_directory_removed(model_dir, metrics_redis, published, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "LOG_FORMAT": "json", "FUSERANK_LOG_SAMPLE": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    base, proc = start_server(model_dir, metrics_redis, env=env, timeout=60)
    try:
        deadline = time.time() + 60
        while len(_children(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        dirs = glob.glob(str(tmp_path / "fuserank-metrics-*"))
        assert len(dirs) == 1

        def total():
            return value(samples(_get(base + "/metrics")[1].decode()), "fuserank_http_requests_total",
                         route=USER_ROUTE, status="200")

        sent = 0
        while sent < 400 and not {f"counter_{w}.db" for w in workers} <= set(os.listdir(dirs[0])):
            for _ in range(20):     # until both workers have answered
                assert _get(f"{base}/v1/users/100/recommendations?n=3")[0] == 200
            sent += 20
        assert {f"counter_{w}.db" for w in workers} <= set(os.listdir(dirs[0])), "both workers answered"
        for _ in range(6):  # whichever worker answers the scrape, it reports both workers' requests
            assert total() == sent

        killed = sorted(workers)[0]
        os.kill(killed, signal.SIGKILL)   # gunicorn replaces it; child_exit marks it dead
        deadline = time.time() + 30
        while time.time() < deadline and (killed in _children(proc.pid) or len(_children(proc.pid)) < 2):
            time.sleep(0.2)
        assert killed not in _children(proc.pid) and len(_children(proc.pid)) == 2
        assert total() == sent, "a dead worker's counts stay in the sum"
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert not glob.glob(str(tmp_path / "fuserank-metrics-*")), "the server removes its metrics directory"

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]   # LOG_FORMAT=json: every line
    requests = [rec for rec in lines if rec["logger"] == "fuserank.api.requests"]
    assert len(requests) >= sent   # FUSERANK_LOG_SAMPLE=1: every request
    assert {rec["route"] for rec in requests} >= {USER_ROUTE, "/metrics"}
    assert all(rec["list_version"] == published["version"] and rec["model_version"] == published["model_version"]
               for rec in requests)
    assert any("summed in" in rec["message"] for rec in lines)
