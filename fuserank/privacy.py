"""Forgetting a user: their stored lists and their feedback (stream events and index) go, and their id joins a
suppression set that the API, every later ingest and precompute honour (they get what an unknown user gets)."""
from __future__ import annotations

import redis

from fuserank import feedback
from fuserank.redis_client import layout


def suppressed(r: redis.Redis) -> frozenset[int]:
    return frozenset(int(x) for x in r.smembers(layout(r).suppressed))


def forget(r: redis.Redis, user_id: int) -> dict:
    """Suppress first (so no reader personalises and no ingest drains them in between), then delete the user's
    list in every version (on a cluster those keys lie in many slots: redis-py sends the DEL per slot, pipelined
    per node) and their feedback events."""
    k = layout(r)
    r.sadd(k.suppressed, int(user_id))
    versions = {v.decode() for v in r.zrange(k.versions, 0, -1)}
    versions |= {v.decode() for v in (r.get(k.current), r.get(k.previous)) if v is not None}
    deleted = r.delete(*[k.user(v, user_id) for v in sorted(versions)]) if versions else 0
    return {"user_id": int(user_id), "suppressed": True, "lists_deleted": int(deleted),
            "versions": sorted(versions), **feedback.forget_user(r, user_id)}
