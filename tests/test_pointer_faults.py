"""A pointer that names no list version (a hand edit, a bad script): the last good version keeps answering,
and the fault is loud (an ERROR line, ``/metrics``, ``/readyz`` with ``pointer_valid: false``)."""
import logging

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from tests.factories import api_app, random_artifact

SETTINGS = HybridSettings(top_n=10, neighbours=5)
GARBAGE = "garbage-not-a-version"


def test_a_garbage_pointer_keeps_the_last_good_version_and_is_reported(tmp_path, redis_client, redis_url, caplog):
    model = random_artifact(tmp_path / "m", n_users=30, n_anime=40, seed=1)
    good = precompute(model, redis_url, SETTINGS)
    app = api_app(model, redis_url, SETTINGS)
    client, service = app.test_client(), app.extensions["fuserank"]
    assert client.get("/v1/users/100/recommendations?n=5").get_json()["source"] == "precomputed"
    assert client.get("/readyz").get_json()["pointer_valid"] is True

    redis_client.set(keys.CURRENT, GARBAGE)
    with caplog.at_level(logging.INFO, logger="fuserank.api"):
        service.refresh()
        service.refresh()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and GARBAGE in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]   # once per bad value, not per refresh
    assert good["version"] in errors[0].getMessage()
    for uid in (100, 111, 129):
        body = client.get(f"/v1/users/{uid}/recommendations?n=5").get_json()
        assert (body["source"], body["list_version"]) == ("precomputed", good["version"])
    assert client.get("/v1/anime/1003/similar?n=5").get_json()["source"] == "precomputed"

    resp = client.get("/readyz")
    state = resp.get_json()
    assert resp.status_code == 200 and state["ready"] is True
    assert state["pointer_valid"] is False and state["list_version"] == GARBAGE
    assert state["serving"]["list_version"] == good["version"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "fuserank_list_pointer_valid 0.0" in metrics

    redis_client.set(keys.CURRENT, good["version"])    # repaired: valid again, nothing else changed
    service.refresh()
    assert client.get("/readyz").get_json()["pointer_valid"] is True
    assert "fuserank_list_pointer_valid 1.0" in client.get("/metrics").get_data(as_text=True)


def test_a_garbage_pointer_at_start_falls_back_to_previous(tmp_path, redis_client, redis_url):
    model = random_artifact(tmp_path / "m", n_users=30, n_anime=40, seed=1)
    good = precompute(model, redis_url, SETTINGS)
    redis_client.set(keys.PREVIOUS, good["version"])
    redis_client.set(keys.CURRENT, GARBAGE)
    client = api_app(model, redis_url, SETTINGS).test_client()
    body = client.get("/v1/users/100/recommendations?n=5").get_json()
    assert (body["source"], body["list_version"]) == ("precomputed", good["version"])
    state = client.get("/readyz").get_json()
    assert state["pointer_valid"] is False and state["ready"] is True
