"""``GET /admin``: the operator's page, with the feedback backlog and a chart per list version of its online
evaluation over time (fuserank.evaluation.online), drawn as SVG on the server (no script, no CDN).

Served only when an API key is configured (404 otherwise), behind HTTP basic auth whose password is one of the
keys (any user name). Wrong passwords count against the same per-address limit as wrong ``X-API-Key`` values.
The figures are the stored ones (refreshed at most every few minutes, fuserank.api.feedback_metrics); opening
the page asks for a refresh as a scrape does.
"""
from __future__ import annotations

import hmac
from datetime import datetime, timezone

import redis
from flask import Blueprint, Response, render_template, request
from markupsafe import Markup, escape

from fuserank import feedback
from fuserank.api.errors import NotFound, TooManyRequests
from fuserank.api.feedback_metrics import refresh_online_soon
from fuserank.api.routes import KEY_FAILURE_WINDOW_S, KEY_FAILURES, _service, settings
from fuserank.evaluation import online

admin = Blueprint("admin", __name__, template_folder="templates")
REALM = 'Basic realm="fuserank admin", charset="UTF-8"'
WIDTH, HEIGHT, PAD = 560, 180, 32
SERIES = (("click_share", "click share", "#2f6fdf"), (f"hit_rate_at_{online.TOP_K}", "hit rate@10", "#d9822b"))


def _authorised() -> bool:
    valid = settings().api_key
    if not valid:
        raise NotFound("no such page")
    service, address = _service(), "keyfail:" + (request.remote_addr or "unknown")
    retry_after = service.rate_limit(address, KEY_FAILURES, KEY_FAILURE_WINDOW_S, peek=True)
    if retry_after is not None:
        raise TooManyRequests(f"too many wrong passwords from this address; retry in {retry_after}s", retry_after)
    auth = request.authorization
    given = (auth.password or "") if auth is not None and auth.type == "basic" else None
    if given is not None and any(hmac.compare_digest(given.encode(), k.encode()) for k in valid):
        return True
    if given is not None:
        service.rate_limit(address, KEY_FAILURES, KEY_FAILURE_WINDOW_S)
    return False


def chart(days: dict[str, dict]) -> Markup:
    """An SVG line chart of click share and hit rate@10 (0-1) per day."""
    names = list(days)
    step = (WIDTH - 2 * PAD) / max(len(names) - 1, 1)

    def point(i, value):
        return f"{PAD + i * step:.1f},{HEIGHT - PAD - value * (HEIGHT - 2 * PAD):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-size="11">',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<text x="4" y="{PAD + 4}">1</text><text x="4" y="{HEIGHT - PAD + 4}">0</text>']
    for n, (field, label, colour) in enumerate(SERIES):
        points = [point(i, days[d][field]) for i, d in enumerate(names) if days[d][field] is not None]
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>')
        parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="{colour}"/>' for p in points]
        parts.append(f'<text x="{WIDTH - PAD - 150}" y="{14 + 14 * n}" fill="{colour}">{label}</text>')
    for i, d in enumerate(names):
        parts.append(f'<text x="{PAD + i * step:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(d[5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@admin.get("/admin")
def page():
    if not _authorised():
        return Response("the operator page needs the API key as the basic-auth password\n", 401,
                        {"WWW-Authenticate": REALM, "Content-Type": "text/plain; charset=utf-8"})
    client = _service().redis
    try:
        refresh_online_soon(client)
        backlog = feedback.backlog(client)
        versions = online.by_version(online.stored(client))
    except redis.RedisError as exc:
        _service().breaker.failed(exc)
        raise
    charts = {v: chart(entry["days"]) for v, entry in versions.items()}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    response = Response(render_template("admin.html", backlog=backlog, versions=versions, charts=charts, now=now))
    response.headers["Cache-Control"] = "no-store"
    return response
