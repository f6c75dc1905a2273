"""Structured logs (fuserank.logs): plain or JSON lines, the model / list version on every line, the API's
request lines only when sampled or at DEBUG (errors always), and the CLI wired to it."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from fuserank import logs
from fuserank.batch.pipeline import precompute
from tests.factories import api_app, empty_db, random_artifact


@pytest.fixture
def stream():
    """FuseRank's handler on the root logger for one test, writing to a buffer; everything restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    logs.reset()    # an app created by an earlier test registered its version providers
    buf = io.StringIO()
    yield buf
    logs.reset()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved_handlers:
        root.addHandler(h)
    root.setLevel(saved_level)
    logging.captureWarnings(False)


def lines(buf: io.StringIO) -> list[str]:
    return [x for x in buf.getvalue().splitlines() if x.strip()]


def test_json_lines_carry_the_versions_from_bind_provide_and_context(stream):
    assert logs.configure(level="INFO", fmt="json", stream=stream, force=True)
    served = {"list": "m1-aaaa"}
    logs.bind(model_version="m1")
    logs.provide("list_version", lambda: served["list"])
    log = logging.getLogger("fuserank.test")
    log.info("first %d", 1)
    served["list"] = "m1-bbbb"
    with logs.context(model_version="m2"):
        log.warning("second", extra={"fields": {"users": 3}})
    log.debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("third")
    first, second, third = (json.loads(x) for x in lines(stream))
    assert first["message"] == "first 1" and first["level"] == "INFO" and first["logger"] == "fuserank.test"
    assert (first["model_version"], first["list_version"]) == ("m1", "m1-aaaa")
    assert (second["model_version"], second["list_version"], second["users"]) == ("m2", "m1-bbbb", 3)
    assert third["model_version"] == "m1" and "ValueError: boom" in third["exc"]
    assert first["ts"].endswith("Z") and isinstance(first["pid"], int)


def test_plain_lines_name_the_versions_and_fields(stream):
    logs.configure(level="INFO", fmt="plain", stream=stream, force=True)
    logging.getLogger("fuserank.x").info("hello")
    logs.bind(model_version="abc", list_version="abc-123")
    logging.getLogger("fuserank.x").info("written", extra={"fields": {"keys": 10}})
    before, after = lines(stream)
    assert before.endswith("INFO fuserank.x: hello")
    assert after.endswith("INFO fuserank.x [model=abc list=abc-123]: written keys=10")


def test_a_failing_provider_never_breaks_logging(stream):
    logs.configure(level="INFO", fmt="json", stream=stream, force=True)
    logs.provide("list_version", lambda: 1 / 0)
    logging.getLogger("fuserank.x").info("still logged")
    assert json.loads(lines(stream)[0])["message"] == "still logged"


def test_invalid_settings_fail_naming_the_variable(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(logs.LogConfigError, match="LOG_FORMAT"):
        logs.configure()
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(logs.LogConfigError, match="LOG_LEVEL"):
        logs.configure()


def test_a_foreign_root_handler_is_left_alone_unless_forced(stream):
    root = logging.getLogger()
    foreign = logging.StreamHandler(io.StringIO())
    root.addHandler(foreign)
    assert not logs.configure(fmt="json", stream=stream)
    assert foreign in root.handlers
    assert logs.configure(fmt="json", stream=stream, force=True)
    assert logs.configure(fmt="json", stream=stream, force=True)      # replaces its own handler, never stacks
    assert sum(getattr(h, "_fuserank", False) for h in root.handlers) == 1


def test_configure_command_binds_the_versions_its_arguments_name(tmp_path, stream, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"model_version": "feedbeef"}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"content_hash": "0123456789abcdef0123"}))
    monkeypatch.setattr(logs, "configure", lambda *a, **k: True)
    logs.configure_command("precompute", {"model": str(model), "redis_url": "redis://x"})
    assert logs.current() == {"model_version": "feedbeef"}
    logs.configure_command("train", {"data": str(data), "out": str(tmp_path / "m")})
    assert logs.current() == {"data_version": "0123456789abcdef"}
    logs.configure_command("precompute", {"model": "gs://bucket/m"})      # never a network read
    assert logs.current() == {}


# -- the API's request lines ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tmp_path_factory, redis_url):
    model_dir = random_artifact(tmp_path_factory.mktemp("logs") / "model", n_users=30, n_anime=25)
    url = empty_db(redis_url, 14)
    published = precompute(model_dir, url)
    return model_dir, url, published


def test_requests_are_logged_only_when_sampled_or_at_debug_errors_always(api, monkeypatch, caplog):
    model_dir, url, published = api
    app = api_app(model_dir, url)

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    client = app.test_client()
    caplog.set_level(logging.INFO, logger="fuserank.api")
    client.get("/v1/users/100/recommendations")
    assert not [r for r in caplog.records if r.name == "fuserank.api.requests"], "no line per request at INFO"
    client.get("/boom")
    errors = [r for r in caplog.records if r.name == "fuserank.api.requests"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR and errors[0].fields["status"] == 500

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="fuserank.api.requests")
    client.get("/v1/users/100/recommendations?n=3")
    (line,) = [r for r in caplog.records if r.name == "fuserank.api.requests"]
    assert line.fields == {"method": "GET", "route": "/v1/users/<user_id>/recommendations", "status": 200,
                           "ms": line.fields["ms"], "source": "precomputed", "degraded": False}
    assert line.getMessage().startswith("GET /v1/users/100/recommendations?n=3 200 ")

    sampled = api_app(model_dir, url, log_sample=1.0).test_client()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="fuserank.api.requests")
    for _ in range(3):
        sampled.get("/healthz")
    assert len([r for r in caplog.records if r.name == "fuserank.api.requests"]) == 3
    with pytest.raises(ValueError, match="log_sample"):
        api_app(model_dir, url, log_sample=1.5)


@pytest.mark.slow
def test_cli_precompute_logs_json_lines_with_the_model_version(api):
    """Every line of `LOG_FORMAT=json fuserank precompute` (Beam's included) is JSON and names the model."""
    model_dir, url, published = api
    r = subprocess.run([sys.executable, "-m", "fuserank", "precompute", "--model", model_dir, "--redis-url", url],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in r.stderr.splitlines() if x.strip()]
    ours = [x for x in records if x["logger"].startswith("fuserank")]
    assert ours, r.stderr[-2000:]
    assert all(x["model_version"] == published["model_version"] for x in records)
    for x in records:   # when the stage binds the list version, it is the one it published
        assert x.get("list_version", published["version"]) == published["version"]
