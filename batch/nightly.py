"""The nightly recompute (the Kubernetes CronJob's entry point) and the API pods' model fetch.

    python -m fuserank.batch.nightly run          dvc pull -> dvc repro evaluate -> dvc push -> gate -> publish
                                                  (the ingest drains the feedback store: `--feedback` = --redis-url,
                                                  pinned to the stream's last id; --no-feedback: files only)
    python -m fuserank.batch.nightly publish      gate -> store the model -> `fuserank precompute` (dvc.yaml's
                                                  non-cached `precompute` stage runs this)
    python -m fuserank.batch.nightly gate         the gate's decision only, as JSON (for people)
    python -m fuserank.batch.nightly fetch-model  the published version's model -> a local directory (the API
                                                  pods' init container)

Exit statuses: 0 published (or already serving this list version), 3 refused by the gate (the CronJob's
podFailurePolicy fails the Job without retries), 1 a step failed (dvc, precompute, Redis, storage), 2 bad usage.
The API image (``fetch-model``) has no TensorFlow, Beam, DVC, PyYAML or kubernetes: none is imported at load.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, Sequence

import redis

from fuserank import config, logs, storage
from fuserank.errors import FuseRankError
from fuserank.redis_client import Target, connect

from fuserank.batch.dvc_step import LOCK, PARAMS, RELEASE_DIR, dvc, prepare_workspace
from fuserank.batch.gate import DEFAULT_MARGIN, load_evaluation, margin_of, published_evaluation, quality_gate
from fuserank.batch.model_store import fetch_published_model, join
from fuserank.batch.params import deep_merge, parse_set, precompute_params_of
from fuserank.batch.release import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, publish_if_better
from fuserank.batch.rollout import RestartTarget

log = logging.getLogger("fuserank.nightly")


@dataclass(frozen=True)
class NightlySettings:
    """What one command runs with, resolved once from its flags (whose defaults are the environment's)."""

    redis_url: str
    model: str | None = None                 # publish, gate: an evaluated model directory
    margin: float | None = None              # None: params.yaml gate.ndcg-margin, else DEFAULT_MARGIN
    models_uri: str | None = None
    restart: RestartTarget | None = None
    beam_args: tuple[str, ...] = ()
    params: str = PARAMS                     # publish: the params file
    project: str = "."                       # run: the DVC project, copied into workdir
    workdir: str | None = None
    dvc_remote_url: str | None = None
    state_uri: str | None = None
    params_override: Mapping = field(default_factory=dict)
    pull: bool = True
    push: bool = True
    feedback: bool = True                    # run: the ingest merges the feedback store on redis_url
    out: str | None = None                   # fetch-model
    wait_s: float = 0.0
    redis_cluster: bool = False              # redis_url names a node of a Redis Cluster

    @property
    def redis(self) -> Target:
        return Target(self.redis_url, self.redis_cluster)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "NightlySettings":
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if getattr(args, "restart_deployment", None):
            values["restart"] = RestartTarget.parse(args.restart_deployment)
        values["beam_args"] = tuple(shlex.split(getattr(args, "beam_args", None) or ""))
        if args.command == "run":
            override = config.load_params(args.params_override) if args.params_override else {}
            values.update(params_override=deep_merge(override, parse_set(args.set)),
                          pull=not args.no_pull, push=not args.no_push, feedback=not args.no_feedback)
        return cls(**values)


def run_nightly(settings: NightlySettings, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """One night: EXIT_OK or EXIT_REFUSED; NightlyError when a step fails. ``state_uri`` keeps the last night's
    ``dvc.lock`` (the image carries its commit's), so ``dvc repro`` retrains only when the data or a parameter
    changed; the pushed run-cache lets a fresh pod restore a stage instead of rerunning it."""
    workdir = prepare_workspace(settings.project, settings.workdir)
    if settings.dvc_remote_url:
        dvc(workdir, "remote", "add", "--local", "--force", "--default", "nightly", settings.dvc_remote_url, run=run)
    if settings.state_uri and storage.download(join(settings.state_uri, LOCK), os.path.join(workdir, LOCK)):
        log.info("using the last night's %s from %s", LOCK, settings.state_uri)
    params_path = os.path.join(workdir, PARAMS)
    params = config.load_params(params_path)
    feedback_params, feedback_env = feedback_source(settings)
    override = deep_merge(feedback_params, dict(settings.params_override))
    if override:
        import yaml
        params = deep_merge(params, override)
        with open(params_path, "w") as fh:
            yaml.safe_dump(params, fh, sort_keys=False)
    if settings.pull:
        dvc(workdir, "pull", "--run-cache", "--allow-missing", run=run)
    with _exported(feedback_env):
        dvc(workdir, "repro", *(["--pull"] if settings.pull else []), "evaluate", run=run)
    if settings.push:
        dvc(workdir, "push", "--run-cache", run=run)
    if settings.state_uri:
        storage.upload(os.path.join(workdir, LOCK), join(settings.state_uri, LOCK))
    return publish(settings, os.path.join(workdir, RELEASE_DIR), params, run=run)


def feedback_source(settings: NightlySettings) -> tuple[dict, dict]:
    """(params, environment) pointing the ingest stage at the feedback store: ``--feedback`` through its
    environment layer (the URL may hold a password, which must not reach params.yaml and dvc.lock) and
    ``ingest.feedback-until`` = the stream's last id as a parameter, so `dvc repro` reruns the ingest exactly
    when new feedback arrived. On a Redis Cluster the ingest is told so the same way (``--redis-cluster``)."""
    if not settings.feedback:
        return {}, {}
    from fuserank.feedback import NONE, head
    with connect(settings.redis, "command") as client:
        last, _ = head(client)
    log.info("the ingest drains the feedback store up to stream id %s", last)
    env = {config.env_names("feedback_url")[0]: settings.redis_url,
           **({config.env_names("redis_cluster")[0]: "1"} if settings.redis_cluster else {})}
    return ({"ingest": {"feedback-until": last}} if last != NONE else {}), env


@contextmanager
def _exported(variables: dict):
    """``variables`` in the environment of the commands run inside, as they were afterwards."""
    before = {name: config.environ().get(name) for name in variables}
    for name, value in variables.items():
        config.export(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                config.unset(name)
            else:
                config.export(name, value)


def publish(settings: NightlySettings, model_dir: str | None = None, params: dict | None = None,
            run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """Gate, store, precompute and roll ``model_dir`` (default ``settings.model``) with ``params`` (default: the
    ``settings.params`` file, when there is one)."""
    if params is None:
        params = config.load_params(settings.params) if os.path.isfile(settings.params) else {}
    return publish_if_better(model_dir or settings.model, settings.redis, margin=margin_of(params, settings.margin),
                             precompute_params=precompute_params_of(params), models_uri=settings.models_uri,
                             beam_args=settings.beam_args, restart=settings.restart, run=run)


def print_gate(settings: NightlySettings) -> int:
    new = load_evaluation(settings.model)
    with connect(settings.redis, "command") as client:
        served, published = published_evaluation(client)
    ok, reason = quality_gate(new, published, margin_of({}, settings.margin))
    print(json.dumps({"ok": ok, "reason": reason, "served": served, "new": new, "published": published}))
    return EXIT_OK if ok else EXIT_REFUSED


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _option(parser, flag: str, setting: str, help: str, default=None, required: bool = False, **kw) -> None:
    """A flag whose default is its FUSERANK_<SETTING> variable (fuserank.config's environment layer), which
    ``--help`` names; ``required`` only when neither gives a value."""
    found = config.env_value(setting)
    value = found[0] if found else default
    names = " or ".join(f"${name}" for name in config.env_names(setting))
    parser.add_argument(flag, default=value, required=required and value is None, help=f"{help} [env: {names}]", **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuserank.batch.nightly", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, model: bool = False, publishing: bool = True):
        sp = sub.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _option(sp, "--redis-url", "redis_url", "Redis URL", required=True)
        cluster = config.env_value("redis_cluster")
        sp.add_argument("--redis-cluster", action="store_true",
                        default=config.parse_bool(*cluster) if cluster else False,
                        help="--redis-url names a node of a Redis Cluster [env: $FUSERANK_REDIS_CLUSTER]")
        if model:
            sp.add_argument("--model", required=True, help="evaluated model directory (has evaluation.json)")
        if publishing:
            _option(sp, "--margin", "ndcg_margin", "allowed NDCG@10 drop vs the published model; unset: "
                    f"params.yaml gate.ndcg-margin, else {DEFAULT_MARGIN}", type=_margin)
        return sp

    def releasing(sp):
        _option(sp, "--models-uri", "models_uri", "model store (gs://bucket/models or a directory) the API pods "
                "fetch from")
        _option(sp, "--restart-deployment", "restart_deployment", "[NAMESPACE/]DEPLOYMENT to roll after "
                "publishing (in-cluster)")
        _option(sp, "--beam-args", "beam_args", "Beam PipelineOptions for the precompute, one shell-quoted "
                "string (empty: in-process FnApiRunner)", default="")

    run_p = command("run", "the nightly job: dvc pull/repro/push, gate, publish")
    releasing(run_p)
    _option(run_p, "--project", "project_dir", "directory holding dvc.yaml, params.yaml, .dvc/config", default=".")
    _option(run_p, "--workdir", "workdir", "writable DVC workspace (outputs, cache, lock)", required=True)
    _option(run_p, "--dvc-remote-url", "dvc_remote_url", "DVC remote (gs://bucket/dvc or a directory); unset: "
            ".dvc/config's default remote")
    _option(run_p, "--state-uri", "state_uri", "where the last night's dvc.lock is kept")
    _option(run_p, "--params-override", "params_override", "YAML file merged over params.yaml (the ConfigMap's)")
    found = config.env_value("set")
    run_p.add_argument("--set", action="append", default=shlex.split(found[0]) if found else [],
                       metavar="SECTION.KEY=VALUE", help="override one params.yaml value (after --params-override) "
                       "[env: $FUSERANK_SET, whitespace-separated items]")
    run_p.add_argument("--no-pull", action="store_true", help="skip `dvc pull` (use the workspace as it is)")
    run_p.add_argument("--no-push", action="store_true", help="skip `dvc push`")
    run_p.add_argument("--no-feedback", action="store_true", help="ingest the files only (no `--feedback`)")

    pub_p = command("publish", "gate, store and precompute one evaluated model", model=True)
    releasing(pub_p)
    pub_p.add_argument("--params", default=PARAMS, help="params.yaml with the hybrid, precompute and gate sections")

    command("gate", "print the quality gate's decision (exit 0 pass, 3 refuse)", model=True)

    fetch_p = command("fetch-model", "copy the published version's model to a directory", publishing=False)
    _option(fetch_p, "--models-uri", "models_uri", "the model store", required=True)
    fetch_p.add_argument("--out", required=True, help="directory to fill (an emptyDir shared with the API)")
    _option(fetch_p, "--wait", "fetch_wait_s", "seconds to wait for a first publish", default="0", type=float,
            dest="wait_s")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    try:
        settings = NightlySettings.from_args(args)
        if args.command == "fetch-model":
            fetch_published_model(settings.redis, settings.models_uri, settings.out, wait_s=settings.wait_s)
            return EXIT_OK
        return {"gate": print_gate, "publish": publish, "run": run_nightly}[args.command](settings)
    except (FuseRankError, redis.RedisError, OSError) as exc:
        print(f"fuserank nightly {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
