"""Fixed-window rate limits shared through Redis (every worker and pod counts together).

A counter per client and window (INCR + EXPIRE under ``keys.RATE_LIMIT``). While the Redis breaker is
open each process counts on its own: fail open, but at most ``limit`` calls per process and window.

Hand-written rather than Flask-Limiter: its Redis storage (``limits[redis]``) requires redis-py < 8, its
before-request hook costs every request that goes through Flask's dispatch, limited or not, and its
windows live in Redis TTLs, which no test clock can move; this one shares the API's breaker and clock.
"""
from __future__ import annotations

import hashlib
import math
import time

import redis

from fuserank import keys

LOCAL_CLIENTS = 10_000      # clients counted per window per process while Redis is down


class RateLimiter:
    def __init__(self, client: redis.Redis, breaker, clock=time.time):
        self.redis, self.breaker, self.clock = client, breaker, clock
        self._local: tuple[int, dict] = (-1, {})

    def retry_after(self, client: str, limit: int, window_s: int, peek: bool = False) -> int | None:
        """Seconds until ``client`` may call again when over ``limit`` calls in this window, else None.

        ``peek``: read the count without adding this call (is ``client`` already over the limit?)."""
        now = self.clock()
        window = int(now // window_s)
        count = None
        if not self.breaker.is_open():
            key = f"{keys.RATE_LIMIT}:{window_s}:{window}:{hashlib.sha256(client.encode()).hexdigest()[:24]}"
            try:
                if peek:
                    count = int(self.redis.get(key) or 0)
                else:
                    with self.redis.pipeline(transaction=False) as pipe:
                        count = pipe.incr(key).expire(key, window_s + 1).execute()[0]
            except redis.RedisError as exc:
                self.breaker.failed(exc)
        if count is None:
            count = self._local_count(client, window, add=not peek)
        if count <= limit - peek:
            return None
        return max(1, math.ceil((window + 1) * window_s - now))

    def _local_count(self, client: str, window: int, add: bool) -> int:
        current, counts = self._local
        if current != window:
            counts = {}
            self._local = (window, counts)
        if client not in counts and len(counts) >= LOCAL_CLIENTS:
            return 0        # fail open: no room to count one more client this window
        counts[client] = counts.get(client, 0) + add
        return counts[client]
