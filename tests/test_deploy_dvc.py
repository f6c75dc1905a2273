"""DVC: params.yaml covers every CLI tunable, dvc.yaml's stages chain as documented, and for real on the
bundled slice (in a temp copy, `core.no_scm`, a local directory remote): `dvc repro` -> push -> clear the
cache and outputs -> pull gives identical artifacts; a changed input makes ingest stale; and the nightly
job (`run_nightly`: dvc pull/repro/push, gate, publish) refuses a worse model against a real Redis without
touching the served version, then publishes a good one that the API's fetch-model can load."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fuserank import keys
from fuserank.batch.dvc_step import DATA_DIR, RELEASE_DIR, TRAIN_DIR, prepare_workspace
from fuserank.batch.model_store import fetch_published_model
from fuserank.batch.nightly import NightlySettings, run_nightly
from fuserank.batch.release import EXIT_OK, EXIT_REFUSED
from fuserank.publish import current_version, write_meta

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EPOCHS = 2          # params.yaml keeps the production default; the test trains briefly
# Flags that are paths the pipeline wires itself (dvc.yaml) or the environment gives (REDIS_URL), not tunables.
# --feedback / --feedback-until: set by the nightly job (its environment and a params override), per night.
# The Redis URL and its cluster switch are the deployment's (the nightly job passes them), not pipeline tunables.
WIRED = {"ingest": {"--out", "--redis-url", "--redis-cluster", "--suppressed-file", "--feedback", "--feedback-until"},
         "train": {"--data", "--out"}, "precompute": {"--model", "--redis-url", "--redis-cluster"},
         "evaluate": {"--model", "--data"}}
# `fuserank evaluate` also runs the offline baseline comparison (not a pipeline stage): its flags are not
# pipeline tunables.
# What `fuserank train` chooses on the data (or an operator pins): absent from params.yaml by default.
CHOSEN_BY_TRAIN = {"--objective", "--temperature", "--positive-weight", "--low-weight", "--low-threshold", "--no-search",
                   "--neighbours", "--similar-users", "--like-threshold", "--stage1-seeds", "--stage2-neighbours",
                   "--weight-stage1", "--weight-stage2", "--weight-model"}
EVALUATE_COMPARISON_ONLY = {"--ratings", "--anime", "--out", "--seeds", "--min-user-ratings", "--no-rating-objective"}


def cli_flags(command: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "fuserank", command, "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"fuserank {command} --help failed: {proc.stderr}")
    options = proc.stdout.split("options:", 1)[1]
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", options, re.M)) - {"--help"}


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.mark.parametrize("command, sections", [
    ("ingest", ["ingest"]), ("train", ["train"]), ("evaluate", ["hybrid", "evaluate"]),
    ("precompute", ["hybrid", "precompute"]), ("serve", ["hybrid"]),
])
def test_params_yaml_holds_every_cli_tunable(command, sections):
    flags = cli_flags(command) - WIRED.get(command, set())
    if command == "evaluate":
        flags -= EVALUATE_COMPARISON_ONLY
    if command == "serve":      # serving flags live in the Deployment (k8s/), the hybrid knobs here
        flags -= {"--model", "--redis-url", "--redis-cluster", "--host", "--port", "--workers", "--threads", "--worker-class",
                  "--api-key", "--rate-limit", "--rate-window-s", "--models-uri", "--log-sample"}
    flags -= CHOSEN_BY_TRAIN
    keys_ = {f"--{k}" for s in sections for k in (params()[s] or {})}
    assert flags == keys_, {"flags without a params.yaml key": flags - keys_, "keys that are no flag": keys_ - flags}


def test_stages_chain_ingest_train_evaluate_precompute():
    stages = dvc_yaml()["stages"]
    assert list(stages) == ["ingest", "train", "evaluate", "precompute"]
    assert "${ingest}" in stages["ingest"]["cmd"] and "${train}" in stages["train"]["cmd"]
    assert "${hybrid}" in stages["evaluate"]["cmd"]
    assert stages["ingest"]["deps"] == ["${ingest.ratings}", "${ingest.anime}"]
    # the ingest output persists between runs: the next ingest carries its feedback.parquet over
    assert stages["ingest"]["outs"] == [{DATA_DIR: {"persist": True}}]
    assert stages["train"]["deps"] == [DATA_DIR]
    assert set(stages["evaluate"]["deps"]) == set(stages["train"]["outs"] + [DATA_DIR])
    assert stages["evaluate"]["outs"] == [RELEASE_DIR]
    pre = stages["precompute"]
    assert pre["always_changed"] is True and "outs" not in pre and "metrics" not in pre   # not cached
    assert pre["deps"] == [RELEASE_DIR] and "fuserank.batch.nightly publish" in pre["cmd"]
    assert stages["train"]["outs"] == [TRAIN_DIR]
    for name, stage in stages.items():
        for section in stage.get("params", []):
            assert section in params(), (name, section)


def test_remotes_local_by_default_gcs_for_production():
    text = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\s*remote = local\s*$", text, re.M)
    assert re.search(r"\['remote \"local\"'\]\s*\n\s*url = \.\./runs/dvc-remote", text)
    assert re.search(r"\['remote \"gcs\"'\]\s*\n\s*url = gs://", text)


# ------------------------------------------------------------------------------------------------
# The real thing, on the bundled slice
# ------------------------------------------------------------------------------------------------
def evaluate_available() -> bool:
    return subprocess.run([sys.executable, "-m", "fuserank", "evaluate", "--help"], capture_output=True,
                          timeout=60).returncode == 0


def dvc_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMET_", "DVC_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
                "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"), "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
                "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"), "HOME": str(tmp / "home"),
                "MPLCONFIGDIR": str(tmp / "mpl")})
    return env


def dvc(ws: Path, env: dict, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The project copied the way the nightly job copies it, trained briefly, pushed to a local remote."""
    if not (BIN / "dvc").exists():
        pytest.fail("dvc is missing from the venv: install the dev extra")
    tmp = tmp_path_factory.mktemp("dvc")
    env = dvc_env(tmp)
    ws = Path(prepare_workspace(str(ROOT), str(tmp / "project")))
    (ws / "dvc.lock").unlink(missing_ok=True)
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["train"]["epochs"] = EPOCHS
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    remote = tmp / "remote"
    dvc(ws, env, "remote", "add", "--local", "--force", "--default", "test", str(remote))
    target = "evaluate" if evaluate_available() else "train"
    out = dvc(ws, env, "repro", target)
    assert "Running stage 'ingest'" in out and "Running stage 'train'" in out
    dvc(ws, env, "push", "--run-cache")
    return {"ws": ws, "env": env, "remote": remote, "target": target, "tmp": tmp}


@pytest.mark.slow
def test_repro_push_clear_pull_gives_identical_artifacts(pipeline):
    ws, env = pipeline["ws"], pipeline["env"]
    outputs = [DATA_DIR, TRAIN_DIR] + (
        [RELEASE_DIR, "runs/dvc/evaluation.json"] if pipeline["target"] == "evaluate" else [])
    before = {o: tree_hashes(ws / o) if (ws / o).is_dir() else (ws / o).read_bytes() for o in outputs}
    assert all(before.values())
    if pipeline["target"] == "evaluate":
        evaluation = json.loads((ws / RELEASE_DIR / "evaluation.json").read_text())
        manifest = json.loads((ws / RELEASE_DIR / "manifest.json").read_text())
        assert evaluation["model_version"] == manifest["model_version"]
        assert 0.0 <= evaluation["ndcg_at_10"] <= 1.0
        assert json.loads((ws / "runs/dvc/evaluation.json").read_text()) == evaluation
        # evaluate worked on a copy: train's output is untouched, so train is not stale
        assert not (ws / TRAIN_DIR / "evaluation.json").exists()
    shutil.rmtree(ws / ".dvc" / "cache")
    shutil.rmtree(ws / "runs" / "dvc")
    dvc(ws, env, "pull")
    after = {o: tree_hashes(ws / o) if (ws / o).is_dir() else (ws / o).read_bytes() for o in outputs}
    assert after == before
    status = json.loads(dvc(ws, env, "status", "--json", "--with-deps", pipeline["target"]) or "{}")
    assert status == {}, status


@pytest.mark.slow
def test_changed_data_makes_ingest_stale(pipeline):
    ws, env = pipeline["ws"], pipeline["env"]
    ratings = ws / params()["ingest"]["ratings"]
    original = ratings.read_bytes()
    try:
        ratings.write_bytes(original.rsplit(b"\n", 2)[0] + b"\n")     # a new snapshot: one row fewer
        status = json.loads(dvc(ws, env, "status", "--json", "--with-deps", pipeline["target"]))
        assert "ingest" in status, status
        changed = [e for e in status["ingest"] if "changed deps" in e]
        assert changed and params()["ingest"]["ratings"] in changed[0]["changed deps"]
    finally:
        ratings.write_bytes(original)
    assert json.loads(dvc(ws, env, "status", "--json", "--with-deps", pipeline["target"]) or "{}") == {}


def run_nightly_logged(pipeline, workdir: Path, redis_url: str, models_uri: Path):
    """run_nightly against the test remote, in a fresh workspace; dvc's output collected."""
    log = []

    def run(cmd, **kw):
        proc = subprocess.run(cmd, env=pipeline["env"], capture_output=True, text=True, timeout=600, **kw)
        log.append(proc.stdout + proc.stderr)
        return proc
    settings = NightlySettings(redis_url, margin=0.01, models_uri=str(models_uri), project=str(pipeline["ws"]),
                               workdir=str(workdir), dvc_remote_url=str(pipeline["remote"]),
                               state_uri=str(pipeline["tmp"] / "state"))
    code = run_nightly(settings, run=run)
    return code, "\n".join(log)


@pytest.mark.slow
def test_nightly_refuses_a_worse_model_then_publishes_a_good_one(pipeline, redis_client, redis_url):
    if pipeline["target"] != "evaluate":
        pytest.skip("`fuserank evaluate` is not available yet: the gate has no evaluation to read")
    new = json.loads((pipeline["ws"] / RELEASE_DIR / "evaluation.json").read_text())
    store = pipeline["tmp"] / "models"
    # 1. the published model scores well above the new one: refused, nothing changes
    write_meta(redis_client, "published-v", {"model_version": "published", "state": "complete",
                                              "evaluation": {**new, "model_version": "published",
                                                             "ndcg_at_10": new["ndcg_at_10"] + 0.05}})
    redis_client.set(keys.CURRENT, "published-v")
    code, log = run_nightly_logged(pipeline, pipeline["tmp"] / "night1", redis_url, store)
    assert code == EXIT_REFUSED
    # the lock came from the project, the outputs from the remote: nothing was retrained
    assert "Running stage" not in log and "didn't change" in log, log[-3000:]
    assert current_version(redis_client) == "published-v"
    assert not store.exists()
    assert (pipeline["tmp"] / "state" / "dvc.lock").exists()    # the night's lock is kept for the next one
    # 2. within the margin: published, and the API's init container can fetch it
    write_meta(redis_client, "published-v", {"evaluation": {**new, "model_version": "published",
                                                            "ndcg_at_10": new["ndcg_at_10"] + 0.005}})
    code, log = run_nightly_logged(pipeline, pipeline["tmp"] / "night2", redis_url, store)
    assert code == EXIT_OK, log[-3000:]
    served = current_version(redis_client)
    assert served.startswith(new["model_version"] + "-") and redis_client.get(keys.PREVIOUS) == b"published-v"
    out = pipeline["tmp"] / "fetched"
    fetch_published_model(redis_url, str(store), str(out))
    from fuserank.artifacts import ModelArtifact
    assert ModelArtifact.load(str(out)).version == new["model_version"]
