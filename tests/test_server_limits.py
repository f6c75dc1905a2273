"""The documented request limits are ones the real server (gunicorn) serves, long exclusion lists go in a
POST body, and what gunicorn itself refuses is answered in the API's JSON error form."""
import http.client
import json
from urllib.parse import quote, urlsplit

import pytest

from fuserank.config import HybridSettings
from tests.factories import precomputed_random, start_server, stop_server

pytestmark = pytest.mark.slow

SETTINGS = HybridSettings(top_n=10, neighbours=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    model, url = precomputed_random(tmp_path_factory.mktemp("limits") / "m", redis_url, 6, SETTINGS)
    base, proc = start_server(model, url)
    yield urlsplit(base)
    stop_server(proc)


def request(server, method: str, target: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def test_the_documented_get_limits_are_served(server):
    spec = json.loads(request(server, "GET", "/openapi.json")[2])
    params = {p["name"]: p["schema"] for p in spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]}
    exclude = ",".join(["1"] * ((params["exclude"]["maxLength"] + 1) // 2))        # the most commas: longest encoded
    genre = ",".join(["   Comedy"] * 50)        # 50 names (the most), padded with spaces (3 bytes encoded)
    kind = ",".join(["       TV"] * 50)
    assert len(exclude) <= params["exclude"]["maxLength"]
    assert len(genre) <= params["genre"]["maxLength"] and len(kind) <= params["type"]["maxLength"]
    target = (f"/v1/users/9223372036854775807/recommendations?n=200&source=live&include_adult=false&explain=false"
              f"&exclude={quote(exclude, safe='')}&genre={quote(genre, safe='')}&type={quote(kind, safe='')}")
    assert len(target) > 4094                        # gunicorn's default request line limit
    status, content_type, body = request(server, "GET", target)
    assert status == 200, body[:300]
    assert content_type == "application/json" and json.loads(body)["source"] == "popular"


def test_a_request_line_over_the_limit_is_a_json_414(server):
    status, content_type, body = request(server, "GET", "/v1/users/100/recommendations?exclude=" + "1," * 5000 + "1")
    assert status == 414 and content_type == "application/json"
    error = json.loads(body)["error"]
    assert error["status"] == 414 and "Request Line is too large" in error["message"]


def test_long_exclusion_lists_go_in_the_post_body(server):
    stored = json.loads(request(server, "GET", "/v1/users/100/recommendations?n=10")[2])
    top = [item["anime_id"] for item in stored["items"]]
    exclude = top[:3] + list(range(100_000, 100_997))                   # 1,000 ids, 3 of them on the list
    status, _, body = request(server, "POST", "/v1/users/100/recommendations",
                              json.dumps({"n": 5, "exclude": exclude, "explain": False}).encode())
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert [item["anime_id"] for item in answer["items"]] == top[3:8]
    assert answer["source"] == "precomputed" and "reasons" not in answer["items"][0]
    for payload, name in (({"exclude": list(range(1001))}, "exclude"), ({"n": 0}, "n"), ({"nope": 1}, "nope"),
                          ({"explain": "yes"}, "explain"), ({"genre": [""]}, "genre")):
        status, content_type, body = request(server, "POST", "/v1/users/100/recommendations",
                                             json.dumps(payload).encode())
        assert status == 400 and content_type == "application/json"
        assert json.loads(body)["error"]["parameter"] == name
