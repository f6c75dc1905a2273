"""One-line answers for what a `fuserank` command could not reach or use: Redis, Google Cloud Storage, a file.

``explain(exc, tried)`` turns such an exception into one line naming what was tried (a Redis URL with its
password masked, a ``gs://`` path, a file) and what to do about it; ``None`` for anything else (a bug keeps
its traceback). ``fuserank.cli.main`` prints that line and exits 2 unless ``--debug`` is given.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

from fuserank.redis_client import redact

START_REDIS = "start one with `fuserank redis` (it prints the URL), or pass --redis-url / set REDIS_URL"


@dataclass(frozen=True)
class Tried:
    """What the command was pointed at, for the message (any of them may be unknown)."""

    redis_url: str | None = None
    gcs_path: str | None = None
    gcs_endpoint: str = "storage.googleapis.com"


def _raised_in(exc: BaseException, package: str) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}{package}{os.sep}" in frames[-1].filename


def _redis(exc, tried: Tried) -> str | None:
    import redis

    where = f"Redis at {redact(tried.redis_url)}" if tried.redis_url else "Redis"
    if isinstance(exc, ValueError) and _raised_in(exc, "redis"):      # a URL redis-py cannot open
        return f"{where}: {exc}: pass --redis-url redis://HOST:PORT/DB (or set REDIS_URL)"
    detail = str(exc).strip().rstrip(".") or type(exc).__name__
    if isinstance(exc, redis.exceptions.RedisClusterException):      # the cluster client's start-up
        if "not enabled" in detail:
            return f"{where} is no Redis Cluster node ({detail}): leave out --redis-cluster / FUSERANK_REDIS_CLUSTER"
        return f"cannot reach the Redis Cluster at {where} ({detail.split(':')[0]}): {START_REDIS}"
    if not isinstance(exc, redis.RedisError):
        return None
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in detail or "WRONGPASS" in detail:
        given = "a wrong password" if tried.redis_url and "@" in tried.redis_url else "no password"
        return (f"{where} refused the connection: it needs a password and the URL has {given}; put the right "
                "one in the URL (redis://:PASSWORD@HOST:PORT/DB)")
    if isinstance(exc, redis.TimeoutError):
        return f"{where} did not answer in time ({detail}): check the host, port and network, or {START_REDIS}"
    if isinstance(exc, redis.exceptions.AskError):          # MOVED or ASK: a cluster node, a single-node client
        return (f"{where} is a node of a Redis Cluster (it redirected a key to {detail}): pass --redis-cluster "
                "(or set FUSERANK_REDIS_CLUSTER=1)")
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach {where} ({detail}): is a redis-server running there? {START_REDIS}"
    return f"{where} refused a command ({detail}): check that the URL names a Redis FuseRank may write to"


def _gcs(exc, tried: Tried) -> str | None:
    try:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
    except ImportError:
        return None
    import requests

    what = tried.gcs_path or "Google Cloud Storage"
    if isinstance(exc, auth.DefaultCredentialsError):
        return (f"{what}: no Google Cloud credentials found: run `gcloud auth application-default login` or "
                "set GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for an emulator)")
    unreachable = (auth.TransportError, requests.exceptions.ConnectionError, api.RetryError)
    if isinstance(exc, unreachable) and tried.gcs_path:
        cause = getattr(exc, "cause", None) if isinstance(exc, api.RetryError) else exc
        return (f"{what}: cannot reach {tried.gcs_endpoint} ({type(cause or exc).__name__}): check the network, "
                "or STORAGE_EMULATOR_HOST when using an emulator")
    if isinstance(exc, api.GoogleAPIError) and tried.gcs_path:
        return f"{what}: Google Cloud Storage answered {str(exc).splitlines()[0][:200]}: check the bucket, object and permissions"
    return None


_FILE_HINTS = {FileNotFoundError: "check the path (relative paths start at the current directory)",
               PermissionError: "check the file's permissions", IsADirectoryError: "name a file, not a directory",
               NotADirectoryError: "name a directory, not a file"}


def _file(exc) -> str | None:
    if not isinstance(exc, OSError) or type(exc) not in _FILE_HINTS:
        return None
    if not exc.filename:                       # raised with a message only, e.g. a missing gs:// object
        return f"{exc}: {_FILE_HINTS[type(exc)]}"
    return f"{exc.filename}: {(exc.strerror or type(exc).__name__).lower()}: {_FILE_HINTS[type(exc)]}"


def explain(exc: BaseException, tried: Tried = Tried()) -> str | None:
    """One line for a failure to reach or use Redis, GCS or a file; ``None`` for anything else."""
    for cause in _chain(exc):
        line = _redis(cause, tried) or _gcs(cause, tried) or _file(cause)
        if line:
            return line
    return None


def _chain(exc: BaseException):
    """The exception and those it was raised from or during (a library may wrap the one that matters)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
