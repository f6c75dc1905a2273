"""The web page at ``/`` (the card's "Flask interface"): plain server-rendered HTML, no JavaScript needed.

    GET  /                           a user id form, a search form and a few example users
    GET  /recommendations?user_id=ID that user's recommendations (the same service answer as the API:
                                     precomputed when stored), with genres, type, score and the reasons
    GET  /search?q=TEXT              anime whose name contains TEXT (popular titles when empty), each with
                                     a 1-10 select; the ratings picked so far travel with the form
                                     (``rate_<anime_id>=<rating>``), so searching again keeps them
    POST /new-user                   those ratings folded in as a new user (service.new_user_recommendations,
                                     the path of POST /v1/recommendations, with its per-address rate limit
                                     and, when API keys are configured, its API key: a public page then
                                     answers 401, as the form cannot send the header)
    GET  /anime/ID[?user_id=U]       an anime and its most similar anime; with ``user_id``, "I rate it" posts
                                     to the route below, else it starts the anonymous search form with it
    POST /users/U/ratings/ID         ``rating=1..10`` stored as user U's feedback (the path of PUT
                                     /v1/users/U/ratings/ID), then back to U's recommendations, which
                                     follow it (``fresh``). A browser cannot hold an API key (anything the
                                     page could send, every visitor could read), so this form is guarded
                                     by a CSRF token (Flask-WTF: signed with a secret every pod shares
                                     through Redis, tied to the visitor's session cookie) and by the
                                     per-address rate limit instead of the key

Genres and type come from the model's anime table (``Catalog``, built once before gunicorn forks);
each view sets ``flask.g.answer_source`` / ``g.degraded`` for the request metrics like the API routes.
"""
from __future__ import annotations

import re

import secrets

import numpy as np
import redis
from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.exceptions import HTTPException
from wtforms import ValidationError

from fuserank import keys
from fuserank.api.errors import ApiError, BadParameter, NotFound
from fuserank.api.feedback import write_entry
from fuserank.api.routes import check_api_key, enforce_rate_limit

MAX_N = 200
DEFAULT_N = 20
SEARCH_LIMIT = 20
MAX_RATINGS = 1000
MAX_QUERY = 100
_UINT = re.compile(r"[0-9]{1,18}")

web = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


class Catalog:
    """The model's anime table arranged for the page: names, genres, type, popularity order, search."""

    def __init__(self, model):
        anime = model.anime
        n = len(anime)

        def column(name):
            if name not in anime:
                return np.array([""] * n, dtype=object)
            return anime[name].fillna("").astype(str).to_numpy(object)

        self.model = model
        self.names, self.genres, self.types = column("name"), column("genres"), column("type")
        self.adult = np.asarray(model.adult_mask, bool)
        order = np.asarray(model.popularity)
        self.search_order = order[~self.adult[order]]                 # non-adult anime, most liked first
        self.search_names = [self.names[a].lower() for a in self.search_order]
        self.example_users = [int(u) for u in model.user_ids[:3]]

    def encoded(self, anime_id: int) -> int:
        return int(self.model.anime_index(anime_id)[0])

    def describe(self, items: list[dict]) -> list[dict]:
        """Items of an answer with ``genres``, ``type`` and the reasons spelled out for the template."""
        if not items:
            return []
        enc = self.model.anime_index(np.array([item["anime_id"] for item in items], np.int64))
        out = []
        for item, a in zip(items, enc):
            reasons = item.get("reasons") or {}
            out.append({**item,
                        "genres": self.genres[a] if a >= 0 else "", "type": self.types[a] if a >= 0 else "",
                        "because": [b for b in reasons.get("because") or [] if isinstance(b, dict)],
                        "similar_users": int(reasons.get("similar_users") or 0)})
        return out

    def entry(self, a: int) -> dict:
        return {"anime_id": int(self.model.anime_ids[a]), "name": self.names[a], "genres": self.genres[a],
                "type": self.types[a]}

    def search(self, query: str, limit: int = SEARCH_LIMIT, exclude=frozenset()) -> list[dict]:
        """Names containing ``query`` (case-insensitive): names starting with it first, then by popularity."""
        q = query.strip().lower()
        starts, contains = [], []
        for a, name in zip(self.search_order, self.search_names):
            pos = name.find(q) if q else 0
            if pos < 0 or int(self.model.anime_ids[a]) in exclude:
                continue
            (starts if pos == 0 else contains).append(a)
            if len(starts) >= limit:
                break
        return [self.entry(a) for a in (starts + contains)[:limit]]


def _service():
    return current_app.extensions["fuserank"]


def _catalog() -> Catalog:
    catalog = current_app.extensions.get("fuserank_web")
    if catalog is None or catalog.model is not _service().model:
        catalog = current_app.extensions["fuserank_web"] = Catalog(_service().model)
    return catalog


def _uint(name: str, raw: str) -> int:
    raw = raw.strip()
    if not _UINT.fullmatch(raw):
        raise BadParameter(name, f"must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def _n() -> int:
    raw = request.args.get("n", str(DEFAULT_N))
    if not _UINT.fullmatch(raw) or not 1 <= int(raw) <= MAX_N:
        raise BadParameter("n", f"must be an integer in 1..{MAX_N}, got {raw[:40]!r}")
    return int(raw)


def _picked(fields) -> dict[int, int]:
    """``rate_<anime_id>=<1..10>`` fields (empty = not rated) -> {anime_id: rating}, in form order."""
    out: dict[int, int] = {}
    for key in fields.keys():
        if not key.startswith("rate_"):
            continue
        aid = _uint(key, key[len("rate_"):])
        raw = fields.get(key, "").strip()
        if raw == "":
            continue
        if not _UINT.fullmatch(raw) or not 1 <= int(raw) <= 10:
            raise BadParameter(key, f"must be a rating in 1..10, got {raw[:40]!r}")
        out[aid] = int(raw)
        if len(out) > MAX_RATINGS:
            raise BadParameter("ratings", f"at most {MAX_RATINGS} ratings")
    return out


def _rated(catalog: Catalog, picked: dict[int, int]) -> list[dict]:
    rated = []
    for aid, rating in picked.items():
        a = catalog.encoded(aid)
        entry = catalog.entry(a) if a >= 0 else {"anime_id": aid, "name": f"anime {aid}", "genres": "", "type": ""}
        rated.append({**entry, "rating": rating})
    return rated


def _note(answer) -> None:
    g.answer_source, g.degraded = answer.source, answer.degraded


@web.get("/")
def index():
    return render_template("index.html", examples=_catalog().example_users,
                           model_version=_service().model.version)


@web.get("/recommendations")
def user_page():
    uid = _uint("user_id", request.args.get("user_id", ""))
    n = _n()
    answer = _service().user_recommendations(uid, n)
    _note(answer)
    items = _catalog().describe(answer.body("user_id", uid)["items"])
    return render_template("recommendations.html", title=f"Recommendations for user {uid}", user_id=uid,
                           answer=answer, items=items, rated=None, ignored=[])


@web.get("/search")
def search():
    catalog = _catalog()
    query = request.args.get("q", "")[:MAX_QUERY]
    picked = _picked(request.args)
    results = catalog.search(query, exclude=frozenset(picked))
    return render_template("search.html", query=query, results=results, rated=_rated(catalog, picked),
                           error=None)


def _rate_limit() -> None:
    """The new-user form folds a user in like POST /v1/recommendations: the same per-address rate limit."""
    enforce_rate_limit("web:" + (request.remote_addr or "unknown"),
                       "too many recommendation requests from your address")


@web.post("/new-user")
def new_user():
    check_api_key()
    _rate_limit()
    catalog = _catalog()
    picked = _picked(request.form)
    if not picked:
        return render_template("search.html", query="", results=catalog.search(""), rated=[],
                               error="Rate at least one anime to get recommendations."), 400
    n = _n()
    answer, ignored = _service().new_user_recommendations(np.array(list(picked), np.int64),
                                                          np.array(list(picked.values())), n)
    _note(answer)
    items = catalog.describe(answer.body("user_id", None)["items"])
    return render_template("recommendations.html", title=f"Recommendations for your {len(picked)} ratings",
                           user_id=None, answer=answer, items=items, rated=_rated(catalog, picked),
                           ignored=ignored)


@web.post("/users/<user_id>/ratings/<anime_id>")
def rate(user_id: str, anime_id: str):
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError as exc:
        raise CSRFError(str(exc)) from None
    enforce_rate_limit("web:" + (request.remote_addr or "unknown"), "too many ratings from your address")
    uid, aid = _uint("user_id", user_id), _uint("anime_id", anime_id)
    raw = request.form.get("rating", "").strip()
    if not _UINT.fullmatch(raw) or not 1 <= int(raw) <= 10:
        raise BadParameter("rating", f"must be a rating in 1..10, got {raw[:40]!r}")
    write_entry(uid, aid, "rating", rating=int(raw))
    return redirect(url_for("web.user_page", user_id=uid), 303)


@web.get("/anime/<anime_id>")
def anime_page(anime_id: str):
    aid = _uint("anime_id", anime_id)
    raw_user = request.args.get("user_id")
    user_id = _uint("user_id", raw_user) if raw_user else None
    catalog = _catalog()
    a = catalog.encoded(aid)
    if a < 0:
        raise NotFound(f"anime {aid} is not in model {_service().model.version}")
    answer = _service().similar_anime(aid, _n())
    _note(answer)
    items = catalog.describe(answer.body("anime_id", aid)["items"])
    return render_template("anime.html", anime=catalog.entry(a), adult=bool(catalog.adult[a]), answer=answer,
                           items=items, user_id=user_id)


@web.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return render_template("error.html", status=exc.status, message=exc.message), exc.status, exc.headers


@web.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return render_template("error.html", status=exc.code or 500, message=exc.description or exc.name), exc.code or 500


def _shared_secret(client) -> str:
    """The CSRF signing secret every API pod uses (set once in Redis); a process-local one while Redis is down
    (tokens then hold on this pod only)."""
    try:
        client.set(keys.WEB_SECRET, secrets.token_hex(32), nx=True)
        value = client.get(keys.WEB_SECRET)
        return value.decode() if value else secrets.token_hex(32)
    except redis.RedisError:
        return secrets.token_hex(32)


def register(app) -> None:
    """The blueprint, the CSRF secret, and the catalog built now (before gunicorn forks, shared by the workers)."""
    app.secret_key = _shared_secret(app.extensions["fuserank"].redis)
    app.jinja_env.globals["csrf_token"] = generate_csrf
    app.register_blueprint(web)
    app.extensions["fuserank_web"] = Catalog(app.extensions["fuserank"].model)
