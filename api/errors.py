"""Every error the API returns is JSON with a message; unexpected exceptions are 500s, logged."""
from __future__ import annotations

import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("fuserank.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class BadParameter(ApiError):
    def __init__(self, name: str, message: str):
        super().__init__(400, f"{name}: {message}")
        self.parameter = name


class NotFound(ApiError):
    def __init__(self, message: str):
        super().__init__(404, message)


class Unavailable(ApiError):
    def __init__(self, message: str):
        super().__init__(503, message)


def _body(status: int, message: str, **extra):
    return jsonify({"error": {"status": status, "message": message, **extra}}), status


def register(app) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        extra = {"parameter": exc.parameter} if isinstance(exc, BadParameter) else {}
        return _body(exc.status, exc.message, **extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _body(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return _body(500, "internal error")
