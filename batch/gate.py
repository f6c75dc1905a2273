"""The nightly quality gate: a new model replaces the served one only if its evaluation NDCG@10
(``MODEL_DIR/evaluation.json``, written by ``fuserank evaluate``) is at most ``margin`` below the
served version's (``evaluation`` in its Redis meta hash)."""
from __future__ import annotations

import json
import math
import os

import redis

from fuserank.artifacts import read_manifest
from fuserank.errors import NightlyError
from fuserank.publish import current_version, read_meta

EVALUATION = "evaluation.json"
DEFAULT_MARGIN = 0.01


def _ndcg(evaluation: dict | None) -> float | None:
    value = evaluation.get("ndcg_at_10") if isinstance(evaluation, dict) else None
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if valid else None


def quality_gate(new: dict, published: dict | None, margin: float) -> tuple[bool, str]:
    """May the model evaluated as ``new`` replace the one evaluated as ``published``?

    ``new`` / ``published`` are ``fuserank evaluate`` dicts (``published`` is None when nothing is served
    or it predates evaluation). Returns ``(ok, reason)``; the reason names both scores, the drop and the margin.
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


def margin_of(params: dict, explicit: float | None = None) -> float:
    """The allowed drop: ``explicit`` (a flag or its variable), else params.yaml gate.ndcg-margin, else 0.01."""
    if explicit is not None:
        return float(explicit)
    return float((params.get("gate") or {}).get("ndcg-margin", DEFAULT_MARGIN))


def load_evaluation(model_dir: str) -> dict:
    """``MODEL_DIR/evaluation.json``, refused when it evaluates another model than the directory holds."""
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
