"""Flask application factory: the service lives on the app, routes in blueprints, errors as JSON."""
from __future__ import annotations

from flask import Flask

from fuserank.api import errors
from fuserank.api.routes import health, recommendations
from fuserank.api.service import RecommendationService
from fuserank.config import HybridSettings

MAX_BODY_BYTES = 64 * 1024


def create_app(model_dir: str, redis_url: str, settings: HybridSettings | None = None,
               service: RecommendationService | None = None) -> Flask:
    app = Flask("fuserank")
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    app.extensions["fuserank"] = service or RecommendationService(model_dir, redis_url, settings)
    app.register_blueprint(recommendations)
    app.register_blueprint(health)
    errors.register(app)
    return app
