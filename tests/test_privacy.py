"""`fuserank forget`: the user's lists disappear from every version and nothing personalises them again."""
import json
import subprocess
import sys

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.publish import current_version
from tests.factories import api_app, random_artifact


def test_forget_removes_lists_and_suppresses_the_user(tmp_path, redis_client, redis_url):
    model = random_artifact(tmp_path / "m", n_users=12, n_anime=15)
    first = precompute(model, redis_url, HybridSettings(top_n=5, neighbours=3))["version"]
    second = precompute(model, redis_url, HybridSettings(top_n=4, neighbours=3))["version"]
    app = api_app(model, redis_url, HybridSettings(top_n=4, neighbours=3))
    client = app.test_client()
    assert client.get("/v1/users/105/recommendations?n=3").get_json()["source"] == "precomputed"

    r = subprocess.run([sys.executable, "-m", "fuserank", "forget", "--redis-url", redis_url, "--user", "105"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lists_deleted"] == 2
    assert not redis_client.exists(keys.user(first, 105)) and not redis_client.exists(keys.user(second, 105))
    assert redis_client.exists(keys.user(second, 104))

    app.extensions["fuserank"].refresh()  # skip the 1 s cache
    for query in ("n=3", "n=3&source=live", "n=50"):
        assert client.get(f"/v1/users/105/recommendations?{query}").get_json()["source"] == "popular"
    assert client.get("/v1/users/104/recommendations?n=3").get_json()["source"] == "precomputed"

    third = precompute(model, redis_url, HybridSettings(top_n=3, neighbours=3))["version"]
    assert current_version(redis_client) == third  # published with one user fewer, counts still checked
    assert not redis_client.exists(keys.user(third, 105)) and redis_client.exists(keys.user(third, 104))
