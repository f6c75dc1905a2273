"""The hot routes answered before Flask's dispatch: ``GET /v1/users/<id>/recommendations[?n=K]`` and the PUT of
a rating, ``PUT /v1/users/<id>/ratings/<anime>`` with the body ``{"rating": 1..10}``.

Most traffic is these requests in their plainest form. Flask's request context, URL map, ``g`` and
Response object cost more CPU per request than the answer itself (a Redis GET and a byte splice, or one
Redis call that appends the rating; see benchmarks/README.md "Serving" and "Feedback writes"), so this WSGI
middleware recognises exactly those forms and calls the same functions the blueprints call
(``RecommendationService.user_recommendations``, ``fuserank.api.feedback.write_entry``), with the same metrics
and request log (``ApiMetrics.request_done``). Anything else (another route or method, any query parameter
but a plain ``n``, an unusual spelling such as ``n=%31``, an out-of-range value, another body or content
type, a configured API key or rate limit, which the write's guard checks, an exception) goes to Flask
unchanged, so errors and error bodies come from one place: fuserank.api.routes, feedback and errors. A write
that failed here (Redis) is tried once more by Flask; the user's entry per anime makes it idempotent.
"""
from __future__ import annotations

import io
import re
from time import perf_counter

from fuserank.api import feedback
from fuserank.api.routes import DEFAULT_N, MAX_ID, MAX_N, UINT, USER_RECOMMENDATIONS
from fuserank.keys import compact_json

_PATH = re.compile(re.escape(USER_RECOMMENDATIONS).replace(re.escape("<user_id>"), f"({UINT.pattern})"))
_QUERY = re.compile(f"(?:n=({UINT.pattern}))?")
USER_RATING = feedback.feedback.url_prefix + feedback.USER_RATING       # the PUT's route label
_RATING_PATH = re.compile(re.escape(USER_RATING).replace(re.escape("<user_id>"), f"({UINT.pattern})")
                          .replace(re.escape("<anime_id>"), f"({UINT.pattern})"))
_RATING_BODY = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"rating"[ \t\r\n]*:[ \t\r\n]*(10|[1-9])[ \t\r\n]*\}[ \t\r\n]*')
_MAX_RATING_BODY = 64


class HotRoute:
    def __init__(self, wsgi_app, service, metrics=None, settings=None):
        self.wsgi_app = wsgi_app
        self.service = service
        self.metrics = metrics
        self.writes = settings is not None and not settings.api_key and settings.rate_limit <= 0

    def __call__(self, environ, start_response):
        t0 = perf_counter()
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            path = _PATH.fullmatch(environ.get("PATH_INFO", ""))
            query = _QUERY.fullmatch(environ.get("QUERY_STRING", "")) if path else None
            if query:
                uid, n = int(path[1]), int(query[1] or DEFAULT_N)
                if uid <= MAX_ID and 1 <= n <= MAX_N:
                    try:
                        answer = self.service.user_recommendations(uid, n)
                    except Exception:   # noqa: BLE001 (Flask answers it again: its handlers log and render)
                        return self.wsgi_app(environ, start_response)
                    body = answer.to_json("user_id", uid)
                    return self._answer(environ, start_response, body, USER_RECOMMENDATIONS, answer.source,
                                        answer.degraded, t0)
        elif method == "PUT" and self.writes:
            return self._put_rating(environ, start_response, t0)
        return self.wsgi_app(environ, start_response)

    def _put_rating(self, environ, start_response, t0):
        path = _RATING_PATH.fullmatch(environ.get("PATH_INFO", ""))
        length = environ.get("CONTENT_LENGTH", "")
        if (not path or environ.get("QUERY_STRING") or environ.get("CONTENT_TYPE") != "application/json"
                or not length.isdigit() or int(length) > _MAX_RATING_BODY):
            return self.wsgi_app(environ, start_response)
        data = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(data)        # Flask reads it again when it answers instead
        body = _RATING_BODY.fullmatch(data)
        uid, aid = int(path[1]), int(path[2])
        if body is None or uid > MAX_ID or aid > MAX_ID:
            return self.wsgi_app(environ, start_response)
        try:
            written = feedback.write_entry(uid, aid, "rating", int(body[1]), service=self.service)
        except Exception:   # noqa: BLE001 (Flask answers it again: its handlers log and render)
            environ["wsgi.input"].seek(0)
            return self.wsgi_app(environ, start_response)
        return self._answer(environ, start_response, (compact_json(written) + "\n").encode(), USER_RATING, "none",
                            False, t0)

    def _answer(self, environ, start_response, body: bytes, route: str, source: str, degraded: bool, t0):
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        if self.metrics is not None:
            self.metrics.request_done(route, environ["REQUEST_METHOD"], 200, source, degraded, perf_counter() - t0,
                                      lambda: _full_path(environ))
        return [body]


def _full_path(environ) -> str:
    return environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
