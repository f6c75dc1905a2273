"""Publishing a list version: the pointer moves only after every list is written and counted."""
from __future__ import annotations

import json
import time

import redis

from fuserank import keys
from fuserank.errors import FuseRankError


class PublishError(FuseRankError):
    pass


def write_meta(r: redis.Redis, version: str, fields: dict) -> None:
    r.hset(keys.meta(version), mapping={k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})


def read_meta(r: redis.Redis, version: str) -> dict:
    raw = r.hgetall(keys.meta(version))
    out = {}
    for k, v in raw.items():
        k, v = k.decode(), v.decode()
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def publish(r: redis.Redis, version: str, written: dict, expected: dict) -> str | None:
    """Check counts against the model's manifest, mark the version complete, then flip the pointer.

    Returns the version that was current before. The flip is a WATCH/MULTI transaction, so two
    publishers racing leave ``current`` on a complete version and ``previous`` on the one it replaced.
    """
    for kind, want in expected.items():
        got = written.get(kind, 0)
        if got != want:
            raise PublishError(f"list version {version}: wrote {got} {kind} lists, model has {want}; not published")
    write_meta(r, version, {"state": "complete", "written": written, "published_at": time.time()})
    return _flip(r, version)


def _flip(r: redis.Redis, version: str) -> str | None:
    """Point ``current`` at ``version`` and ``previous`` at what it replaces, atomically (WATCH/MULTI)."""
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.CURRENT)
                old = pipe.get(keys.CURRENT)
                pipe.multi()
                if old is not None and old.decode() != version:
                    pipe.set(keys.PREVIOUS, old)
                pipe.set(keys.CURRENT, version)
                pipe.zadd(keys.VERSIONS, {version: time.time()})
                pipe.execute()
                return old.decode() if old is not None else None
            except redis.WatchError:
                continue


def current_version(r: redis.Redis) -> str | None:
    v = r.get(keys.CURRENT)
    return v.decode() if v is not None else None


def publish_version(r: redis.Redis, version: str) -> str | None:
    """Serve an already written version again (`fuserank publish`): only a complete one."""
    state = read_meta(r, version).get("state")
    if state != "complete":
        raise PublishError(f"list version {version!r} is {'not in Redis' if state is None else state!r}; "
                           "only a completely written version can be published")
    return _flip(r, version)


def rollback(r: redis.Redis) -> tuple[str, str]:
    """Swap ``current`` and ``previous`` (`fuserank rollback`); returns (from, to)."""
    previous = r.get(keys.PREVIOUS)
    current = current_version(r)
    if previous is None or current is None:
        raise PublishError("nothing to roll back to: no previous list version is recorded")
    publish_version(r, previous.decode())
    return current, previous.decode()
