"""HTTP endpoints (blueprints). Parameters are parsed strictly: a bad one is a 400 that names it."""
from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, request

from fuserank.api.errors import BadParameter, NotFound

MAX_N = 200
MAX_ID = 2**63 - 1
_UINT = re.compile(r"[0-9]{1,19}")

recommendations = Blueprint("recommendations", __name__, url_prefix="/v1")
health = Blueprint("health", __name__)


def _service():
    return current_app.extensions["fuserank"]


def parse_id(name: str, raw: str) -> int:
    if not _UINT.fullmatch(raw) or int(raw) > MAX_ID:
        raise BadParameter(name, f"must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def parse_n() -> int:
    raw = request.args.get("n", "10")
    if not _UINT.fullmatch(raw) or not 1 <= int(raw) <= MAX_N:
        raise BadParameter("n", f"must be an integer in 1..{MAX_N}, got {raw[:40]!r}")
    return int(raw)


def parse_bool(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadParameter(name, f"must be true or false, got {raw[:40]!r}")
    return raw in ("true", "1")


def parse_source() -> bool:
    raw = request.args.get("source")
    if raw not in (None, "live", "auto"):
        raise BadParameter("source", f"must be 'live' (force the live path) or absent, got {raw[:40]!r}")
    return raw == "live"


@recommendations.get("/users/<user_id>/recommendations")
def user_recommendations(user_id: str):
    uid = parse_id("user_id", user_id)
    n, live, adult = parse_n(), parse_source(), parse_bool("include_adult")
    answer = _service().user_recommendations(uid, n, live=live, include_adult=adult)
    return jsonify(answer.body("user_id", uid))


@recommendations.get("/anime/<anime_id>/similar")
def similar_anime(anime_id: str):
    aid = parse_id("anime_id", anime_id)
    n, adult = parse_n(), parse_bool("include_adult")
    answer = _service().similar_anime(aid, n, include_adult=adult)
    if answer is None:
        raise NotFound(f"anime {aid} is not in model {_service().model.version}")
    return jsonify(answer.body("anime_id", aid))


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    service = _service()
    state = {"model_version": service.model.version, **service.redis_state()}
    ready = state.get("list_version") is not None
    return jsonify({"ready": ready, **state}), 200 if ready else 503
