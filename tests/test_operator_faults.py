"""A clumsy operator: publishing damaged or fake versions, publishing over a garbage pointer, cleaning up
a version that does not exist. Through the real CLI against a real Redis."""
import json

import pytest

from fuserank import keys
from fuserank.cli import main
from fuserank.publish import current_version, previous_version, read_meta, write_meta
from tests.test_publish import N_ANIME, N_USERS, fake_version


def run(capsys, *args) -> tuple[int, dict | None, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def copy_meta(r, source: str, target: str) -> None:
    write_meta(r, target, read_meta(r, source))


def test_publish_refuses_a_meta_copied_to_a_version_without_lists(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    copy_meta(redis_client, "v1", "fake")
    rc, _, err = run(capsys, "publish", "--redis-url", redis_url, "--version", "fake")
    assert rc == 2 and "fake is damaged" in err and f"0 of {N_USERS} users" in err and "not published" in err
    assert current_version(redis_client) == "v2" and previous_version(redis_client) == "v1"


def test_publish_and_rollback_refuse_a_version_with_deleted_lists(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    redis_client.delete(*[keys.user("v1", 100 + u) for u in range(0, N_USERS, 2)])
    rc, _, err = run(capsys, "rollback", "--redis-url", redis_url)
    assert rc == 2 and f"{N_USERS // 2} of {N_USERS} users lists" in err
    assert current_version(redis_client) == "v2"
    rc, _, err = run(capsys, "publish", "--redis-url", redis_url, "--version", "v1")
    assert rc == 2 and "v1 is damaged" in err and current_version(redis_client) == "v2"


def test_publishing_the_damaged_current_version_reports_it(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    redis_client.delete(keys.anime("v1", 1000))
    rc, _, err = run(capsys, "publish", "--redis-url", redis_url, "--version", "v1")
    assert rc == 2 and f"{N_ANIME - 1} of {N_ANIME} anime" in err and "current version" in err


def test_forgotten_users_do_not_count_as_damage(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    redis_client.sadd(keys.SUPPRESSED, 103)
    redis_client.delete(keys.user("v1", 103))
    rc, out, err = run(capsys, "rollback", "--redis-url", redis_url)
    assert rc == 0, err
    assert out == {"current": "v1", "previous": "v2"}


def test_publish_of_the_current_version_prints_the_real_previous(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    rc, out, err = run(capsys, "publish", "--redis-url", redis_url, "--version", "v2")
    assert rc == 0, err
    assert out == {"current": "v2", "previous": "v1"}
    assert previous_version(redis_client) == "v1"


def test_publishing_over_a_garbage_pointer_never_stores_it_as_previous(redis_client, redis_url, capsys):
    fake_version(redis_client, "v1")
    fake_version(redis_client, "v2")
    redis_client.set(keys.CURRENT, "garbage-not-a-version")
    rc, out, err = run(capsys, "publish", "--redis-url", redis_url, "--version", "v2")
    assert rc == 0, err
    assert out == {"current": "v2", "previous": "v1"}
    assert previous_version(redis_client) == "v1"


@pytest.mark.parametrize("dry_run", [False, True])
def test_cleanup_of_a_nonexistent_version_exits_2(redis_client, redis_url, capsys, dry_run):
    fake_version(redis_client, "v1")
    redis_client.set(keys.user("killed-run", 1), b"[]")        # a killed precompute: lists, no meta yet
    rc, _, err = run(capsys, "cleanup", "--redis-url", redis_url, "--version", "nonexistent",
                     "--version", "killed-run", *(["--dry-run"] if dry_run else []))
    assert rc == 2 and "no list version nonexistent" in err and "killed-run" not in err
    assert not redis_client.exists(keys.meta("nonexistent"))
    assert redis_client.exists(keys.user("killed-run", 1))
    rc, out, err = run(capsys, "cleanup", "--redis-url", redis_url, "--version", "killed-run")
    assert rc == 0 and out["removed"] == [{"version": "killed-run", "keys": 1}], err
