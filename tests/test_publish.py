"""Publishing and rolling back list versions in a real Redis, through the CLI."""
import json
import subprocess
import sys

import pytest

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from fuserank.publish import PublishError, current_version, publish, publish_version, write_meta
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
