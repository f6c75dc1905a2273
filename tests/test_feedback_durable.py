"""An acknowledged feedback write is never lost: SIGKILL of redis-server or of the API right after the 200.

The Redis here is the one the tests, the demo and CI run (fuserank.redis_server.LocalRedis: ``appendonly yes``,
``appendfsync always``). A SIGKILL loses what a process has not written: the test shows that the append-only
file already holds every acknowledged write when Redis answers. (``always`` also fsyncs it before the answer,
which is what a power cut needs; no test here can cut the power.)
"""
import logging
import os
import signal
import urllib.request

import pytest

from fuserank import feedback, keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.redis_client import connect
from fuserank.redis_server import LocalRedis
from tests.factories import api_app, random_artifact, start_server, stop_server

WRITES = 200


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("durable") / "model", n_users=30, n_anime=60, seed=5)


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_acknowledged_writes_survive_sigkill_of_redis(model_dir, tmp_path):
    server = LocalRedis(dir=str(tmp_path / "aof"))
    port = server.port
    try:
        precompute(model_dir, server.url, HybridSettings())
        client = api_app(model_dir, server.url, rate_limit=0).test_client()
        acked = []
        for i in range(WRITES):
            uid, aid = 100 + i % 30, 1000 + i % 60
            r = client.put(f"/v1/users/{uid}/ratings/{aid}", json={"rating": 1 + i % 10})
            assert r.status_code == 200
            acked.append(r.get_json())
        _kill(server.proc)      # right after the last 200: nothing gets the chance to flush anything more
    finally:
        server.stop()
    server = LocalRedis(port=port, dir=str(tmp_path / "aof"))
    try:
        with connect(server.url) as redis_:
            stored = {e.id: e for e in feedback.read(redis_)}
            for ack in acked:
                event = stored[ack["id"]]
                assert (event.user_id, event.anime_id, event.rating) == (ack["user_id"], ack["anime_id"], ack["rating"])
            last = acked[-1]
            entry = feedback.user_entries(redis_, last["user_id"])[last["anime_id"]]
            assert entry["id"] == last["id"] and entry["rating"] == last["rating"]
            assert redis_.get(keys.feedback_mark(last["user_id"])).decode() == last["id"]
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            out += [int(c) for c in fh.read().split()]
    return out


def _request(url: str, method: str = "GET", body: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill_of_the_api(model_dir, redis_url):
    import json
    url = redis_url.rsplit("/", 1)[0] + "/14"
    with connect(url) as redis_:
        redis_.flushdb()
    precompute(model_dir, url, HybridSettings())
    base, proc = start_server(model_dir, url, workers=2)
    try:
        top = json.loads(_request(f"{base}/v1/users/105/recommendations"))["items"][0]["anime_id"]
        ack = json.loads(_request(f"{base}/v1/users/105/ratings/{top}", "PUT", b'{"rating": 10}'))
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)        # the master and every worker, right after the answer
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_server(proc)
    with connect(url) as redis_:
        assert [e.id for e in feedback.read(redis_)] == [ack["id"]]
    base, proc = start_server(model_dir, url, workers=2)
    try:
        listed = json.loads(_request(f"{base}/v1/users/105/ratings"))["ratings"]
        assert [(e["anime_id"], e["rating"], e["id"]) for e in listed] == [(top, 10, ack["id"])]
        after = json.loads(_request(f"{base}/v1/users/105/recommendations"))
        assert after["source"] == "fresh" and top not in [i["anime_id"] for i in after["items"]]
    finally:
        stop_server(proc)


@pytest.mark.parametrize("args,reported,logged", [
    ((), True, None),
    (("--appendfsync", "everysec"), False, "appendfsync everysec"),
    (("--appendonly", "no"), False, "appendonly no"),
    (("--rename-command", "CONFIG", ""), "unknown", "CONFIG GET refused"),
])
def test_readyz_says_whether_feedback_is_durable(model_dir, args, reported, logged, caplog):
    with LocalRedis(args=args) as server:
        with caplog.at_level(logging.WARNING, logger="fuserank.api"):
            client = api_app(model_dir, server.url).test_client()
            states = [client.get("/readyz").get_json()["feedback_durable"] for _ in range(3)]
        warnings = [r.getMessage() for r in caplog.records if "feedback is not durable" in r.getMessage()]
        assert states == [reported] * 3
        if logged:
            assert len(warnings) == 1 and logged in warnings[0]
        else:
            assert warnings == []
        r = client.put("/v1/users/100/ratings/1000", json={"rating": 7})
        assert r.status_code == 200           # feedback works either way
