"""Runs the Flask app under gunicorn (never Flask's debug server), model loaded once before forking."""
from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from fuserank.api.app import create_app

log = logging.getLogger("fuserank.api")


class GunicornApp(BaseApplication):
    def __init__(self, app, options: dict):
        self.application, self.options = app, options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict:
    return {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync", "preload_app": True,
            "timeout": 30, "graceful_timeout": 10, "keepalive": 5, "accesslog": None, "loglevel": "warning"}


def serve(model_dir: str, redis_url: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
          threads: int = 4, settings=None) -> None:
    app = create_app(model_dir, redis_url, settings)
    log.info("serving on http://%s:%d (%d workers x %d threads)", host, port, workers, threads)
    GunicornApp(app, gunicorn_options(host, port, workers, threads)).run()
