"""The one Redis client factory: every caller (CLI commands, the Beam writers, the API, the nightly job,
libraries such as a rate limiter) gets its client here, so timeouts, retries and URL checks are set once
and a cluster mode has one place to plug in.

A *role* names what the client is for and fixes its timeouts:

    command   a CLI command or the nightly job: patient, but fails within seconds when Redis is down
    batch     the Beam writers and readers: long pipelined writes, health-checked connections
    serve     the API's request path: a slow Redis costs one lookup's budget, never a worker; no retries
    probe     reachability checks (the demo's embedded server, readiness): answers or fails fast

A ``Target`` (a URL and whether it names a node of a Redis Cluster; picklable, so Beam's DoFns carry it)
makes ``connect`` return redis-py's own ``RedisCluster``: it learns the slot map from that one node,
follows MOVED/ASK, splits a non-transactional pipeline into one round trip per node, runs SCAN on every
primary and re-reads the slot map after a failover. ``layout(client)`` gives the key names that client
must use (fuserank.keys.Layout). A plain URL is a single node, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from fuserank import keys

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
# In a cluster the patient roles ride out a failover (the replica is promoted within a few node timeouts):
# retries with a backoff capped at 1 s, the slot map re-read between tries. serve and probe stay at none.
CLUSTER_RETRIES = {"command": 12, "batch": 12}
CLUSTER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)


@dataclass(frozen=True)
class Target:
    """Where Redis is: ``url`` (with ``cluster``: any one node of a Redis Cluster)."""

    url: str
    cluster: bool = False


def target(url: "str | Target", cluster: bool = False) -> Target:
    """``url`` as a Target (a Target is returned as it is)."""
    return url if isinstance(url, Target) else Target(url, cluster)


def layout(client) -> keys.Layout:
    """The key layout of the deployment ``client`` talks to (a cluster client, or one of its pipelines)."""
    return keys.CLUSTER if isinstance(client, redis.RedisCluster) else keys.SINGLE


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


def connect(url: "str | Target", role: str = "command", **overrides) -> "redis.Redis | redis.RedisCluster":
    """A client for ``url`` (a URL or a Target) with ``role``'s timeouts (``overrides``: any redis.Redis
    keyword, e.g. a different ``socket_timeout`` for one long call). A single node connects lazily, on the
    first command; a cluster client reads the slot map from the named node at once."""
    where = target(url)
    spec = ROLES[role]
    options = dict(socket_timeout=spec.socket_timeout, socket_connect_timeout=spec.connect_timeout,
                   retry=Retry(NoBackoff(), spec.retries), health_check_interval=spec.health_check_interval)
    if where.cluster:
        options["retry"] = Retry(CLUSTER_BACKOFF, CLUSTER_RETRIES.get(role, spec.retries))
        options.update(overrides)
        return redis.RedisCluster.from_url(check_url(where.url), **options)
    options.update(overrides)
    return redis.Redis.from_url(check_url(where.url), **options)


def get_many(client, names: list) -> list:
    """GET of each of ``names`` in one call: MGET on a single node; on a cluster, where the keys lie in many
    slots, redis-py's MGET per slot, pipelined per node."""
    return client.mget_nonatomic(names) if layout(client).cluster else client.mget(names)
