"""HTTP endpoints (blueprints). Parameters are parsed strictly: a bad one is a 400 that names it."""
from __future__ import annotations

import json
import re

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from fuserank.api.errors import BadParameter, NotFound

MAX_N = 200
MAX_ID = 2**63 - 1
_UINT = re.compile(r"[0-9]{1,19}")

recommendations = Blueprint("recommendations", __name__, url_prefix="/v1")
health = Blueprint("health", __name__)


def _service():
    return current_app.extensions["fuserank"]


def _json(body: bytes):
    return current_app.response_class(body, mimetype="application/json")


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
    return _json(answer.to_json("user_id", uid))


MAX_RATINGS = 1000


def _json_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadParameter(name, f"must be an integer in {lo}..{hi}, got {json.dumps(value)[:40]}")
    return value


def parse_new_user() -> tuple[list[int], list[int], int]:
    body = request.get_json(silent=True)
    if body is None:
        raise BadParameter("body", "must be a JSON object with 'ratings' (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise BadParameter("body", "must be a JSON object")
    unknown = set(body) - {"ratings", "n"}
    if unknown:
        raise BadParameter(sorted(unknown)[0], "unknown field")
    ratings = body.get("ratings")
    if not isinstance(ratings, list) or not 1 <= len(ratings) <= MAX_RATINGS:
        raise BadParameter("ratings", f"must be a list of 1..{MAX_RATINGS} {{anime_id, rating}} objects")
    anime_ids, values = [], []
    for i, item in enumerate(ratings):
        if not isinstance(item, dict) or set(item) != {"anime_id", "rating"}:
            raise BadParameter(f"ratings[{i}]", "must be an object with exactly anime_id and rating")
        anime_ids.append(_json_int(f"ratings[{i}].anime_id", item["anime_id"], 0, MAX_ID))
        values.append(_json_int(f"ratings[{i}].rating", item["rating"], 1, 10))
    n = _json_int("n", body.get("n", 10), 1, MAX_N)
    return anime_ids, values, n


@recommendations.post("/recommendations")
def new_user_recommendations():
    """A user the model has never seen, described by their ratings: folded into the embedding space."""
    anime_ids, ratings, n = parse_new_user()
    answer, ignored = _service().new_user_recommendations(np.array(anime_ids, np.int64), np.array(ratings),
                                                          n, include_adult=parse_bool("include_adult"))
    body = answer.body("user_id", None)
    body["ignored_anime_ids"] = ignored
    return jsonify(body)


@recommendations.get("/anime/<anime_id>/similar")
def similar_anime(anime_id: str):
    aid = parse_id("anime_id", anime_id)
    n, adult = parse_n(), parse_bool("include_adult")
    answer = _service().similar_anime(aid, n, include_adult=adult)
    if answer is None:
        raise NotFound(f"anime {aid} is not in model {_service().model.version}")
    return _json(answer.to_json("anime_id", aid))


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    service = _service()
    state = {"model_version": service.model.version, **service.redis_state()}
    ready = state.get("list_version") is not None
    return jsonify({"ready": ready, **state}), 200 if ready else 503
