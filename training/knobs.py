"""`fuserank train`'s choice of the ranking objective's and the hybrid's knobs, on the data it is given.

The ingest's validation split is the carve: every candidate model is fit on the train split (early
stopping on the validation loss) and scored by the served hybrid's NDCG@10 on the validation split (the
evaluation protocol's: relevant = rating >= 8, the user's other anime excluded). The model knobs are
searched one at a time from the defaults (coordinate search, each candidate scored with its best hybrid
cell); the hybrid's knobs are a grid over the last best model, scored from one set of terms. Knobs given
explicitly (``pinned``) are not searched. Candidates are fit on at most ``max_ratings`` training ratings
(whole users, seeded) and scored on at most ``max_users`` validation users, which bounds the search at any
data size; the model that is reported and served is fit afterwards on all of it (`training.train`).
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import RANKING, HybridSettings
from fuserank.similarity import l2_normalise
from fuserank.training.dataset import SplitArrays

log = logging.getLogger("fuserank.train")

MODEL_KNOBS = ("temperature", "low_weight", "positive_weight")   # the order they are searched in
HYBRID_KNOBS = ("stage2_neighbours", "weight_stage1", "weight_stage2")


@dataclass(frozen=True)
class SearchSpace:
    """The values tried per knob besides the current best (the search starts from RANKING's defaults)."""

    temperature: tuple = (0.1, 0.25)
    low_weight: tuple = (0.25, 1.0)
    positive_weight: tuple = (1.0, 4.0)
    stage2_neighbours: tuple = (1, 2, 5, 20)
    weight_stage1: tuple = (0.0, 0.1, 0.25)
    weight_stage2: tuple = (0.05, 0.15, 0.3, 0.6)
    max_ratings: int = 2_000_000     # training ratings the candidates are fit on (a user sample beyond)
    max_users: int = 5_000           # validation users the candidates are scored on
    budget_s: float = 150.0          # no further candidate is fit once the search has run this long


@dataclass
class Choice:
    """What the search chose, the fit that won (trained without the test split) and every figure."""

    model: dict
    hybrid: dict
    fit: object = None
    trials: list = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict:
        best = max(self.trials, key=lambda t: t["val_ndcg_at_10"]) if self.trials else {}
        return {"model": self.model, "hybrid": self.hybrid, "val_ndcg_at_10": best.get("val_ndcg_at_10"),
                "trials": self.trials, "search_seconds": round(self.seconds, 2)}


def user_sample(split: SplitArrays, max_ratings: int, seed: int) -> np.ndarray:
    """Boolean row mask of ``split`` keeping whole users, in a seeded order, up to ``max_ratings`` rows."""
    if len(split) <= max_ratings:
        return np.ones(len(split), bool)
    users = np.unique(split.user)
    order = np.random.default_rng(seed).permutation(users)
    counts = np.bincount(split.user)[order]
    keep = order[:max(1, int(np.searchsorted(np.cumsum(counts), max_ratings, side="right")))]
    return np.isin(split.user, keep)


class ValidationScorer:
    """Scores embeddings by the hybrid's validation NDCG@10 on a fixed set of validation users."""

    def __init__(self, lists: sp.csr_matrix, val: SplitArrays, user_ids: np.ndarray, anime_ids: np.ndarray,
                 max_users: int, seed: int):
        from fuserank.evaluation.protocol import Split
        n_users, n_anime = lists.shape
        val_csr = sp.csr_matrix((val.raw_rating.astype(np.float32), (val.user, val.anime)), shape=lists.shape)
        users = np.flatnonzero(np.diff(val_csr.indptr))
        if len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        self.users, self.lists, self.user_ids, self.anime_ids = users, lists, user_ids, anime_ids
        self.split = Split(train=lists[users], test=val_csr[users], user_ids=user_ids[users], item_ids=anime_ids,
                           seed=seed, name="validation")

    def cells(self, pinned: dict, space: SearchSpace) -> list[HybridSettings]:
        values = [(pinned[k],) if k in pinned else getattr(space, k) for k in HYBRID_KNOBS]
        base = HybridSettings().with_overrides(**{k: v for k, v in pinned.items() if k not in HYBRID_KNOBS})
        return [base.with_overrides(**dict(zip(HYBRID_KNOBS, combo))) for combo in itertools.product(*values)]

    def score(self, user_emb: np.ndarray, anime_emb: np.ndarray, cells: list[HybridSettings]) -> list[float]:
        from fuserank.evaluation.compare import evaluate_model
        from fuserank.evaluation.scoring import HybridMethod
        from fuserank.scorer import anime_neighbours
        model = ModelArtifact.from_arrays(l2_normalise(user_emb), l2_normalise(anime_emb), self.user_ids,
                                          self.anime_ids, self.lists)
        neighbours = anime_neighbours(model, max(c.neighbours for c in cells))
        out = []
        for cell in cells:
            method = HybridMethod(model, cell, neighbours)
            rows = _Rows(method, self.users)
            out.append(float(evaluate_model(rows, self.split)["ndcg@10"]))
        return out


class _Rows:
    """A method scored on a subset of users: row i of the split is user ``users[i]`` of the model."""

    def __init__(self, method, users: np.ndarray):
        self.method, self.users = method, users

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.method.score(self.users[rows])


def choose(train_s: SplitArrays, val_s: SplitArrays, scorer: ValidationScorer, fit_model, pinned: dict,
           space: SearchSpace = SearchSpace(), seed: int = 0) -> Choice:
    """Coordinate search over the model knobs not pinned, then the hybrid grid; see the module docstring.

    ``fit_model(train, val, **model_knobs)`` returns a `FitResult` (early-stopped on ``val``).
    """
    t0 = time.time()
    sample = user_sample(train_s, space.max_ratings, seed)
    fit_train = train_s if sample.all() else train_s.take(sample)
    fit_val = val_s if sample.all() else val_s.take(np.isin(val_s.user, np.unique(fit_train.user)))
    cells = scorer.cells(pinned, space)
    current = {k: pinned.get(k, getattr(RANKING, k)) for k in MODEL_KNOBS}
    choice = Choice(model=dict(current), hybrid={})
    tried: dict[tuple, float] = {}
    best_score, best_fit = -1.0, None

    def trial(knobs: dict) -> float:
        nonlocal best_score, best_fit
        key = tuple(knobs[k] for k in MODEL_KNOBS)
        if key in tried:
            return tried[key]
        result = fit_model(fit_train, fit_val, **knobs)
        scores = scorer.score(result.user_embeddings, result.anime_embeddings, cells)
        i = int(np.argmax(scores))
        tried[key] = scores[i]
        choice.trials.append({**knobs, "best_epoch": int(np.argmin(result.history["val_loss"])) + 1,
                              "val_ndcg_at_10": round(scores[i], 5),
                              "hybrid": {k: getattr(cells[i], k) for k in HYBRID_KNOBS}})
        log.info("knob search: %s -> validation NDCG@10 %.4f (%s)", knobs, scores[i], choice.trials[-1]["hybrid"])
        if scores[i] > best_score:
            best_score, best_fit = scores[i], result
            choice.model, choice.hybrid = dict(knobs), choice.trials[-1]["hybrid"]
        return scores[i]

    trial(current)
    for knob in MODEL_KNOBS:
        if knob in pinned:
            continue
        for value in getattr(space, knob):
            if time.time() - t0 > space.budget_s:
                log.info("knob search: budget of %.0f s spent; %s and later knobs keep their best so far",
                         space.budget_s, knob)
                break
            trial({**choice.model, knob: value})
    choice.fit = best_fit
    choice.seconds = time.time() - t0
    return choice
