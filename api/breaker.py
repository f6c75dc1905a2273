"""The Redis circuit breaker of the request path: after a failed call Redis is left alone for ``retry_s``
(answers are ``live`` with ``degraded: true`` meanwhile), then tried again; a slow or dead Redis costs one
timeout per ``retry_s``, never one per request."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("fuserank.api")

REDIS_RETRY_S = 0.5


class RedisBreaker:
    def __init__(self, retry_s: float = REDIS_RETRY_S, clock=time.monotonic):
        self.retry_s, self.clock = retry_s, clock
        self.listeners: list = []      # called with every failure (the metrics count them)
        self._down_until = 0.0

    def is_open(self) -> bool:
        """True while Redis is left alone after a failure."""
        return self.clock() < self._down_until

    def failed(self, exc: Exception) -> None:
        for listener in self.listeners:
            listener(exc)
        now = self.clock()
        if now >= self._down_until:
            log.warning("redis unavailable (%s): answering live for %.1fs", type(exc).__name__, self.retry_s)
        self._down_until = now + self.retry_s
