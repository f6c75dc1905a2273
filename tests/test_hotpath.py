"""The hot route (fuserank.api.hotpath) answers exactly what Flask's dispatch answers, and only the plain form."""
from __future__ import annotations

import logging

import pytest

from fuserank.batch.pipeline import precompute
from tests.factories import api_app, empty_db, random_artifact

PLAIN = ["/v1/users/100/recommendations", "/v1/users/100/recommendations?n=5",
         "/v1/users/100/recommendations?n=007", "/v1/users/100/recommendations?n=200",   # 200: beyond the list
         "/v1/users/987654/recommendations?n=3",                                        # unknown: popular
         "/v1/users/9223372036854775807/recommendations"]                                # MAX_ID
OTHER = ["/v1/users/100/recommendations?n=0", "/v1/users/100/recommendations?n=201",
         "/v1/users/100/recommendations?n=", "/v1/users/100/recommendations?n=%35",
         "/v1/users/100/recommendations?n=5&explain=false", "/v1/users/100/recommendations?source=live",
         "/v1/users/100/recommendations?N=5", "/v1/users/abc/recommendations",
         "/v1/users/9223372036854775808/recommendations", "/v1/users/12345678901234567890/recommendations",
         "/v1/users/100/recommendations/", "/v1/anime/5/similar", "/healthz"]


@pytest.fixture(scope="module")
def apps(tmp_path_factory, redis_url):
    model_dir = random_artifact(tmp_path_factory.mktemp("hotpath") / "model", n_users=40, n_anime=30)
    url = empty_db(redis_url, 5)
    precompute(model_dir, url)
    hot = api_app(model_dir, url)
    service = hot.extensions["fuserank"]
    entered = []
    hot.before_request(lambda: entered.append(1))
    return hot, api_app(model_dir, url, service=service, hot_route=False), entered


def _answer(client, path, method="GET"):
    r = client.open(path, method=method)
    return r.status_code, r.headers.get("Content-Type"), r.headers.get("Content-Length"), r.get_data()


@pytest.mark.parametrize("path", PLAIN + OTHER)
def test_same_status_headers_and_body_as_flask(apps, path):
    hot, flask_only, _ = apps
    assert _answer(hot.test_client(), path) == _answer(flask_only.test_client(), path)


def test_only_the_plain_form_skips_flask(apps):
    hot, _, entered = apps
    client = hot.test_client()
    for path in PLAIN:
        entered.clear()
        assert client.get(path).status_code == 200
        assert not entered, path
    for path in OTHER:
        entered.clear()
        client.get(path)
        assert entered == [1], path
    entered.clear()
    assert client.head(PLAIN[0]).status_code == 200 and entered == [1]


def test_an_error_is_answered_by_flask_once(apps, monkeypatch, caplog):
    hot, _, _ = apps
    service = hot.extensions["fuserank"]
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(service, "user_recommendations", broken)
    caplog.set_level(logging.INFO, logger="fuserank.api")
    r = hot.test_client().get("/v1/users/100/recommendations")
    assert r.status_code == 500 and r.get_json() == {"error": {"status": 500, "message": "internal error"}}
    assert len(calls) == 2     # the hot route's try, then Flask's, which renders and logs it
    lines = [x for x in caplog.records if x.name == "fuserank.api.requests"]
    assert len(lines) == 1 and lines[0].fields["status"] == 500
    assert lines[0].fields["route"] == "/v1/users/<user_id>/recommendations"


PUT_PLAIN = [("/v1/users/100/ratings/1001", b'{"rating": 7}'), ("/v1/users/100/ratings/1002", b'{"rating":10}'),
             ("/v1/users/555555/ratings/0001003", b' {\n"rating" : 1 } ')]      # a new user; a padded id
PUT_OTHER = [("/v1/users/100/ratings/999999", b'{"rating": 7}'),                  # unknown anime: 404
             ("/v1/users/100/ratings/1001", b'{"rating": 11}'), ("/v1/users/100/ratings/1001", b'{"rating": 7.0}'),
             ("/v1/users/100/ratings/1001", b'{"rating": "7"}'), ("/v1/users/100/ratings/1001", b'{"status": "watching"}'),
             ("/v1/users/100/ratings/1001", b'{"rating": 7, "x": 1}'), ("/v1/users/100/ratings/1001", b'{"rating": 7'),
             ("/v1/users/100/ratings/1001?x=1", b'{"rating": 7}'), ("/v1/users/abc/ratings/1001", b'{"rating": 7}'),
             ("/v1/users/9223372036854775808/ratings/1001", b'{"rating": 7}'), ("/v1/users/100/ratings/1001", b"")]


@pytest.fixture(scope="module")
def writers(tmp_path_factory, redis_url):
    """Apps whose PUT of a rating may skip Flask (no API key, no rate limit), with and without the hot route."""
    model_dir = random_artifact(tmp_path_factory.mktemp("hotput") / "model", n_users=40, n_anime=30)
    url = empty_db(redis_url, 6)
    precompute(model_dir, url)
    hot = api_app(model_dir, url, rate_limit=0)
    service = hot.extensions["fuserank"]
    entered = []
    hot.before_request(lambda: entered.append(1))
    return hot, api_app(model_dir, url, service=service, hot_route=False, rate_limit=0), entered


def _put(client, path, body):
    r = client.put(path, data=body, content_type="application/json")
    data = r.get_json()
    if isinstance(data, dict):
        data.pop("id", None)        # each write gets its own stream id
    return r.status_code, r.headers.get("Content-Type"), data


@pytest.mark.parametrize("path,body", PUT_PLAIN + PUT_OTHER)
def test_a_put_answers_as_flask_does(writers, path, body):
    hot, flask_only, _ = writers
    assert _put(hot.test_client(), path, body) == _put(flask_only.test_client(), path, body)


def test_only_a_plain_rating_put_skips_flask_and_it_is_stored(writers):
    hot, _, entered = writers
    client = hot.test_client()
    service = hot.extensions["fuserank"]
    for path, body in PUT_PLAIN:
        entered.clear()
        r = client.put(path, data=body, content_type="application/json")
        assert r.status_code == 200 and not entered, path
        uid, aid = int(path.split("/")[3]), int(path.split("/")[5])
        assert service.user_feedback(uid)[1][-1]["id"] == r.get_json()["id"]
        assert {e["anime_id"] for e in service.user_feedback(uid)[1]} >= {aid}
    for path, body in PUT_OTHER:
        entered.clear()
        client.put(path, data=body, content_type="application/json")
        assert entered == [1], (path, body)
    entered.clear()
    client.put(PUT_PLAIN[0][0], data=PUT_PLAIN[0][1], content_type="text/plain")
    assert entered == [1]


def test_a_guarded_put_goes_through_flask(apps):
    hot, _, entered = apps          # the rate limit is on: the guard in fuserank.api.routes counts the write
    entered.clear()
    path, body = PUT_PLAIN[0]
    assert hot.test_client().put(path, data=body, content_type="application/json").status_code == 200
    assert entered == [1]
