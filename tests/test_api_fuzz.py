"""Bad input everywhere: schemathesis fuzzes every operation of schemas/openapi.json against the Flask app (WSGI,
real Redis with published lists), and hypothesis throws raw garbage at paths, query strings and bodies.

Every answer must be what the description says (status, content type, body schema) and never a 500; every
error is JSON with a message. Runs in well under a minute.
"""
from __future__ import annotations

import io
import json
import logging
import time
import traceback

import pytest
import schemathesis
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from tests.factories import api_app, random_artifact

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
# Schema-violating requests may be refused with any status the description documents for refusals: the
# check's defaults plus 413, the answer to a body over MAX_CONTENT_LENGTH (schemas/openapi.json).
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
EXAMPLES = 30
FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    model = random_artifact(tmp_path_factory.mktemp("fuzz") / "m", n_users=30, n_anime=40, adult=(3,))
    settings_ = HybridSettings(top_n=10, neighbours=5)
    precompute(model, redis_url, settings_)
    return api_app(model, redis_url, settings_, rate_limit=0)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def test_openapi_document_is_served_and_covers_every_route(app, client):
    """Every JSON route; the HTML pages (the web page, the operator's /admin) are not part of the API contract."""
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.is_json
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    routes = {(rule.rule.replace("<", "{").replace(">", "}"), method.lower())
              for rule in app.url_map.iter_rules() if not rule.endpoint.startswith(("web.", "admin.", "static"))
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes <= described, routes - described


def _shortened(exc: BaseException, width: int = 300) -> str:
    """A failure's report with long lines cut: schemathesis's curl line repeats the whole request body (up to
    the 64 KiB limit), which would bury the finding in the log."""
    lines = "".join(traceback.format_exception(exc)).splitlines()
    return "\n".join(line if len(line) <= width else f"{line[:width]} ... [{len(line) - width} more characters]"
                     for line in lines)


def test_examples_are_derandomised_by_default():
    """pytest.ini selects the "ci" profile (tests/conftest.py): a rerun draws the same examples as the run it repeats."""
    assert settings.default.derandomize and FAST.derandomize


@pytest.mark.slow
def test_schemathesis_finds_nothing(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))
    calls = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        has_input = bool(operation.path_parameters or operation.query or operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES if has_input else 1, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
            def run(case):
                calls[operation.label, mode.value] = calls.get((operation.label, mode.value), 0) + 1
                try:
                    case.call_and_validate(checks=CHECKS)
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - re-raised, shortened
                    raise AssertionError(_shortened(exc)) from None
            run()
    print(f"\nschemathesis: {sum(calls.values())} calls in {time.monotonic() - started:.1f}s:", calls)
    assert sum(calls.values()) >= 14 * EXAMPLES     # 7 operations with input x (positive, negative)
    assert {label for label, _ in calls} >= {"PUT /v1/users/{user_id}/ratings/{anime_id}",
                                             "DELETE /v1/users/{user_id}/ratings/{anime_id}",
                                             "GET /v1/users/{user_id}/ratings", "POST /v1/feedback"}


def _error_json(r, statuses):
    assert r.status_code in statuses, (r.status_code, r.get_data(as_text=True)[:300])
    if r.status_code >= 400:
        assert r.is_json
        error = r.get_json()["error"]
        assert error["status"] == r.status_code and error["message"]


ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=30),
                st.floats(allow_nan=True).map(str),
                st.sampled_from(["", "0x10", "1e3", " 1", "+1", "١٢", "%00", "0/", "/0", "0//", "./0", ".."]))


@FAST
@given(raw=ids)
def test_raw_path_ids(client, raw):
    from urllib.parse import quote
    segment = quote(raw, safe="")
    if not segment:
        return
    _error_json(client.get(f"/v1/users/{segment}/recommendations"), {200, 400, 404})
    _error_json(client.get(f"/v1/anime/{segment}/similar"), {200, 400, 404})
    _error_json(client.get(f"/v1/users/{segment}/ratings"), {200, 400, 404})
    _error_json(client.put(f"/v1/users/100/ratings/{segment}", json={"rating": 5}), {200, 400, 404})
    _error_json(client.delete(f"/v1/users/{segment}/ratings/1001"), {200, 400, 404})


@FAST
@given(name=st.sampled_from(["n", "include_adult", "source", "explain", "exclude", "genre", "type"]),
       value=st.one_of(ids, st.just("1000000000"), st.just("0"), st.just("2.5"), st.text(min_size=1, max_size=80)))
def test_raw_query_values(client, name, value):
    for path in ("/v1/users/100/recommendations", "/v1/anime/1001/similar", "/v1/users/99999/recommendations"):
        r = client.get(path, query_string={name: value})
        _error_json(r, {200, 400})
        if r.status_code == 400:
            assert r.get_json()["error"]["parameter"] == name


@FAST
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                                   lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4),
                                   max_leaves=12).map(lambda x: json.dumps(x).encode())),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_raw_bodies(client, body, content_type):
    r = client.post("/v1/recommendations", data=body, content_type=content_type or None)
    _error_json(r, {200, 400})
    _error_json(client.put("/v1/users/100/ratings/1001", data=body, content_type=content_type or None), {200, 400})
    _error_json(client.post("/v1/feedback", data=body, content_type=content_type or None), {200, 400})


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"ratings": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
                                  b'{"ratings": [{"anime_id": 1' + b"0" * 5000 + b', "rating": 9}]}',
                                  b'{"ratings": [{"anime_id": 1001, "rating": NaN}]}', b"\xff\xfe{}",
                                  '{"ratings": [{"anime_id": 1001, "rating": 9}], "ñ": 1}'.encode()])
def test_pathological_json(client, body):
    _error_json(client.post("/v1/recommendations", data=body[:60_000], content_type="application/json"), {400})


def test_oversized_body_is_413_with_the_configured_limit(app, client):
    limit = app.config["MAX_CONTENT_LENGTH"]
    ok = {"ratings": [{"anime_id": 1001, "rating": 9}]}
    assert client.post("/v1/recommendations", json=ok).status_code == 200
    r = client.post("/v1/recommendations", data=b" " * (limit + 1), content_type="application/json")
    _error_json(r, {413})
    assert str(limit) in r.get_json()["error"]["message"]
    # no Content-Length (chunked): the stream is cut at the limit
    r = client.post("/v1/recommendations", input_stream=io.BytesIO(b" " * (limit + 4096)),
                    content_type="application/json", headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})
    _error_json(r, {413})


@pytest.mark.parametrize("method,path,status", [
    ("put", "/v1/users/1/recommendations", 405), ("delete", "/v1/anime/1/similar", 405),
    ("get", "/v1/recommendations", 405), ("post", "/healthz", 405), ("get", "/v1/anime/987654321/similar", 404),
    ("get", "/v1/nowhere", 404), ("get", "/v1/users//recommendations", 404),
])
def test_method_and_route_errors_are_json(client, method, path, status):
    r = getattr(client, method)(path)
    _error_json(r, {status})
    if status == 405:
        assert r.headers["Allow"]


def test_unexpected_exceptions_are_500_json_and_logged(tmp_path, redis_url, monkeypatch, caplog):
    model = random_artifact(tmp_path / "m", n_users=10, n_anime=12)
    app = api_app(model, redis_url, HybridSettings(top_n=5, neighbours=3))
    service = app.extensions["fuserank"]

    def broken(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(service, "user_recommendations", broken)
    with caplog.at_level(logging.ERROR, logger="fuserank.api"):
        r = app.test_client().get("/v1/users/100/recommendations")
    assert r.status_code == 500 and r.is_json and r.get_json()["error"]["message"] == "internal error"
    assert "a bug" not in r.get_data(as_text=True)            # no internals leak to the client
    assert "unhandled error" in caplog.text and "KeyError" in caplog.text
