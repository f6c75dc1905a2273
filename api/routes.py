"""HTTP endpoints (blueprints). Parameters are parsed strictly: a bad one is a 400 that names it.

The OpenAPI description of every endpoint is ``schemas/openapi.json``, served at ``GET /openapi.json``.

The POST guard's settings come from the app's ``ServeSettings`` (``settings(app)``):

    api_key         empty: the POSTs that fold a new user in (POST /v1/recommendations and the web page's
                    POST /new-user) and the feedback writes (fuserank.api.feedback) are open; else they
                    require header ``X-API-Key`` with one of the keys (401 otherwise; after 10 wrong keys
                    from one address in 5 minutes, 429 for that address)
    rate_limit      POST /v1/recommendations and feedback write calls per client and window (0 = off)
    rate_window_s   the fixed window in seconds

A client is its API key when keys are configured, else its address (``request.remote_addr``: behind a
proxy, the app must be wrapped in werkzeug's ProxyFix to see the caller's address).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from functools import lru_cache

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from fuserank.api.errors import BadParameter, TooManyRequests, Unauthorized
from fuserank.api.filters import NO_FILTERS, Filters

DEFAULT_N = 10
MAX_N = 200
MAX_ID = 2**63 - 1
MAX_RATINGS = 1000
MAX_EXCLUDE = 1000
MAX_FILTER_NAMES = 50
MAX_EXCLUDE_CHARS = 2000     # a GET's exclude, genre and type fit gunicorn's request line (server.py) even
MAX_NAMES_CHARS = 500        # percent-encoded; longer exclusion lists go in the POST body
UINT = re.compile(r"[0-9]{1,19}")      # an id or count as the routes accept it (also the hot route's)
API_KEY_HEADER = "X-API-Key"
KEY_FAILURES = 10            # wrong API keys per address and window before the address is refused (429)
KEY_FAILURE_WINDOW_S = 300

recommendations = Blueprint("recommendations", __name__, url_prefix="/v1")
USER_RECOMMENDATIONS = "/v1/users/<user_id>/recommendations"     # also fuserank.api.hotpath's route label
health = Blueprint("health", __name__)


def settings(app=None):
    """The app's ServeSettings."""
    return (app or current_app).extensions["fuserank_settings"]


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


def single_valued(args):
    """``args`` when no parameter is repeated; ``?n=5&n=abc`` is a 400 naming ``n`` (never first-wins)."""
    for name, values in args.lists():
        if len(values) > 1:
            raise BadParameter(name[:40], f"given {len(values)} times; give it once")
    return args


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
    if not all(names) or len(raw) > MAX_NAMES_CHARS or len(names) > MAX_FILTER_NAMES or any(len(x) > 64 for x in names):
        raise BadParameter(name, f"must be 1..{MAX_FILTER_NAMES} comma-separated names, at most {MAX_NAMES_CHARS} "
                                 f"characters, got {raw[:40]!r}")
    return names


def parse_filters(args) -> Filters:
    if "exclude" not in args and "genre" not in args and "type" not in args:
        return NO_FILTERS
    exclude = ()
    raw = _arg(args, "exclude")
    if raw is not None:
        parts = raw.split(",")
        if len(raw) > MAX_EXCLUDE_CHARS or len(parts) > MAX_EXCLUDE or not all(
                UINT.fullmatch(p) and int(p) <= MAX_ID for p in parts):
            raise BadParameter("exclude", f"must be comma-separated non-negative anime ids, at most "
                                          f"{MAX_EXCLUDE_CHARS} characters (longer lists: the POST body), "
                                          f"got {raw[:40]!r}")
        exclude = tuple(int(p) for p in parts)
    return Filters(exclude, _names(args, "genre"), _names(args, "type"))


@recommendations.get(USER_RECOMMENDATIONS.removeprefix(recommendations.url_prefix))
def user_recommendations(user_id: str):
    uid, args = parse_id("user_id", user_id), single_valued(request.args)
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


def _json_object(fields: set[str]) -> dict:
    """The request's JSON object body; a 400 naming the problem (or the first field not in ``fields``)."""
    if not request.is_json:
        raise BadParameter("body", "must be a JSON object (Content-Type: application/json)")
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()   # a chunked body is cut at the limit by werkzeug, silently
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):     # malformed JSON, bad UTF-8, nesting too deep
        raise BadParameter("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("body", "must be a JSON object")
    unknown = set(body) - fields
    if unknown:
        raise BadParameter(sorted(unknown)[0][:40], "unknown field")
    return body


def _json_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadParameter(name, f"must be true or false, got {json.dumps(value)[:40]}")
    return value


def _json_filters(body: dict) -> Filters:
    exclude = body.get("exclude", [])
    if not isinstance(exclude, list) or len(exclude) > MAX_EXCLUDE:
        raise BadParameter("exclude", f"must be a list of at most {MAX_EXCLUDE} anime ids")
    ids = tuple(_json_int(f"exclude[{i}]", v, 0, MAX_ID) for i, v in enumerate(exclude))
    names = {}
    for name in ("genre", "type"):
        value = body.get(name, [])
        if not isinstance(value, list) or len(value) > MAX_FILTER_NAMES or not all(
                isinstance(x, str) and x.strip() and len(x) <= 64 for x in value):
            raise BadParameter(name, f"must be a list of at most {MAX_FILTER_NAMES} names of 1..64 characters")
        names[name] = tuple(x.strip() for x in value)
    return Filters(ids, names["genre"], names["type"])


@recommendations.post(USER_RECOMMENDATIONS.removeprefix(recommendations.url_prefix))
def user_recommendations_post(user_id: str):
    """The GET with its parameters in a JSON body, for exclusion lists too long for a URL."""
    uid = parse_id("user_id", user_id)
    if request.args:
        raise BadParameter(next(iter(request.args))[:40], "give the parameters in the JSON body, not the query")
    body = _json_object({"n", "source", "include_adult", "explain", "exclude", "genre", "type"})
    n = _json_int("n", body.get("n", DEFAULT_N), 1, MAX_N)
    source = body.get("source", "auto")
    if source not in ("live", "auto"):
        raise BadParameter("source", f"must be 'live' or 'auto', got {json.dumps(source)[:40]}")
    answer = _service().user_recommendations(uid, n, live=source == "live",
                                             include_adult=_json_bool(body, "include_adult", False),
                                             filters=_json_filters(body), explain=_json_bool(body, "explain", True))
    _answered(answer)
    return _json(answer.to_json("user_id", uid))


def parse_new_user() -> tuple[list[int], list[int], int]:
    body = _json_object({"ratings", "n"})
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


def check_api_key() -> str | None:
    """The valid ``X-API-Key`` given, or None when no keys are configured.

    401 without a valid key. Wrong keys are counted per address: after ``KEY_FAILURES`` in
    ``KEY_FAILURE_WINDOW_S`` every attempt from that address is a 429 until the window ends, right key or
    not, so keys cannot be guessed at request speed.
    """
    valid = settings().api_key
    if not valid:
        return None
    service, address = _service(), "keyfail:" + (request.remote_addr or "unknown")
    retry_after = service.rate_limit(address, KEY_FAILURES, KEY_FAILURE_WINDOW_S, peek=True)
    if retry_after is not None:
        raise TooManyRequests(f"too many wrong {API_KEY_HEADER} values from this address; retry in {retry_after}s",
                              retry_after)
    given = request.headers.get(API_KEY_HEADER)
    if given is None or not any(hmac.compare_digest(given.encode(), k.encode()) for k in valid):
        if given is not None:
            service.rate_limit(address, KEY_FAILURES, KEY_FAILURE_WINDOW_S)
        raise Unauthorized(f"this endpoint needs a valid {API_KEY_HEADER} header")
    return given


def guard_post() -> None:
    """API key (when configured), then the per-client rate limit shared through Redis."""
    enforce_rate_limit(_client_of(check_api_key()), "rate limit of {limit} requests per {window}s exceeded")


def enforce_rate_limit(client: str, message: str) -> None:
    """The configured per-client limit (shared through Redis): 429 with ``message`` + retry time when over it."""
    limit, window = settings().rate_limit, settings().rate_window_s
    if limit > 0:
        retry_after = _service().rate_limit(client, limit, window)
        if retry_after is not None:
            raise TooManyRequests(f"{message.format(limit=limit, window=window)}; retry in {retry_after}s",
                                  retry_after)


@recommendations.post("/recommendations")
def new_user_recommendations():
    """A user the model has never seen, described by their ratings: folded into the embedding space."""
    guard_post()
    anime_ids, ratings, n = parse_new_user()
    args = single_valued(request.args)
    adult, filters, explain = parse_bool(args, "include_adult"), parse_filters(args), parse_bool(args, "explain", True)
    answer, ignored = _service().new_user_recommendations(np.array(anime_ids, np.int64), np.array(ratings), n,
                                                          include_adult=adult, filters=filters, explain=explain)
    _answered(answer)
    body = answer.body("user_id", None)
    body["ignored_anime_ids"] = ignored
    return jsonify(body)


@recommendations.get("/anime/<anime_id>/similar")
def similar_anime(anime_id: str):
    aid, args = parse_id("anime_id", anime_id), single_valued(request.args)
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
