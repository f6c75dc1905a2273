"""Releasing one evaluated model: the gate, then the model store, `fuserank precompute` (which flips the
served pointer) and the API's rollout. Returns ``EXIT_OK`` or ``EXIT_REFUSED``; a failed step raises
NightlyError and the served version stays current."""
from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from fuserank import keys
from fuserank.artifacts import read_manifest
from fuserank.errors import NightlyError
from fuserank.publish import current_version
from fuserank.redis_client import connect, target

from fuserank.batch.gate import EVALUATION, load_evaluation, published_evaluation, quality_gate
from fuserank.batch.model_store import store_model
from fuserank.batch.params import as_flags, settings_of
from fuserank.batch.rollout import RestartTarget, restart_deployment

log = logging.getLogger("fuserank.nightly")

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 3     # 2: bad usage (argparse)


def _runner_is_remote(beam_args: Sequence[str]) -> bool:
    """Does ``--runner`` name Dataflow (whose workers read the model from the store, not this pod's disk)?"""
    runner = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    runner.add_argument("--runner", default="")
    return "dataflow" in runner.parse_known_args(list(beam_args))[0].runner.lower()


def precompute_command(model: str, redis_url, precompute_params: dict, beam_args: Sequence[str]) -> list[str]:
    """``redis_url``: a URL or a fuserank.redis_client.Target (a cluster one adds ``--redis-cluster``)."""
    where = target(redis_url)
    cmd = [sys.executable, "-m", "fuserank", "precompute", "--model", model, "--redis-url", where.url,
           *(["--redis-cluster"] if where.cluster else []), *as_flags(precompute_params)]
    return cmd + (["--", *beam_args] if beam_args else [])


def publish_if_better(model_dir: str, redis_url, *, margin: float, precompute_params: dict | None = None,
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
    with connect(redis_url, "command") as client:
        served, published = published_evaluation(client)
        target = keys.list_version(new["model_version"], settings.digest())
        if served == target:      # a retried night: its roll may have failed after the publish
            print(f"fuserank nightly: list version {target} (model {new['model_version']}) is already being served; "
                  "nothing to publish", file=sys.stderr)
        else:
            ok, reason = quality_gate(new, published, margin)
            if not ok:
                print(f"fuserank nightly: quality gate refused: {reason} ({served or 'none'} stays current)",
                      file=sys.stderr)
                return EXIT_REFUSED
            print(f"fuserank nightly: quality gate passed: {reason}", file=sys.stderr)
            remote = _runner_is_remote(beam_args)
            if remote and not models_uri:
                raise NightlyError("a Dataflow precompute needs --models-uri gs://... (workers read the model "
                                   "from GCS)")
            stored = store_model(model_dir, models_uri) if models_uri else None
            cmd = precompute_command(stored if remote else model_dir, redis_url, precompute_params, beam_args)
            log.info("running %s", shlex.join(cmd[:4] + ["..."]))
            proc = run(cmd)
            if proc.returncode != 0:
                raise NightlyError(f"fuserank precompute exited with {proc.returncode}; {served or 'no version'} "
                                   "stays current")
            if (now_served := current_version(client)) != target:
                raise NightlyError(f"precompute finished but fuserank:current is {now_served}, expected {target}")
            print(f"fuserank nightly: published list version {target} (previous: {served or 'none'})", file=sys.stderr)
    if restart is not None:
        restart_deployment(restart, new["model_version"])
    return EXIT_OK
