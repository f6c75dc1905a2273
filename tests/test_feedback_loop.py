"""The feedback loop end to end on a real Redis: ratings written through the API appear in the next model's
training data exactly once (a later rating wins, a deletion removes, a status is a listed-unrated row, clicks
are no ratings), the model and its list version record the feedback they hold, and the feedback store is
trimmed only once every servable version (current and previous) holds it."""
import json

import pyarrow.parquet as pq
import pytest

from fuserank import feedback, keys
from fuserank.artifacts import read_manifest
from fuserank.batch.pipeline import precompute
from fuserank.cli import main
from fuserank.config import HybridSettings
from fuserank.publish import current_version, read_meta
from fuserank.schemas import ingest as S
from fuserank.training.train import train
from tests.factories import api_app, random_artifact

USERS, ANIME = range(100, 140), range(1000, 1030)     # random_artifact's ids


def _csv(path):
    rows = [(u, a, 1 + (u * 7 + a * 3) % 10) for u in USERS for a in ANIME if (u + a) % 3]
    path.write_text("user_id,anime_id,rating\n" + "".join(f"{u},{a},{r}\n" for u, a, r in rows))
    return str(path), {(u, a): r for u, a, r in rows}


def _training_pairs(out) -> list[tuple[int, int, int]]:
    users = dict(zip(*pq.read_table(f"{out}/users.parquet", columns=["user", "user_id"]).to_pydict().values()))
    anime = dict(zip(*pq.read_table(f"{out}/anime.parquet", columns=["anime", "anime_id"]).to_pydict().values()))
    rows = []
    for name in (*S.SPLITS, "unrated"):
        t = pq.read_table(f"{out}/{S.parquet_file(name)}").to_pydict()
        rows += [(users[u], anime[a], r) for u, a, r in zip(t["user"], t["anime"], t.get("raw_rating", [-1] * len(t["user"])))]
    return rows


@pytest.mark.slow      # trains a (tiny) model and runs three precomputes
def test_ratings_written_through_the_api_reach_the_next_model_once(tmp_path, redis_client, redis_url):
    served = random_artifact(tmp_path / "served", n_users=len(USERS), n_anime=len(ANIME))
    precompute(served, redis_url, HybridSettings(top_n=5))
    api = api_app(served, redis_url, rate_limit=0).test_client()
    ratings, in_file = _csv(tmp_path / "ratings.csv")
    assert (105, 1004) in in_file and (105, 1005) not in in_file and (106, 1011) in in_file

    def put(user, anime, body):
        r = api.put(f"/v1/users/{user}/ratings/{anime}", json=body)
        assert r.status_code == 200, r.get_json()

    put(105, 1005, {"rating": 2})
    put(105, 1005, {"rating": 9})                     # later wins
    put(105, 1005, {"rating": 9})                     # the same rating twice is one rating
    put(105, 1004, {"rating": 10})
    assert api.delete("/v1/users/105/ratings/1004").status_code == 200      # removes the file's pair too
    put(106, 1011, {"status": "plan_to_watch"})      # listed, unrated: replaces the file's rating
    put(107, 1000, {"rating": 1})
    signals = [{"user_id": 107, "anime_id": a, "type": t, "list_version": current_version(redis_client)}
               for a in (1001, 1002) for t in ("impression", "click")]
    assert api.post("/v1/feedback", json={"events": signals}).status_code == 200
    written = redis_client.xlen(keys.FEEDBACK_EVENTS)

    data = tmp_path / "data"
    assert main(["ingest", "--ratings", ratings, "--out", str(data), "--min-user-ratings", "3",
                 "--feedback", redis_url]) in (0, None)
    rows = _training_pairs(data)
    pairs = [(u, a) for u, a, _ in rows]
    assert len(pairs) == len(set(pairs))                                  # every pair exactly once
    got = {(u, a): r for u, a, r in rows}
    assert got[(105, 1005)] == 9 and (105, 1004) not in got and got[(106, 1011)] == -1
    assert got[(107, 1000)] == 1
    assert {p: r for p, r in got.items() if p not in {(105, 1005), (106, 1011), (107, 1000)}} == \
        {p: r for p, r in in_file.items() if p not in {(105, 1004), (106, 1011), (107, 1000)}}
    manifest = json.loads((data / S.MANIFEST).read_text())
    until = manifest["feedback_until"]
    assert manifest["feedback"]["signals"] == 4 and manifest["feedback_added"] == written

    put(105, 1008, {"rating": 8})                     # after the ingest: the next version will not hold it
    assert set(feedback.user_entries(redis_client, 105)) == {1005, 1004, 1008}  # nothing trimmed by an ingest

    model = tmp_path / "model"
    train(str(data), str(model), seed=0, search=False, embedding_dim=8, epochs=2)
    assert read_manifest(str(model))["feedback_until"] == until
    first = precompute(str(model), redis_url, HybridSettings(top_n=5))["version"]
    assert read_meta(redis_client, first)["feedback_until"] == until
    # current holds the feedback, previous (the served model's version) does not: a rollback needs it kept
    assert set(feedback.user_entries(redis_client, 105)) == {1005, 1004, 1008}
    second = precompute(str(model), redis_url, HybridSettings(top_n=4))["version"]
    assert current_version(redis_client) == second and redis_client.get(keys.PREVIOUS).decode() == first
    assert set(feedback.user_entries(redis_client, 105)) == {1008}       # held by both: trimmed, the newer stays
    assert not feedback.user_entries(redis_client, 106) and not feedback.user_entries(redis_client, 107)
    assert feedback.backlog(redis_client)["events"] == 1
