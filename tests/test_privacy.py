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


def test_forget_removes_the_user_s_feedback_and_no_export_holds_them(tmp_path, redis_client, redis_url, capsys):
    """Their events leave the stream and their index, so the next ingest never drains them; the data directory
    it writes (splits, low-activity rows, the drained feedback.parquet) and `inspect online --json` hold no trace."""
    import pyarrow.parquet as pq

    from fuserank import feedback
    from fuserank.cli import main
    from fuserank.evaluation import online
    from fuserank.feedback import Event
    from fuserank.schemas import ingest as S
    ratings = tmp_path / "r.csv"
    ratings.write_text("user_id,anime_id,rating\n" + "".join(f"{u},{a},7\n" for u in (1, 2) for a in range(10, 14)))
    feedback.append(redis_client, [Event("rating", 2, 10, rating=9), Event("impression", 2, 11, list_version="v"),
                                   Event("rating", 77, 10, rating=8), Event("rating", 77, 11, rating=8),
                                   Event("rating", 1, 12, rating=3)])
    out = tmp_path / "data"
    assert main(["ingest", "--ratings", str(ratings), "--out", str(out), "--min-user-ratings", "3",
                 "--feedback", redis_url]) in (0, None)
    assert 77 in pq.read_table(out / "low_activity.parquet").column("user_id").to_pylist()
    online.refresh(redis_client)                                     # their impression counted, not final
    assert online.by_version(online.stored(redis_client))["v"]["total"]["lists"] == 1
    capsys.readouterr()
    assert main(["forget", "--redis-url", redis_url, "--user", "2"]) in (0, None)
    assert main(["forget", "--redis-url", redis_url, "--user", "77"]) in (0, None)
    forgotten = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["events_deleted"] for f in forgotten] == [2, 2] and all(f["index_deleted"] for f in forgotten)
    assert {e.user_id for e in feedback.read(redis_client)} == {1}
    assert not redis_client.exists(keys.feedback_user(2)) and not redis_client.exists(keys.feedback_user(77))

    assert main(["ingest", "--ratings", str(ratings), "--out", str(out), "--min-user-ratings", "3",
                 "--feedback", redis_url]) in (0, None)
    users = pq.read_table(out / "users.parquet").column("user_id").to_pylist()
    assert users == [1]
    assert not {2, 77} & set(pq.read_table(out / "low_activity.parquet").column("user_id").to_pylist())
    assert pq.read_table(out / S.FEEDBACK_FILE).column("user_id").to_pylist() == [1]   # carried over, minus them
    capsys.readouterr()
    assert main(["inspect", "online", "--redis-url", redis_url, "--json"]) in (0, None)
    assert json.loads(capsys.readouterr().out)["versions"] == {}     # their impression went with them
    online.refresh(redis_client)
    assert online.stored(redis_client) == {}
