"""params.yaml -> command-line flags: the nightly job's overrides merged over params.yaml, and a section
rendered as flags the way DVC's ``${section}`` dict unpacking does (the file is read by
``fuserank.config.load_params``)."""
from __future__ import annotations

from typing import Sequence

from fuserank.config import HybridSettings
from fuserank.errors import NightlyError


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_set(items: Sequence[str]) -> dict:
    """``["train.epochs=2", "ingest.ratings=gs://b/r.csv"]`` -> nested dict (values parsed as YAML scalars)."""
    import yaml      # not in the API image, whose init container imports the nightly CLI
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


def settings_of(precompute_params: dict, model_manifest: dict | None = None) -> HybridSettings:
    """The settings `fuserank precompute` would use: the model's chosen knobs below the params' pins."""
    knobs = {k.replace("-", "_"): v for k, v in (precompute_params or {}).items()}
    return HybridSettings.for_model(model_manifest or {}, **knobs)
