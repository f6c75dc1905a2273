"""The feedback API on a real Redis: writes, validation, idempotency, guards, and the fresh lists that follow them."""
import json
import re
import time
import urllib.request

import numpy as np
import pytest

from fuserank import feedback, keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.redis_client import connect
from tests.factories import api_app, empty_db, random_artifact, start_server, stop_server

N_USERS, N_ANIME = 40, 80


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("fb") / "model", n_users=N_USERS, n_anime=N_ANIME, seed=3)


@pytest.fixture(scope="module")
def url(redis_url):
    return empty_db(redis_url, 13)


@pytest.fixture(scope="module")
def published(model_dir, url):
    return precompute(model_dir, url, HybridSettings())


@pytest.fixture(scope="module")
def client(model_dir, url, published):
    return api_app(model_dir, url, rate_limit=0).test_client()


def _ids(body) -> list[int]:
    return [i["anime_id"] for i in body["items"]]


def _wait_idle(client, timeout=5.0):
    refresher = client.application.extensions["fuserank"].refresher
    deadline = time.time() + timeout
    while not refresher.idle() and time.time() < deadline:
        time.sleep(0.01)


def test_a_rating_is_stored_listed_and_the_next_list_is_fresh_without_it(client, url):
    uid = 100
    before = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert before["source"] == "precomputed"
    top = before["items"][0]["anime_id"]
    r = client.put(f"/v1/users/{uid}/ratings/{top}", json={"rating": 9})
    assert r.status_code == 200
    body = r.get_json()
    assert body["user_id"] == uid and body["anime_id"] == top and body["rating"] == 9 and body["kind"] == "rating"
    assert re.fullmatch(r"\d+-\d+", body["id"])
    with connect(url) as redis_:
        event = list(feedback.read(redis_))[-1]
    assert (event.kind, event.user_id, event.anime_id, event.rating, event.id) == ("rating", uid, top, 9, body["id"])
    listed = client.get(f"/v1/users/{uid}/ratings").get_json()
    assert [(e["anime_id"], e["kind"], e["rating"]) for e in listed["ratings"]] == [(top, "rating", 9)]
    after = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert after["source"] == "fresh" and top not in _ids(after) and len(after["items"]) == 10


def _expected(client, uid: int, changes: dict, n: int = 10) -> list[int]:
    """The fold-in (the live path's scorer) of the model's history of ``uid`` with ``changes`` (anime id ->
    raw rating, -1 listed, None removed) applied: what the fresh list must be."""
    from fuserank.api.answers import fold_in
    service = client.application.extensions["fuserank"]
    model = service.model
    row = model.lists[int(model.user_index(uid)[0])]
    have = dict(zip(row.indices.tolist(), row.data.tolist()))
    for aid, rating in changes.items():
        a = int(model.anime_index(aid)[0])
        have.pop(a, None) if rating is None else have.__setitem__(a, rating)
    enc, ratings = np.array(list(have), np.int64), np.array(list(have.values()), np.int64)
    return _ids(fold_in(service.view(), enc, ratings, n, False, None, True).body("user_id", uid))


def test_the_fresh_list_is_the_fold_in_of_history_plus_the_new_entries(client):
    model = client.application.extensions["fuserank"].model
    uid = 101
    listed = set(model.lists[int(model.user_index(uid)[0])].indices.tolist())
    new = int(model.anime_ids[[a for a in range(model.n_anime) if a not in listed][0]])
    client.put(f"/v1/users/{uid}/ratings/{new}", json={"rating": 10})
    got = client.get(f"/v1/users/{uid}/recommendations?n=15").get_json()
    assert got["source"] == "fresh" and _ids(got) == _expected(client, uid, {new: 10}, 15)


def test_idempotent_and_a_later_write_wins(client, url):
    uid, aid = 102, 1003
    for rating in (7, 7, 4):
        assert client.put(f"/v1/users/{uid}/ratings/{aid}", json={"rating": rating}).status_code == 200
    with connect(url) as redis_:
        state = feedback.user_entries(redis_, uid)
    assert list(state) == [aid] and state[aid]["rating"] == 4
    assert [e["rating"] for e in client.get(f"/v1/users/{uid}/ratings").get_json()["ratings"]] == [4]


def test_delete_and_status_change_the_fresh_list(client):
    uid = 103
    before = _ids(client.get(f"/v1/users/{uid}/recommendations").get_json())
    status = client.put(f"/v1/users/{uid}/ratings/{before[1]}", json={"status": "plan_to_watch"})
    assert status.status_code == 200 and status.get_json()["status"] == "plan_to_watch"
    after_status = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert after_status["source"] == "fresh" and before[1] not in _ids(after_status)
    assert _ids(after_status) == _expected(client, uid, {before[1]: -1})
    model = client.application.extensions["fuserank"].model
    rated = int(model.anime_ids[model.lists[int(model.user_index(uid)[0])].indices[0]])   # in the model's history
    for aid in (before[1], rated):
        gone = client.delete(f"/v1/users/{uid}/ratings/{aid}")
        assert gone.status_code == 200 and gone.get_json()["kind"] == "delete"
    after_delete = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert after_delete["source"] == "fresh"
    assert _ids(after_delete) == _expected(client, uid, {before[1]: None, rated: None}) != _expected(client, uid, {})


def test_a_new_user_who_rates_becomes_known(client):
    uid = 777_000
    assert client.get(f"/v1/users/{uid}/recommendations").get_json()["source"] == "popular"
    for aid in (1000, 1001, 1002):
        client.put(f"/v1/users/{uid}/ratings/{aid}", json={"rating": 9})
    body = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert body["source"] == "fresh" and not {1000, 1001, 1002} & set(_ids(body)) and len(body["items"]) == 10


def test_the_background_thread_stores_the_fresh_list_off_the_request(client, url):
    uid = 104
    client.put(f"/v1/users/{uid}/ratings/1005", json={"rating": 8})
    _wait_idle(client)
    with connect(url) as redis_:
        state = redis_.hgetall(keys.feedback_fresh(uid))
        assert state[b"built"] == redis_.get(keys.feedback_mark(uid))
    assert 1005 not in [i["anime_id"] for i in keys.decode_list(state[b"list"])]


def _serve(service, version: str, timeout: float = 30.0) -> None:
    """Until the service answers from list ``version`` (a new hybrid setting loads in the background)."""
    deadline = time.time() + timeout
    while service.refresh().list_version != version:
        assert time.time() < deadline, f"not serving {version}"
        time.sleep(0.05)


def test_precomputed_takes_over_once_a_published_version_holds_the_entries(client, model_dir, url):
    uid = 105
    first = client.put(f"/v1/users/{uid}/ratings/1006", json={"rating": 8}).get_json()["id"]
    second = client.put(f"/v1/users/{uid}/ratings/1007", json={"rating": 8}).get_json()["id"]
    service = client.application.extensions["fuserank"]
    with connect(url) as redis_:
        partly = precompute(model_dir, url, HybridSettings(neighbours=20))
        redis_.hset(keys.meta(partly["version"]), "feedback_until", first)
        _serve(service, partly["version"])
        assert service.view().feedback_until == first
        assert client.get(f"/v1/users/{uid}/recommendations").get_json()["source"] == "fresh"
        assert [e["id"] for e in client.get(f"/v1/users/{uid}/ratings").get_json()["ratings"]] == [second]
        covered = precompute(model_dir, url, HybridSettings(neighbours=15))
        redis_.hset(keys.meta(covered["version"]), "feedback_until", second)
        _serve(service, covered["version"])
    body = client.get(f"/v1/users/{uid}/recommendations").get_json()
    assert body["source"] == "precomputed" and body["list_version"] == covered["version"]
    assert client.get(f"/v1/users/{uid}/ratings").get_json()["ratings"] == []


def test_impressions_and_clicks_in_batches(client, url):
    with connect(url) as redis_:
        start = redis_.xlen(keys.FEEDBACK_EVENTS)
    events = [{"user_id": 100, "anime_id": 1000 + i % N_ANIME, "type": "impression", "list_version": "v1-abc"}
              for i in range(1000)]
    r = client.post("/v1/feedback", json={"events": events})
    assert r.status_code == 200 and r.get_json() == {"accepted": 1000}
    too_many = client.post("/v1/feedback", json={"events": events + events[:1]})
    assert too_many.status_code == 413 and too_many.get_json()["error"]["parameter"] == "events"
    click = client.post("/v1/feedback", json={"events": [{"user_id": 5, "anime_id": 1001, "type": "click",
                                                           "list_version": "v1-abc"}]})
    assert click.status_code == 200
    with connect(url) as redis_:
        stored = list(feedback.read(redis_))[start:]
        assert redis_.exists(keys.feedback_user(5)) == 0
    assert len(stored) == 1001 and stored[-1].kind == "click" and stored[-1].list_version == "v1-abc"


@pytest.mark.parametrize("method,path,body,status,parameter", [
    ("put", "/v1/users/100/ratings/1000", {"rating": 11}, 400, "rating"),
    ("put", "/v1/users/100/ratings/1000", {"rating": "9"}, 400, "rating"),
    ("put", "/v1/users/100/ratings/1000", {"rating": True}, 400, "rating"),
    ("put", "/v1/users/100/ratings/1000", {"status": "loved"}, 400, "status"),
    ("put", "/v1/users/100/ratings/1000", {"rating": 5, "status": "watching"}, 400, "body"),
    ("put", "/v1/users/100/ratings/1000", {}, 400, "body"),
    ("put", "/v1/users/100/ratings/1000", {"rating": 5, "extra": 1}, 400, "extra"),
    ("put", "/v1/users/x/ratings/1000", {"rating": 5}, 400, "user_id"),
    ("put", "/v1/users/100/ratings/-1", {"rating": 5}, 400, "anime_id"),
    ("put", "/v1/users/100/ratings/99999", {"rating": 5}, 404, None),
    ("delete", "/v1/users/100/ratings/99999", None, 404, None),
    ("post", "/v1/feedback", {"events": []}, 400, "events"),
    ("post", "/v1/feedback", [], 400, "body"),
    ("post", "/v1/feedback", {"events": [{"user_id": 1, "anime_id": 1000, "type": "view",
                                          "list_version": "v"}]}, 400, "events[0].type"),
    ("post", "/v1/feedback", {"events": [{"user_id": 1, "anime_id": 1000, "type": "click"}]}, 400,
     "events[0].list_version"),
    ("post", "/v1/feedback", {"events": [{"user_id": 1, "anime_id": 1000, "type": "click", "list_version": "v",
                                          "x": 1}]}, 400, "events[0].x"),
    ("post", "/v1/feedback", {"events": [{"user_id": 1, "anime_id": 5, "type": "click", "list_version": "v"}]},
     404, None),
])
def test_bad_writes_name_the_field(client, url, method, path, body, status, parameter):
    with connect(url) as redis_:
        start = redis_.xlen(keys.FEEDBACK_EVENTS)
    r = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert error.get("parameter") == parameter
    with connect(url) as redis_:
        assert redis_.xlen(keys.FEEDBACK_EVENTS) == start


def test_writes_need_the_api_key_and_are_rate_limited(model_dir, url, published):
    client = api_app(model_dir, url, api_key=("k1",), rate_limit=2, rate_window_s=3600).test_client()
    assert client.put("/v1/users/100/ratings/1000", json={"rating": 5}).status_code == 401
    assert client.put("/v1/users/100/ratings/1000", json={"rating": 5},
                      headers={"X-API-Key": "wrong"}).status_code == 401
    key = {"X-API-Key": "k1"}
    assert client.put("/v1/users/100/ratings/1000", json={"rating": 5}, headers=key).status_code == 200
    assert client.delete("/v1/users/100/ratings/1000", headers=key).status_code == 200
    limited = client.post("/v1/feedback", headers=key, json={"events": [
        {"user_id": 1, "anime_id": 1000, "type": "click", "list_version": "v"}]})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.get("/v1/users/100/ratings").status_code == 200     # reads are open


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def test_the_web_rating_form_needs_its_csrf_token_and_is_rate_limited(model_dir, url, published):
    client = api_app(model_dir, url, api_key=("k1",), rate_limit=2, rate_window_s=3600).test_client()
    page = client.get("/anime/1004?user_id=106").get_data(as_text=True)
    assert 'id="rate-as-user"' in page
    assert client.post("/users/106/ratings/1004", data={"rating": "9"}).status_code == 400
    assert client.post("/users/106/ratings/1004", data={"rating": "9", "csrf_token": "forged"}).status_code == 400
    token = _csrf(page)
    done = client.post("/users/106/ratings/1004", data={"rating": "9", "csrf_token": token})
    assert done.status_code == 303 and done.headers["Location"].endswith("/recommendations?user_id=106")
    fresh = client.get("/recommendations?user_id=106").get_data(as_text=True)
    assert "fresh answer" in fresh
    assert client.post("/users/106/ratings/1004", data={"rating": "11", "csrf_token": token}).status_code == 400
    assert client.post("/users/106/ratings/1004", data={"rating": "9", "csrf_token": token}).status_code == 429
    assert 'id="rate-as-user"' not in client.get("/anime/1004").get_data(as_text=True)


def test_readyz_reports_whether_feedback_is_durable(client, url):
    with connect(url) as redis_:
        config = redis_.config_get("append*")
    expected = config["appendonly"] == "yes" and config["appendfsync"] == "always"
    assert client.get("/readyz").get_json()["feedback_durable"] is expected


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _put(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_fresh_within_a_second_whichever_gunicorn_worker_answers(model_dir, url, published):
    base, proc = start_server(model_dir, url, workers=2)
    try:
        for uid in range(110, 118):
            top = _get(f"{base}/v1/users/{uid}/recommendations")["items"][0]["anime_id"]
            _put(f"{base}/v1/users/{uid}/ratings/{top}", {"rating": 10})
            t0 = time.monotonic()
            answers = [_get(f"{base}/v1/users/{uid}/recommendations") for _ in range(8)]   # both workers answer
            assert time.monotonic() - t0 < 1.0
            assert all(a["source"] == "fresh" and top not in _ids(a) for a in answers)
    finally:
        stop_server(proc)
