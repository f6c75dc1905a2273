"""batch/nightly.py without DVC: the quality gate, publish's refusal and acceptance against a real Redis (and a
real Beam precompute), the model store the API pods fetch from (a directory and gs:// on the emulator), and
the in-cluster API restart."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes
import pytest

from fuserank import keys, storage
from fuserank.artifacts import ModelArtifact
from fuserank.batch import nightly
from fuserank.batch.gate import quality_gate
from fuserank.batch.model_store import fetch_model, store_model
from fuserank.batch.params import as_flags, deep_merge, parse_set, precompute_params_of, settings_of
from fuserank.batch.release import EXIT_FAILED, EXIT_REFUSED, _runner_is_remote, precompute_command, publish_if_better
from fuserank.batch.rollout import RestartTarget, restart_deployment
from fuserank.config import load_params
from fuserank.errors import NightlyError
from fuserank.publish import current_version, read_meta, write_meta
from tests.factories import random_artifact

ROOT = Path(__file__).resolve().parents[1]


def evaluation(version="m-new", ndcg=0.30, **extra):
    return {"model_version": version, "ndcg_at_10": ndcg, "recall_at_20": 0.4, "coverage_at_10": 0.2,
            "users": 30, **extra}


@pytest.mark.parametrize("new, published, margin, ok, words", [
    (evaluation(ndcg=0.30), None, 0.01, True, ["first publish"]),
    (evaluation(ndcg=0.30), {"model_version": "old"}, 0.01, True, ["no recorded evaluation"]),
    (evaluation(ndcg=0.30), evaluation("old", 0.25), 0.01, True, ["+0.0500"]),
    (evaluation(ndcg=0.30), evaluation("old", 0.305), 0.01, True, ["-0.0050"]),
    (evaluation(ndcg=0.30), evaluation("old", 0.31), 0.01, True, []),        # exactly the margin
    (evaluation(ndcg=0.30), evaluation("old", 0.32), 0.01, False, ["0.3000", "0.3200", "0.0200", "0.0100",
                                                                    "keeping the current version"]),
    (evaluation(ndcg=0.30), evaluation("old", 0.90), 0.0, False, ["below"]),
    (evaluation(ndcg=0.30), evaluation("old", 0.90), 1.0, True, []),
    (evaluation(ndcg=None), None, 0.01, False, ["no valid ndcg_at_10"]),
    (evaluation(ndcg=float("nan")), evaluation("old", 0.1), 0.01, False, ["no valid ndcg_at_10"]),
    (evaluation(ndcg=1.5), None, 0.01, False, ["no valid ndcg_at_10"]),
    ({"model_version": "x"}, None, 0.01, False, ["no valid ndcg_at_10"]),
])
def test_quality_gate(new, published, margin, ok, words):
    got, reason = quality_gate(new, published, margin)
    assert got is ok, reason
    for word in words:
        assert word in reason, (word, reason)


@pytest.mark.parametrize("margin", [-0.1, float("inf"), "0.1", None])
def test_quality_gate_rejects_bad_margins(margin):
    with pytest.raises(ValueError):
        quality_gate(evaluation(), None, margin)


def evaluated_model(path: Path, ndcg: float, seed: int = 0) -> tuple[str, str]:
    model = random_artifact(path, n_users=30, n_anime=20, seed=seed)
    version = json.loads((path / "manifest.json").read_text())["model_version"]
    (path / "evaluation.json").write_text(json.dumps(evaluation(version, ndcg)))
    return model, version


def publish_published(r, list_version: str, ndcg: float | None) -> None:
    meta = {"model_version": "m-published", "state": "complete"}
    if ndcg is not None:
        meta["evaluation"] = evaluation("m-published", ndcg)
    write_meta(r, list_version, meta)
    r.set(keys.CURRENT, list_version)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fuserank.batch.nightly", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_publish_refused_keeps_the_current_version(tmp_path, redis_client, redis_url):
    model, version = evaluated_model(tmp_path / "model", ndcg=0.20)
    publish_published(redis_client, "m-published-aaaa", ndcg=0.35)
    store = tmp_path / "store"
    proc = cli("publish", "--model", model, "--redis-url", redis_url, "--models-uri", str(store), "--margin", "0.01")
    assert proc.returncode == EXIT_REFUSED == 3, proc.stderr
    assert "quality gate refused" in proc.stderr and "0.2000" in proc.stderr and "0.3500" in proc.stderr
    assert "m-published-aaaa stays current" in proc.stderr
    assert current_version(redis_client) == "m-published-aaaa"
    assert not list(redis_client.scan_iter(f"{keys.PREFIX}:v:{version}*"))
    assert not store.exists()


@pytest.mark.slow
def test_publish_accepted_stores_precomputes_and_the_api_fetches_it(tmp_path, redis_client, redis_url):
    model, version = evaluated_model(tmp_path / "model", ndcg=0.345)
    publish_published(redis_client, "m-published-aaaa", ndcg=0.35)
    store = tmp_path / "store"
    params = tmp_path / "params.yaml"
    params.write_text("hybrid:\n  top-n: 7\n  neighbours: 5\nprecompute:\n  block-size: 8\ngate:\n  ndcg-margin: 0.01\n")
    proc = cli("publish", "--model", model, "--redis-url", redis_url, "--models-uri", str(store),
               "--params", str(params))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quality gate passed" in proc.stderr
    served = current_version(redis_client)
    assert served == keys.list_version(version, settings_of({"top-n": 7, "neighbours": 5}).digest())
    assert redis_client.get(keys.PREVIOUS).decode() == "m-published-aaaa"
    meta = read_meta(redis_client, served)
    assert meta["model_version"] == version and meta["settings"]["top_n"] == 7
    assert meta.get("evaluation", {}).get("ndcg_at_10") == 0.345, \
        "fuserank precompute must copy MODEL_DIR/evaluation.json into the meta hash (the next night's gate reads it)"
    stored = store / version
    assert (stored / "manifest.json").exists() and (stored / "evaluation.json").exists()
    # the API pods' init container
    out = tmp_path / "fetched"
    proc = cli("fetch-model", "--redis-url", redis_url, "--models-uri", str(store), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert ModelArtifact.load(str(out)).version == version
    # the same night again: already served, nothing to do
    proc = cli("publish", "--model", model, "--redis-url", redis_url, "--models-uri", str(store),
               "--params", str(params))
    assert proc.returncode == 0 and "already being served" in proc.stderr


def test_publish_does_not_rerun_what_is_served(tmp_path, redis_client, redis_url):
    model, version = evaluated_model(tmp_path / "model", ndcg=0.1)
    target = keys.list_version(version, settings_of({}).digest())
    publish_published(redis_client, target, ndcg=0.9)

    def never(*a, **k):
        raise AssertionError("precompute must not run")
    assert publish_if_better(model, redis_url, margin=0.01, run=never) == 0


def test_publish_failures_keep_the_current_version(tmp_path, redis_client, redis_url):
    model, version = evaluated_model(tmp_path / "model", ndcg=0.5)
    publish_published(redis_client, "m-published-aaaa", ndcg=0.1)
    failed = subprocess.CompletedProcess([], 1)
    with pytest.raises(NightlyError, match="exited with 1; m-published-aaaa stays current"):
        publish_if_better(model, redis_url, margin=0.01, run=lambda *a, **k: failed)
    assert current_version(redis_client) == "m-published-aaaa"
    # a stale evaluation (of another model) is an error, not a pass
    (Path(model) / "evaluation.json").write_text(json.dumps(evaluation("someone-else", 0.9)))
    proc = cli("publish", "--model", model, "--redis-url", redis_url, "--margin", "0.01")
    assert proc.returncode == EXIT_FAILED and "stale evaluation" in proc.stderr
    # an evaluation of other hybrid settings than the ones about to be published is refused too
    (Path(model) / "evaluation.json").write_text(json.dumps(evaluation(
        version, 0.9, settings=settings_of({"top-n": 3}).to_dict())))
    with pytest.raises(NightlyError, match="evaluate with the same settings"):
        publish_if_better(model, redis_url, margin=0.01, run=lambda *a, **k: failed)
    os.remove(Path(model) / "evaluation.json")
    proc = cli("publish", "--model", model, "--redis-url", redis_url, "--margin", "0.01")
    assert proc.returncode == EXIT_FAILED and "evaluation.json: missing" in proc.stderr


def test_precompute_command_uses_the_real_cli(tmp_path, monkeypatch):
    """params.yaml's pins over what train chose for the model: the settings the nightly digest names."""
    model = random_artifact(tmp_path / "m")
    manifest_path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["chosen"] = {"hybrid": {"weight_stage2": 0.3, "stage2_neighbours": 5}}
    manifest_path.write_text(json.dumps(manifest))
    params = precompute_params_of(load_params(str(ROOT / "params.yaml")))
    cmd = precompute_command(model, "redis://h:6379/0", params, ["--runner", "DataflowRunner"])
    assert cmd[:4] == [sys.executable, "-m", "fuserank", "precompute"]
    seen = {}
    monkeypatch.setattr("fuserank.batch.pipeline.precompute",
                        lambda model, url, settings, beam, block: seen.update(locals()) or {})
    from fuserank import cli as fcli
    monkeypatch.setattr(fcli, "_check_memory_policy_before_writing", lambda *a: None)   # no Redis at h:6379
    assert fcli.main(cmd[3:]) == 0
    assert seen["settings"] == settings_of(params, manifest) and seen["block"] == params["block-size"]
    assert seen["settings"].top_n == params["top-n"]
    assert (seen["settings"].weight_stage2, seen["settings"].stage2_neighbours) == (0.3, 5)
    assert seen["beam"] == ["--runner", "DataflowRunner"]
    assert _runner_is_remote(["--runner=DataflowRunner"]) and not _runner_is_remote([])


def test_fetch_model_errors(tmp_path, redis_client, redis_url):
    proc = cli("fetch-model", "--redis-url", redis_url, "--models-uri", str(tmp_path / "store"),
               "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "no published list version" in proc.stderr
    model, version = evaluated_model(tmp_path / "model", ndcg=0.3)
    store_model(model, str(tmp_path / "store"))
    publish_published(redis_client, "v-1", ndcg=None)
    write_meta(redis_client, "v-1", {"model_version": version})
    with open(tmp_path / "store" / version / "user_embeddings.npy", "ab") as fh:
        fh.write(b"x")
    proc = cli("fetch-model", "--redis-url", redis_url, "--models-uri", str(tmp_path / "store"),
               "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "does not match the manifest's sha256" in proc.stderr
    write_meta(redis_client, "v-1", {"model_version": "never-stored"})
    proc = cli("fetch-model", "--redis-url", redis_url, "--models-uri", str(tmp_path / "store"),
               "--out", str(tmp_path / "o2"))
    assert proc.returncode == 1 and "never (completely) stored" in proc.stderr


def test_model_store_on_gcs_emulator(tmp_path, gcs_emulator):
    model, version = evaluated_model(tmp_path / "model", ndcg=0.3)
    target = store_model(model, "gs://fuserank-models/models")
    assert target == f"gs://fuserank-models/models/{version}"
    out = fetch_model("gs://fuserank-models/models", version, str(tmp_path / "out"))
    assert ModelArtifact.load(out).version == version
    assert json.loads((Path(out) / "evaluation.json").read_text())["ndcg_at_10"] == 0.3
    assert storage.download("gs://fuserank-models/state/dvc.lock", str(tmp_path / "lock")) is False


def test_restart_deployment_stamps_the_model_on_the_pod_template(monkeypatch):
    """The official client's PATCH, recorded by a real HTTP server; a refusal is a NightlyError."""
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self):
            seen["path"], seen["headers"] = self.path, {k.lower(): v for k, v in self.headers.items()}
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if "forbidden" in self.path:
                code, answer = 403, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "Forbidden", "code": 403}
            else:       # the patched Deployment, as the API server answers
                code, answer = 200, {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "metadata": {"name": "fuserank-api", "namespace": "fuserank"},
                                     "spec": {"selector": {"matchLabels": {"app": "fuserank-api"}},
                                              **seen["body"]["spec"]}}
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(answer).encode())

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.server_port}",
                                          api_key={"BearerToken": "tok"}, api_key_prefix={"BearerToken": "Bearer"})
    try:
        restart_deployment(RestartTarget("fuserank", "fuserank-api"), "m-123", configuration=api)
        assert seen["path"] == "/apis/apps/v1/namespaces/fuserank/deployments/fuserank-api"
        assert seen["headers"]["authorization"] == "Bearer tok"
        assert seen["headers"]["content-type"] == "application/strategic-merge-patch+json"
        assert seen["body"] == {"spec": {"template": {"metadata": {"annotations": {
            "fuserank.io/model-version": "m-123"}}}}}
        with pytest.raises(NightlyError, match="rolling deployment fuserank/forbidden onto model m-123.*403"):
            restart_deployment(RestartTarget("fuserank", "forbidden"), "m-123", configuration=api)
    finally:
        server.shutdown()
    assert RestartTarget.parse("ns/dep") == RestartTarget("ns", "dep")
    assert RestartTarget.parse("dep", default_namespace="x").namespace == "x"
    monkeypatch.setenv("POD_NAMESPACE", "pods-own")
    assert RestartTarget.parse("dep") == RestartTarget("pods-own", "dep")


def test_params_helpers(monkeypatch):
    assert as_flags({"top-n": 5, "lenient": False, "x": True, "w": 0.5}) == ["--top-n", "5", "--x", "--w", "0.5"]
    assert parse_set(["ingest.ratings=gs://b/r.csv", "train.epochs=2"]) == {
        "ingest": {"ratings": "gs://b/r.csv"}, "train": {"epochs": 2}}
    with pytest.raises(NightlyError):
        parse_set(["nonsense"])
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    monkeypatch.setenv("FUSERANK_SET", "train.epochs=3 ingest.seed=1")
    monkeypatch.setenv("REDIS_URL", "redis://x")
    args = nightly.build_parser().parse_args(["run", "--workdir", "/w", "--set", "train.patience=1"])
    assert args.set == ["train.epochs=3", "ingest.seed=1", "train.patience=1"]


def test_settings_resolve_once_from_flags_and_the_environment(tmp_path, monkeypatch):
    """Flags over FUSERANK_<SETTING> variables; --params-override then --set merged; the restart target in the
    pod's namespace; every variable named in --help."""
    override = tmp_path / "override.yaml"
    override.write_text("train:\n  epochs: 5\n  patience: 2\n")
    for name, value in {"REDIS_URL": "redis://r:6379/0", "FUSERANK_MODELS_URI": "gs://b/models",
                        "FUSERANK_RESTART_DEPLOYMENT": "fuserank-api", "POD_NAMESPACE": "fuserank",
                        "FUSERANK_BEAM_ARGS": "--runner DataflowRunner --project 'p x'",
                        "FUSERANK_NDCG_MARGIN": "0.02", "FUSERANK_SET": "train.epochs=3"}.items():
        monkeypatch.setenv(name, value)
    args = nightly.build_parser().parse_args(["run", "--workdir", "/w", "--params-override", str(override),
                                              "--margin", "0.05", "--no-push"])
    settings = nightly.NightlySettings.from_args(args)
    assert settings == nightly.NightlySettings(
        "redis://r:6379/0", margin=0.05, models_uri="gs://b/models", restart=RestartTarget("fuserank", "fuserank-api"),
        beam_args=("--runner", "DataflowRunner", "--project", "p x"), workdir="/w",
        params_override={"train": {"epochs": 3, "patience": 2}}, push=False)
    monkeypatch.setenv("FUSERANK_NDCG_MARGIN", "-1")
    with pytest.raises(SystemExit):
        nightly.build_parser().parse_args(["gate", "--model", "m"])
    usage = cli("run", "--help").stdout
    for name in ("$FUSERANK_MODELS_URI", "$REDIS_URL", "$FUSERANK_NDCG_MARGIN", "$FUSERANK_WORKDIR", "$FUSERANK_SET"):
        assert name in usage, name
