"""Top-k cosine search over L2-normalised embeddings: exact blocked search, and an IVF index for large sets.

``top_k_rows`` / ``top_k_cosine`` are exact: blocks keep the score matrix at ``block x n`` floats, so
memory stays flat whatever the catalogue size; each block is one BLAS matmul plus one partition.

``IVFIndex`` is the approximate similar-user search the scorer switches to for large user sets
(``fuserank.scorer.ANN_MIN_USERS``): an inverted file over spherical k-means cells (a coarse
quantiser). A query is compared exactly with the members of the ``n_probe`` cells whose centroids are
nearest to its own cell's centroid: the candidate set is a function of the cell, so a block of users
of one cell is one BLAS matmul (the precompute scores users cell by cell) and costs ~``n_probe /
n_lists`` of exact search. Everything is seeded numpy: every process that builds the index from the
same vectors gets the same cells.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _top_k_rows_ties(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: exact for any ties (used for the rows where the fast path sees a tie at the cut)."""
    b, n = scores.shape
    neg = -scores
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
    better = neg < kth
    tie = neg == kth
    need = k - better.sum(axis=1, keepdims=True)
    chosen = better | (tie & (np.cumsum(tie, axis=1) <= need))
    return np.nonzero(chosen)[1].reshape(b, k)


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row, best first; ties go to the lower column index, also at the cut-off,
    so the result never depends on how the partition happened to split equal scores.

    One ``np.partition`` (values only) finds each row's k-th best value ``t``; the columns ``>= t`` are the
    answer when there are exactly k of them, which is every row without a tie at the cut. Rows with one
    go through the exact tie-breaking reference. Then the k are sorted by (score desc, column asc).
    """
    scores = np.asarray(scores)
    b, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.empty((b, 0), np.int32), np.empty((b, 0), np.float32)
    if k == n:
        part = np.tile(np.arange(n), (b, 1))
    else:
        t = np.partition(scores, n - k, axis=1)[:, n - k:n - k + 1]
        above = scores >= t
        count = above.sum(axis=1)
        flat = np.flatnonzero(above)
        clean = count == k
        if clean.all():
            part = (flat % n).reshape(b, k)
        else:
            part = np.empty((b, k), np.int64)
            rows = flat // n
            keep = clean[rows]
            part[clean] = (flat[keep] % n).reshape(-1, k)
            part[~clean] = _top_k_rows_ties(scores[~clean], k)
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


def _argmax_rows(x: np.ndarray, centroids: np.ndarray, block: int = 32768) -> np.ndarray:
    out = np.empty(len(x), np.int32)
    for s in range(0, len(x), block):
        out[s:s + block] = np.argmax(x[s:s + block] @ centroids.T, axis=1)
    return out


class IVFIndex:
    """Approximate top-k cosine search over the rows of ``vectors`` (L2-normalised), see the module doc.

    ``n_lists`` cells (default: the power of two nearest 2 * sqrt(n)), trained by spherical k-means on a
    seeded sample of ``train_per_list`` rows per cell. A query of cell ``c`` (its nearest centroid) is
    compared exactly with the members of the ``n_probe`` cells whose centroids are nearest to ``c``'s
    (``c`` first): the candidate set is a function of the cell alone, so all queries of a cell share one
    candidate matrix and one BLAS matmul, and a query's answer does not depend on which other queries
    share its block. Candidates are ordered by (cell, row): ties break to the lower cell, then row.
    """

    def __init__(self, vectors: np.ndarray, n_lists: int | None = None, n_probe: int = 32, seed: int = 0,
                 iters: int = 10, train_per_list: int = 64):
        n = len(vectors)
        if n_lists is None:
            n_lists = int(2 ** round(np.log2(max(2 * np.sqrt(n), 1))))
        n_lists = max(1, min(n_lists, n))
        self.n_lists, self.n_probe = n_lists, max(1, min(n_probe, n_lists))
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, n_lists * train_per_list), replace=False))]
        centroids = sample[np.sort(rng.choice(len(sample), n_lists, replace=False))].copy()
        for _ in range(iters):
            assign = _argmax_rows(sample, centroids)
            onehot = sp.csr_matrix((np.ones(len(sample), np.float32), (assign, np.arange(len(sample)))),
                                   shape=(n_lists, len(sample)))
            sums = np.asarray(onehot @ sample, dtype=np.float32)
            filled = np.diff(onehot.indptr) > 0
            centroids[filled] = l2_normalise(sums[filled])
        self.centroids = centroids
        self.cell = _argmax_rows(vectors, centroids)
        self.order = np.argsort(self.cell, kind="stable").astype(np.int64)   # rows by (cell, row)
        self.offsets = np.zeros(n_lists + 1, np.int64)
        np.cumsum(np.bincount(self.cell, minlength=n_lists), out=self.offsets[1:])
        # probed cells in ascending cell order: a query's candidates are ordered by (cell, row)
        self.probe = np.sort(top_k_rows(centroids @ centroids.T, self.n_probe)[0], axis=1)
        self.sorted_vectors = np.ascontiguousarray(vectors[self.order])     # a cell's members: one slice
        self.slot = np.empty(n, np.int64)                                   # a row's place in its cell
        self.slot[self.order] = np.arange(n) - self.offsets[self.cell[self.order]]
        self._candidates: dict[int, tuple] = {}

    def members(self, cell: int) -> np.ndarray:
        return self.order[self.offsets[cell]:self.offsets[cell + 1]]

    def candidates(self, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, their vectors, where each cell's members start among them, -1 if not probed) searched
        for a query of ``cell``: its probed cells' members by (cell, row); slices, no gather."""
        got = self._candidates.get(cell)
        if got is None:
            cells = self.probe[cell]
            lo, hi = self.offsets[cells], self.offsets[cells + 1]
            rows = np.concatenate([self.order[a:b] for a, b in zip(lo, hi)])
            vectors = np.concatenate([self.sorted_vectors[a:b] for a, b in zip(lo, hi)])
            starts = np.full(self.n_lists, -1, np.int64)
            starts[cells] = np.cumsum(hi - lo) - (hi - lo)
            got = (rows, vectors, starts)
            if len(self._candidates) >= 8:          # a batch walks the cells in order: keep a few
                self._candidates.pop(next(iter(self._candidates)))
            self._candidates[cell] = got
        return got

    def assign(self, queries: np.ndarray) -> np.ndarray:
        """Each query's cell: its nearest centroid."""
        return _argmax_rows(queries, self.centroids)

    def search(self, queries: np.ndarray, k: int, self_index: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k per query (best first; -1 / -inf where the probed cells hold fewer than k).

        ``self_index``: the query's own row, excluded, whose cell is then the query's cell (-1 for a query
        that is not a row: its cell is its nearest centroid).
        """
        b = len(queries)
        cells = self.assign(queries) if b else np.empty(0, np.int32)
        if self_index is not None:
            known = self_index >= 0
            cells[known] = self.cell[self_index[known]]
        out_idx = np.full((b, k), -1, np.int32)
        out_sim = np.full((b, k), -np.inf, np.float32)
        by_cell = np.argsort(cells, kind="stable")
        bounds = np.flatnonzero(np.r_[True, cells[by_cell][1:] != cells[by_cell][:-1], True]) if b else [0]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = by_cell[lo:hi]
            cand, cand_vectors, starts = self.candidates(int(cells[rows[0]]))
            sims = queries[rows] @ cand_vectors.T
            if self_index is not None:
                own = self_index[rows]
                mine = np.flatnonzero(own >= 0)
                start = starts[self.cell[own[mine]]]
                hit = start >= 0
                sims[mine[hit], start[hit] + self.slot[own[mine[hit]]]] = -np.inf
            kk = min(k, len(cand))
            idx, sim = top_k_rows(sims, kk)
            out_idx[rows, :kk] = np.where(np.isfinite(sim), cand[idx], -1)
            out_sim[rows, :kk] = sim
        return out_idx, out_sim
