"""Publishing a list version: the pointer moves only after every list is written and counted.

    publish(r, version, written, expected)  the precompute's last step: Beam's counts and the keys really
                                            in Redis must both match the model, then the pointer flips
    publish_version(r, version)             `fuserank publish`: serve an already complete version again,
                                            after verifying its keys against its meta (verify_stored)
    rollback(r)                             `fuserank rollback`: swap current and previous (previous verified)
    cleanup(r, keep=2)                      `fuserank cleanup` (and after every `fuserank precompute`):
                                            remove published versions older than current and previous,
                                            by SCAN + UNLINK in bounded batches (offline, never on a request)
    remove_versions(r, [v])                 `fuserank cleanup --version V`: one named version (not served)
    check_memory_policy(r)                  refuse to write into a Redis that may evict list keys

A version being removed is first marked ``state: deleting`` (so it can no longer be published) in a
WATCH/MULTI transaction that also checks it is neither current nor previous; every UNLINK batch re-checks
that mark under WATCH, and ``_flip`` only points at a version whose meta says ``complete`` at the moment
of the flip. So cleanup, publish and rollback can race without the pointer ever naming a version whose
keys are going away.

Against a Redis Cluster (a client from ``fuserank.redis_client.connect`` with a cluster Target) the same
functions use the cluster key layout (fuserank.keys.Layout): the pointers, the version set and every meta
share one slot, so the WATCH/MULTI transactions above stay single-slot and atomic; SCANs visit every
primary (redis-py's ``scan_iter``). One thing a transaction cannot cover there: a batch of list keys spans
many slots, so each UNLINK batch follows its own check of the mark instead of sharing its transaction.
"""
from __future__ import annotations

import json
import logging
import time

import redis

from fuserank import keys
from fuserank.feedback import trim_after_publish
from fuserank.errors import FuseRankError
from fuserank.redis_client import layout

log = logging.getLogger("fuserank.publish")

SCAN_COUNT = 1000        # keys per SCAN round trip (clean-up, publish verification)
UNLINK_BATCH = 1000      # keys per UNLINK
MIN_KEEP = 2             # current and previous are never removed
SAFE_MEMORY_POLICY = "noeviction"
DELETING = "deleting"


class PublishError(FuseRankError):
    pass


def write_meta(r: redis.Redis, version: str, fields: dict) -> None:
    r.hset(layout(r).meta(version), mapping={k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})


def read_meta(r: redis.Redis, version: str) -> dict:
    raw = r.hgetall(layout(r).meta(version))
    out = {}
    for k, v in raw.items():
        k, v = k.decode(), v.decode()
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _decode(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """A version as a literal inside a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def scan_version(r: redis.Redis, version: str, count: int = SCAN_COUNT):
    """Keys of one version (of every version for ``"*"``), its meta among them, by an offline SCAN (of every
    primary on a cluster, where the metas have their own names and slot)."""
    k = layout(r)
    literal = "*" if version == "*" else _glob_escape(version)
    yield from r.scan_iter(match=k.version_pattern(literal), count=count)
    if k.cluster:
        yield from r.scan_iter(match=k.meta(literal), count=count)


def count_version_keys(r: redis.Redis, version: str, exclude_users: frozenset = frozenset()) -> tuple[dict, list]:
    """``({"users": n, "anime": m}, [keys of excluded users])`` really present in Redis, by an offline SCAN."""
    counts, excluded = {"users": 0, "anime": 0}, []
    for key in scan_version(r, version):
        parsed = keys.parse_key(key)
        if parsed is None or parsed["version"] != version or parsed["kind"] == "meta":
            continue
        if parsed["kind"] == "user" and parsed["id"] in exclude_users:
            excluded.append(key)
            continue
        counts["users" if parsed["kind"] == "user" else "anime"] += 1
    return counts, excluded


def publish(r: redis.Redis, version: str, written: dict, expected: dict) -> str | None:
    """Check counts against the model's manifest, mark the version complete, then flip the pointer.

    Two counts must match the model: the writes Beam confirmed (``written``) and the version's keys
    actually present in Redis (one SCAN: nothing evicted, deleted by a clean-up or lost to a failover
    since it was written). Lists of forgotten users left by an earlier, killed run of the same version are
    deleted here. Returns what ``previous`` holds after the flip. The flip is a WATCH/MULTI transaction, so
    two publishers racing leave ``current`` on a complete version and ``previous`` on the one it replaced.
    """
    for kind, want in expected.items():
        got = written.get(kind, 0)
        if got != want:
            raise PublishError(f"list version {version}: wrote {got} {kind} lists, model has {want}; not published")
    forgotten = frozenset(int(x) for x in r.smembers(layout(r).suppressed))
    present, stale = count_version_keys(r, version, forgotten)
    for start in range(0, len(stale), UNLINK_BATCH):
        r.unlink(*stale[start:start + UNLINK_BATCH])
    for kind, want in expected.items():
        if present.get(kind, 0) != want:
            raise PublishError(f"list version {version}: Redis holds {present.get(kind, 0)} {kind} lists after the "
                               f"writes, model has {want} (evicted or deleted meanwhile?); not published")
    write_meta(r, version, {"state": "complete", "written": written, "published_at": time.time()})
    return _flip(r, version)


def _flip(r: redis.Redis, version: str) -> str | None:
    """Point ``current`` at ``version`` and ``previous`` at what it replaces, atomically (WATCH/MULTI).

    The version's meta is watched too: it must say ``complete`` when the transaction commits (a clean-up
    marking it ``deleting`` in between makes the flip retry and then refuse). ``previous`` only ever names
    a complete version: a pointer naming none (a hand edit) is not kept as a rollback target. Returns what
    ``previous`` holds afterwards (unchanged when ``version`` was already current).
    """
    k = layout(r)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.current, k.previous, k.meta(version))
                state = _decode(pipe.hget(k.meta(version), "state"))
                if state != "complete":
                    raise PublishError(f"list version {version!r} is "
                                       f"{'not in Redis' if state is None else repr(state)}; "
                                       "only a completely written version can be published")
                old, previous = _decode(pipe.get(k.current)), _decode(pipe.get(k.previous))
                replaced = old is not None and old != version
                if replaced and _decode(pipe.hget(k.meta(old), "state")) != "complete":
                    log.warning("%s named %r, which is no complete list version: not kept as previous",
                                k.current, old[:200])
                    replaced = False
                pipe.multi()
                if replaced:
                    pipe.set(k.previous, old)
                    previous = old
                pipe.set(k.current, version)
                pipe.zadd(k.versions, {version: time.time()})
                pipe.execute()
                break
            except redis.WatchError:
                continue
    trim_after_publish(r)
    return previous


def current_version(r: redis.Redis) -> str | None:
    v = r.get(layout(r).current)
    return v.decode() if v is not None else None


def previous_version(r: redis.Redis) -> str | None:
    v = r.get(layout(r).previous)
    return v.decode() if v is not None else None


def verify_stored(r: redis.Redis, version: str) -> dict:
    """The version's keys really in Redis against the counts its meta recorded at publish; PublishError if short.

    One offline SCAN, as the precompute's own publish does. A forgotten user's list is deleted in every
    version (fuserank.privacy), so up to that many user lists may be missing. Returns the counts found.
    """
    meta = read_meta(r, version)
    if meta.get("state") != "complete":
        return {}                         # _flip refuses it, naming its state
    want = meta.get("written")
    if not isinstance(want, dict) or not all(isinstance(want.get(k), int) for k in ("users", "anime")):
        raise PublishError(f"list version {version}: its meta records no written counts, so its lists cannot be "
                           "verified; rerun the precompute")
    forgotten = frozenset(int(x) for x in r.smembers(layout(r).suppressed))
    present, _ = count_version_keys(r, version, forgotten)
    short = [f"{present[k]} of {want[k]} {k} lists" for k in ("users", "anime")
             if present[k] < want[k] - (len(forgotten) if k == "users" else 0)]
    if short:
        raise PublishError(f"list version {version} is damaged: Redis holds {', '.join(short)} (deleted, evicted "
                           "or lost since it was written)")
    return present


def publish_version(r: redis.Redis, version: str) -> str | None:
    """Serve an already written version again (`fuserank publish`): only a complete one whose lists are all
    still in Redis (also when it is current already: then it is reported damaged). Returns ``previous``."""
    try:
        verify_stored(r, version)
    except PublishError as exc:
        if version == current_version(r):
            raise PublishError(f"{exc}; it is the current version: roll back or rerun the precompute") from None
        raise PublishError(f"{exc}; not published") from None
    return _flip(r, version)


def rollback(r: redis.Redis) -> tuple[str, str]:
    """Swap ``current`` and ``previous`` (`fuserank rollback`) after verifying previous; returns (from, to)."""
    previous = r.get(layout(r).previous)
    current = current_version(r)
    if previous is None or current is None:
        raise PublishError("nothing to roll back to: no previous list version is recorded")
    publish_version(r, previous.decode())
    return current, previous.decode()


# ------------------------------------------------------------------------------------------------
# Clean-up of old versions (offline: `fuserank cleanup`, and `fuserank precompute` after it published)
# ------------------------------------------------------------------------------------------------
def _mark_deleting(r: redis.Redis, version: str) -> bool:
    """Mark ``version`` unpublishable unless it is current or previous (atomically); False if it is."""
    k = layout(r)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.current, k.previous, k.meta(version))
                if version in (_decode(pipe.get(k.current)), _decode(pipe.get(k.previous))):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(k.meta(version), "state", DELETING)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def _guarded(r: redis.Redis, version: str, command) -> bool:
    """Run ``command(pipe)`` in MULTI only while ``version`` is still marked deleting and not served
    (``command``'s keys in the meta's slot on a cluster)."""
    k = layout(r)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.current, k.previous, k.meta(version))
                state = _decode(pipe.hget(k.meta(version), "state"))
                served = (_decode(pipe.get(k.current)), _decode(pipe.get(k.previous)))
                if state != DELETING or version in served:
                    pipe.unwatch()
                    return False
                pipe.multi()
                command(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def _unlink_guarded(r: redis.Redis, version: str, chunk: list) -> bool:
    """UNLINK one batch of ``version``'s list keys while it is marked deleting and not served: in the mark's
    transaction on one node; on a cluster (the batch spans slots) right after a transaction that checks it,
    the UNLINKs pipelined per node."""
    if not layout(r).cluster:
        return _guarded(r, version, lambda pipe: pipe.unlink(*chunk))
    if not _guarded(r, version, lambda pipe: pipe.hget(layout(r).meta(version), "state")):
        return False
    r.unlink(*chunk)
    return True


def remove_version(r: redis.Redis, version: str, batch_size: int = UNLINK_BATCH,
                   scan_count: int = SCAN_COUNT) -> int | None:
    """Delete one version's keys by SCAN MATCH + UNLINK in batches, then its meta and its zset entry.

    Returns the number of keys removed, or None when the version is (or became) current/previous or was
    published again meanwhile (what was already unlinked is then reported by the next publish's count).
    """
    k = layout(r)
    meta_key = k.meta(version).encode()
    had_meta = bool(r.exists(meta_key))      # a killed precompute leaves lists and no meta: the mark adds one
    if not _mark_deleting(r, version):
        return None
    removed, batch = 0, []

    def flush() -> bool:
        nonlocal removed, batch
        chunk, batch = batch, []
        if chunk and not _unlink_guarded(r, version, chunk):
            return False
        removed += len(chunk)
        return True

    for key in scan_version(r, version, scan_count):
        if key == meta_key:
            continue                       # the mark goes last: an interrupted clean-up resumes from it
        batch.append(key)
        if len(batch) >= batch_size and not flush():
            return None
    if not flush():
        return None
    if not _guarded(r, version, lambda pipe: (pipe.unlink(meta_key), pipe.zrem(k.versions, version))):
        return None
    return removed + had_meta


def cleanup(r: redis.Redis, keep: int = MIN_KEEP, batch_size: int = UNLINK_BATCH, scan_count: int = SCAN_COUNT,
            dry_run: bool = False) -> dict:
    """Remove published list versions beyond the ``keep`` most recent (current and previous always stay).

    Candidates are members of ``fuserank:versions`` (published versions, ranked by when they were last
    made current) plus any version an interrupted clean-up left marked ``deleting``. Versions that were
    never published (a precompute still running, or killed) are not in the set and are left alone.
    """
    if keep < MIN_KEEP:
        raise PublishError(f"keep must be >= {MIN_KEEP} (current and previous are never removed), got {keep}")
    if batch_size < 1 or scan_count < 1:
        raise PublishError("batch_size and scan_count must be >= 1")
    current, previous = current_version(r), previous_version(r)
    published = [v.decode() for v in r.zrevrange(layout(r).versions, 0, -1)]     # most recently current first
    states = {v: read_meta(r, v).get("state") for v in published}
    kept = [v for v in (current, previous) if v is not None]
    for v in published:
        if len(kept) >= keep:
            break
        if v not in kept and states[v] != DELETING:
            kept.append(v)
    doomed = [v for v in published if v not in kept]
    result = {"current": current, "previous": previous, "kept": kept, "removed": [], "dry_run": dry_run}
    for v in doomed:
        if dry_run:
            result["removed"].append({"version": v, "keys": None})
            continue
        t0 = time.time()
        n = remove_version(r, v, batch_size, scan_count)
        if n is None:
            log.warning("clean-up: list version %s became current/previous or was republished; kept", v)
            result["kept"].append(v)
            continue
        log.info("clean-up: removed list version %s (%d keys, %.1fs)", v, n, time.time() - t0)
        result["removed"].append({"version": v, "keys": n})
    return result


def remove_versions(r: redis.Redis, versions, batch_size: int = UNLINK_BATCH, scan_count: int = SCAN_COUNT,
                    dry_run: bool = False) -> dict:
    """`fuserank cleanup --version V`: remove named versions (e.g. the partial keys of a killed precompute).

    Current and previous are refused. A version some precompute is still writing can be removed safely:
    that precompute's publish then counts fewer keys than the model has and does not publish.
    """
    current, previous = current_version(r), previous_version(r)
    served = [v for v in versions if v in (current, previous)]
    if served:
        raise PublishError(f"list version {', '.join(served)} is current or previous and is never removed "
                           "(roll back or publish another version first)")
    missing = [v for v in dict.fromkeys(versions)
               if not r.exists(layout(r).meta(v)) and next(iter(scan_version(r, v)), None) is None]
    if missing:
        raise PublishError(f"no list version {', '.join(missing)} in Redis (no meta, no lists); nothing removed "
                           "(see `fuserank inspect versions`)")
    result = {"current": current, "previous": previous, "removed": [], "dry_run": dry_run}
    for v in dict.fromkeys(versions):
        if dry_run:
            result["removed"].append({"version": v, "keys": None})
            continue
        n = remove_version(r, v, batch_size, scan_count)
        if n is None:
            raise PublishError(f"list version {v} was rewritten or became current/previous meanwhile; not removed")
        result["removed"].append({"version": v, "keys": n})
    return result


# ------------------------------------------------------------------------------------------------
# Redis memory policy: lists must never be evicted silently
# ------------------------------------------------------------------------------------------------
def check_memory_policy(r: redis.Redis, allow_eviction: bool = False,
                        override: str = "continuing because --allow-eviction was given") -> dict:
    """Read ``maxmemory`` / ``maxmemory-policy``; refuse a Redis that may evict keys unless allowed.

    With ``maxmemory`` set, any policy but ``noeviction`` can drop list keys of the served version under
    memory pressure (the API would then silently fall back to live answers, and a publish verification
    that ran before would be stale). ``noeviction`` makes writes fail loudly instead, so a precompute that
    does not fit fails before it publishes. Where CONFIG is not allowed (managed Redis that renames it)
    the policy cannot be read: a warning, and the check passes. On a cluster every primary is read.
    """
    nodes = [r.get_redis_connection(n) for n in r.get_primaries()] if layout(r).cluster else [r]
    try:
        configs = [{_decode(k): _decode(v) for name in ("maxmemory-policy", "maxmemory")
                    for k, v in node.config_get(name).items()} for node in nodes]
        config = next((c for c in configs if int(c.get("maxmemory") or 0) > 0 and
                       c.get("maxmemory-policy") != SAFE_MEMORY_POLICY), configs[0])
        policy, maxmemory = config.get("maxmemory-policy"), int(config.get("maxmemory") or 0)
    except redis.ResponseError as exc:
        log.warning("cannot read the Redis memory policy (CONFIG GET refused: %s); make sure the server runs "
                    "with maxmemory-policy %s", exc, SAFE_MEMORY_POLICY)
        return {"checked": False, "policy": None, "maxmemory": None, "evicts": None}
    evicts = maxmemory > 0 and policy != SAFE_MEMORY_POLICY
    result = {"checked": True, "policy": policy, "maxmemory": maxmemory, "evicts": evicts}
    if evicts:
        message = (f"Redis maxmemory-policy is {policy!r} with maxmemory {maxmemory} bytes: it can evict list keys "
                   f"of the served version silently; run Redis with maxmemory-policy {SAFE_MEMORY_POLICY} "
                   "(CONFIG SET maxmemory-policy noeviction)")
        if not allow_eviction:
            raise PublishError(message + ", or pass --allow-eviction to write anyway")
        log.warning("!!! %s -- %s !!!", message, override)
    return result
