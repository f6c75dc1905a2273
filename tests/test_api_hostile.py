"""A hostile client: repeated parameters, long exclusion lists, guessing API keys."""
import pytest

from fuserank.config import HybridSettings
from tests.factories import FakeClock, api_app, precomputed_random

SETTINGS = HybridSettings(top_n=10, neighbours=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    return precomputed_random(tmp_path_factory.mktemp("hostile") / "m", redis_url, 5, SETTINGS)


@pytest.fixture
def client(served):
    return api_app(*served, SETTINGS).test_client()


@pytest.mark.parametrize("path,query,name", [
    ("/v1/users/100/recommendations", "n=5&n=abc", "n"),
    ("/v1/users/100/recommendations", "n=abc&n=5", "n"),
    ("/v1/users/100/recommendations", "n=5&n=5", "n"),
    ("/v1/users/100/recommendations", "source=live&source=auto", "source"),
    ("/v1/users/100/recommendations", "exclude=1001&exclude=1002", "exclude"),
    ("/v1/anime/1003/similar", "include_adult=false&include_adult=true", "include_adult"),
    ("/v1/anime/1003/similar", "n=3&genre=Comedy&genre=Drama", "genre"),
])
def test_a_repeated_parameter_is_a_400_naming_it(client, path, query, name):
    resp = client.get(f"{path}?{query}")
    assert resp.status_code == 400 and resp.is_json, resp.data[:200]
    error = resp.get_json()["error"]
    assert error["parameter"] == name and "given 2 times" in error["message"]


def test_a_repeated_parameter_on_the_post_is_a_400(client):
    resp = client.post("/v1/recommendations?explain=true&explain=false",
                       json={"ratings": [{"anime_id": 1001, "rating": 9}]})
    assert resp.status_code == 400 and resp.get_json()["error"]["parameter"] == "explain"


BODY = {"ratings": [{"anime_id": 1001, "rating": 9}], "n": 5}


def _keyed_client(served):
    import redis
    redis.Redis.from_url(served[1]).flushdb()
    # a clock at the start of a window, so the counting below never straddles two windows
    clock = FakeClock(now=3_000_000.0)
    return api_app(*served, SETTINGS, api_key=("s3cret",), clock=clock).test_client()


def test_wrong_api_keys_are_throttled_per_address(served):
    from fuserank.api.routes import KEY_FAILURES
    client = _keyed_client(served)
    statuses = [client.post("/v1/recommendations", json=BODY, headers={"X-API-Key": f"guess-{i}"},
                            environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code for i in range(KEY_FAILURES + 2)]
    assert statuses == [401] * KEY_FAILURES + [429, 429]
    right = client.post("/v1/recommendations", json=BODY, headers={"X-API-Key": "s3cret"},
                        environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert right.status_code == 429 and int(right.headers["Retry-After"]) >= 1 and right.is_json
    other = client.post("/v1/recommendations", json=BODY, headers={"X-API-Key": "s3cret"},
                        environ_base={"REMOTE_ADDR": "10.9.9.10"})
    assert other.status_code == 200
    missing = [client.post("/v1/recommendations", json=BODY, environ_base={"REMOTE_ADDR": "10.9.9.11"}).status_code
               for _ in range(KEY_FAILURES + 2)]
    assert missing == [401] * (KEY_FAILURES + 2)        # no key at all is not a guess


def test_the_api_key_covers_the_web_pages_post(served):
    client = _keyed_client(served)
    form = {"rate_1001": "9"}
    assert client.post("/new-user", data=form).status_code == 401
    assert client.post("/new-user", data=form, headers={"X-API-Key": "s3cret"}).status_code == 200
