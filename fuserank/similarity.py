"""Exact blocked top-k cosine search over L2-normalised embeddings.

Blocks keep the score matrix at ``block x n`` floats, so memory stays flat whatever the catalogue
size; each block is one BLAS matmul plus an ``argpartition``.
"""
from __future__ import annotations

import numpy as np


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row, best first; ties go to the lower column index, also at the cut-off,
    so the result never depends on how argpartition happened to split equal scores."""
    b, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.empty((b, 0), np.int32), np.empty((b, 0), np.float32)
    neg = -scores
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
    better = neg < kth
    tie = neg == kth
    need = k - better.sum(axis=1, keepdims=True)
    chosen = better | (tie & (np.cumsum(tie, axis=1) <= need))
    part = np.nonzero(chosen)[1].reshape(b, k)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx.astype(np.int32), np.take_along_axis(part_scores, order, axis=1).astype(np.float32)


def top_k_cosine(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False,
                 query_offset: int = 0, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the k most cosine-similar corpus rows (inputs already L2-normalised).

    ``exclude_self`` drops corpus row ``query_offset + i`` for query ``i`` (queries drawn from the corpus).
    """
    n = queries.shape[0]
    k_eff = min(k, corpus.shape[0] - (1 if exclude_self else 0))
    out_idx = np.empty((n, max(k_eff, 0)), dtype=np.int32)
    out_sim = np.empty((n, max(k_eff, 0)), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = queries[start:stop] @ corpus.T
        if exclude_self:
            rows = np.arange(stop - start)
            sims[rows, query_offset + start + rows] = -np.inf
        out_idx[start:stop], out_sim[start:stop] = top_k_rows(sims, k_eff)
    return out_idx, out_sim


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
