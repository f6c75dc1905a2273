"""Prometheus metrics at ``GET /metrics``, aggregated over every gunicorn worker.

Per request (the ``after_request`` hook, or the hot route)::

    fuserank_http_requests_total{route, method, status, source, degraded}
    fuserank_http_request_duration_seconds{route, source}          histogram
    fuserank_degraded_answers_total{route}                          answered live because Redis failed
    fuserank_redis_errors_total{error}                              every failed Redis call (the breaker's)

``route`` is the URL rule (``/v1/users/<user_id>/recommendations``, ``unmatched`` for 404s),
``source`` is what the route put in ``flask.g.answer_source`` (``precomputed`` | ``live`` | ``popular`` | ``fresh``,
``none`` for routes that answer no recommendations) and ``degraded`` is ``flask.g.degraded``.

At scrape time only, from the service's view and pointer (re-read at most once a second) and one
ZSCORE + HGET per version per minute, never per request::

    fuserank_model_info{model_version}                              the model version answering
    fuserank_list_version_info{list_version, list_model_version}    the list version being served
    fuserank_list_version_published_timestamp_seconds               when it became current (fuserank:versions)
    fuserank_list_version_written_timestamp_seconds                 when its lists were written (meta written_at)
    fuserank_list_version_age_seconds                               now - written (published if unknown): alert on it
    fuserank_list_pointer_valid                                     0 while fuserank:current names no list version

The feedback backlog and the online evaluation's gauges: fuserank.api.feedback_metrics.

Multiprocess: prometheus_client's own mode, chosen by it from ``PROMETHEUS_MULTIPROC_DIR`` when it is first
imported (fuserank.api.server exports a fresh directory before that and removes it at exit; each dead
worker is marked with ``mark_process_dead``): every worker writes its values to files there and
``/metrics`` sums them, whichever worker answers the scrape. Without it, one registry per app.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from time import perf_counter

import prometheus_client as pc
import redis
from flask import Response, g, request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from fuserank.api.feedback_metrics import FeedbackCollector
from fuserank.redis_client import layout
from fuserank.config import environment

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PUBLISH_TIME_TTL_S = 60.0

request_log = logging.getLogger("fuserank.api.requests")


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
        view, _ = self.service.request_view()   # the pointer re-read when due; when Redis is down, what is served
        pointer = self.service.registry.pointer
        list_model = pointer.model_version if pointer.current == view.list_version else None
        return view.list_version, list_model or (view.bundle.version if view.list_version else None), \
            view.bundle.version

    def _publish_times(self, version: str) -> tuple[float | None, float | None]:
        read_at, published, written = self._times.get(version, (-PUBLISH_TIME_TTL_S, None, None))
        if time.monotonic() - read_at < PUBLISH_TIME_TTL_S:
            return published, written
        # Not waited for: in a gevent worker the lock is an OS lock held across a Redis read, and a second
        # scrape blocking on it would stop the whole worker. That scrape reports what was known.
        if not self._lock.acquire(blocking=False):
            return published, written
        try:
            k = layout(self.service.redis)
            with self.service.redis.pipeline(transaction=False) as pipe:
                score, raw = pipe.zscore(k.versions, version).hget(k.meta(version), "written_at").execute()
            published = float(score) if score is not None else None
            written = float(raw) if raw is not None else None
            self._times = {version: (time.monotonic(), published, written)}
        except redis.RedisError as exc:     # keep what was known; retried on the next scrape
            self.service.breaker.failed(exc)
        except ValueError:
            pass
        finally:
            self._lock.release()
        return published, written

    def collect(self):
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

    def __init__(self, service, log_sample: float = 0.0):
        if not 0.0 <= log_sample <= 1.0:
            raise ValueError(f"log_sample: expected a fraction in 0..1 of requests to log, got {log_sample!r}")
        self.multiprocess = environment().prometheus_dir is not None
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
        self.registry.register(self.versions)
        self.registry.register(FeedbackCollector(service))   # backlog and online evaluation (its own module)
        if self.multiprocess:
            MultiProcessCollector(self.registry)     # registers itself: each scrape sums the workers' files
        self._children: dict[tuple, tuple] = {}
        for error in (redis.ConnectionError, redis.TimeoutError):   # alerted-on series exist at 0 from the start
            self.redis_errors.labels(error.__name__)
        self.sample = log_sample

    def observe(self, route: str, method: str, status: int, source: str, degraded: bool, seconds: float) -> None:
        key = (route, method, status, source, degraded)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status), source, "true" if degraded else "false"),
                self.latency.labels(route, source), self.degraded.labels(route) if degraded else None)
        children[0].inc()
        children[1].observe(seconds)
        if degraded:
            children[2].inc()

    def request_done(self, route: str, method: str, status: int, source: str, degraded: bool, seconds: float,
                     full_path) -> None:
        """Count one answered request; log it when it failed, at debug level, or when sampled.

        ``full_path()`` gives the path and query for the log line: only called when the line is written."""
        self.observe(route, method, status, source, degraded, seconds)
        sample = self.sample
        if status >= 500 or (sample and random.random() < sample) or request_log.isEnabledFor(logging.DEBUG):
            level = logging.ERROR if status >= 500 else (logging.DEBUG if not sample else logging.INFO)
            request_log.log(level, "%s %s %d %.1f ms", method, full_path().rstrip("?"), status, seconds * 1e3,
                            extra={"fields": {"method": method, "route": route, "status": status,
                                              "ms": round(seconds * 1e3, 2), "source": source, "degraded": degraded}})

    def redis_error(self, exc: Exception) -> None:
        self.redis_errors.labels(type(exc).__name__).inc()

    def exposition(self) -> bytes:
        return pc.generate_latest(self.registry)


class _StartTime:
    """WSGI middleware: the request's start time in the environ (cheaper than a before_request hook)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        environ["fuserank.t0"] = perf_counter()
        return self.wsgi_app(environ, start_response)


def install(app, service, log_sample: float = 0.0) -> ApiMetrics:
    """Request metrics, ``log_sample`` of the request lines and ``GET /metrics`` on ``app``."""
    metrics = ApiMetrics(service, log_sample)
    service.breaker.listeners.append(metrics.redis_error)
    app.extensions["fuserank_metrics"] = metrics
    def _after(response):
        t0 = request.environ.get("fuserank.t0")
        rule, full_path = request.url_rule, request.full_path
        metrics.request_done(rule.rule if rule is not None else "unmatched", request.method, response.status_code,
                             g.get("answer_source") or "none", bool(g.get("degraded")),
                             perf_counter() - t0 if t0 is not None else 0.0, lambda: full_path)
        return response

    def metrics_view():
        return Response(metrics.exposition(), mimetype=None, content_type=pc.CONTENT_TYPE_LATEST)

    app.wsgi_app = _StartTime(app.wsgi_app)
    app.after_request(_after)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    return metrics
