"""The model store the API pods fetch from: ``<models_uri>/<model_version>/`` holds the manifest, its files,
history.json and evaluation.json, in a directory or under ``gs://`` (fuserank.storage)."""
from __future__ import annotations

import json
import logging
import os
import time

from fuserank import storage
from fuserank.artifacts import MANIFEST, localise, read_manifest
from fuserank.errors import NightlyError
from fuserank.publish import current_version, read_meta
from fuserank.redis_client import connect

from fuserank.batch.gate import EVALUATION

log = logging.getLogger("fuserank.nightly")

EXTRA_FILES = ("history.json", EVALUATION)   # stored beside the manifest's files


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def store_model(model_dir: str, models_uri: str) -> str:
    """Upload the model under its version; the manifest goes last, so a version with a manifest is complete."""
    manifest = read_manifest(model_dir)
    names = sorted(manifest.get("files", {}))
    if not names:
        raise NightlyError(f"{model_dir}/{MANIFEST} lists no files")
    target = join(models_uri, manifest["model_version"])
    for name in names + [n for n in EXTRA_FILES if os.path.isfile(os.path.join(model_dir, n))] + [MANIFEST]:
        storage.upload(os.path.join(model_dir, name), join(target, name))
    log.info("model %s stored at %s", manifest["model_version"], target)
    return target


def fetch_model(models_uri: str, model_version: str, out_dir: str) -> str:
    """One stored model version into ``out_dir``, every file checked against the manifest's sha256."""
    source = join(models_uri, model_version)
    try:
        with storage.open_binary(join(source, MANIFEST)) as fh:
            named = json.load(fh).get("model_version")
    except FileNotFoundError:
        raise NightlyError(f"{source}: no {MANIFEST}; model {model_version} was never (completely) stored") from None
    if named != model_version:
        raise NightlyError(f"{source}/{MANIFEST} names model {named!r}, not {model_version!r}")
    localise(source, into=out_dir)
    for name in EXTRA_FILES:
        storage.download(join(source, name), os.path.join(out_dir, name))
    log.info("model %s fetched from %s into %s", model_version, source, out_dir)
    return out_dir


def fetch_published_model(redis_url, models_uri: str, out_dir: str, wait_s: float = 0.0,
                          poll_s: float = 10.0) -> str:
    """The API init container: the model of the list version ``fuserank:current`` names, into ``out_dir``.

    Waits up to ``wait_s`` for a first publish (a fresh cluster has none until the nightly job runs).
    """
    deadline = time.monotonic() + wait_s
    with connect(redis_url, "command") as client:
        while (version := current_version(client)) is None:
            if time.monotonic() >= deadline:
                raise NightlyError("no published list version in Redis (fuserank:current is unset): run the "
                                   "nightly job once (kubectl create job --from=cronjob/fuserank-nightly ...)")
            time.sleep(poll_s)
        model_version = read_meta(client, version).get("model_version")
    if not model_version:
        raise NightlyError(f"list version {version} has no model_version in its meta hash")
    return fetch_model(models_uri, str(model_version), out_dir)
