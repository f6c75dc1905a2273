"""The feedback loop on a real Redis Cluster (tests/cluster.py: 3 primaries, 1 replica each), with --redis-cluster.

The user picked has keys on more than one primary (the stream and their index; their stored list and fresh
hash). In-process: ratings (one of a new user) and a deletion make fresh lists; GET .../ratings lists them;
POST /v1/feedback stores signals; /metrics counts the backlog; `fuserank ingest --feedback` drains it; versions
built from that data trim the index once published; `fuserank forget` removes the user's events; `fuserank
inspect online` reports the served list. Under gunicorn (slow): fresh within 1 s whichever worker answers.
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest

from fuserank import feedback, keys
from fuserank.artifacts import MANIFEST, ModelArtifact
from fuserank.batch.nightly import NightlySettings, feedback_source
from fuserank.cli import main
from fuserank.publish import current_version, previous_version
from fuserank.redis_client import connect
from fuserank.redis_server import free_port
from tests.test_api_redis_outage import SETTINGS, _serve
from tests.test_redis_cluster import FLAGS
from tests.test_feedback_ingest import _csv, _pairs
from tests.test_metrics import samples, value
from tests.factories import api_app, random_artifact, stop_server

@pytest.fixture
def published(tmp_path, cluster):
    """An emptied cluster serving a random model's lists: (model dir, list version, command client)."""
    cluster.flush()
    model = random_artifact(tmp_path / "a", n_users=120, n_anime=60, seed=1)
    assert main(["precompute", "--model", model, "--redis-url", cluster.url, "--redis-cluster", *FLAGS]) == 0
    client = connect(cluster.target)
    yield model, current_version(client), client
    client.close()


def spread_user(client, model_dir: str, version: str) -> int:
    """A user whose index lies on another primary than the stream (the write's two steps) and whose stored list
    on another than their fresh hash (the read's one pipeline)."""
    def port(key):
        return client.get_node_from_key(key).port

    for uid in ModelArtifact.load(model_dir).user_ids.tolist():
        if port(keys.feedback_user(uid)) != port(keys.FEEDBACK_EVENTS) and \
                port(keys.user(version, uid)) != port(keys.feedback_fresh(uid)):
            return int(uid)
    raise AssertionError("no user whose feedback keys span two primaries")


def _ids(body) -> list[int]:
    return [i["anime_id"] for i in body["items"]]


def _with_feedback(model_dir: str, data_dir, path) -> str:
    """A copy of the model that holds the data directory's feedback, as `fuserank train` records it."""
    shutil.copytree(model_dir, path)
    drained = json.loads((data_dir / "manifest.json").read_text())
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update({k: drained[k] for k in ("feedback_until", "feedback_added")})
    (path / MANIFEST).write_text(json.dumps(manifest))
    return str(path)


def test_the_feedback_loop_on_the_cluster(tmp_path, cluster, published, capsys):
    model, va, rc = published
    url = cluster.url
    api = api_app(model, url, SETTINGS, redis_cluster=True, rate_limit=0).test_client()
    service = api.application.extensions["fuserank"]
    uid, new_user = spread_user(rc, model, va), 9_999_999
    anime = ModelArtifact.load(model).anime_ids.tolist()

    before = api.get(f"/v1/users/{uid}/recommendations").get_json()
    assert before["source"] == "precomputed"
    top, second = _ids(before)[:2]
    assert api.put(f"/v1/users/{uid}/ratings/{top}", json={"rating": 10}).status_code == 200
    assert api.put(f"/v1/users/{uid}/ratings/{second}", json={"rating": 3}).status_code == 200
    assert api.delete(f"/v1/users/{uid}/ratings/{second}").status_code == 200
    assert api.put(f"/v1/users/{new_user}/ratings/{anime[0]}", json={"rating": 8}).status_code == 200
    fresh = api.get(f"/v1/users/{uid}/recommendations").get_json()
    assert fresh["source"] == "fresh" and top not in _ids(fresh), fresh
    assert api.get(f"/v1/users/{new_user}/recommendations").get_json()["source"] == "fresh"
    listed = api.get(f"/v1/users/{uid}/ratings").get_json()["ratings"]
    assert [(e["anime_id"], e["kind"]) for e in listed] == [(top, "rating"), (second, "delete")]
    signals = [{"user_id": uid, "anime_id": top, "type": t, "list_version": va} for t in ("impression", "click")]
    assert api.post("/v1/feedback", json={"events": signals}).get_json() == {"accepted": 2}
    scraped = samples(api.get("/metrics").get_data(as_text=True))
    assert value(scraped, "fuserank_feedback_backlog_events") == 6

    # the nightly job reads the stream's head on the cluster and tells the ingest it is one
    params, env = feedback_source(NightlySettings(redis_url=url, redis_cluster=True))
    last, _ = feedback.head(rc)
    assert params == {"ingest": {"feedback-until": last}}
    assert env == {"FUSERANK_FEEDBACK_URL": url, "FUSERANK_REDIS_CLUSTER": "1"}

    data = tmp_path / "data"
    assert main(["ingest", "--ratings", _csv(tmp_path / "r.csv"), "--out", str(data), "--min-user-ratings", "1",
                 "--feedback", url, "--redis-cluster"]) in (0, None)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["feedback_until"] == last and manifest["feedback"]["drained_events"] == 6
    pairs = _pairs(data)
    assert pairs[(uid, top)] == 10 and (uid, second) not in pairs and pairs[(new_user, anime[0])] == 8

    # two versions built from that data published in turn: both servable ones hold it, the index is trimmed
    held = _with_feedback(model, data, tmp_path / "b")
    for neighbours in ("4", "3"):
        assert main(["precompute", "--model", held, "--redis-url", url, "--redis-cluster", "--top-n",
                     str(SETTINGS.top_n), "--neighbours", neighbours]) == 0
    vc = current_version(rc)
    assert vc != va and previous_version(rc) not in (None, va)
    assert feedback.user_entries(rc, uid) == {} and feedback.user_entries(rc, new_user) == {}
    assert rc.xlen(keys.FEEDBACK_EVENTS) == 6           # the stream keeps the evaluation window
    deadline = time.time() + 30
    while service.refresh().list_version != vc:
        assert time.time() < deadline, "the API did not move to the new version"
        time.sleep(0.05)
    after = api.get(f"/v1/users/{uid}/recommendations").get_json()
    assert after["source"] == "precomputed" and after["list_version"] == vc
    assert value(samples(api.get("/metrics").get_data(as_text=True)), "fuserank_feedback_backlog_events") == 0

    capsys.readouterr()
    assert main(["inspect", "online", "--redis-url", url, "--redis-cluster", "--version", va, "--json"]) in (0, None)
    total = json.loads(capsys.readouterr().out)["versions"][va]["total"]
    assert (total["lists"], total["click_share"]) == (1, 1.0)

    assert main(["forget", "--redis-url", url, "--redis-cluster", "--user", str(uid)]) == 0
    assert json.loads(capsys.readouterr().out)["events_deleted"] == 5
    assert [e for e in feedback.read(rc) if e.user_id == uid] == []
    assert not rc.exists(keys.feedback_user(uid)) and not rc.exists(keys.feedback_fresh(uid))


def _call(url: str, body: dict | None = None, method: str | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.startswith("{") else text


@pytest.mark.slow
def test_fresh_within_a_second_from_gunicorn_on_the_cluster(published, cluster):
    model, va, rc = published
    port = free_port()
    proc = _serve(model, cluster.url, port, "--redis-cluster")
    base = f"http://127.0.0.1:{port}"
    try:
        users = ModelArtifact.load(model).user_ids.tolist()[:6]
        for uid in users:
            top = _ids(_call(f"{base}/v1/users/{uid}/recommendations"))[0]
            _call(f"{base}/v1/users/{uid}/ratings/{top}", {"rating": 10}, "PUT")
            t0 = time.monotonic()
            answers = [_call(f"{base}/v1/users/{uid}/recommendations") for _ in range(8)]   # both workers answer
            assert time.monotonic() - t0 < 1.0
            assert all(a["source"] == "fresh" and top not in _ids(a) for a in answers), answers
            assert [e["anime_id"] for e in _call(f"{base}/v1/users/{uid}/ratings")["ratings"]] == [top]
        signals = [{"user_id": users[0], "anime_id": top, "type": "impression", "list_version": va}]
        assert _call(f"{base}/v1/feedback", {"events": signals}, "POST") == {"accepted": 1}
        scraped = samples(_call(f"{base}/metrics"))
        assert value(scraped, "fuserank_feedback_backlog_events") == len(users) + 1
    finally:
        stop_server(proc)
