"""The hot route answered before Flask's dispatch: ``GET /v1/users/<id>/recommendations[?n=K]``.

Most traffic is this one request in its plainest form. Flask's request context, URL map, ``g`` and
Response object cost more CPU per request than the answer itself (a Redis GET and a byte splice; see
benchmarks/README.md "Serving"), so this WSGI middleware recognises exactly that form and calls the
same ``RecommendationService.user_recommendations`` the blueprint calls, with the same metrics and
request log (``ApiMetrics.request_done``). Anything else (another route or method, any other query
parameter, an unusual spelling such as ``n=%31``, an out-of-range value, an exception) goes to Flask
unchanged, so parameter errors and error bodies come from one place: fuserank.api.routes and errors.
"""
from __future__ import annotations

import re
from time import perf_counter

from fuserank.api.routes import DEFAULT_N, MAX_ID, MAX_N, UINT, USER_RECOMMENDATIONS

_PATH = re.compile(re.escape(USER_RECOMMENDATIONS).replace(re.escape("<user_id>"), f"({UINT.pattern})"))
_QUERY = re.compile(f"(?:n=({UINT.pattern}))?")


class HotRoute:
    def __init__(self, wsgi_app, service, metrics=None):
        self.wsgi_app = wsgi_app
        self.service = service
        self.metrics = metrics

    def __call__(self, environ, start_response):
        t0 = perf_counter()
        if environ["REQUEST_METHOD"] == "GET":
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
                    start_response("200 OK", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(body)))])
                    if self.metrics is not None:
                        self.metrics.request_done(USER_RECOMMENDATIONS, "GET", 200, answer.source, answer.degraded,
                                                  perf_counter() - t0, lambda: _full_path(environ))
                    return [body]
        return self.wsgi_app(environ, start_response)


def _full_path(environ) -> str:
    return environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
