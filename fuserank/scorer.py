"""The two-stage hybrid scorer: the one place that turns embeddings and lists into a ranking.

Used by the Beam precompute (blocks of users) and by the API's live path (one user, or a new user
folded in), so both always produce the same list for the same user and settings.

Stage 1: the user's most similar users by embedding cosine vote for what they rated highly.
Stage 2: anime similar (cosine over anime embeddings, via the precomputed neighbour graph) to stage 1's
best picks and, optionally, to the user's own liked anime.
Each term is min-max normalised per user over the candidates, then merged with one set of weights
(optionally with the model's own u.v cosine as a third term). Everything on the user's list is excluded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.similarity import top_k_cosine, top_k_rows

SCORE_DECIMALS = 6  # rounding before ranking makes the order independent of BLAS blocking noise


@dataclass
class Ranked:
    """Top-N per query row: encoded anime indices (-1 = padding) and their scores, best first."""

    items: np.ndarray
    scores: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.items[i] >= 0
        return self.items[i][keep], self.scores[i][keep]


def _rows_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape) -> sp.csr_matrix:
    return sp.csr_matrix((vals.ravel(), (np.repeat(rows, cols.shape[1]), cols.ravel())), shape=shape)


def _minmax(x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    lo = np.where(candidates, x, np.inf).min(axis=1, keepdims=True)
    hi = np.where(candidates, x, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    out = (x - lo) / np.where(span > 0, span, 1.0)
    return np.where(candidates & (span > 0), out, 0.0).astype(np.float32)


def anime_neighbours(model: ModelArtifact, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each anime's k nearest anime by cosine (itself excluded): the lists stage 2 and /similar use."""
    return top_k_cosine(model.anime_emb, model.anime_emb, k, exclude_self=True)


class HybridScorer:
    def __init__(self, model: ModelArtifact, settings: HybridSettings, neighbours=None):
        self.model = model
        self.settings = settings
        self.neighbour_idx, self.neighbour_sim = neighbours or anime_neighbours(model, settings.neighbours)
        a = model.n_anime
        self.graph = _rows_csr(np.arange(a), self.neighbour_idx, np.clip(self.neighbour_sim, 0, None), (a, a))
        self.liked = model.liked_matrix(settings.like_threshold)

    def score_users(self, users: np.ndarray, n: int | None = None, include_adult: bool = False,
                    exclude: sp.csr_matrix | None = None) -> Ranked:
        """Hybrid top-n for encoded users (a block); ``exclude`` adds per-row anime to leave out."""
        users = np.asarray(users, dtype=np.int64)
        lists = self.model.lists[users]
        if exclude is not None:
            lists = lists + exclude
        return self.score_vectors(self.model.user_emb[users], self.liked[users], lists, users, n, include_adult)

    def score_vectors(self, queries: np.ndarray, liked: sp.csr_matrix, on_list: sp.csr_matrix,
                      self_index: np.ndarray | None = None, n: int | None = None,
                      include_adult: bool = False) -> Ranked:
        """The hybrid top-n for arbitrary user vectors: model users, or new users folded into the space."""
        combined = self.combined_scores(queries, liked, on_list, self_index, include_adult)
        items, scores = top_k_rows(combined, n or self.settings.top_n)
        items[~np.isfinite(scores)] = -1
        return Ranked(items, np.where(np.isfinite(scores), scores, 0.0).astype(np.float32))

    def combined_scores(self, queries: np.ndarray, liked: sp.csr_matrix, on_list: sp.csr_matrix,
                        self_index: np.ndarray | None = None, include_adult: bool = False) -> np.ndarray:
        """Dense (users x anime) hybrid scores in [0, 1]; -inf where an anime is not a candidate."""
        s, m = self.settings, self.model
        b = queries.shape[0]
        rows = np.arange(b)
        candidates = np.ones((b, m.n_anime), dtype=bool)
        coo = on_list.tocoo()
        candidates[coo.row, coo.col] = False
        if not include_adult:
            candidates[:, m.adult_mask] = False

        user_sims = queries @ m.user_emb.T
        if self_index is not None:
            known = self_index >= 0
            user_sims[rows[known], self_index[known]] = -np.inf
        nbr, nbr_sim = top_k_rows(user_sims, s.similar_users)
        votes = _rows_csr(rows, nbr, np.clip(nbr_sim, 0, None), (b, m.n_users))
        stage1 = _minmax((votes @ self.liked).toarray(), candidates)

        picks, pick_scores = top_k_rows(stage1, s.stage1_seeds)
        seeds = _rows_csr(rows, picks, pick_scores, (b, m.n_anime))
        if s.expand_own_likes:
            seeds = seeds + liked
        stage2 = _minmax((seeds @ self.graph).toarray(), candidates)

        combined = s.weight_stage1 * stage1 + s.weight_stage2 * stage2
        if s.weight_model > 0:
            combined += s.weight_model * _minmax(queries @ m.anime_emb.T, candidates)
        total = s.weight_stage1 + s.weight_stage2 + s.weight_model
        combined = np.round(combined / (total or 1.0), SCORE_DECIMALS)
        combined[~candidates] = -np.inf
        return combined
