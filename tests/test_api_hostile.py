"""A hostile client: repeated parameters, long exclusion lists, guessing API keys."""
import pytest

from fuserank.api.app import create_app
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from tests.factories import empty_db, random_artifact

SETTINGS = HybridSettings(top_n=10, neighbours=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    url = empty_db(redis_url, 5)
    model = random_artifact(tmp_path_factory.mktemp("hostile") / "m", n_users=30, n_anime=40, seed=1)
    precompute(model, url, SETTINGS)
    return model, url


@pytest.fixture
def client(served):
    return create_app(*served, SETTINGS).test_client()


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
