"""The feedback endpoints: what users write, stored in fuserank.feedback's stream (the acknowledgement).

    PUT    /v1/users/<user_id>/ratings/<anime_id>   {"rating": 1..10} or {"status": one of feedback.STATUSES}
    DELETE /v1/users/<user_id>/ratings/<anime_id>   removes the user's entry for the anime
    GET    /v1/users/<user_id>/ratings              the entries the served list version does not hold yet
    POST   /v1/feedback                             {"events": [{"user_id", "anime_id", "type": "impression" |
                                                    "click", "list_version"}, ...]}, 1..MAX_EVENTS of them

Every write goes through the POST guard of fuserank.api.routes (``X-API-Key`` when keys are configured, then
the per-client rate limit) and answers 200 only once the stream append has returned: on a Redis with
``appendfsync always`` the write is then on disk. A rating or status is idempotent per (user, anime): the
user's state holds one entry per anime, the latest. Unknown anime (not in the served model) are 404s.
"""
from __future__ import annotations

import json
import re

import redis
from flask import Blueprint, jsonify, request

from fuserank import feedback as store
from fuserank.api.errors import BadParameter, NotFound, Unavailable
from fuserank.api.routes import MAX_ID, _json_int, _json_object, _service, guard_post, parse_id, single_valued

MAX_EVENTS = 1000
MAX_EVENTS_BODY = 256 * 1024        # 1,000 events of ~150 bytes fit
LIST_VERSION = re.compile(r"[A-Za-z0-9._:-]{1,200}")

feedback = Blueprint("feedback", __name__, url_prefix="/v1")
USER_RATING = "/users/<user_id>/ratings/<anime_id>"


def _known_anime(name: str, anime_id: int, service=None) -> None:
    model = (service or _service()).view().bundle.model
    if int(model.anime_index(anime_id)[0]) < 0:
        raise NotFound(f"{name}: anime {anime_id} is not in model {model.version}")


def _no_query() -> None:
    if request.args:
        raise BadParameter(next(iter(request.args))[:40], "unknown parameter")


def _store(events: list[store.Event], service=None) -> list[str]:
    service = service or _service()
    if service.breaker.is_open():
        raise Unavailable("the feedback store (Redis) is unavailable; retry later")
    try:
        return service.write_feedback(events)
    except redis.RedisError:
        raise Unavailable("the feedback store (Redis) is unavailable; retry later") from None


def parse_entry(body: dict) -> tuple[str, int | None, str | None]:
    """``(kind, rating, status)`` of a PUT body: exactly one of ``rating`` and ``status``."""
    if ("rating" in body) == ("status" in body):
        raise BadParameter("body", "give exactly one of rating (1..10) and status "
                                   f"({', '.join(store.STATUSES)})")
    if "rating" in body:
        return "rating", _json_int("rating", body["rating"], store.RATING_MIN, store.RATING_MAX), None
    status = body["status"]
    if status not in store.STATUSES:
        raise BadParameter("status", f"must be one of {', '.join(store.STATUSES)}, got {json.dumps(status)[:40]}")
    return "status", None, status


def write_entry(uid: int, aid: int, kind: str, rating: int | None = None, status: str | None = None,
                service=None) -> dict:
    """Store one entry event (the anime must be known) and describe it as the answers do. ``service``: the
    RecommendationService, for a caller outside a Flask request (fuserank.api.hotpath)."""
    _known_anime("anime_id", aid, service)
    [entry_id] = _store([store.Event(kind, uid, aid, rating=rating, status=status)], service)
    out = {"user_id": uid, "anime_id": aid, "kind": kind}
    if rating is not None:
        out["rating"] = rating
    if status is not None:
        out["status"] = status
    return {**out, "id": entry_id}


@feedback.put(USER_RATING)
def put_rating(user_id: str, anime_id: str):
    guard_post()
    uid, aid = parse_id("user_id", user_id), parse_id("anime_id", anime_id)
    _no_query()
    kind, rating, status = parse_entry(_json_object({"rating", "status"}))
    return jsonify(write_entry(uid, aid, kind, rating, status))


@feedback.delete(USER_RATING)
def delete_rating(user_id: str, anime_id: str):
    guard_post()
    uid, aid = parse_id("user_id", user_id), parse_id("anime_id", anime_id)
    _no_query()
    if request.get_data(cache=True):
        raise BadParameter("body", "must be empty")
    return jsonify(write_entry(uid, aid, "delete"))


@feedback.get("/users/<user_id>/ratings")
def user_ratings(user_id: str):
    uid = parse_id("user_id", user_id)
    single_valued(request.args)
    _no_query()
    try:
        view, entries = _service().user_feedback(uid)
    except redis.RedisError:
        raise Unavailable("the feedback store (Redis) is unavailable; retry later") from None
    items = [{k: v for k, v in e.items() if v is not None} for e in entries]
    return jsonify({"user_id": uid, "list_version": view.list_version, "feedback_until": view.feedback_until,
                    "ratings": items})


def _signal(i: int, item) -> store.Event:
    where = f"events[{i}]"
    if not isinstance(item, dict):
        raise BadParameter(where, "must be an object with user_id, anime_id, type and list_version")
    unknown = set(item) - {"user_id", "anime_id", "type", "list_version"}
    if unknown:
        raise BadParameter(f"{where}.{sorted(unknown)[0][:40]}", "unknown field")
    for name in ("user_id", "anime_id", "type", "list_version"):
        if name not in item:
            raise BadParameter(f"{where}.{name}", "is required")
    uid = _json_int(f"{where}.user_id", item["user_id"], 0, MAX_ID)
    aid = _json_int(f"{where}.anime_id", item["anime_id"], 0, MAX_ID)
    if item["type"] not in store.SIGNAL_KINDS:
        raise BadParameter(f"{where}.type", f"must be one of {', '.join(store.SIGNAL_KINDS)}, "
                                            f"got {json.dumps(item['type'])[:40]}")
    version = item["list_version"]
    if not isinstance(version, str) or not LIST_VERSION.fullmatch(version):
        raise BadParameter(f"{where}.list_version", f"must be a list version ({LIST_VERSION.pattern}), "
                                                    f"got {json.dumps(version)[:40]}")
    _known_anime(f"{where}.anime_id", aid)
    return store.Event(item["type"], uid, aid, list_version=version)


@feedback.post("/feedback")
def post_feedback():
    """Impressions and clicks on served lists, 1..MAX_EVENTS per call (more: 413)."""
    guard_post()
    _no_query()
    request.max_content_length = MAX_EVENTS_BODY
    events = _json_object({"events"}).get("events")
    if not isinstance(events, list) or not events:
        raise BadParameter("events", f"must be a list of 1..{MAX_EVENTS} event objects")
    if len(events) > MAX_EVENTS:
        return jsonify({"error": {"status": 413, "parameter": "events",
                                  "message": f"at most {MAX_EVENTS} events per call, {len(events)} were sent"}}), 413
    parsed = [_signal(i, item) for i, item in enumerate(events)]
    _store(parsed)
    return jsonify({"accepted": len(parsed)})
