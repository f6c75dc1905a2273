"""Top-N selection and ranking metrics (NDCG@k, Recall@k, catalogue coverage).

All functions work on a block of users at once: ``top_items`` is an ``(n_users, >=k)`` int array
of item indices (``-1`` = no item, e.g. when a user has fewer than ``k`` candidates), and
``test_csr`` holds the same users' held-out ratings, row-aligned with ``top_items``.

A held-out item is *relevant* when its rating is ``>= threshold`` (default 8). NDCG uses binary
gains and the ideal DCG over ``min(k, #relevant)`` positions; Recall@k divides by
``min(k, #relevant)``. Both are reported per user (``NaN`` for users without a relevant held-out
item) and averaged over the users with at least one relevant item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "RELEVANCE_THRESHOLD",
    "MetricResult",
    "top_k",
    "hits_at_k",
    "n_relevant",
    "ndcg_at_k",
    "recall_at_k",
    "coverage",
]

RELEVANCE_THRESHOLD = 8


@dataclass(frozen=True)
class MetricResult:
    """Per-user values (``NaN`` where the user has no relevant item) and their mean."""

    per_user: np.ndarray
    mean: float
    n_users: int  # users entering the mean (>= 1 relevant held-out item)


def _summarise(per_user: np.ndarray) -> MetricResult:
    valid = ~np.isnan(per_user)
    n = int(valid.sum())
    mean = float(per_user[valid].mean()) if n else float("nan")
    return MetricResult(per_user=per_user, mean=mean, n_users=n)


def top_k(scores: np.ndarray, exclude_csr: sp.spmatrix | None, k: int) -> np.ndarray:
    """Indices of the ``k`` best-scored items per row, best first.

    ``exclude_csr`` (row-aligned with ``scores``, e.g. ``train[users]``) marks the items that are
    not candidates (score forced to ``-inf``); ``NaN`` scores count as ``-inf``. Ties are broken
    by the lower item index. Positions without a candidate are ``-1``. ``scores`` is not modified.
    """
    s = np.array(scores, dtype=np.float64 if scores.dtype == np.float64 else np.float32,
                 copy=True, ndmin=2)
    n_rows, n_items = s.shape
    k_eff = min(int(k), n_items)
    out = np.full((n_rows, int(k)), -1, dtype=np.int64)
    if n_rows == 0 or k_eff <= 0:
        return out
    s[np.isnan(s)] = -np.inf
    if exclude_csr is not None:
        ex = sp.csr_matrix(exclude_csr)
        if ex.shape != s.shape:
            raise ValueError(f"exclude_csr shape {ex.shape} != scores shape {s.shape}")
        ex_rows = np.repeat(np.arange(n_rows), np.diff(ex.indptr))
        s[ex_rows, ex.indices] = -np.inf

    # k-th largest value per row; everything strictly above it is in, the ties at it are filled
    # in ascending item order.
    kth = np.partition(s, n_items - k_eff, axis=1)[:, n_items - k_eff][:, None]
    above = s > kth
    at = s == kth
    need = k_eff - above.sum(axis=1)
    crowded = at.sum(axis=1) > need
    if crowded.any():
        rows = np.flatnonzero(crowded)
        at_rows = at[rows]
        at[rows] = at_rows & (np.cumsum(at_rows, axis=1) <= need[rows, None])
    _, cols = np.nonzero(above | at)  # row-major: ascending item index within each row
    cols = cols.reshape(n_rows, k_eff)
    vals = np.take_along_axis(s, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable keeps the lower index first
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    cols[np.isneginf(vals)] = -1
    out[:, :k_eff] = cols
    return out


def _relevant_keys(test_csr: sp.spmatrix, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    t = sp.csr_matrix(test_csr)
    t.sum_duplicates()
    t.sort_indices()
    rel = t.data >= threshold
    rows = np.repeat(np.arange(t.shape[0], dtype=np.int64), np.diff(t.indptr))
    keys = rows[rel] * t.shape[1] + t.indices[rel].astype(np.int64)  # sorted
    n_rel = np.bincount(rows[rel], minlength=t.shape[0])
    return keys, n_rel


def n_relevant(test_csr: sp.spmatrix, threshold: float = RELEVANCE_THRESHOLD) -> np.ndarray:
    """Number of relevant held-out items per user (row)."""
    return _relevant_keys(test_csr, threshold)[1]


def hits_at_k(top_items: np.ndarray, test_csr: sp.spmatrix, k: int,
              threshold: float = RELEVANCE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """``(hits, n_rel)``: boolean ``(n_users, k)`` relevance of each recommended position and the
    number of relevant held-out items per user."""
    top = np.asarray(top_items, dtype=np.int64)[:, :k]
    if top.shape[0] != test_csr.shape[0]:
        raise ValueError(f"top_items has {top.shape[0]} rows, test_csr {test_csr.shape[0]}")
    keys, n_rel = _relevant_keys(test_csr, threshold)
    top_keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * test_csr.shape[1] + top
    if len(keys):
        pos = np.minimum(np.searchsorted(keys, top_keys), len(keys) - 1)
        hits = (keys[pos] == top_keys) & (top >= 0)
    else:
        hits = np.zeros(top.shape, dtype=bool)
    return hits, n_rel


def ndcg_at_k(top_items: np.ndarray, test_csr: sp.spmatrix, k: int = 10,
              threshold: float = RELEVANCE_THRESHOLD) -> MetricResult:
    """Binary-gain NDCG@k; ideal DCG over ``min(k, #relevant)`` positions."""
    hits, n_rel = hits_at_k(top_items, test_csr, k, threshold)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits.astype(np.float64) @ discounts[: hits.shape[1]]
    ideal_cum = np.concatenate(([0.0], np.cumsum(discounts)))
    idcg = ideal_cum[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_user = np.where(n_rel > 0, dcg / idcg, np.nan)
    return _summarise(per_user)


def recall_at_k(top_items: np.ndarray, test_csr: sp.spmatrix, k: int = 20,
                threshold: float = RELEVANCE_THRESHOLD) -> MetricResult:
    """Hits in the top ``k`` divided by ``min(k, #relevant)``."""
    hits, n_rel = hits_at_k(top_items, test_csr, k, threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_user = np.where(n_rel > 0, hits.sum(axis=1) / np.minimum(n_rel, k), np.nan)
    return _summarise(per_user)


def coverage(top_items: np.ndarray, n_train_items: int, k: int | None = None) -> float:
    """Catalogue coverage: distinct items in the (first ``k`` columns of the) lists divided by
    the number of distinct train items. ``-1`` padding is ignored."""
    top = np.asarray(top_items)
    if k is not None:
        top = top[:, :k]
    if n_train_items <= 0:
        return float("nan")
    return float(len(np.unique(top[top >= 0])) / n_train_items)
