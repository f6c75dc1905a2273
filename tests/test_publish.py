"""Publishing and rolling back list versions in a real Redis, through the CLI."""
import json
import subprocess
import sys

import pytest

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.publish import (PublishError, check_memory_policy, cleanup, current_version, publish, publish_version,
                              remove_version, rollback, write_meta)
from tests.factories import random_artifact


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fuserank", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def two_versions(tmp_path, redis_client, redis_url):
    model = random_artifact(tmp_path / "m", n_users=12, n_anime=15)
    first = precompute(model, redis_url, HybridSettings(top_n=5, neighbours=3))["version"]
    second = precompute(model, redis_url, HybridSettings(top_n=4, neighbours=3))["version"]
    return first, second


def test_rollback_swaps_current_and_previous_and_publish_goes_forward(two_versions, redis_client, redis_url):
    first, second = two_versions
    assert current_version(redis_client) == second
    r = cli("rollback", "--redis-url", redis_url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"current": first, "previous": second}
    assert current_version(redis_client) == first
    assert redis_client.get(keys.PREVIOUS).decode() == second
    r = cli("publish", "--redis-url", redis_url, "--version", second)
    assert r.returncode == 0 and current_version(redis_client) == second


def test_a_precompute_overtaken_by_a_later_publish_succeeds_but_one_never_published_fails(two_versions,
                                                                                          redis_client):
    """Two precomputes racing: the one that published first finds the other's version current afterwards."""
    from fuserank.batch.pipeline import check_published
    first, second = two_versions
    assert check_published(redis_client, second) is None
    assert check_published(redis_client, first) == second          # published, then replaced
    write_meta(redis_client, "never-flipped", {"state": "complete"})
    with pytest.raises(PublishError, match="never-flipped"):
        check_published(redis_client, "never-flipped")


def test_only_complete_versions_can_be_published(two_versions, redis_client, redis_url):
    _, second = two_versions
    write_meta(redis_client, "half-written", {"state": "writing"})
    for version in ("half-written", "never-written"):
        r = cli("publish", "--redis-url", redis_url, "--version", version)
        assert r.returncode == 2 and version in r.stderr and "Traceback" not in r.stderr
        assert current_version(redis_client) == second


def test_counts_that_do_not_match_the_model_never_publish(redis_client):
    with pytest.raises(PublishError, match="wrote 9 users"):
        publish(redis_client, "v-short", {"users": 9, "anime": 4}, {"users": 10, "anime": 4})
    assert current_version(redis_client) is None


def test_rollback_without_history_is_a_clear_error(redis_client, redis_url):
    r = cli("rollback", "--redis-url", redis_url)
    assert r.returncode == 2 and "nothing to roll back" in r.stderr
    with pytest.raises(PublishError):
        publish_version(redis_client, "anything")


# ------------------------------------------------------------------------------------------------
# Publish verification, clean-up of old versions, the memory policy
# ------------------------------------------------------------------------------------------------
N_USERS, N_ANIME = 30, 12


def fake_version(r, version, n_users=N_USERS, n_anime=N_ANIME, skip=()):
    """A version written and published through the real publish(): lists, counts, verification, flip."""
    with r.pipeline(transaction=False) as pipe:
        for u in range(n_users):
            if 100 + u not in skip:
                pipe.set(keys.user(version, 100 + u), b"[[1,0.5]]")
        for a in range(n_anime):
            pipe.set(keys.anime(version, 1000 + a), b"[[2,0.5]]")
        pipe.execute()
    expected = {"users": n_users - len(skip), "anime": n_anime}
    return publish(r, version, dict(expected), expected)


def version_keys(r, version):
    return sorted(r.scan_iter(match=keys.version_pattern(version)))


def test_publish_counts_the_keys_really_in_redis(redis_client):
    fake_version(redis_client, "v1")
    with redis_client.pipeline(transaction=False) as pipe:
        for u in range(N_USERS):
            pipe.set(keys.user("v2", 100 + u), b"[]")
        pipe.execute()
    redis_client.delete(keys.user("v2", 105))                  # evicted / deleted after Beam counted it
    with pytest.raises(PublishError, match="Redis holds 29 users lists"):
        publish(redis_client, "v2", {"users": N_USERS, "anime": 0}, {"users": N_USERS, "anime": 0})
    assert current_version(redis_client) == "v1"


def test_publish_drops_lists_of_forgotten_users_left_by_a_killed_run(redis_client):
    redis_client.sadd(keys.SUPPRESSED, 107)
    redis_client.set(keys.user("v1", 107), b"[[1,0.5]]")       # written before the user was forgotten
    fake_version(redis_client, "v1", skip={107})               # the rerun skips 107: 29 others + the stale one
    assert redis_client.get(keys.user("v1", 107)) is None
    assert current_version(redis_client) == "v1"


def test_cleanup_removes_versions_older_than_current_and_previous(redis_client, monkeypatch):
    import redis as redis_lib
    for v in ("v1", "v2", "v3", "v4"):
        fake_version(redis_client, v)
    write_meta(redis_client, "unpublished", {"state": "writing"})       # a precompute still running
    redis_client.set(keys.user("unpublished", 1), b"[]")
    redis_client.set("other:app:key", b"x")
    unlinked = []
    original = redis_lib.client.Pipeline.unlink

    def spy(self, *names):
        unlinked.append(len(names))
        return original(self, *names)
    monkeypatch.setattr(redis_lib.client.Pipeline, "unlink", spy)

    done = cleanup(redis_client, keep=2, batch_size=7, scan_count=5)
    assert [r["version"] for r in done["removed"]] == ["v2", "v1"]
    assert all(r["keys"] == N_USERS + N_ANIME + 1 for r in done["removed"])
    assert max(unlinked) <= 7 and len(unlinked) >= 2 * (N_USERS + N_ANIME) // 7   # bounded batches
    for v in ("v1", "v2"):
        assert version_keys(redis_client, v) == [] and redis_client.zscore(keys.VERSIONS, v) is None
    for v in ("v3", "v4"):
        assert len(version_keys(redis_client, v)) == N_USERS + N_ANIME + 1
    assert (current_version(redis_client), redis_client.get(keys.PREVIOUS)) == ("v4", b"v3")
    assert redis_client.get(keys.user("unpublished", 1)) == b"[]" and redis_client.get("other:app:key") == b"x"
    assert cleanup(redis_client)["removed"] == []                          # idempotent
    assert rollback(redis_client) == ("v4", "v3")                          # rollback still has its target


def test_cleanup_keep_dry_run_and_never_current_or_previous(redis_client):
    for v in ("v1", "v2", "v3", "v4"):
        fake_version(redis_client, v)
    publish_version(redis_client, "v1")                  # an old version made current again: v1 current, v4 previous
    plan = cleanup(redis_client, keep=3, dry_run=True)
    assert plan["kept"] == ["v1", "v4", "v3"] and [r["version"] for r in plan["removed"]] == ["v2"]
    assert len(version_keys(redis_client, "v2")) == N_USERS + N_ANIME + 1   # dry run touched nothing
    with pytest.raises(PublishError, match="keep must be >= 2"):
        cleanup(redis_client, keep=1)
    assert remove_version(redis_client, "v1") is None and remove_version(redis_client, "v4") is None
    assert len(version_keys(redis_client, "v1")) == N_USERS + N_ANIME + 1
    assert [r["version"] for r in cleanup(redis_client)["removed"]] == ["v3", "v2"]
    assert {m.decode() for m in redis_client.zrange(keys.VERSIONS, 0, -1)} == {"v1", "v4"}


def test_an_interrupted_cleanup_resumes_and_its_version_cannot_be_published(redis_client):
    for v in ("v1", "v2", "v3"):
        fake_version(redis_client, v)
    redis_client.hset(keys.meta("v1"), "state", "deleting")             # a clean-up died after marking v1 ...
    redis_client.delete(*[keys.user("v1", 100 + u) for u in range(10)])  # ... and unlinking some of its keys
    with pytest.raises(PublishError, match="'deleting'"):
        publish_version(redis_client, "v1")
    done = cleanup(redis_client, keep=3)                  # keep=3 would keep v1, but it is half deleted
    assert [r["version"] for r in done["removed"]] == ["v1"] and version_keys(redis_client, "v1") == []


def test_cli_cleanup_and_precompute_cleans_after_publishing(tmp_path, redis_client, redis_url):
    from fuserank.cli import main
    model = random_artifact(tmp_path / "m", n_users=12, n_anime=15)
    versions = []
    for top_n in ("5", "4", "3"):
        assert main(["precompute", "--model", model, "--redis-url", redis_url, "--top-n", top_n,
                     "--neighbours", "3"]) == 0
        versions.append(current_version(redis_client))
    assert version_keys(redis_client, versions[0]) == []            # removed after the third publish
    assert len(version_keys(redis_client, versions[1])) == 12 + 15 + 1
    fake_version(redis_client, "v-extra")
    r = cli("cleanup", "--redis-url", redis_url, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert [x["version"] for x in json.loads(r.stdout)["removed"]] == [versions[1]]
    r = cli("cleanup", "--redis-url", redis_url)
    assert r.returncode == 0 and [x["version"] for x in json.loads(r.stdout)["removed"]] == [versions[1]]
    assert version_keys(redis_client, versions[1]) == [] and current_version(redis_client) == "v-extra"


@pytest.fixture
def evicting_redis():
    """A redis-server that may evict: maxmemory set, policy allkeys-lru."""
    import redis as redis_lib
    from fuserank.redis_server import LocalRedis
    with LocalRedis(maxmemory_policy="allkeys-lru") as server:
        client = redis_lib.Redis.from_url(server.url)
        client.config_set("maxmemory", str(256 * 1024 * 1024))
        yield server.url, client
        client.close()


def test_memory_policy_check(evicting_redis, redis_client, caplog):
    url, client = evicting_redis
    assert check_memory_policy(redis_client) == {"checked": True, "policy": "noeviction", "maxmemory": 0,
                                                 "evicts": False}
    with pytest.raises(PublishError, match="'allkeys-lru'.*--allow-eviction"):
        check_memory_policy(client)
    assert check_memory_policy(client, allow_eviction=True)["evicts"] is True
    assert "can evict list keys" in caplog.text
    client.config_set("maxmemory", "0")                  # no limit: nothing is ever evicted
    assert check_memory_policy(client)["evicts"] is False

    class NoConfig:                                      # managed Redis: CONFIG renamed away
        def config_get(self, name):
            import redis as redis_lib
            raise redis_lib.ResponseError("unknown command 'CONFIG'")
    assert check_memory_policy(NoConfig())["checked"] is False


def test_precompute_and_publish_refuse_an_evicting_redis(tmp_path, evicting_redis, capsys):
    from fuserank.cli import main
    url, client = evicting_redis
    model = random_artifact(tmp_path / "m", n_users=12, n_anime=15)
    assert main(["precompute", "--model", model, "--redis-url", url, "--top-n", "5"]) == 2
    err = capsys.readouterr().err
    assert "maxmemory-policy is 'allkeys-lru'" in err and "--allow-eviction" in err
    assert client.dbsize() == 0                          # refused before writing anything
    assert main(["precompute", "--model", model, "--redis-url", url, "--top-n", "5", "--allow-eviction"]) == 0
    version = current_version(client)
    assert main(["publish", "--redis-url", url, "--version", version]) == 2
    assert "allkeys-lru" in capsys.readouterr().err
    assert main(["publish", "--redis-url", url, "--version", version, "--allow-eviction"]) == 0


def test_cli_cleanup_of_one_named_version_such_as_a_killed_run(redis_client, redis_url):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    with redis_client.pipeline(transaction=False) as pipe:      # a killed precompute: lists, no meta, unpublished
        for u in range(7):
            pipe.set(keys.user("killed", 100 + u), b"[]")
        pipe.execute()
    r = cli("cleanup", "--redis-url", redis_url, "--version", "killed")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] == [{"version": "killed", "keys": 7}]   # its 7 lists (it had no meta)
    assert version_keys(redis_client, "killed") == []
    for served in ("v1", "v2"):
        r = cli("cleanup", "--redis-url", redis_url, "--version", served)
        assert r.returncode == 2 and "never removed" in r.stderr
        assert len(version_keys(redis_client, served)) == N_USERS + N_ANIME + 1
