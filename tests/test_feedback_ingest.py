"""Feedback into the next training, on a real Redis: `fuserank ingest --feedback` merges the stream with the
files (the feedback wins, a deletion removes the pair, impressions and clicks are no ratings), carries what it
drained over to the next ingest, and a publish trims only what every servable version holds."""
import json

import pyarrow.parquet as pq
import pytest

from fuserank import feedback, keys, publish
from fuserank.cli import main
from fuserank.errors import FuseRankError
from fuserank.feedback import Event
from fuserank.schemas import ingest as S
from fuserank.training.feedback_source import drain
from fuserank.training.ingest import ingest

# users 1-3 rate anime 10-15 in the file; user 9 is forgotten
ROWS = [(u, a, 5 + (u + a) % 5) for u in (1, 2, 3, 9) for a in range(10, 16)]


def _csv(path, rows=ROWS):
    path.write_text("user_id,anime_id,rating\n" + "".join(f"{u},{a},{r}\n" for u, a, r in rows))
    return str(path)


def _pairs(out) -> dict:
    """(user_id, anime_id) -> raw rating over the three splits, and the unrated pairs (-1); a pair twice fails."""
    users = pq.read_table(f"{out}/users.parquet").to_pydict()
    anime = pq.read_table(f"{out}/anime.parquet").to_pydict()
    uid, aid = dict(zip(users["user"], users["user_id"])), dict(zip(anime["anime"], anime["anime_id"]))
    seen = {}
    for name in (*S.SPLITS, "unrated"):
        t = pq.read_table(f"{out}/{S.parquet_file(name)}").to_pydict()
        for i, (u, a) in enumerate(zip(t["user"], t["anime"])):
            pair = (uid[u], aid[a])
            assert pair not in seen, f"{pair} twice in the training data"
            seen[pair] = t["raw_rating"][i] if "raw_rating" in t else -1
    return seen


def _ingest(ratings, out, url, *more):
    assert main(["ingest", "--ratings", ratings, "--out", str(out), "--min-user-ratings", "3",
                 "--feedback", url, *more]) in (0, None)
    return json.loads((out / S.MANIFEST).read_text())


def test_feedback_is_merged_once_and_wins(redis_client, redis_url, tmp_path):
    ratings = _csv(tmp_path / "r.csv")
    redis_client.sadd(keys.SUPPRESSED, 9)
    ids = feedback.append(redis_client, [
        Event("rating", 1, 10, rating=2), Event("rating", 1, 10, rating=3),      # a later rating wins
        Event("delete", 1, 11),                                                  # removes a file pair
        Event("status", 2, 12, status="plan_to_watch"),                          # listed, unrated
        Event("rating", 2, 99, rating=10), Event("delete", 2, 99),               # rated, then deleted
        Event("rating", 4, 10, rating=8), Event("rating", 4, 11, rating=9), Event("rating", 4, 12, rating=7),
        Event("impression", 3, 13, list_version="v"), Event("click", 3, 13, list_version="v"),
        Event("rating", 9, 10, rating=10)])                                      # forgotten: never drained
    manifest = _ingest(ratings, tmp_path / "data", redis_url)
    pairs = _pairs(tmp_path / "data")
    assert pairs[(1, 10)] == 3 and (1, 11) not in pairs
    assert pairs[(2, 12)] == -1 and (2, 99) not in pairs
    assert {a: pairs[(4, a)] for a in (10, 11, 12)} == {10: 8, 11: 9, 12: 7}    # a new user from feedback alone
    assert pairs[(3, 13)] == dict(((u, a), r) for u, a, r in ROWS)[(3, 13)]    # a click is no rating
    assert not any(u == 9 for u, _ in pairs)
    assert manifest["feedback_until"] == ids[-1] and manifest["feedback_added"] == len(ids)
    counts = manifest["feedback"]
    assert (counts["ratings"], counts["statuses"], counts["deletes"], counts["signals"],
            counts["suppressed_events"]) == (6, 1, 2, 2, 1)
    drained = pq.read_table(tmp_path / "data" / S.FEEDBACK_FILE).to_pydict()
    assert len(drained["id"]) == 9 and 9 not in drained["user_id"]


def test_the_next_ingest_carries_drained_feedback_over_the_trim(redis_client, redis_url, tmp_path):
    ratings = _csv(tmp_path / "r.csv")
    first = feedback.append(redis_client, [Event("rating", 1, 10, rating=1)])
    out = tmp_path / "data"
    _ingest(ratings, out, redis_url)
    # a version built from it is published: its events leave the stream (the time floor set aside here)
    publish.write_meta(redis_client, "v1", {"state": "complete", "feedback_until": first[0]})
    redis_client.set(keys.CURRENT, "v1")
    assert feedback.trim_published(redis_client, now=lambda: 4e9)["stream_entries"] == 1
    second = feedback.append(redis_client, [Event("rating", 2, 10, rating=2)])
    manifest = _ingest(ratings, out, redis_url)
    pairs = _pairs(out)
    assert (pairs[(1, 10)], pairs[(2, 10)]) == (1, 2)
    assert manifest["feedback"]["carried_events"] == 1 and manifest["feedback"]["drained_events"] == 1
    assert manifest["feedback_until"] == second[0]
    with pytest.raises(FuseRankError, match="trimmed"):         # the previous output lost: refused, not lossy
        drain(redis_client, str(tmp_path / "elsewhere"))


def test_feedback_until_pins_what_is_drained(redis_client, redis_url, tmp_path):
    ids = feedback.append(redis_client, [Event("rating", 1, 10, rating=1), Event("rating", 1, 11, rating=1)])
    manifest = _ingest(_csv(tmp_path / "r.csv"), tmp_path / "data", redis_url, "--feedback-until", ids[0])
    pairs = _pairs(tmp_path / "data")
    assert pairs[(1, 10)] == 1 and pairs[(1, 11)] != 1
    assert (manifest["feedback_until"], manifest["feedback_added"]) == (ids[0], 1)


def test_without_feedback_the_ingest_is_unchanged(tmp_path):
    manifest = ingest(_csv(tmp_path / "r.csv"), str(tmp_path / "data"), min_user_ratings=3)
    assert "feedback_until" not in manifest and not (tmp_path / "data" / S.FEEDBACK_FILE).exists()


def test_a_publish_trims_only_what_current_and_previous_hold(redis_client):
    ids = feedback.append(redis_client, [Event("rating", 1, 10, rating=5), Event("rating", 1, 11, rating=6),
                                         Event("rating", 2, 10, rating=7)])
    for version, until in (("v1", ids[0]), ("v2", ids[2]), ("v3", ids[2])):
        publish.write_meta(redis_client, version, {"state": "complete", "feedback_until": until,
                                                   "written": {"users": 0, "anime": 0}})
    assert set(feedback.user_entries(redis_client, 1)) == {10, 11}        # nothing trimmed before a publish
    publish.publish_version(redis_client, "v1")
    assert set(feedback.user_entries(redis_client, 1)) == {11}
    publish.publish_version(redis_client, "v2")                # previous (v1) still holds only ids[0]
    assert set(feedback.user_entries(redis_client, 1)) == {11} and feedback.user_entries(redis_client, 2)
    feedback.append(redis_client, [Event("rating", 1, 11, rating=9)])       # a newer write to a trimmed anime
    publish.publish_version(redis_client, "v3")                # v3 and v2 both hold up to ids[2]
    assert feedback.user_entries(redis_client, 1)[11]["rating"] == 9 and not feedback.user_entries(redis_client, 2)
    assert redis_client.xlen(keys.FEEDBACK_EVENTS) == 4        # the stream keeps the evaluation window


def test_the_nightly_job_points_the_ingest_at_the_feedback_store(redis_client, redis_url, tmp_path, monkeypatch):
    """run_nightly pins ingest.feedback-until in the workspace's params.yaml (DVC reruns the ingest on new
    feedback) and hands the URL to `dvc repro` through the environment only; the ingest reads it from there."""
    from subprocess import CompletedProcess

    from fuserank.batch.nightly import NightlySettings, run_nightly
    from fuserank.config import environ, load_params
    from tests.conftest import ROOT
    ids = feedback.append(redis_client, [Event("rating", 1, 10, rating=1)])
    seen = {}

    class Stop(Exception):
        pass

    def run(cmd, **kw):
        if "repro" in cmd:
            seen.update(env=environ().get("FUSERANK_FEEDBACK_URL"), params=load_params(str(kw["cwd"] + "/params.yaml")))
            raise Stop
        return CompletedProcess(cmd, 0)
    monkeypatch.delenv("FUSERANK_FEEDBACK_URL", raising=False)
    with pytest.raises(Stop):
        run_nightly(NightlySettings(redis_url, project=str(ROOT), workdir=str(tmp_path / "ws"), pull=False,
                                    push=False), run=run)
    assert seen["env"] == redis_url and seen["params"]["ingest"]["feedback-until"] == ids[0]
    assert "FUSERANK_FEEDBACK_URL" not in environ() and redis_url not in (tmp_path / "ws" / "params.yaml").read_text()
    monkeypatch.setenv("FUSERANK_FEEDBACK_URL", redis_url)
    assert main(["ingest", "--ratings", _csv(tmp_path / "r.csv"), "--out", str(tmp_path / "data"),
                 "--min-user-ratings", "3"]) in (0, None)
    assert json.loads((tmp_path / "data" / S.MANIFEST).read_text())["feedback_until"] == ids[0]


def test_bad_feedback_flags_are_named(redis_client, redis_url, tmp_path, capsys):
    ratings = _csv(tmp_path / "r.csv")
    with pytest.raises(SystemExit):
        main(["ingest", "--ratings", ratings, "--out", str(tmp_path / "d"), "--feedback", redis_url,
              "--feedback-until", "yesterday"])
    assert "--feedback-until: expected a stream id" in capsys.readouterr().err
    assert main(["ingest", "--ratings", ratings, "--out", str(tmp_path / "d"), "--feedback-until", "1-0"]) == 2
    assert "--feedback-until needs --feedback" in capsys.readouterr().err
    feedback.append(redis_client, [Event("rating", 1, 10, rating=1)])
    assert main(["ingest", "--ratings", ratings, "--out", str(tmp_path / "d"), "--feedback", redis_url,
                 "--feedback-until", "99999999999999-0"]) == 2
    assert "the feedback stream's last id is" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_publish_drops_the_marks_and_fresh_lists_it_covers(redis_client):
    ids = feedback.append(redis_client, [Event("rating", 1, 10, rating=5), Event("rating", 2, 10, rating=7)])
    late = feedback.append(redis_client, [Event("rating", 2, 11, rating=8)])
    for user_id, built in ((1, ids[0]), (2, late[0])):
        redis_client.hset(keys.feedback_fresh(user_id), mapping={"built": built, "list": b"x"})
    assert redis_client.get(keys.feedback_mark(1)).decode() == ids[0]
    publish.write_meta(redis_client, "v1", {"state": "complete", "feedback_until": ids[1],
                                            "written": {"users": 0, "anime": 0}})
    publish.publish_version(redis_client, "v1")
    assert not redis_client.exists(keys.feedback_mark(1), keys.feedback_fresh(1))   # all user 1 wrote is published
    assert redis_client.get(keys.feedback_mark(2)).decode() == late[0]            # user 2's newest is not
    assert redis_client.hget(keys.feedback_fresh(2), "built").decode() == late[0]
    assert set(feedback.user_entries(redis_client, 2)) == {11}
