"""Typed settings shared by every command, and the layers they come from.

``HybridSettings`` holds the knobs of the two-stage hybrid, shared by the batch job, the evaluation and
the API so all three score with exactly the same knobs (and the list version hashes them).

Every `fuserank` command's settings are its flags (typed, validated, with defaults: the CLI parsers in
fuserank.cli are the schema). A setting's value comes from the highest of these layers:

    1. built-in default                  (shown by ``--help``)
    2. params file                       ``--params FILE`` or ``$FUSERANK_PARAMS`` (never read implicitly
                                         from the working directory): YAML or JSON, one section per command
                                         as in params.yaml (``hybrid`` for the hybrid's knobs), keys = flags
                                         without ``--``
    3. environment                       ``FUSERANK_<SETTING>`` (``FUSERANK_TOP_N``, ``FUSERANK_WEIGHT_MODEL``;
                                         ``REDIS_URL`` too, below ``FUSERANK_REDIS_URL``); empty = unset
    4. command-line flag

A value that does not parse fails at start naming the setting and the layer it came from. This module
reads the layers (``params_path``, ``load_params``, ``env_value``); fuserank.settings_parser applies them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

from fuserank.errors import FuseRankError

ENV_PREFIX = "FUSERANK_"
PARAMS_ENV = "FUSERANK_PARAMS"
PARAMS_FLAG = "--params"
# Older environment names still honoured, below FUSERANK_<SETTING>.
ENV_ALIASES = {"redis_url": ("REDIS_URL",)}
# params.yaml sections that no `fuserank` command reads but that belong there (the nightly gate's margin).
OTHER_SECTIONS = ("hybrid", "gate")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class RankingObjective:
    """The ranking objective's defaults (chosen on the 2020 validation carve), one place for `fuserank train`'s
    flags, `training.train.fit` and the offline evaluation's `TrainOptions`."""

    temperature: float = 0.15     # softmax temperature on the cosine logits
    positive_weight: float = 2.0  # weight of a rating >= the like threshold (8)
    low_weight: float = 0.5       # weight of a rating <= low_threshold (watched, disliked)
    low_threshold: int = 5


RANKING = RankingObjective()


# Knobs added after list versions were first stored, with the value those versions were scored with.
BEFORE = {"stage2_neighbours": None, "stage2_by_indegree": False}


@dataclass(frozen=True)
class HybridSettings:
    """Knobs of the two-stage hybrid (see fuserank.scorer); part of the list version hash."""

    top_n: int = 50
    neighbours: int = 50            # anime neighbour list length (stage 2 graph, /anime/<id>/similar)
    similar_users: int = 50         # stage 1: how many similar users vote
    like_threshold: int = 8         # raw 1-10 rating that counts as "rated highly"
    stage1_seeds: int = 1           # stage 2 expands from this many stage-1 picks ...
    expand_own_likes: bool = True   # ... and from the user's own highly rated anime
    # Stage 2 follows each seed anime's first ``stage2_neighbours`` neighbours only (None: all of them),
    # and divides each link by how many of those lists hold its target (its in-degree), so "hub" anime
    # that sit near everything do not collect score from every liked anime.
    stage2_neighbours: int | None = 2
    stage2_by_indegree: bool = True
    # Weights chosen on validation splits carved from the 2020 train split (README, "Reading it"):
    # with ranking-trained embeddings the model's own u.v carries most of the quality.
    weight_stage1: float = 0.05
    weight_stage2: float = 0.15
    weight_model: float = 1.0       # the model's own u.v cosine as a third term

    def __post_init__(self):
        for name in ("top_n", "neighbours", "similar_users", "stage1_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stage2_neighbours is not None and self.stage2_neighbours < 1:
            raise ValueError(f"stage2_neighbours must be >= 1 or None, got {self.stage2_neighbours}")
        if not 1 <= self.like_threshold <= 10:
            raise ValueError(f"like_threshold must be in 1..10, got {self.like_threshold}")
        for name in ("weight_stage1", "weight_stage2", "weight_model"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def with_overrides(self, **overrides) -> "HybridSettings":
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    @classmethod
    def for_model(cls, manifest: dict, **explicit) -> "HybridSettings":
        """The defaults, then what `fuserank train` chose for this model (manifest ``chosen.hybrid``), then
        the ``explicit`` settings that are not None (a flag, the environment or a params file)."""
        chosen = (manifest.get("chosen") or {}).get("hybrid") or {}
        return cls().with_overrides(**chosen).with_overrides(**explicit)

    def digest(self) -> str:
        """Stable short hash: two precomputes with different settings never share a list version."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HybridSettings":
        """Settings as stored with a list version; a knob added later takes the value that reproduces
        lists written before it existed (``BEFORE``), not today's default."""
        known = {f.name for f in fields(cls)}
        return cls(**{**BEFORE, **{k: v for k, v in data.items() if k in known}})


# ------------------------------------------------------------------------------------------------
# Layers: params file and environment
# ------------------------------------------------------------------------------------------------
class SettingsError(FuseRankError):
    """A setting that cannot be used: names the setting and the layer it came from."""


def env_names(dest: str) -> tuple[str, ...]:
    """Environment variables of a setting, highest first: ``FUSERANK_TOP_N`` (+ aliases such as ``REDIS_URL``)."""
    return (ENV_PREFIX + dest.upper(),) + ENV_ALIASES.get(dest, ())


def env_value(dest: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(value, variable name)`` of the first non-empty environment variable for ``dest``, else None."""
    environ = os.environ if environ is None else environ
    for name in env_names(dest):
        value = environ.get(name)
        if value not in (None, ""):
            return value, name
    return None


def params_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(path, where it was named)``: ``--params FILE``, else ``$FUSERANK_PARAMS``, else None (no file)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return explicit, PARAMS_FLAG
    if environ.get(PARAMS_ENV):
        return environ[PARAMS_ENV], PARAMS_ENV
    return None


def load_params(path: str, origin: str = PARAMS_FLAG, known_sections=None) -> dict:
    """A params file (YAML, or JSON) -> ``{section: {key: value}}``; unknown sections fail naming them."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SettingsError(f"params file {path} (from {origin}): cannot read it: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            doc = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:      # the API image has no PyYAML: JSON is YAML too, for what we need
                doc = json.loads(text)
            else:
                doc = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error, reported with the file
        raise SettingsError(f"params file {path} (from {origin}): not valid YAML/JSON: {exc}") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise SettingsError(f"params file {path}: expected a mapping of sections (ingest:, train:, hybrid:, ...), "
                            f"got {type(doc).__name__}")
    for section, body in doc.items():
        if known_sections is not None and section not in known_sections:
            raise SettingsError(f"params file {path}: unknown section {section!r} "
                                f"(known: {', '.join(sorted(known_sections))})")
        if body is not None and not isinstance(body, dict):
            raise SettingsError(f"params file {path}: section {section!r} must be a mapping of settings, "
                                f"got {type(body).__name__}")
    return {section: dict(body or {}) for section, body in doc.items()}


def parse_bool(text, where: str) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise SettingsError(f"{where}: expected true or false, got {text!r}")


# ------------------------------------------------------------------------------------------------
# The process's environment: the one place os.environ is read or written
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Environment:
    """Settings every process takes from its environment (not per-command flags), read once.

    Third-party variables that FuseRank sets for the libraries it drives (Prometheus' multiprocess
    directory, TensorFlow's and Comet's quiet switches) are written through ``export`` / ``unset``.
    """

    cache_dir: str | None = None             # FUSERANK_CACHE: local copies of gs:// models
    redis_server: str | None = None          # FUSERANK_REDIS_SERVER: the redis-server binary the demo runs
    gcs_emulator: str | None = None          # STORAGE_EMULATOR_HOST
    gcp_project: str | None = None           # GOOGLE_CLOUD_PROJECT
    log_level: str | None = None             # LOG_LEVEL
    log_format: str | None = None            # LOG_FORMAT: plain or json
    prometheus_dir: str | None = None        # PROMETHEUS_MULTIPROC_DIR
    comet_api_key: str | None = None         # COMET_API_KEY
    pod_namespace: str | None = None         # POD_NAMESPACE (the nightly job's own namespace)
    dvc: str | None = None                   # FUSERANK_DVC: the dvc executable

    VARIABLES = {"cache_dir": "FUSERANK_CACHE", "redis_server": "FUSERANK_REDIS_SERVER",
                 "gcs_emulator": "STORAGE_EMULATOR_HOST", "gcp_project": "GOOGLE_CLOUD_PROJECT",
                 "log_level": "LOG_LEVEL", "log_format": "LOG_FORMAT", "prometheus_dir": "PROMETHEUS_MULTIPROC_DIR",
                 "comet_api_key": "COMET_API_KEY", "pod_namespace": "POD_NAMESPACE", "dvc": "FUSERANK_DVC"}

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> "Environment":
        environ = os.environ if environ is None else environ
        return cls(**{field: (environ.get(name) or None) for field, name in cls.VARIABLES.items()})


def environment() -> Environment:
    """This process's Environment (read when asked, so a test's monkeypatched variable is seen)."""
    return Environment.read()


def environ() -> Mapping[str, str]:
    """The raw environment, for the layers' ``FUSERANK_<SETTING>`` lookups and for child processes."""
    return os.environ


def export(name: str, value: str, overwrite: bool = True) -> None:
    """Set a variable a library reads (``overwrite=False``: only where it is unset)."""
    if overwrite:
        os.environ[name] = value
    else:
        os.environ.setdefault(name, value)


def unset(name: str) -> None:
    os.environ.pop(name, None)


@dataclass(frozen=True)
class ServeSettings:
    """Everything `fuserank serve` runs with, resolved from the layers (each field but ``hybrid`` is a
    `serve` flag of the same name, so ``fuserank serve --help`` shows its default and FUSERANK_<SETTING>)."""

    model: str
    redis_url: str
    redis_cluster: bool = False              # redis_url names a node of a Redis Cluster
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 4                         # per gthread worker (the other worker classes have none)
    worker_class: str | None = None          # None: fuserank.api.server.DEFAULT_WORKER_CLASS (gevent)
    api_key: tuple[str, ...] = ()            # empty: the POSTs that fold a new user in are open
    rate_limit: int = 60                     # POST /v1/recommendations per client and window; 0 = off
    rate_window_s: int = 60
    models_uri: str | None = None            # the nightly job's model store: <uri>/<model version>/
    log_sample: float = 0.0                  # fraction of requests logged one line each
    hybrid: HybridSettings | None = None     # None: HybridSettings.for_model(the model's manifest)
