"""Flask application factory: the service lives on the app, routes in blueprints, errors as JSON.

Besides the API blueprints the app carries the web page (fuserank.api.web, at ``/``) and the
Prometheus metrics (fuserank.api.metrics: per-request hooks and ``GET /metrics``). In front of Flask sit
the hot routes (fuserank.api.hotpath): the plain ``GET /v1/users/<id>/recommendations[?n=K]`` and ``PUT
/v1/users/<id>/ratings/<anime>`` of a rating are answered without Flask's dispatch, everything else passes through. Its log lines carry the loaded model version
and the list version being served (read from the service's cached pointer).
"""
from __future__ import annotations

from flask import Flask

from fuserank import logs
from fuserank.api import errors, metrics, web
from fuserank.api.admin import admin
from fuserank.api.feedback import feedback
from fuserank.api.hotpath import HotRoute
from fuserank.api.routes import health, recommendations
from fuserank.api.service import RecommendationService
from fuserank.config import ServeSettings

MAX_BODY_BYTES = 64 * 1024


def _served(service, field: str):
    def read():  # the view being served: an attribute read, no I/O (it runs for every log line)
        view = service.view()
        return view.list_version if field == "list_version" else view.bundle.version
    return read


def create_app(settings: ServeSettings, *, service: RecommendationService | None = None, instrument: bool = True,
               hot_route: bool = True) -> Flask:
    """The app serving ``settings``. ``instrument=False`` leaves out the metrics hooks and ``/metrics``;
    ``hot_route=False`` sends every request through Flask's dispatch (fuserank.api.hotpath; both are the
    serving benchmark's A/Bs)."""
    if settings.rate_limit < 0 or settings.rate_window_s < 1:
        raise ValueError(f"rate_limit must be >= 0 and rate_window_s >= 1, got {settings.rate_limit} and "
                         f"{settings.rate_window_s}")
    app = Flask("fuserank", static_folder=None)  # the web blueprint serves /static
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    # An id holding "/" arrives %2F-decoded as "//": a 404 JSON like any unknown path, not werkzeug's HTML
    # 308 redirect to the merged path (which would answer a different id).
    app.url_map.merge_slashes = False
    service = service or RecommendationService(settings)
    app.extensions["fuserank"] = service
    app.extensions["fuserank_settings"] = settings
    app.register_blueprint(recommendations)
    app.register_blueprint(health)
    app.register_blueprint(admin)
    app.register_blueprint(feedback)
    web.register(app)
    errors.register(app)
    recorder = metrics.install(app, service, settings.log_sample) if instrument else None
    if hot_route:
        app.wsgi_app = HotRoute(app.wsgi_app, service, recorder, settings)
    logs.provide("model_version", _served(service, "model_version"))   # follows version switches
    logs.provide("list_version", _served(service, "list_version"))
    return app
