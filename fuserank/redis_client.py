"""The one Redis client factory: every caller (CLI commands, the Beam writers, the API, the nightly job,
libraries such as a rate limiter) gets its client here, so timeouts, retries and URL checks are set once
and a cluster mode has one place to plug in.

A *role* names what the client is for and fixes its timeouts:

    command   a CLI command or the nightly job: patient, but fails within seconds when Redis is down
    batch     the Beam writers and readers: long pipelined writes, health-checked connections
    serve     the API's request path: a slow Redis costs one lookup's budget, never a worker; no retries
    probe     reachability checks (the demo's embedded server, readiness): answers or fails fast
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class Role:
    socket_timeout: float
    connect_timeout: float
    retries: int = 1
    health_check_interval: int = 0


ROLES = {
    "command": Role(socket_timeout=30, connect_timeout=10),
    "batch": Role(socket_timeout=30, connect_timeout=10, health_check_interval=30),
    "serve": Role(socket_timeout=0.25, connect_timeout=0.25, retries=0),
    "probe": Role(socket_timeout=5, connect_timeout=5, retries=0),
}


def redact(url: str) -> str:
    """A URL with its password replaced by ``***`` (Redis credentials never reach a log or a terminal)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<redacted>"


def check_url(url: str) -> str:
    """``url``, unless it names another scheme (``http://...``): ValueError saying which schemes Redis takes.
    (A value with no scheme at all is left to redis-py, whose refusal fuserank.failures turns into one line.)"""
    try:
        scheme = urlsplit(url).scheme if "://" in url else None
    except ValueError:
        scheme = ""
    if scheme is not None and scheme not in REDIS_SCHEMES:
        raise ValueError(f"expected a redis://HOST:PORT/DB URL (or rediss://, unix://), got {redact(url)!r}")
    return url


def connect(url: str, role: str = "command", **overrides) -> redis.Redis:
    """A client for ``url`` with ``role``'s timeouts (``overrides``: any redis.Redis keyword, e.g. a
    different ``socket_timeout`` for one long call). Connects lazily, on the first command."""
    spec = ROLES[role]
    options = dict(socket_timeout=spec.socket_timeout, socket_connect_timeout=spec.connect_timeout,
                   retry=Retry(NoBackoff(), spec.retries), health_check_interval=spec.health_check_interval)
    options.update(overrides)
    return redis.Redis.from_url(check_url(url), **options)
