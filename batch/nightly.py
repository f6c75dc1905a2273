"""The nightly recompute (the Kubernetes CronJob's entry point) and the API pods' model fetch.

    python -m fuserank.batch.nightly run          dvc pull -> dvc repro evaluate -> dvc push -> gate -> publish
    python -m fuserank.batch.nightly publish      gate -> store the model -> `fuserank precompute` (dvc.yaml's
                                                  non-cached `precompute` stage runs this)
    python -m fuserank.batch.nightly gate         the gate's decision only, as JSON (for people)
    python -m fuserank.batch.nightly fetch-model  the published version's model -> a local directory (the API
                                                  pods' init container)

The quality gate: the new model's evaluation NDCG@10 (``MODEL_DIR/evaluation.json``, written by
``fuserank evaluate``) must not fall below the published version's (``evaluation`` in its Redis meta
hash) by more than ``margin``; otherwise nothing is stored or published, the current version keeps
being served, the reason goes to stderr and the exit status is ``EXIT_REFUSED`` (3), which the
CronJob's podFailurePolicy turns into a failed Job without retries.

Exit statuses: 0 published (or already serving this list version), 3 refused by the gate, 1 a step
failed (a dvc or precompute subprocess, Redis, storage), 2 bad usage.

Only the serving stack is imported at module level (redis, numpy, pandas via fuserank.keys /
fuserank.publish): the API image has neither TensorFlow, Beam nor DVC, and runs ``fetch-model``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Callable, Sequence

import redis

from fuserank import keys
from fuserank.artifacts import MANIFEST, file_sha256, read_manifest
from fuserank.errors import FuseRankError
from fuserank.publish import current_version, read_meta

log = logging.getLogger("fuserank.nightly")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_MARGIN = 0.01

# The DVC pipeline's paths (dvc.yaml); relative to the DVC project root.
DATA_DIR = "runs/dvc/data"
TRAIN_DIR = "runs/dvc/model"
RELEASE_DIR = "runs/dvc/release"          # the trained model plus its evaluation.json: what gets published
EVALUATION = "evaluation.json"
PARAMS = "params.yaml"
LOCK = "dvc.lock"
# What a DVC workspace needs from the project (plus data/ when it exists: the bundled sample).
PROJECT_FILES = ("dvc.yaml", PARAMS, LOCK, ".dvc/config", ".dvc/.gitignore", ".dvcignore")
MODEL_EXTRA_FILES = ("history.json", EVALUATION)   # stored beside the manifest's files


class NightlyError(FuseRankError):
    pass


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------
def _ndcg(evaluation: dict | None) -> float | None:
    if not isinstance(evaluation, dict):
        return None
    value = evaluation.get("ndcg_at_10")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def quality_gate(new: dict, published: dict | None, margin: float) -> tuple[bool, str]:
    """May the model evaluated as ``new`` replace the one evaluated as ``published``?

    ``new`` / ``published`` are ``fuserank evaluate`` dicts (``published`` is the ``evaluation`` field
    of the served version's meta hash, or None when nothing is served or it predates evaluation).
    Returns ``(ok, reason)``; the reason names both scores, the drop and the margin.
    """
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    new_score = _ndcg(new)
    if new_score is None or not 0.0 <= new_score <= 1.0:
        return False, (f"the new model's evaluation has no valid ndcg_at_10 ({(new or {}).get('ndcg_at_10')!r}); "
                       "refusing to publish an unevaluated model")
    name = (new or {}).get("model_version", "?")
    if published is None:
        return True, (f"new model {name}: NDCG@10 {new_score:.4f}; nothing published to compare with "
                      "(first publish): publishing")
    old_score = _ndcg(published)
    old_name = published.get("model_version", "?")
    if old_score is None:
        return True, (f"new model {name}: NDCG@10 {new_score:.4f}; the published model {old_name} has no "
                      "recorded evaluation (published before evaluation existed): publishing")
    drop = old_score - new_score
    if drop > margin + 1e-12:
        return False, (f"new model {name}: NDCG@10 {new_score:.4f} is {drop:.4f} below the published model "
                       f"{old_name}'s {old_score:.4f}, more than the allowed margin {margin:.4f}; "
                       "keeping the current version")
    return True, (f"new model {name}: NDCG@10 {new_score:.4f} vs published {old_name} {old_score:.4f} "
                  f"(change {-drop:+.4f}, margin {margin:.4f}): publishing")


def load_evaluation(model_dir: str) -> dict:
    path = os.path.join(model_dir, EVALUATION)
    try:
        with open(path) as fh:
            evaluation = json.load(fh)
    except FileNotFoundError:
        raise NightlyError(f"{path}: missing; run `fuserank evaluate --model {model_dir} --data DATA_DIR` "
                           "(the DVC `evaluate` stage) first") from None
    manifest = read_manifest(model_dir)
    if evaluation.get("model_version") != manifest.get("model_version"):
        raise NightlyError(f"{path} evaluates model {evaluation.get('model_version')!r}, but {model_dir} holds "
                           f"model {manifest.get('model_version')!r}: stale evaluation")
    return evaluation


def published_evaluation(r: redis.Redis) -> tuple[str | None, dict | None]:
    """(served list version, its ``evaluation`` dict or None)."""
    version = current_version(r)
    if version is None:
        return None, None
    evaluation = read_meta(r, version).get("evaluation")
    return version, evaluation if isinstance(evaluation, dict) else None


# --------------------------------------------------------------------------------------------
# Params (params.yaml): the CLI's tunables, rendered as flags the way DVC's ${section} does
# --------------------------------------------------------------------------------------------
def load_params(path: str) -> dict:
    import yaml
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_set(items: Sequence[str]) -> dict:
    """``["train.epochs=2", "ingest.ratings=gs://b/r.csv"]`` -> nested dict (values parsed as YAML scalars)."""
    import yaml
    out: dict = {}
    for item in items:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise NightlyError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def as_flags(section: dict) -> list[str]:
    """``{"top-n": 50, "lenient": False}`` -> ``["--top-n", "50"]`` (DVC's dict unpacking, store_true bools)."""
    flags: list[str] = []
    for key, value in (section or {}).items():
        if isinstance(value, bool):
            flags += [f"--{key}"] if value else []
        elif isinstance(value, (list, tuple)):
            flags += [f"--{key}", *map(str, value)]
        elif value is not None:
            flags += [f"--{key}", str(value)]
    return flags


def precompute_params_of(params: dict) -> dict:
    """params.yaml's ``hybrid`` knobs plus ``precompute``'s own flags: everything `fuserank precompute` takes."""
    return {**(params.get("hybrid") or {}), **(params.get("precompute") or {})}


def settings_of(precompute_params: dict, model_manifest: dict | None = None):
    """The settings `fuserank precompute` would use: the model's chosen knobs below the params' pins."""
    from fuserank.config import HybridSettings
    knobs = {k.replace("-", "_"): v for k, v in (precompute_params or {}).items()}
    return HybridSettings.for_model(model_manifest or {}, **knobs)


def settings_digest(precompute_params: dict, model_manifest: dict | None = None) -> str:
    return settings_of(precompute_params, model_manifest).digest()


# --------------------------------------------------------------------------------------------
# The model store: <models_uri>/<model_version>/{manifest.json, its files, history.json, evaluation.json}
# --------------------------------------------------------------------------------------------
def _is_gcs(uri: str) -> bool:
    return str(uri).startswith("gs://")


def _join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts]) if _is_gcs(uri) else os.path.join(uri, *parts)


def _gcs_blob(uri: str):
    from fuserank import storage
    bucket, key = storage.split_gcs(uri)
    return storage._client().bucket(bucket).blob(key)


def put_file(local: str, uri: str) -> None:
    if _is_gcs(uri):
        _gcs_blob(uri).upload_from_filename(local)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        tmp = f"{uri}.tmp-{os.getpid()}"
        shutil.copyfile(local, tmp)
        os.replace(tmp, uri)


def get_file(uri: str, local: str) -> bool:
    """Copy ``uri`` to ``local``; False when it does not exist."""
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    if _is_gcs(uri):
        blob = _gcs_blob(uri)
        if not blob.exists():
            return False
        blob.download_to_filename(local)
        return True
    if not os.path.isfile(uri):
        return False
    shutil.copyfile(uri, local)
    return True


def model_files(model_dir: str) -> list[str]:
    manifest = read_manifest(model_dir)
    names = sorted(manifest.get("files", {}))
    if not names:
        raise NightlyError(f"{model_dir}/{MANIFEST} lists no files")
    return names + [n for n in MODEL_EXTRA_FILES if os.path.isfile(os.path.join(model_dir, n))]


def store_model(model_dir: str, models_uri: str) -> str:
    """Upload the model under its version; the manifest goes last, so a version with a manifest is complete."""
    version = read_manifest(model_dir)["model_version"]
    target = _join(models_uri, version)
    for name in model_files(model_dir):
        put_file(os.path.join(model_dir, name), _join(target, name))
    put_file(os.path.join(model_dir, MANIFEST), _join(target, MANIFEST))
    log.info("model %s stored at %s", version, target)
    return target


def fetch_model(models_uri: str, model_version: str, out_dir: str) -> str:
    """Download one stored model version into ``out_dir`` and check every file against the manifest's sha256."""
    source = _join(models_uri, model_version)
    os.makedirs(out_dir, exist_ok=True)
    if not get_file(_join(source, MANIFEST), os.path.join(out_dir, MANIFEST)):
        raise NightlyError(f"{source}: no {MANIFEST}; model {model_version} was never (completely) stored")
    manifest = read_manifest(out_dir)
    if manifest.get("model_version") != model_version:
        raise NightlyError(f"{source}/{MANIFEST} names model {manifest.get('model_version')!r}, not {model_version!r}")
    for name, digest in sorted(manifest.get("files", {}).items()):
        local = os.path.join(out_dir, name)
        if not get_file(_join(source, name), local):
            raise NightlyError(f"{source}/{name}: missing")
        if file_sha256(local) != digest:
            raise NightlyError(f"{source}/{name}: sha256 does not match the manifest (corrupt or partial upload)")
    for name in MODEL_EXTRA_FILES:
        get_file(_join(source, name), os.path.join(out_dir, name))
    log.info("model %s fetched from %s into %s", model_version, source, out_dir)
    return out_dir


def fetch_published_model(redis_url: str, models_uri: str, out_dir: str, wait_s: float = 0.0,
                          poll_s: float = 10.0) -> str:
    """The API init container: the model of the list version ``fuserank:current`` names, into ``out_dir``.

    Waits up to ``wait_s`` for a first publish (a fresh cluster has none until the nightly job runs).
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            version = current_version(client)
            if version is not None:
                break
            if time.monotonic() >= deadline:
                raise NightlyError("no published list version in Redis (fuserank:current is unset): run the "
                                   "nightly job once (kubectl create job --from=cronjob/fuserank-nightly ...)")
            time.sleep(poll_s)
        model_version = read_meta(client, version).get("model_version")
    finally:
        client.close()
    if not model_version:
        raise NightlyError(f"list version {version} has no model_version in its meta hash")
    return fetch_model(models_uri, str(model_version), out_dir)


# --------------------------------------------------------------------------------------------
# Rolling the API onto the new model (in-cluster, via the Kubernetes API; no kubectl in the image)
# --------------------------------------------------------------------------------------------
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class RestartTarget:
    namespace: str
    deployment: str
    api_base: str = ""                     # default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    token_file: str = f"{SA_DIR}/token"
    ca_file: str | None = f"{SA_DIR}/ca.crt"

    @classmethod
    def parse(cls, text: str, default_namespace: str | None = None) -> "RestartTarget":
        namespace, sep, name = text.rpartition("/")
        namespace = namespace if sep else (default_namespace or _pod_namespace())
        if not name or not namespace:
            raise NightlyError(f"restart target {text!r}: expected [NAMESPACE/]DEPLOYMENT")
        return cls(namespace, name)


def _pod_namespace() -> str:
    try:
        with open(f"{SA_DIR}/namespace") as fh:
            return fh.read().strip()
    except OSError:
        return os.environ.get("POD_NAMESPACE", "")


MODEL_ANNOTATION = "fuserank.io/model-version"


def restart_deployment(target: RestartTarget, model_version: str) -> None:
    """Roll the API onto ``model_version``: stamp it on the pod template (a strategic-merge PATCH, what
    ``kubectl rollout restart`` does with a timestamp). Idempotent: an unchanged value rolls nothing, so a
    retried night may call it again."""
    base = target.api_base or "https://{}:{}".format(os.environ["KUBERNETES_SERVICE_HOST"],
                                                     os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
    with open(target.token_file) as fh:
        token = fh.read().strip()
    body = {"spec": {"template": {"metadata": {"annotations": {MODEL_ANNOTATION: model_version}}}}}
    req = urllib.request.Request(
        f"{base}/apis/apps/v1/namespaces/{target.namespace}/deployments/{target.deployment}",
        data=json.dumps(body).encode(), method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/strategic-merge-patch+json"})
    context = ssl.create_default_context(cafile=target.ca_file) if base.startswith("https") else None
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        if resp.status >= 300:
            raise NightlyError(f"rolling deployment {target.namespace}/{target.deployment}: HTTP {resp.status}")
    log.info("deployment %s/%s set to model %s (pods roll if it changed)", target.namespace, target.deployment,
             model_version)


# --------------------------------------------------------------------------------------------
# Publish: gate -> store -> precompute (which flips the pointer) -> restart the API
# --------------------------------------------------------------------------------------------
def _runner_is_remote(beam_args: Sequence[str]) -> bool:
    args = list(beam_args)
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--runner=") else (
            args[i + 1] if arg == "--runner" and i + 1 < len(args) else None)
        if value is not None:
            return "dataflow" in value.lower()
    return False


def precompute_command(model: str, redis_url: str, precompute_params: dict, beam_args: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "fuserank", "precompute", "--model", model, "--redis-url", redis_url,
           *as_flags(precompute_params)]
    return cmd + (["--", *beam_args] if beam_args else [])


def publish_if_better(model_dir: str, redis_url: str, *, margin: float, precompute_params: dict | None = None,
                      models_uri: str | None = None, beam_args: Sequence[str] = (),
                      restart: RestartTarget | None = None,
                      run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    precompute_params = precompute_params or {}
    new = load_evaluation(model_dir)
    evaluated = new.get("settings")
    settings = settings_of(precompute_params, read_manifest(model_dir))
    if isinstance(evaluated, dict) and evaluated != settings.to_dict():
        raise NightlyError(f"{model_dir}/{EVALUATION} scored the hybrid with {evaluated}, but the precompute would "
                           f"publish {settings.to_dict()}: evaluate with the same settings (params.yaml `hybrid`)")
    client = redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=10)
    try:
        served, published = published_evaluation(client)
        target = keys.list_version(new["model_version"], settings.digest())
        if served == target:
            print(f"fuserank nightly: list version {target} (model {new['model_version']}) is already being served; "
                  "nothing to publish", file=sys.stderr)
            if restart is not None:       # a retried night whose roll failed after the publish
                restart_deployment(restart, new["model_version"])
            return EXIT_OK
        ok, reason = quality_gate(new, published, margin)
        if not ok:
            print(f"fuserank nightly: quality gate refused: {reason} ({served or 'none'} stays current)",
                  file=sys.stderr)
            return EXIT_REFUSED
        print(f"fuserank nightly: quality gate passed: {reason}", file=sys.stderr)
        model_for_precompute = model_dir
        if models_uri:
            stored = store_model(model_dir, models_uri)
            if _runner_is_remote(beam_args):
                model_for_precompute = stored     # Dataflow workers read the model from gs://
        elif _runner_is_remote(beam_args):
            raise NightlyError("a Dataflow precompute needs --models-uri gs://... (workers read the model from GCS)")
        cmd = precompute_command(model_for_precompute, redis_url, precompute_params, beam_args)
        log.info("running %s", shlex.join(cmd[:4] + ["..."]))
        proc = run(cmd)
        if proc.returncode != 0:
            raise NightlyError(f"fuserank precompute exited with {proc.returncode}; {served or 'no version'} "
                               "stays current")
        now_served = current_version(client)
        if now_served != target:
            raise NightlyError(f"precompute finished but fuserank:current is {now_served}, expected {target}")
    finally:
        client.close()
    print(f"fuserank nightly: published list version {target} (previous: {served or 'none'})", file=sys.stderr)
    if restart is not None:
        restart_deployment(restart, new["model_version"])
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The whole night: a DVC workspace -> pull -> repro -> push -> publish
# --------------------------------------------------------------------------------------------
def prepare_workspace(project: str, workdir: str) -> str:
    """Copy the DVC project files (and the bundled data/, if any) from ``project`` into ``workdir``.

    The image's project directory stays read-only; DVC writes its cache, outputs and lock here.
    Without a .git, DVC runs with ``core.no_scm``.
    """
    project, workdir = os.path.abspath(project), os.path.abspath(workdir)
    if project != workdir:
        os.makedirs(workdir, exist_ok=True)
        for rel in PROJECT_FILES:
            src = os.path.join(project, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(workdir, rel)), exist_ok=True)
                shutil.copyfile(src, os.path.join(workdir, rel))
        if os.path.isdir(os.path.join(project, "data")) and not os.path.exists(os.path.join(workdir, "data")):
            shutil.copytree(os.path.join(project, "data"), os.path.join(workdir, "data"))
    if not os.path.isfile(os.path.join(workdir, "dvc.yaml")) or not os.path.isfile(os.path.join(workdir, ".dvc/config")):
        raise NightlyError(f"{project}: not a FuseRank DVC project (dvc.yaml and .dvc/config expected)")
    local_config = os.path.join(workdir, ".dvc", "config.local")
    text = open(local_config).read() if os.path.isfile(local_config) else ""
    if not os.path.exists(os.path.join(workdir, ".git")) and "no_scm" not in text:
        if "[core]" in text:
            text = text.replace("[core]", "[core]\n    no_scm = true", 1)
        else:
            text += "[core]\n    no_scm = true\n"
        with open(local_config, "w") as fh:
            fh.write(text)
    return workdir


def _dvc(workdir: str, *args: str, run=subprocess.run) -> None:
    cmd = [os.environ.get("FUSERANK_DVC", shutil.which("dvc") or "dvc"), *args]
    log.info("$ %s", shlex.join(cmd))
    proc = run(cmd, cwd=workdir)
    if proc.returncode != 0:
        raise NightlyError(f"`{shlex.join(['dvc', *args])}` exited with {proc.returncode}; nothing was published")


def run_nightly(project: str, workdir: str, redis_url: str, *, margin: float | None = None,
                models_uri: str | None = None, dvc_remote_url: str | None = None, state_uri: str | None = None,
                params_override: dict | None = None, beam_args: Sequence[str] = (), pull: bool = True,
                push: bool = True, restart: RestartTarget | None = None,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """One night: returns an exit status (EXIT_OK / EXIT_REFUSED); raises NightlyError when a step fails.

    ``state_uri`` keeps the last night's ``dvc.lock`` (the image carries the one of its commit), so
    ``dvc pull`` fetches the newest data snapshot and model and ``dvc repro`` retrains only when the
    data (or a parameter) changed; the pushed run-cache lets a fresh pod restore a stage instead of
    rerunning it.
    """
    workdir = prepare_workspace(project, workdir)
    if dvc_remote_url:
        _dvc(workdir, "remote", "add", "--local", "--force", "--default", "nightly", dvc_remote_url, run=run)
    if state_uri and get_file(_join(state_uri, LOCK), os.path.join(workdir, LOCK)):
        log.info("using the last night's %s from %s", LOCK, state_uri)
    params_path = os.path.join(workdir, PARAMS)
    params = load_params(params_path)
    if params_override:
        import yaml
        params = deep_merge(params, params_override)
        with open(params_path, "w") as fh:
            yaml.safe_dump(params, fh, sort_keys=False)
    if margin is None:
        margin = float((params.get("gate") or {}).get("ndcg-margin", DEFAULT_MARGIN))
    if pull:
        _dvc(workdir, "pull", "--run-cache", "--allow-missing", run=run)
    _dvc(workdir, "repro", *(["--pull"] if pull else []), "evaluate", run=run)
    if push:
        _dvc(workdir, "push", "--run-cache", run=run)
    if state_uri:
        put_file(os.path.join(workdir, LOCK), _join(state_uri, LOCK))
    return publish_if_better(os.path.join(workdir, RELEASE_DIR), redis_url, margin=margin,
                             precompute_params=precompute_params_of(params), models_uri=models_uri,
                             beam_args=beam_args, restart=restart, run=run)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuserank.batch.nightly", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model: bool):
        default_url = _env("REDIS_URL")
        sp.add_argument("--redis-url", default=default_url, required=default_url is None,
                        help="Redis URL; default $REDIS_URL")
        if model:
            sp.add_argument("--model", required=True, help="evaluated model directory (has evaluation.json)")

    def publishing(sp):
        sp.add_argument("--margin", type=_margin, default=_env("FUSERANK_NDCG_MARGIN"),
                        help="allowed NDCG@10 drop vs the published model; default $FUSERANK_NDCG_MARGIN, "
                             f"else params.yaml gate.ndcg-margin, else {DEFAULT_MARGIN}")
        sp.add_argument("--models-uri", default=_env("FUSERANK_MODELS_URI"),
                        help="model store (gs://bucket/models or a directory) the API pods fetch from; "
                             "default $FUSERANK_MODELS_URI")
        sp.add_argument("--restart-deployment", default=_env("FUSERANK_RESTART_DEPLOYMENT"),
                        help="[NAMESPACE/]DEPLOYMENT to roll after publishing (in-cluster); "
                             "default $FUSERANK_RESTART_DEPLOYMENT")
        sp.add_argument("--beam-args", default=_env("FUSERANK_BEAM_ARGS", ""),
                        help="Beam PipelineOptions for the precompute, one shell-quoted string; default "
                             "$FUSERANK_BEAM_ARGS (empty: in-process FnApiRunner)")

    run_p = sub.add_parser("run", help="the nightly job: dvc pull/repro/push, gate, publish",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(run_p, model=False)
    publishing(run_p)
    run_p.add_argument("--project", default=_env("FUSERANK_PROJECT_DIR", "."),
                       help="directory holding dvc.yaml, params.yaml, .dvc/config; default $FUSERANK_PROJECT_DIR")
    run_p.add_argument("--workdir", default=_env("FUSERANK_WORKDIR"), required=_env("FUSERANK_WORKDIR") is None,
                       help="writable DVC workspace (outputs, cache, lock); default $FUSERANK_WORKDIR")
    run_p.add_argument("--dvc-remote-url", default=_env("FUSERANK_DVC_REMOTE_URL"),
                       help="DVC remote (gs://bucket/dvc or a directory); default $FUSERANK_DVC_REMOTE_URL, else "
                            ".dvc/config's default remote")
    run_p.add_argument("--state-uri", default=_env("FUSERANK_STATE_URI"),
                       help="where the last night's dvc.lock is kept; default $FUSERANK_STATE_URI")
    run_p.add_argument("--params-override", default=_env("FUSERANK_PARAMS_OVERRIDE"),
                       help="YAML file merged over params.yaml (the ConfigMap's); default $FUSERANK_PARAMS_OVERRIDE")
    run_p.add_argument("--set", action="append", default=shlex.split(_env("FUSERANK_SET", "")),
                       metavar="SECTION.KEY=VALUE",
                       help="override one params.yaml value (after --params-override); default: the "
                            "whitespace-separated items of $FUSERANK_SET")
    run_p.add_argument("--no-pull", action="store_true", help="skip `dvc pull` (use the workspace as it is)")
    run_p.add_argument("--no-push", action="store_true", help="skip `dvc push`")

    pub_p = sub.add_parser("publish", help="gate, store and precompute one evaluated model",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(pub_p, model=True)
    publishing(pub_p)
    pub_p.add_argument("--params", default=PARAMS, help="params.yaml with the hybrid, precompute and gate sections")

    gate_p = sub.add_parser("gate", help="print the quality gate's decision (exit 0 pass, 3 refuse)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(gate_p, model=True)
    gate_p.add_argument("--margin", type=_margin, default=_env("FUSERANK_NDCG_MARGIN", str(DEFAULT_MARGIN)))

    fetch_p = sub.add_parser("fetch-model", help="copy the published version's model to a directory",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(fetch_p, model=False)
    fetch_p.add_argument("--models-uri", default=_env("FUSERANK_MODELS_URI"),
                         required=_env("FUSERANK_MODELS_URI") is None, help="default $FUSERANK_MODELS_URI")
    fetch_p.add_argument("--out", required=True, help="directory to fill (an emptyDir shared with the API)")
    fetch_p.add_argument("--wait", type=float, default=float(_env("FUSERANK_FETCH_WAIT_S", "0")),
                         help="seconds to wait for a first publish; default $FUSERANK_FETCH_WAIT_S")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch-model":
            fetch_published_model(args.redis_url, args.models_uri, args.out, wait_s=args.wait)
            return EXIT_OK
        if args.command == "gate":
            new = load_evaluation(args.model)
            client = redis.Redis.from_url(args.redis_url, socket_timeout=30)
            try:
                served, published = published_evaluation(client)
            finally:
                client.close()
            ok, reason = quality_gate(new, published, args.margin)
            print(json.dumps({"ok": ok, "reason": reason, "served": served, "new": new, "published": published}))
            return EXIT_OK if ok else EXIT_REFUSED
        restart = RestartTarget.parse(args.restart_deployment) if args.restart_deployment else None
        beam_args = shlex.split(args.beam_args or "")
        if args.command == "publish":
            params = load_params(args.params) if os.path.isfile(args.params) else {}
            margin = args.margin if args.margin is not None else float(
                (params.get("gate") or {}).get("ndcg-margin", DEFAULT_MARGIN))
            return publish_if_better(args.model, args.redis_url, margin=float(margin),
                                     precompute_params=precompute_params_of(params), models_uri=args.models_uri,
                                     beam_args=beam_args, restart=restart)
        override = load_params(args.params_override) if args.params_override else {}
        override = deep_merge(override, parse_set(args.set))
        return run_nightly(args.project, args.workdir, args.redis_url,
                           margin=None if args.margin is None else float(args.margin), models_uri=args.models_uri,
                           dvc_remote_url=args.dvc_remote_url, state_uri=args.state_uri, params_override=override,
                           beam_args=beam_args, pull=not args.no_pull, push=not args.no_push, restart=restart)
    except (FuseRankError, redis.RedisError, OSError) as exc:
        print(f"fuserank nightly {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
