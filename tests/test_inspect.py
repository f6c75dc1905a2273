"""`fuserank inspect` over a real Redis filled by the real precompute (two list versions of a tiny model)."""
import json
import re

import pytest
import redis

from fuserank import cli, keys
from fuserank.artifacts import ModelArtifact
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.inspect import (InspectError, diff_user, format_table, inspect_anime, inspect_user, list_versions,
                              sample_keys)
from fuserank.publish import write_meta
from tests.factories import random_artifact

N_USERS, N_ANIME = 37, 25
FIRST = HybridSettings(top_n=10, neighbours=5)
SECOND = FIRST.with_overrides(top_n=5)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def stored(redis_url, tmp_path_factory):
    """Two precomputes (top_n 10, then 5) run once; each test gets a fresh copy via DUMP/RESTORE."""
    model_dir = random_artifact(tmp_path_factory.mktemp("inspect") / "m", n_users=N_USERS, n_anime=N_ANIME)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    first = precompute(model_dir, redis_url, FIRST)["version"]
    second = precompute(model_dir, redis_url, SECOND)["version"]
    snapshot = {k: client.dump(k) for k in client.scan_iter(count=1000)}
    client.flushdb()
    client.close()
    return {"model": model_dir, "first": first, "second": second, "snapshot": snapshot,
            "artifact": ModelArtifact.load(model_dir)}


@pytest.fixture
def r(stored, redis_client):
    for k, v in stored["snapshot"].items():
        redis_client.restore(k, 0, v)
    return redis_client


def cmd_inspect(argv):
    """`fuserank inspect ARGV`, in-process."""
    assert cli.main(["inspect", *argv]) == 0


def run_main(monkeypatch, capsys, *argv):
    code = cli.main(["inspect", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def stored_items(r, key):
    return keys.decode_items(r.get(key))


# -- functions ---------------------------------------------------------------------------------------
def test_parse_key_reads_back_every_kind_of_key():
    assert keys.parse_key(keys.user("abc-123", 42)) == {"version": "abc-123", "kind": "user", "id": 42}
    assert keys.parse_key(keys.anime("abc-123", 7).encode()) == {"version": "abc-123", "kind": "anime", "id": 7}
    assert keys.parse_key(keys.meta("abc-123")) == {"version": "abc-123", "kind": "meta", "id": None}
    for other in (keys.CURRENT, keys.VERSIONS, "unrelated", f"{keys.PREFIX}:v:x:u:notanint", b"\xff"):
        assert keys.parse_key(other) is None


def test_user_is_what_precompute_stored(r, stored):
    d = inspect_user(r, 100)
    assert d["version"] == stored["second"] and d["current"]
    assert d["model_version"] == stored["artifact"].version
    assert [(it["anime_id"], it["score"]) for it in d["items"]] == stored_items(r, keys.user(stored["second"], 100))
    assert [it["rank"] for it in d["items"]] == [1, 2, 3, 4, 5]
    assert all(it["name"] is None for it in d["items"])
    assert ISO.match(d["written_at"])
    old = inspect_user(r, 100, version=stored["first"], names={})
    assert len(old["items"]) == 10 and not old["current"]


def test_user_items_carry_the_stored_reasons(r, stored):
    d = inspect_user(r, 100)
    stored_list = keys.decode_list(r.get(keys.user(stored["second"], 100)))
    assert [it["reasons"] for it in d["items"]] == [it["reasons"] for it in stored_list]
    assert all(set(it["reasons"]) == {"because", "similar_users"} for it in d["items"])
    # names of the liked anime come from the stored value, or from the model when given
    named = inspect_user(r, 100, names={a: f"Model name {a}" for a in range(1000, 1000 + N_ANIME)})
    for it in named["items"]:
        assert all(b["name"] == f"Model name {b['anime_id']}" for b in it["reasons"]["because"])


def test_a_list_stored_without_reasons_shows_none(r):
    write_meta(r, "plain-1", {"model_version": "m", "written_at": 0})
    r.set(keys.user("plain-1", 5), keys.encode_list([10, 20], [0.9, 0.8], ["a", "b"]))
    d = inspect_user(r, 5, version="plain-1")
    assert all("reasons" not in it for it in d["items"])
    from fuserank.inspect import format_user
    assert "because" not in format_user(d, False)


def test_anime_neighbours_are_what_precompute_stored(r, stored):
    names = dict(zip(stored["artifact"].anime["anime_id"], stored["artifact"].anime["name"]))
    d = inspect_anime(r, 1003, names=names)
    assert d["name"] == "Anime 3"
    want = stored_items(r, keys.anime(stored["second"], 1003))
    assert [(it["anime_id"], it["score"]) for it in d["items"]] == want
    assert [it["name"] for it in d["items"]] == [f"Anime {a - 1000}" for a, _ in want]


def test_versions_lists_both_marks_current_and_counts_keys(r, stored):
    r.set(keys.user("orphan-0", 1), keys.encode_list([1000], [0.5], ["x"]))  # a half-written run: no meta
    r.set("someone-else:key", "x")
    vs = {v["version"]: v for v in list_versions(r)}
    assert set(vs) == {stored["first"], stored["second"], "orphan-0"}
    first, second = vs[stored["first"]], vs[stored["second"]]
    assert second["current"] and not second["previous"]
    assert first["previous"] and not first["current"]
    for v in (first, second):
        assert (v["users"], v["anime"], v["keys"]) == (N_USERS, N_ANIME, N_USERS + N_ANIME + 1)
        assert v["state"] == "complete" and v["published"] and ISO.match(v["published_at"])
        assert v["memory_bytes"] > 0
    assert (first["settings"]["top_n"], second["settings"]["top_n"]) == (10, 5)
    orphan = vs["orphan-0"]
    assert (orphan["users"], orphan["anime"], orphan["keys"], orphan["published"]) == (1, 0, 1, False)
    assert "no meta" in orphan["state"]
    assert inspect_user(r, 1, version="orphan-0")["items"][0]["anime_id"] == 1000   # still inspectable
    assert [v["version"] for v in list_versions(r)][:2] == [stored["first"], stored["second"]]  # oldest first


def test_diff_shows_added_removed_and_moved(r):
    for v in ("old-1", "new-1"):
        write_meta(r, v, {"model_version": "m", "written_at": 0})
    r.set(keys.user("old-1", 5), keys.encode_list([10, 20, 30, 40], [0.9, 0.8, 0.7, 0.6], "abcd"))
    r.set(keys.user("new-1", 5), keys.encode_list([20, 10, 30, 50], [0.95, 0.9, 0.7, 0.5], "badf"))
    d = diff_user(r, 5, against="old-1", version="new-1")
    assert (d["added"], d["removed"], d["moved"], d["same"]) == ([50], [40], [20, 10], [30])
    rows = {row["anime_id"]: row for row in d["rows"]}
    assert (rows[20]["old_rank"], rows[20]["new_rank"], rows[20]["delta"]) == (2, 1, 1)
    assert rows[10]["delta"] == -1 and rows[40]["new_rank"] is None and rows[50]["old_rank"] is None
    r.delete(keys.user("old-1", 5))
    assert diff_user(r, 5, against="old-1", version="new-1")["added"] == [20, 10, 30, 50]
    with pytest.raises(InspectError, match="user 6 has no stored list"):
        diff_user(r, 6, against="old-1", version="new-1")


def test_diff_between_the_two_precomputed_versions(r, stored):
    d = diff_user(r, 101, against=stored["first"])
    old = [a for a, _ in stored_items(r, keys.user(stored["first"], 101))]
    new = [a for a, _ in stored_items(r, keys.user(stored["second"], 101))]
    assert set(d["removed"]) == set(old) - set(new) and set(d["added"]) == set(new) - set(old)
    assert len(d["rows"]) == len(set(old) | set(new))


def test_sample_returns_n_existing_keys(r, stored):
    sample = sample_keys(r, 7)
    assert len(sample) == 7 and len({s["key"] for s in sample}) == 7
    for s in sample:
        assert r.exists(s["key"]) and s["version"] == stored["second"]
        assert [(it["anime_id"], it["score"]) for it in s["items"]] == stored_items(r, s["key"])
    everything = sample_keys(r, 1000, version=stored["first"])
    assert len(everything) == N_USERS + N_ANIME
    assert {s["kind"] for s in everything} == {"user", "anime"}


def test_no_published_version_is_a_clear_error(redis_client):
    with pytest.raises(InspectError, match="no published list version"):
        inspect_user(redis_client, 100)
    assert list_versions(redis_client) == []


def test_format_table_aligns_columns():
    text = format_table(["rank", "name"], [[1, "a"], [10, "bbb"]])
    assert text.splitlines() == ["rank  name", "----  ----", "   1  a", "  10  bbb"]


# -- the command ---------------------------------------------------------------------------------------
def test_cli_user_table_without_and_with_model(r, stored, redis_url, capsys):
    cmd_inspect(["user", "100", "--redis-url", redis_url])
    out = capsys.readouterr()
    assert stored["second"] in out.out and "(current)" in out.out
    assert "ids only" in out.err and "--model" in out.err
    first_id, first_score = stored_items(r, keys.user(stored["second"], 100))[0]
    assert re.search(rf"^\s+1\s+{first_id}\s+{first_score:.4f}\s+\d+\s+\S.*$", out.out, re.M)
    assert re.search(r"^rank\s+anime_id\s+score\s+similar_users\s+because$", out.out, re.M)

    cmd_inspect(["user", "100", "--redis-url", redis_url, "--model", stored["model"]])
    out = capsys.readouterr()
    assert re.search(rf"^\s+1\s+{first_id}\s+Anime {first_id - 1000}\s+{first_score:.4f}\s+\d+\s+\S.*$",
                     out.out, re.M)
    assert out.err == ""


def test_cli_user_shows_because_with_names(r, stored, redis_url, capsys):
    stored_list = keys.decode_list(r.get(keys.user(stored["second"], 100)))
    explained = next((i for i, it in enumerate(stored_list) if it["reasons"]["because"]), None)
    assert explained is not None, "the fixture user has an item explained by a liked anime"
    cmd_inspect(["user", "100", "--redis-url", redis_url, "--model", stored["model"]])
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if re.match(rf"^\s+{explained + 1}\s+{stored_list[explained]['anime_id']}\s", line))
    because = stored_list[explained]["reasons"]["because"]
    assert row.endswith(", ".join(f"Anime {b['anime_id'] - 1000}" for b in because))
    cmd_inspect(["user", "100", "--redis-url", redis_url, "--json"])
    d = json.loads(capsys.readouterr().out)
    assert [it["reasons"] for it in d["items"]] == [it["reasons"] for it in stored_list]


def test_cli_json_outputs_parse(r, stored, redis_url, capsys, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)   # --redis-url defaults to $REDIS_URL
    cmd_inspect(["anime", "1002", "--json", "--model", stored["model"]])
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "Anime 2" and len(d["items"]) == len(stored_items(r, keys.anime(stored["second"], 1002)))
    cmd_inspect(["versions", "--json"])
    assert {v["version"] for v in json.loads(capsys.readouterr().out)} == {stored["first"], stored["second"]}
    cmd_inspect(["diff", "100", "--against", stored["first"], "--json"])
    assert json.loads(capsys.readouterr().out)["against"] == stored["first"]
    cmd_inspect(["sample", "3", "--json", "--version", stored["first"]])
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_cli_versions_and_diff_tables(r, stored, redis_url, capsys):
    cmd_inspect(["versions", "--redis-url", redis_url])
    lines = capsys.readouterr().out.splitlines()
    current = next(line for line in lines if stored["second"] in line)
    previous = next(line for line in lines if stored["first"] in line)
    assert current.startswith("current") and previous.startswith("previous")
    assert re.search(rf"\b{N_USERS}\s+{N_ANIME}\s+{N_USERS + N_ANIME + 1}\s+[\d.]+ (B|KiB|MiB)$", current)
    cmd_inspect(["diff", "100", "--against", stored["first"], "--redis-url", redis_url])
    out = capsys.readouterr().out
    assert "removed" in out and f"{stored['first']} -> {stored['second']}" in out


def test_cli_errors_exit_2_with_a_clear_message(r, stored, redis_url, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "user", "99999", "--redis-url", redis_url)
    assert code == 2 and "user 99999 has no stored list" in err and "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "anime", "1002", "--version", "nope", "--redis-url", redis_url)
    assert code == 2 and "'nope' not found" in err and stored["first"] in err
    r.flushdb()
    code, _, err = run_main(monkeypatch, capsys, "user", "100", "--redis-url", redis_url)
    assert code == 2 and "no published list version" in err and "fuserank precompute" in err
    code, out, _ = run_main(monkeypatch, capsys, "versions", "--redis-url", redis_url)
    assert code == 0 and "no list versions in Redis" in out


@pytest.mark.parametrize("argv,needle", [
    (["user", "100", "--jso"], "--jso"),
    (["user", "-1"], "argument USER_ID"),
    (["sample", "0"], "argument N"),
    (["diff", "100"], "--against"),
    (["frobnicate"], "frobnicate"),
])
def test_cli_flags_are_strict(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cmd_inspect([*argv, "--redis-url", "redis://127.0.0.1:1"])
    assert exc.value.code == 2 and needle in capsys.readouterr().err
