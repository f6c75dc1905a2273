"""Model version switching: the API follows the pointer to another model without a restart, loading it in the
background, and never answers from a mixed version (one answer = one model + the list version it wrote)."""
import json
import shutil
import threading
import time

import pytest
import redis

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.publish import rollback, write_meta
from tests.factories import api_app, random_artifact

SETTINGS = HybridSettings(top_n=10, neighbours=5)
USERS = range(100, 130)


@pytest.fixture
def two_models(tmp_path):
    """Two different models over the same users and anime (different embeddings and lists)."""
    return (random_artifact(tmp_path / "m1", n_users=30, n_anime=40, seed=1),
            random_artifact(tmp_path / "m2", n_users=30, n_anime=40, seed=2))


def _stored(r, version):
    return {uid: [i["anime_id"] for i in keys.decode_list(r.get(keys.user(version, uid)))] for uid in USERS}


def _ids(body):
    return [i["anime_id"] for i in body["items"]]


def test_switches_to_a_new_model_and_back_on_rollback(two_models, redis_client, redis_url):
    m1, m2 = two_models
    first = precompute(m1, redis_url, SETTINGS)
    app = api_app(m1, redis_url, SETTINGS)
    client, service = app.test_client(), app.extensions["fuserank"]
    body = client.get("/v1/users/100/recommendations?n=5").get_json()
    assert (body["model_version"], body["list_version"]) == (first["model_version"], first["version"])

    second = precompute(m2, redis_url, SETTINGS)
    assert second["model_version"] != first["model_version"]
    service.wait_for(second["model_version"], timeout=30)
    lists = {first["model_version"]: _stored(redis_client, first["version"]),
             second["model_version"]: _stored(redis_client, second["version"])}
    assert lists[first["model_version"]] != lists[second["model_version"]]
    for uid in USERS:
        stored = client.get(f"/v1/users/{uid}/recommendations?n=10").get_json()
        live = client.get(f"/v1/users/{uid}/recommendations?n=10&source=live").get_json()
        assert stored["source"] == "precomputed" and live["source"] == "live"
        for body in (stored, live):   # precomputed AND live answers come from the second model
            assert body["model_version"] == second["model_version"] and body["list_version"] == second["version"]
            assert _ids(body) == lists[second["model_version"]][uid]
    similar = client.get("/v1/anime/1003/similar?n=5&include_adult=true").get_json()
    assert similar["source"] == "live" and similar["model_version"] == second["model_version"]
    new_user = client.post("/v1/recommendations", json={"ratings": [{"anime_id": 1001, "rating": 9}]}).get_json()
    assert new_user["model_version"] == second["model_version"]
    ready = client.get("/readyz").get_json()
    assert ready["serving"] == {"model_version": second["model_version"], "list_version": second["version"]}
    assert set(ready["models_loaded"]) == {first["model_version"], second["model_version"]}  # current + previous

    rollback(redis_client)
    t0 = time.monotonic()
    service.refresh()     # the previous model is kept in memory: the switch back needs no load
    assert time.monotonic() - t0 < 1.0
    body = client.get("/v1/users/101/recommendations?n=10&source=live").get_json()
    assert body["model_version"] == first["model_version"] and body["list_version"] == first["version"]
    assert _ids(body) == lists[first["model_version"]][101]
    assert client.get("/v1/users/101/recommendations?n=10").get_json()["model_version"] == first["model_version"]


def test_keeps_answering_from_the_old_version_while_the_new_model_loads(two_models, redis_client, redis_url,
                                                                          monkeypatch):
    m1, m2 = two_models
    first = precompute(m1, redis_url, SETTINGS)
    app = api_app(m1, redis_url, SETTINGS)
    client, service = app.test_client(), app.extensions["fuserank"]
    expected = {first["model_version"]: _stored(redis_client, first["version"])}

    release = threading.Event()
    build = service.registry._build_for

    def slow_build(version, key):       # the new model takes as long as the test says to load
        release.wait(30)
        return build(version, key)
    monkeypatch.setattr(service.registry, "_build_for", slow_build)

    second = precompute(m2, redis_url, SETTINGS)
    expected[second["model_version"]] = _stored(redis_client, second["version"])
    seen, problems, stop = [], [], threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            uid = USERS[i % len(USERS)]
            query = "n=10" if i % 2 else "n=10&source=live"
            body = client.get(f"/v1/users/{uid}/recommendations?{query}").get_json()
            seen.append(body["model_version"])
            if body.get("list_version", "").split("-")[0] != body["model_version"]:
                problems.append(("mixed versions", body))
            elif _ids(body) != expected[body["model_version"]][uid]:
                problems.append(("items of another version", body))
            i += 1
    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        service.refresh()     # the pointer moved; the new model is still loading
        time.sleep(0.3)
        assert service.redis_state()["list_version"] == second["version"]
        assert set(seen) == {first["model_version"]}, "answered from the new version before its model loaded"
        release.set()
        service.wait_for(second["model_version"], timeout=30)
        n_before = len(seen)
        while len(seen) < n_before + 20:
            time.sleep(0.05)
    finally:
        release.set()
        stop.set()
        thread.join(10)
    assert not problems, problems[:3]
    assert seen[-1] == second["model_version"]


def test_starts_on_the_published_model_and_keeps_a_consistent_pair_when_a_model_is_unreachable(
        two_models, tmp_path, redis_client, redis_url):
    m1, m2 = two_models
    first = precompute(m1, redis_url, SETTINGS)
    second = precompute(m2, redis_url, SETTINGS)
    fallback = str(tmp_path / "m1-copy")
    shutil.copytree(m1, fallback)
    shutil.rmtree(m1)       # the first version's model_uri is gone; --model holds that model
    # --model names the first model, the pointer the second: the second is loaded before the first answer
    app = api_app(fallback, redis_url, SETTINGS)
    client, service = app.test_client(), app.extensions["fuserank"]
    body = client.get("/v1/users/100/recommendations").get_json()
    assert (body["model_version"], body["source"]) == (second["model_version"], "precomputed")
    rollback(redis_client)
    service.wait_for(first["model_version"], timeout=30)
    body = client.get("/v1/users/100/recommendations").get_json()
    assert (body["model_version"], body["list_version"]) == (first["model_version"], first["version"])

    # a version whose model cannot be found anywhere: the pair served before stays (never a mix)
    ghost = "0123456789abcdef-deadbeef"
    write_meta(redis_client, ghost, {"model_version": "0123456789abcdef", "model_uri": str(tmp_path / "nowhere"),
                                     "state": "complete", "settings": SETTINGS.to_dict()})
    redis_client.set(keys.PREVIOUS, first["version"])
    redis_client.set(keys.CURRENT, ghost)
    service.refresh()
    deadline = time.monotonic() + 10
    while service.redis_state()["loading"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = client.get("/readyz").get_json()
    assert state["list_version"] == ghost and state["ready"] is True
    assert state["serving"] == {"model_version": first["model_version"], "list_version": first["version"]}
    for query in ("", "?source=live"):
        body = client.get(f"/v1/users/100/recommendations{query}").get_json()
        assert (body["model_version"], body["list_version"]) == (first["model_version"], first["version"])


def test_models_are_found_on_gcs_and_in_the_model_store(two_models, tmp_path, redis_client, redis_url,
                                                         gcs_emulator, monkeypatch):
    from fuserank.batch.model_store import store_model
    monkeypatch.setenv("FUSERANK_CACHE", str(tmp_path / "cache"))
    m1, m2 = two_models
    m3 = random_artifact(tmp_path / "m3", n_users=30, n_anime=40, seed=3)   # --model: never published
    first = precompute(m1, redis_url, SETTINGS)
    second = precompute(m2, redis_url, SETTINGS)
    # the second version's model only on gs:// (its meta says so), the first only in the model store
    store_model(m2, "gs://fuserank-models/models")
    write_meta(redis_client, second["version"], {"model_uri": f"gs://fuserank-models/models/{second['model_version']}"})
    store = str(tmp_path / "store")
    store_model(m1, store)
    write_meta(redis_client, first["version"], {"model_uri": str(tmp_path / "gone")})
    shutil.rmtree(m1)
    shutil.rmtree(m2)

    app = api_app(m3, redis_url, SETTINGS, models_uri=store)
    client, service = app.test_client(), app.extensions["fuserank"]
    body = client.get("/v1/users/100/recommendations?source=live").get_json()
    assert (body["model_version"], body["list_version"]) == (second["model_version"], second["version"])
    assert service.model.path.startswith(str(tmp_path / "cache"))      # the verified local copy of gs://
    rollback(redis_client)
    service.wait_for(first["model_version"], timeout=30)
    assert client.get("/v1/users/100/recommendations").get_json()["model_version"] == first["model_version"]
    assert service.model.path.startswith(store)


def _assert_live_equals_stored(client, version):
    for uid in (100, 105, 110):
        stored = client.get(f"/v1/users/{uid}/recommendations?n=12").get_json()
        live = client.get(f"/v1/users/{uid}/recommendations?n=12&source=live").get_json()
        assert stored["list_version"] == live["list_version"] == version
        assert _ids(stored) == _ids(live)


def test_live_answers_use_the_list_versions_settings(two_models, redis_client, redis_url):
    """The scorer of a list version is built with the settings its precompute used, not the API's flags."""
    m1, _ = two_models
    other = HybridSettings(top_n=12, neighbours=3, weight_stage1=0.5)
    published = precompute(m1, redis_url, other)
    app = api_app(m1, redis_url, SETTINGS)
    client = app.test_client()
    _assert_live_equals_stored(client, published["version"])
    redis.Redis.from_url(redis_url).flushdb()


def test_a_list_version_stored_before_a_knob_existed_is_scored_as_it_was_written(two_models, redis_client, redis_url):
    """Stored settings without the stage-2 knobs (lists written before them) mean whole raw neighbour lists."""
    m1, _ = two_models
    old = HybridSettings(top_n=12, stage2_neighbours=None, stage2_by_indegree=False, weight_stage2=1.0)
    published = precompute(m1, redis_url, old)
    meta = keys.meta(published["version"])
    stored_settings = json.loads(redis_client.hget(meta, "settings"))
    del stored_settings["stage2_by_indegree"], stored_settings["stage2_neighbours"]
    redis_client.hset(meta, "settings", json.dumps(stored_settings))
    client = api_app(m1, redis_url, SETTINGS).test_client()
    _assert_live_equals_stored(client, published["version"])
    redis.Redis.from_url(redis_url).flushdb()
