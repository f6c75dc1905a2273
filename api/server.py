"""Runs the Flask app under gunicorn (never Flask's debug server), model loaded once before forking.

Before the app is built (and so before prometheus_client creates a metric) a fresh temporary
``PROMETHEUS_MULTIPROC_DIR`` is set up unless one is given, so ``/metrics`` sums every worker; each
worker that exits is marked dead there, and the directory the server made is removed when it stops.
Logging goes through fuserank.logs (``LOG_FORMAT=json`` for JSON lines), gunicorn's own lines included.

Worker model: ``gevent`` (2 workers, up to ``WORKER_CONNECTIONS`` connections each;
``ServeSettings.worker_class`` / ``--worker-class`` to override). The pod serves clients directly, with no
buffering proxy in front, and a thread-per-connection worker is held by any client that sends part of its
headers and then nothing: with gthread (2 x 4 threads) 8 such sockets stop the API. A gevent worker holds
each of them as a greenlet waiting on its socket and keeps answering everyone else (tests/test_slow_clients.py,
benchmarks/bench_slow_clients.py). On benchmarks/bench_serving.py it keeps gthread's throughput
against the floor and a shorter paced tail, with a longer tail at saturation (each worker is one event loop
serving its connections in turn; figures in benchmarks/README.md "Serving").
Each gevent worker listens on its own ``SO_REUSEPORT`` socket (gunicorn's ``reuse_port``), so the kernel
spreads connections across workers; on one shared socket the event loop that wakes first accepts most of
the kept-alive connections and the other core idles. gunicorn's gevent worker
monkey-patches each worker after the fork; a model load runs on an OS thread (api.registry), not as a
greenlet that would stop the worker's answers until it is done.
``gthread`` (``--threads`` per worker) and ``sync`` remain for comparison.

Requests gunicorn itself refuses before the app sees them (a request line over ``LIMIT_REQUEST_LINE``, too
many or too large headers, an unparsable request) are answered in the API's JSON error form
(``JsonErrors``), not gunicorn's HTML page. The request line limit is gunicorn's ceiling, so the GET
limits in schemas/openapi.json fit it even percent-encoded.

gunicorn's control socket (for ``gunicornc``, unused here) is off: it lives under ``$HOME``, which the
images' user does not have, on a read-only root.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.util import load_class

from fuserank import logs
from fuserank.config import ServeSettings, environment, export, unset

log = logging.getLogger("fuserank.api")
WORKER_CLASSES = ("sync", "gthread", "gevent")
DEFAULT_WORKER_CLASS = "gevent"
WORKER_CONNECTIONS = 1000     # per gevent worker (gunicorn's default): slow clients held open count here
LIMIT_REQUEST_LINE = 8190       # gunicorn's maximum (its default is 4094)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class GunicornApp(BaseApplication):
    def __init__(self, app, options: dict):
        self.application, self.options = app, options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


class RootLogger(GunicornLogger):
    """gunicorn's error log through the root logger, so it gets FuseRank's format (plain or JSON)."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


class _Captured:
    """Stands in for the client socket while gunicorn writes its error page, keeping the bytes."""

    def __init__(self):
        self.data = b""

    def gettimeout(self):
        return 0.0

    def sendall(self, data):
        self.data += data


class JsonErrors:
    """Worker mixin: gunicorn's own error answers (414, 431, 400 ...) as ``{"error": {...}}`` JSON.

    gunicorn's ``handle_error`` logs and picks the status; its page is written to ``_Captured`` and only
    its status line is kept.
    """

    def handle_error(self, req, client, addr, exc):
        captured = _Captured()
        super().handle_error(req, captured, addr, exc)
        parts = captured.data.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 3 or not parts[1].isdigit():
            return
        status, reason = int(parts[1]), parts[2].decode("latin-1")
        message = str(exc) if status < 500 else "internal error"
        body = json.dumps({"error": {"status": status, "message": message}}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            client.sendall(head + body)
        except OSError:
            log.debug("could not send the error answer")


def json_error_worker(name: str) -> type:
    """The gunicorn worker class ``name`` (sync, gthread, gevent) with ``JsonErrors`` mixed in."""
    base = load_class(name, section="gunicorn.workers")
    return type(f"JsonErrors{base.__name__}", (JsonErrors, base), {})


def _child_exit(server, worker):
    """A worker is gone: drop its live gauges from the multiprocess directory (counters stay summed)."""
    if environment().prometheus_dir:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def _worker_exit(server, worker):
    """A worker is leaving: collect what ``gc.freeze()`` kept, while every module still works. Left to the
    interpreter's teardown, a gevent worker's dropped logging handlers are collected after gevent's thread
    module is gone, and each prints a traceback on stderr instead of a log line."""
    gc.unfreeze()
    gc.collect()


def worker_class(requested: str | None = None) -> str:
    chosen = requested or DEFAULT_WORKER_CLASS
    if chosen not in WORKER_CLASSES:
        raise ValueError(f"worker_class: expected one of {', '.join(WORKER_CLASSES)}, got {chosen!r}")
    return chosen


def gunicorn_options(host: str, port: int, workers: int, threads: int, klass: str | None = None) -> dict:
    klass = klass or worker_class()
    options = {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
               "worker_class": json_error_worker(klass), "limit_request_line": LIMIT_REQUEST_LINE,
               "preload_app": True, "timeout": 30, "graceful_timeout": 10, "keepalive": 5, "accesslog": None,
               "loglevel": "warning", "logger_class": RootLogger, "child_exit": _child_exit,
               "worker_exit": _worker_exit, "control_socket_disable": True}
    if klass == "gevent":
        # Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections evenly: on a
        # shared socket, one event loop that wakes first accepts most of the kept-alive connections.
        options.update(worker_connections=WORKER_CONNECTIONS, reuse_port=True)
    return options


class MultiprocessDir:
    """The metrics directory: the given one, or a fresh temporary one that only this process removes."""

    def __init__(self):
        self.pid = os.getpid()
        self.path = environment().prometheus_dir
        self.owned = not self.path
        if self.owned:
            self.path = tempfile.mkdtemp(prefix="fuserank-metrics-")
            export(MULTIPROC_ENV, self.path)
        else:
            os.makedirs(self.path, exist_ok=True)

    def close(self):
        # Forked workers leave serve() through the same finally: only the process that made it removes it.
        if self.owned and os.getpid() == self.pid:
            shutil.rmtree(self.path, ignore_errors=True)
            if environment().prometheus_dir == self.path:
                unset(MULTIPROC_ENV)


def serve(settings: ServeSettings) -> None:
    logs.configure()
    s = settings
    klass = worker_class(s.worker_class)
    metrics_dir = MultiprocessDir()
    try:
        from fuserank.api.app import create_app  # after the directory is set: metrics are built multiprocess
        app = create_app(s)
        # Everything loaded so far lives as long as the workers: out of the collector's reach, no full
        # collection walks it between requests (a p95 cost), and forked workers keep sharing its pages.
        gc.collect()
        gc.freeze()
        log.info("serving on http://%s:%d (%d %s workers%s); metrics of every worker summed in %s", s.host, s.port,
                 s.workers, klass, f" x {s.threads} threads" if klass == "gthread" else "", metrics_dir.path)
        GunicornApp(app, gunicorn_options(s.host, s.port, s.workers, s.threads, klass)).run()
    finally:
        metrics_dir.close()
