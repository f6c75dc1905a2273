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
