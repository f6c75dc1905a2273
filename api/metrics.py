"""Prometheus metrics at ``GET /metrics``, aggregated over every gunicorn worker.

Per request (``after_request``, about a microsecond: the request is tallied in a dict under an
uncontended lock; the tallies are written to the metric values every ``FLUSH_S`` by a background thread,
before each scrape and when a gunicorn worker exits, so a scrape sees other workers at most that late)::

    fuserank_http_requests_total{route, method, status, source, degraded}
    fuserank_http_request_duration_seconds{route, source}          histogram
    fuserank_degraded_answers_total{route}                          answered live because Redis failed
    fuserank_redis_errors_total{error}                              every failed Redis call (command or pipeline)

``route`` is the URL rule (``/v1/users/<user_id>/recommendations``, ``unmatched`` for 404s),
``source`` is what the route put in ``flask.g.answer_source`` (``precomputed`` | ``live`` | ``popular``,
``none`` for routes that answer no recommendations) and ``degraded`` is ``flask.g.degraded``.

At scrape time only, from the service's view and cached pointer (``RecommendationService.view()`` and
``list_version()``, re-read at most once a second) and one ZSCORE + HGET per version per minute, never
per request::

    fuserank_model_info{model_version}                              the model version answering
    fuserank_list_version_info{list_version, list_model_version}    the list version being served
    fuserank_list_version_published_timestamp_seconds               when it became current (fuserank:versions)
    fuserank_list_version_written_timestamp_seconds                 when its lists were written (meta written_at)
    fuserank_list_version_age_seconds                               now - written (published if unknown): alert on it
    fuserank_list_pointer_valid                                     0 while fuserank:current names no list version

Multiprocess: when ``PROMETHEUS_MULTIPROC_DIR`` is set (fuserank.api.server sets a fresh temporary
directory before gunicorn forks and removes it at exit; each dead worker is marked with
``mark_process_dead``) every worker writes its counters to mmap files there and ``/metrics`` sums them,
whichever worker answers the scrape. Without it (Flask's test client, one process) a registry per app.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from bisect import bisect_left
from time import perf_counter

import redis
from flask import Response, g, request

from fuserank import keys

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_ENV = "FUSERANK_LOG_SAMPLE"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PUBLISH_TIME_TTL_S = 60.0
FLUSH_S = 0.5               # request tallies reach the metric values (and other workers' scrapes) this late

request_log = logging.getLogger("fuserank.api.requests")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _prometheus():
    """prometheus_client, in multiprocess mode when the directory is set (whatever imported it first)."""
    import prometheus_client
    import prometheus_client.multiprocess  # noqa: F401 - pc.multiprocess below
    from prometheus_client import values
    multiprocess = getattr(values.ValueClass, "_multiprocess", False)
    # prometheus_client picks its value class when first imported; the server sets the directory before
    # that, but an earlier import (a test, a plugin) must not silently lose the other workers (or write
    # into a directory that is gone).
    if multiprocess_dir() and not multiprocess:
        values.ValueClass = values.MultiProcessValue()
    elif not multiprocess_dir() and multiprocess:
        values.ValueClass = values.MutexValue
    return prometheus_client


def log_sample_rate() -> float:
    raw = os.environ.get(SAMPLE_ENV) or "0"
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{SAMPLE_ENV}: expected a fraction in 0..1 of requests to log, got {raw!r}")
    return rate


class _CountingPipeline(redis.client.Pipeline):
    _on_error = None

    def execute(self, raise_on_error: bool = True):
        try:
            return super().execute(raise_on_error)
        except redis.RedisError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise


class _CountingRedis(redis.Redis):
    """The service's own client, its class swapped so failed commands and pipelines are counted."""

    _on_error = None

    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except redis.RedisError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = _CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe._on_error = self._on_error
        return pipe


class ListVersionCollector:
    """Scrape-time gauges about the served list version, from the service's cached pointer."""

    def __init__(self, service):
        self.service = service
        self._times: dict[str, tuple[float, float | None, float | None]] = {}  # version -> (read at, published, written)
        self._lock = threading.Lock()

    def describe(self):
        return []

    def _served(self) -> tuple[str | None, str | None, str | None]:
        """(list version served, the model version it was written by, model version answering)."""
        try:
            self.service.list_version()  # the cached pointer: Redis is read at most once a second
        except Exception:  # noqa: BLE001 - Redis down: report what is being served meanwhile
            pass
        view = self.service.view()
        pointer = getattr(self.service, "_pointer", (0.0, None, None))
        list_model = pointer[2] if pointer[1] == view.list_version else None
        return view.list_version, list_model or (view.bundle.version if view.list_version else None), \
            view.bundle.version

    def _publish_times(self, version: str) -> tuple[float | None, float | None]:
        with self._lock:
            read_at, published, written = self._times.get(version, (-PUBLISH_TIME_TTL_S, None, None))
            if time.monotonic() - read_at < PUBLISH_TIME_TTL_S:
                return published, written
            try:
                with self.service.redis.pipeline(transaction=False) as pipe:
                    score, raw = pipe.zscore(keys.VERSIONS, version).hget(keys.meta(version), "written_at").execute()
                published = float(score) if score is not None else None
                written = float(raw) if raw is not None else None
                self._times = {version: (time.monotonic(), published, written)}
            except (redis.RedisError, ValueError):
                pass  # keep what was known; retried on the next scrape
            return published, written

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        version, list_model, serving = self._served()
        model = GaugeMetricFamily("fuserank_model_info", "Model version answering in this process",
                                  labels=["model_version"])
        model.add_metric([serving], 1)
        yield model
        yield GaugeMetricFamily("fuserank_list_pointer_valid", "0 while fuserank:current names no list version "
                                "(the last good one keeps answering)", value=float(self.service.pointer_valid()))
        info = GaugeMetricFamily("fuserank_list_version_info", "List version being served (fuserank:current)",
                                 labels=["list_version", "list_model_version"])
        if version is None:
            return
        info.add_metric([version, list_model or ""], 1)
        yield info
        published, written = self._publish_times(version)
        if published is not None:
            yield GaugeMetricFamily("fuserank_list_version_published_timestamp_seconds",
                                    "Unix time the served list version became current", value=published)
        if written is not None:
            yield GaugeMetricFamily("fuserank_list_version_written_timestamp_seconds",
                                    "Unix time the served list version's lists were written", value=written)
        since = written if written is not None else published
        if since is not None:
            yield GaugeMetricFamily("fuserank_list_version_age_seconds",
                                    "Seconds since the served lists were written (published when unknown)",
                                    value=max(0.0, time.time() - since))


class ApiMetrics:
    """The request metrics of one app, its Redis error counter and the ``/metrics`` exposition."""

    def __init__(self, service):
        pc = _prometheus()
        self.multiprocess = multiprocess_dir() is not None
        self.registry = pc.CollectorRegistry(auto_describe=False)
        reg = None if self.multiprocess else self.registry  # multiprocess: files are the registry
        self.requests = pc.Counter("fuserank_http_requests", "HTTP requests answered",
                                   ["route", "method", "status", "source", "degraded"], registry=reg)
        self.latency = pc.Histogram("fuserank_http_request_duration_seconds", "Time in the app per request",
                                    ["route", "source"], buckets=LATENCY_BUCKETS, registry=reg)
        self.degraded = pc.Counter("fuserank_degraded_answers", "Answers given live because Redis failed",
                                   ["route"], registry=reg)
        self.redis_errors = pc.Counter("fuserank_redis_errors", "Failed Redis calls (commands and pipelines)",
                                       ["error"], registry=reg)
        self.versions = ListVersionCollector(service)
        if not self.multiprocess:
            self.registry.register(self.versions)
        self._children: dict[tuple, tuple] = {}
        # the series a dashboard alerts on exist at 0 from the start, not only after the first error
        self._redis_children: dict[type, object] = {cls: self.redis_errors.labels(cls.__name__)
                                                    for cls in (redis.ConnectionError, redis.TimeoutError)}
        self.sample = log_sample_rate()
        self._generate_latest = pc.generate_latest
        self._multiprocess_collector = pc.multiprocess.MultiProcessCollector if self.multiprocess else None
        self.content_type = pc.CONTENT_TYPE_LATEST
        # Batching: requests are tallied in this dict and written to the metric values (mmap files under
        # gunicorn) at most every FLUSH_S by a background thread, before every scrape and at worker exit.
        # (a histogram child keeps its per-bucket values in _buckets and its sum in _sum, as prometheus_client
        # has for years; if a release changes that, every request is observed directly instead)
        self._bounds = list(getattr(self.latency, "_upper_bounds", ()))
        self._batched = bool(self._bounds) and {"_sum", "_buckets"} <= set(pc.Histogram._metric_init.__code__.co_names)
        self._pending: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m._after_fork())

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending = {}          # the parent's tallies are the parent's
        self._flusher = None

    # -- hot path: a dict lookup and three additions under an uncontended lock ----------------------
    def observe(self, route: str, method: str, status: int, source: str, degraded: bool, seconds: float) -> None:
        key = (route, method, status, source, degraded)
        if not self._batched:
            self._write(key, 1, seconds, None)
            return
        with self._lock:
            tally = self._pending.get(key)
            if tally is None:
                tally = self._pending[key] = [0, 0.0, [0] * len(self._bounds)]
            tally[0] += 1
            tally[1] += seconds
            tally[2][bisect_left(self._bounds, seconds)] += 1
        if self._flusher is None:
            self._start_flusher()

    def request_done(self, route: str, method: str, status: int, source: str, degraded: bool, seconds: float,
                     full_path) -> None:
        """Tally one answered request; log it when it failed, at debug level, or when sampled.

        ``full_path()`` gives the path and query for the log line: only called when the line is written."""
        self.observe(route, method, status, source, degraded, seconds)
        sample = self.sample
        if status >= 500 or (sample and random.random() < sample) or request_log.isEnabledFor(logging.DEBUG):
            level = logging.ERROR if status >= 500 else (logging.DEBUG if not sample else logging.INFO)
            request_log.log(level, "%s %s %d %.1f ms", method, full_path().rstrip("?"), status, seconds * 1e3,
                            extra={"fields": {"method": method, "route": route, "status": status,
                                              "ms": round(seconds * 1e3, 2), "source": source, "degraded": degraded}})

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            ref = weakref.ref(self)

            def run():
                while True:
                    time.sleep(FLUSH_S)
                    metrics = ref()
                    if metrics is None:
                        return
                    metrics.flush()
                    del metrics

            self._flusher = threading.Thread(target=run, name="fuserank-metrics-flush", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        """Write the tallies to the metric values (the multiprocess files under gunicorn)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for key, (count, total, buckets) in pending.items():
            self._write(key, count, total, buckets)

    def _write(self, key: tuple, count: int, total: float, buckets: list | None) -> None:
        children = self._children.get(key)
        if children is None:
            route, method, status, source, degraded = key
            children = self._children[key] = (
                self.requests.labels(route, method, str(status), source, "true" if degraded else "false"),
                self.latency.labels(route, source),
                self.degraded.labels(route) if degraded else None)
        children[0].inc(count)
        if buckets is None:
            children[1].observe(total)
        else:
            children[1]._sum.inc(total)
            for i, n in enumerate(buckets):
                if n:
                    children[1]._buckets[i].inc(n)
        if key[4]:
            children[2].inc(count)

    def redis_error(self, exc: Exception) -> None:
        child = self._redis_children.get(type(exc))
        if child is None:
            child = self._redis_children[type(exc)] = self.redis_errors.labels(type(exc).__name__)
        child.inc()

    def count_redis_errors(self, service) -> None:
        client = getattr(service, "redis", None)
        if isinstance(client, redis.Redis) and type(client) in (redis.Redis, _CountingRedis):
            client.__class__ = _CountingRedis
            client._on_error = self.redis_error

    # -- scrape -------------------------------------------------------------------------------------
    def exposition(self) -> bytes:
        self.flush()
        if not self.multiprocess:
            return self._generate_latest(self.registry)
        registry = self._fresh_registry()
        self._multiprocess_collector(registry)
        registry.register(self.versions)
        return self._generate_latest(registry)

    @staticmethod
    def _fresh_registry():
        from prometheus_client import CollectorRegistry
        return CollectorRegistry(auto_describe=False)


class _StartTime:
    """WSGI middleware: the request's start time in the environ (cheaper than a before_request hook)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        environ["fuserank.t0"] = perf_counter()
        return self.wsgi_app(environ, start_response)


def install(app, service) -> ApiMetrics:
    """Request metrics, sampled request lines and ``GET /metrics`` on ``app``."""
    metrics = ApiMetrics(service)
    metrics.count_redis_errors(service)
    app.extensions["fuserank_metrics"] = metrics
    def _after(response):
        req = request._get_current_object()
        t0 = req.environ.get("fuserank.t0")
        ctx = g._get_current_object().__dict__
        rule = req.url_rule
        metrics.request_done(rule.rule if rule is not None else "unmatched", req.method, response.status_code,
                             ctx.get("answer_source") or "none", bool(ctx.get("degraded")),
                             perf_counter() - t0 if t0 is not None else 0.0, lambda: req.full_path)
        return response

    def metrics_view():
        return Response(metrics.exposition(), mimetype=None, content_type=metrics.content_type)

    app.wsgi_app = _StartTime(app.wsgi_app)
    app.after_request(_after)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    return metrics
