"""Every error the API returns is JSON with a message; unexpected exceptions are 500s, logged.

    400 BadParameter     a parameter, path segment or body field is invalid (``parameter`` names it)
    401 Unauthorized     POST without the right ``X-API-Key`` when API keys are configured (``ServeSettings.api_key``)
    404 NotFound         an anime the model does not know; a route that does not exist
    405                  a method the route does not take (``Allow`` lists those it does)
    413                  a body above the configured limit (``MAX_CONTENT_LENGTH``)
    429 TooManyRequests  over the POST rate limit (``Retry-After`` says when to come back)
    503 Unavailable      nothing to answer from
    500                  anything else: a bug, logged with its traceback, never turned into a 4xx

Body: ``{"error": {"status": N, "message": "...", ["parameter": "..."]}}``. A 404 or 405 for a path outside
the API (``API_PREFIX``, ``API_PATHS``) is the web page's HTML error page instead: a person typed or followed that link.
"""
from __future__ import annotations

import logging

from flask import jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger("fuserank.api")

_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
API_PREFIX = "/v1/"
API_PATHS = ("/v1", "/healthz", "/readyz", "/openapi.json", "/metrics")   # with API_PREFIX: JSON errors


class ApiError(Exception):
    headers: dict = {}

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class BadParameter(ApiError):
    def __init__(self, name: str, message: str):
        super().__init__(400, f"{name}: {message}")
        self.parameter = name


class Unauthorized(ApiError):
    def __init__(self, message: str):
        super().__init__(401, message)
        self.headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}


class NotFound(ApiError):
    def __init__(self, message: str):
        super().__init__(404, message)


class TooManyRequests(ApiError):
    def __init__(self, message: str, retry_after: int):
        super().__init__(429, message)
        self.headers = {"Retry-After": str(int(retry_after))}


class Unavailable(ApiError):
    def __init__(self, message: str):
        super().__init__(503, message)


def _body(status: int, message: str, headers=None, **extra):
    response = jsonify({"error": {"status": status, "message": message, **extra}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        extra = {"parameter": exc.parameter} if isinstance(exc, BadParameter) else {}
        return _body(exc.status, exc.message, exc.headers, **extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if isinstance(exc, RequestEntityTooLarge):
            limit = request.max_content_length
            return _body(413, f"request body too large: the limit is {limit} bytes", parameter="body")
        if exc.code is None or exc.code >= 500:
            log.error("HTTP %s: %s", exc.code, exc.description)
        kept = {k: v for k, v in exc.get_headers() if k in _KEPT_HEADERS}
        if exc.code in (404, 405) and not (request.path.startswith(API_PREFIX) or request.path in API_PATHS):
            page = render_template("error.html", status=exc.code, message=exc.description or exc.name)
            return page, exc.code, kept
        return _body(exc.code or 500, exc.description or exc.name, kept)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return _body(500, "internal error")
