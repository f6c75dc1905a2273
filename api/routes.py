"""HTTP endpoints (blueprints). Parameters are parsed strictly: a bad one is a 400 that names it.

The OpenAPI description of every endpoint is ``schemas/openapi.json``, served at ``GET /openapi.json``.

Configuration (``app.config``, read from the environment when the blueprint is registered; set the keys
on ``app.config`` to override):

    FUSERANK_API_KEY         unset: POST /v1/recommendations is open; set (one key, or several separated
                             by commas): it requires header ``X-API-Key`` with one of them (401 otherwise)
    FUSERANK_RATE_LIMIT      POST /v1/recommendations calls per client and window (default 60; 0 = off)
    FUSERANK_RATE_WINDOW_S   the fixed window in seconds (default 60)

A client is its API key when keys are configured, else its address (``request.remote_addr``: behind a
proxy, the app must be wrapped in werkzeug's ProxyFix to see the caller's address).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from functools import lru_cache

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from fuserank.api.errors import BadParameter, TooManyRequests, Unauthorized
from fuserank.api.service import NO_FILTERS, Filters

DEFAULT_N = 10
MAX_N = 200
MAX_ID = 2**63 - 1
MAX_RATINGS = 1000
MAX_EXCLUDE = 1000
MAX_FILTER_NAMES = 50
UINT = re.compile(r"[0-9]{1,19}")      # an id or count as the routes accept it (also the hot route's)
API_KEY_HEADER = "X-API-Key"
DEFAULT_RATE_LIMIT = 60
DEFAULT_RATE_WINDOW_S = 60

recommendations = Blueprint("recommendations", __name__, url_prefix="/v1")
USER_RECOMMENDATIONS = "/v1/users/<user_id>/recommendations"     # also fuserank.api.hotpath's route label
health = Blueprint("health", __name__)


def _env_int(name: str, default: int, lo: int) -> int:
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {raw!r}") from None
    if value < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {raw!r}")
    return value


@recommendations.record_once
def _configure(state) -> None:
    """The POST guard's settings from the environment (credentials never come from files in the repo)."""
    config = state.app.config
    config.setdefault("FUSERANK_API_KEY", os.environ.get("FUSERANK_API_KEY") or None)
    config.setdefault("FUSERANK_RATE_LIMIT", _env_int("FUSERANK_RATE_LIMIT", DEFAULT_RATE_LIMIT, 0))
    config.setdefault("FUSERANK_RATE_WINDOW_S", _env_int("FUSERANK_RATE_WINDOW_S", DEFAULT_RATE_WINDOW_S, 1))


def _service():
    return current_app.extensions["fuserank"]


def _json(body: bytes):
    return current_app.response_class(body, mimetype="application/json")


def _answered(answer) -> None:
    """What the metrics' after_request hook reads."""
    g.answer_source = answer.source
    g.degraded = answer.degraded


def parse_id(name: str, raw: str) -> int:
    if not UINT.fullmatch(raw) or int(raw) > MAX_ID:
        raise BadParameter(name, f"must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def _arg(args, name: str, default: str | None = None) -> str | None:
    """A query parameter; ``in`` first, because MultiDict.get raises and catches for an absent key.

    Routes read ``request.args`` once and pass it down: every ``request`` access is a context-local lookup."""
    return args[name] if name in args else default


def parse_n(args) -> int:
    raw = _arg(args, "n", str(DEFAULT_N))
    if not UINT.fullmatch(raw) or not 1 <= int(raw) <= MAX_N:
        raise BadParameter("n", f"must be an integer in 1..{MAX_N}, got {raw[:40]!r}")
    return int(raw)


def parse_bool(args, name: str, default: bool = False) -> bool:
    raw = _arg(args, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise BadParameter(name, f"must be true or false, got {raw[:40]!r}")
    return lowered in ("true", "1")


def parse_source(args) -> bool:
    raw = _arg(args, "source")
    if raw not in (None, "live", "auto"):
        raise BadParameter("source", f"must be 'live' (force the live path) or absent, got {raw[:40]!r}")
    return raw == "live"


def _names(args, name: str) -> tuple[str, ...]:
    raw = _arg(args, name)
    if raw is None:
        return ()
    names = tuple(part.strip() for part in raw.split(","))
    if not all(names) or len(names) > MAX_FILTER_NAMES or any(len(x) > 64 for x in names):
        raise BadParameter(name, f"must be 1..{MAX_FILTER_NAMES} comma-separated names, got {raw[:40]!r}")
    return names


def parse_filters(args) -> Filters:
    if "exclude" not in args and "genre" not in args and "type" not in args:
        return NO_FILTERS
    exclude = ()
    raw = _arg(args, "exclude")
    if raw is not None:
        parts = raw.split(",")
        if len(parts) > MAX_EXCLUDE or not all(UINT.fullmatch(p) and int(p) <= MAX_ID for p in parts):
            raise BadParameter("exclude", f"must be 1..{MAX_EXCLUDE} comma-separated non-negative anime ids, "
                                          f"got {raw[:40]!r}")
        exclude = tuple(int(p) for p in parts)
    return Filters(exclude, _names(args, "genre"), _names(args, "type"))


@recommendations.get(USER_RECOMMENDATIONS.removeprefix(recommendations.url_prefix))
def user_recommendations(user_id: str):
    uid, args = parse_id("user_id", user_id), request.args
    n, live, adult = parse_n(args), parse_source(args), parse_bool(args, "include_adult")
    filters, explain = parse_filters(args), parse_bool(args, "explain", True)
    answer = _service().user_recommendations(uid, n, live=live, include_adult=adult, filters=filters,
                                             explain=explain)
    _answered(answer)
    return _json(answer.to_json("user_id", uid))


def _json_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadParameter(name, f"must be an integer in {lo}..{hi}, got {json.dumps(value)[:40]}")
    return value


def parse_new_user() -> tuple[list[int], list[int], int]:
    if not request.is_json:
        raise BadParameter("body", "must be a JSON object with 'ratings' (Content-Type: application/json)")
    data = request.get_data(cache=True)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()   # a chunked body is cut at the limit by werkzeug, silently
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):     # malformed JSON, bad UTF-8, nesting too deep
        raise BadParameter("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("body", "must be a JSON object")
    unknown = set(body) - {"ratings", "n"}
    if unknown:
        raise BadParameter(sorted(unknown)[0][:40], "unknown field")
    ratings = body.get("ratings")
    if not isinstance(ratings, list) or not 1 <= len(ratings) <= MAX_RATINGS:
        sent = f"{len(ratings)} were sent" if isinstance(ratings, list) else f"got {json.dumps(ratings)[:40]}"
        raise BadParameter("ratings", f"must be a list of 1..{MAX_RATINGS} {{anime_id, rating}} objects, {sent}")
    anime_ids, values, seen = [], [], {}
    for i, item in enumerate(ratings):
        if not isinstance(item, dict) or set(item) != {"anime_id", "rating"}:
            raise BadParameter(f"ratings[{i}]", "must be an object with exactly anime_id and rating")
        anime_id = _json_int(f"ratings[{i}].anime_id", item["anime_id"], 0, MAX_ID)
        if anime_id in seen:
            raise BadParameter(f"ratings[{i}].anime_id", f"anime {anime_id} is rated twice "
                                                         f"(ratings[{seen[anime_id]}] and ratings[{i}])")
        seen[anime_id] = i
        anime_ids.append(anime_id)
        values.append(_json_int(f"ratings[{i}].rating", item["rating"], 1, 10))
    n = _json_int("n", body.get("n", 10), 1, MAX_N)
    return anime_ids, values, n


def _client_of(api_key: str | None) -> str:
    if api_key is not None:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return "addr:" + (request.remote_addr or "unknown")


def guard_post() -> None:
    """API key (when configured), then the per-client rate limit shared through Redis."""
    config = current_app.config
    configured = config.get("FUSERANK_API_KEY")
    given = None
    if configured:
        given = request.headers.get(API_KEY_HEADER)
        valid = [k.strip() for k in str(configured).split(",") if k.strip()]
        if given is None or not any(hmac.compare_digest(given.encode(), k.encode()) for k in valid):
            raise Unauthorized(f"this endpoint needs a valid {API_KEY_HEADER} header")
    enforce_rate_limit(_client_of(given), "rate limit of {limit} requests per {window}s exceeded")


def enforce_rate_limit(client: str, message: str) -> None:
    """The configured per-client limit (shared through Redis): 429 with ``message`` + retry time when over it."""
    config = current_app.config
    limit = int(config.get("FUSERANK_RATE_LIMIT") or 0)
    if limit > 0:
        window = int(config.get("FUSERANK_RATE_WINDOW_S") or DEFAULT_RATE_WINDOW_S)
        retry_after = _service().rate_limit(client, limit, window)
        if retry_after is not None:
            raise TooManyRequests(f"{message.format(limit=limit, window=window)}; retry in {retry_after}s",
                                  retry_after)


@recommendations.post("/recommendations")
def new_user_recommendations():
    """A user the model has never seen, described by their ratings: folded into the embedding space."""
    guard_post()
    anime_ids, ratings, n = parse_new_user()
    args = request.args
    adult, filters, explain = parse_bool(args, "include_adult"), parse_filters(args), parse_bool(args, "explain", True)
    answer, ignored = _service().new_user_recommendations(np.array(anime_ids, np.int64), np.array(ratings), n,
                                                          include_adult=adult, filters=filters, explain=explain)
    _answered(answer)
    body = answer.body("user_id", None)
    body["ignored_anime_ids"] = ignored
    return jsonify(body)


@recommendations.get("/anime/<anime_id>/similar")
def similar_anime(anime_id: str):
    aid, args = parse_id("anime_id", anime_id), request.args
    n, adult = parse_n(args), parse_bool(args, "include_adult")
    filters, explain = parse_filters(args), parse_bool(args, "explain", True)
    answer = _service().similar_anime(aid, n, include_adult=adult, filters=filters, explain=explain)
    _answered(answer)
    return _json(answer.to_json("anime_id", aid))


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    """Ready while a model is loaded and either a list version is published or Redis is down.

    A shared Redis outage must not pull every pod out of the load balancer: answers are live meanwhile.
    """
    service = _service()
    state = {"model_version": service.model.version, **service.redis_state()}
    ready = state["redis"] == "down" or state.get("list_version") is not None
    return jsonify({"ready": ready, **state}), 200 if ready else 503


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    from importlib import resources
    return resources.files("fuserank.schemas").joinpath("openapi.json").read_bytes()


@health.get("/openapi.json")
def openapi():
    return _json(openapi_document())
