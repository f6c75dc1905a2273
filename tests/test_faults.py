"""Faults in the batch path, against a real Redis, with two different models so the list versions differ.

1. a precompute SIGKILLed midway: the pointer, the previous version's lists and the API are untouched;
   rerunning it flips the pointer (previous = the old version);
2. two precomputes at once: the pointer never names a version whose meta is not complete;
3. a retried Beam bundle rewrites the same keys with the same values.

Reproduce: ``.venv/bin/python -m pytest -q tests/test_faults.py`` (docs/reliability.md).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import redis

from fuserank import keys
from fuserank.artifacts import ModelArtifact
from fuserank.batch.pipeline import AnimeNeighboursFn, ScoreUserBlockFn, blocks
from fuserank.batch.redis_io import WriteListsFn
from fuserank.cli import main
from fuserank.config import HybridSettings
from fuserank.publish import count_version_keys, current_version, previous_version, read_meta
from tests.factories import random_artifact

SETTINGS = HybridSettings(top_n=10, neighbours=5)
FLAGS = ["--top-n", str(SETTINGS.top_n), "--neighbours", str(SETTINGS.neighbours)]


def version_of(model_dir: str) -> str:
    return keys.list_version(ModelArtifact.load(model_dir).version, SETTINGS.digest())


def start_precompute(model_dir: str, redis_url: str, log_path, *extra: str) -> subprocess.Popen:
    """`fuserank precompute` as a child in its own process group (so SIGKILL takes every worker with it)."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fuserank", "precompute", "--model", model_dir,
                             "--redis-url", redis_url, *FLAGS, *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def version_key_count(r: redis.Redis, version: str) -> int:
    return sum(1 for _ in r.scan_iter(match=keys.version_pattern(version), count=1000))


def assert_lists_complete(r: redis.Redis, model_dir: str, version: str) -> None:
    """Every user's and anime's key of ``version`` present and decodable, with the lengths the settings ask."""
    model = ModelArtifact.load(model_dir)
    with r.pipeline(transaction=False) as pipe:
        for uid in model.user_ids:
            pipe.get(keys.user(version, uid))
        for aid in model.anime_ids:
            pipe.get(keys.anime(version, aid))
        values = pipe.execute()
    users, anime = values[:model.n_users], values[model.n_users:]
    assert all(v is not None for v in values), f"{sum(v is None for v in values)} keys of {version} missing"
    assert all(len(keys.decode_items(v)) == SETTINGS.top_n for v in users)
    assert all(0 < len(keys.decode_items(v)) <= SETTINGS.neighbours for v in anime)
    meta = read_meta(r, version)
    assert meta["state"] == "complete"
    assert meta["written"] == {"users": model.n_users, "anime": model.n_anime}
    assert count_version_keys(r, version)[0] == {"users": model.n_users, "anime": model.n_anime}


@pytest.mark.slow
def test_sigkill_midway_keeps_the_previous_version_served_and_a_rerun_flips(tmp_path, redis_client, redis_url):
    model_a = random_artifact(tmp_path / "a", n_users=60, n_anime=40, seed=1)
    # B is big and scored one user per block, so it is still writing seconds after its first keys land
    model_b = random_artifact(tmp_path / "b", n_users=1500, n_anime=200, seed=2)
    va, vb = version_of(model_a), version_of(model_b)
    assert va != vb

    assert main(["precompute", "--model", model_a, "--redis-url", redis_url, *FLAGS]) == 0
    assert current_version(redis_client) == va
    assert_lists_complete(redis_client, model_a, va)

    proc = start_precompute(model_b, redis_url, tmp_path / "b.log", "--block-size", "1")
    deadline, written = time.time() + 90, 0
    while time.time() < deadline and proc.poll() is None:
        written = version_key_count(redis_client, vb)
        if written:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"precompute of B ended before it could be killed:\n{(tmp_path / 'b.log').read_text()}"
    assert written > 0
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL

    left = version_key_count(redis_client, vb)
    assert 0 < left < 1500 + 200, left                         # killed mid-write: some of B's lists, not all
    assert read_meta(redis_client, vb).get("state") != "complete"
    assert current_version(redis_client) == va                  # the pointer never moved
    assert redis_client.zscore(keys.VERSIONS, vb) is None
    assert_lists_complete(redis_client, model_a, va)            # A intact: every list present and decodable

    from tests.factories import api_app
    client = api_app(model_a, redis_url).test_client()
    model = ModelArtifact.load(model_a)
    for uid in model.user_ids[:10]:
        response = client.get(f"/v1/users/{int(uid)}/recommendations?n=10")
        body = response.get_json()
        assert response.status_code == 200, body
        assert body["source"] == "precomputed" and body["list_version"] == va, body
        stored = keys.decode_items(redis_client.get(keys.user(va, uid)))
        assert [item["anime_id"] for item in body["items"]] == [a for a, _ in stored]

    # the rerun (block size is not part of the list version) completes B and flips the pointer
    assert main(["precompute", "--model", model_b, "--redis-url", redis_url, *FLAGS]) == 0
    assert current_version(redis_client) == vb and previous_version(redis_client) == va
    assert_lists_complete(redis_client, model_b, vb)
    assert_lists_complete(redis_client, model_a, va)            # previous kept for rollback


@pytest.mark.slow
def test_two_precomputes_at_once_never_expose_a_half_written_version(tmp_path, redis_client, redis_url):
    models = {}
    for name, n_users, n_anime, seed in (("x", 900, 90, 3), ("y", 800, 120, 4)):
        path = random_artifact(tmp_path / name, n_users=n_users, n_anime=n_anime, seed=seed)
        models[version_of(path)] = (path, n_users, n_anime)
    assert len(models) == 2
    first_user = {v: int(ModelArtifact.load(path).user_ids[0]) for v, (path, _, _) in models.items()}
    seen, bad, reads = set(), [], [0]
    stop = threading.Event()
    poller = redis.Redis.from_url(redis_url)

    def poll():
        while not stop.is_set():
            time.sleep(0.002)
            with poller.pipeline() as pipe:
                try:
                    pipe.watch(keys.CURRENT)                   # pointer + meta as one consistent snapshot
                    version = pipe.get(keys.CURRENT)
                    if version is None:
                        pipe.unwatch()
                        continue
                    version = version.decode()
                    meta = pipe.hgetall(keys.meta(version))
                    path = models.get(version)
                    has_user = pipe.exists(keys.user(version, first_user[version])) if path else 0
                    pipe.multi()
                    pipe.get(keys.CURRENT)
                    pipe.execute()
                except redis.WatchError:
                    continue
            reads[0] += 1
            seen.add(version)
            state = meta.get(b"state", b"").decode()
            written = json.loads(meta.get(b"written", b"{}"))
            expected = {"users": path[1], "anime": path[2]} if path else None
            if state != "complete" or written != expected or not has_user:
                bad.append((version, state, written, expected))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    procs = [start_precompute(path, redis_url, tmp_path / f"{v}.log", "--block-size", "16")
             for v, (path, _, _) in models.items()]
    try:
        codes = [p.wait(180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.2)
        stop.set()
        thread.join(10)
        poller.close()
    logs = [(tmp_path / f"{v}.log").read_text()[-2000:] for v in models]
    assert codes == [0, 0], logs
    assert not bad, bad[:5]
    assert reads[0] > 20 and seen <= set(models) and seen, (reads, seen)
    final = current_version(redis_client)
    assert final in models and previous_version(redis_client) in set(models) - {final}
    for version, (path, _, _) in models.items():
        assert_lists_complete(redis_client, path, version)


def _snapshot(r: redis.Redis, pattern: str) -> dict:
    return {k: r.get(k) for k in r.scan_iter(match=pattern, count=1000)}


def test_a_retried_bundle_rewrites_the_same_keys_with_the_same_values(tmp_path, redis_client, redis_url):
    model_dir = random_artifact(tmp_path / "m", n_users=37, n_anime=25, seed=5)
    version = version_of(model_dir)

    def bundle(fail_after: int | None = None) -> list:
        """One bundle on a fresh worker: fresh DoFn instances, setup, process (or die midway), teardown."""
        scorer = ScoreUserBlockFn(model_dir, SETTINGS, version)
        scorer.setup()
        writer = WriteListsFn(redis_url, "users", batch_size=10)
        writer.setup()
        try:
            (pairs,) = scorer.process((0, 37))          # one block of all 37 users, written 10 at a time
            counts = writer.process(pairs)
            # the worker dies after ``fail_after`` confirmed batches: nothing of the bundle is committed
            return list(counts if fail_after is None else itertools.islice(counts, fail_after))
        finally:
            writer.teardown()

    pattern = keys.version_pattern(version)
    partial = bundle(fail_after=2)                       # two batches of 10 reached Redis, then the crash
    first = _snapshot(redis_client, pattern)
    assert len(first) == 20 and sum(n for _, n in partial) == 20
    counts = bundle()                                    # the runner retries the whole bundle
    second = _snapshot(redis_client, pattern)
    assert len(second) == 37 and sum(n for kind, n in counts if kind == "users") == 37
    assert {k: second[k] for k in first} == first        # what the failed attempt wrote is rewritten identically
    bundle()                                             # and once more: byte-for-byte the same keyspace
    assert _snapshot(redis_client, pattern) == second
    assert redis_client.dbsize() == 37

    # the anime branch's DoFn is deterministic too: a retried block yields the same pairs
    def neighbours():
        fn = AnimeNeighboursFn(model_dir, SETTINGS, version)
        fn.setup()
        return [kv for block in blocks(25, 10) for pairs in fn.process(block) for kv in pairs]
    assert neighbours() == neighbours()
    model = ModelArtifact.load(model_dir)
    assert np.array_equal(sorted(int(k.rsplit(b":", 1)[1]) for k in second), sorted(model.user_ids.tolist()))
