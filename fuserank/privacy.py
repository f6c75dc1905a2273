"""Forgetting a user: their stored lists and their feedback (stream events and index) go, and their id joins a
suppression set that the API, every later ingest and precompute honour (they get what an unknown user gets)."""
from __future__ import annotations

import redis

from fuserank import feedback, keys


def suppressed(r: redis.Redis) -> frozenset[int]:
    return frozenset(int(x) for x in r.smembers(keys.SUPPRESSED))


def forget(r: redis.Redis, user_id: int) -> dict:
    """Suppress first (so no reader personalises and no ingest drains them in between), then delete the user's
    list in every version and their feedback events."""
    r.sadd(keys.SUPPRESSED, int(user_id))
    versions = {v.decode() for v in r.zrange(keys.VERSIONS, 0, -1)}
    versions |= {v.decode() for v in (r.get(keys.CURRENT), r.get(keys.PREVIOUS)) if v is not None}
    deleted = r.delete(*[keys.user(v, user_id) for v in sorted(versions)]) if versions else 0
    return {"user_id": int(user_id), "suppressed": True, "lists_deleted": int(deleted),
            "versions": sorted(versions), **feedback.forget_user(r, user_id)}
