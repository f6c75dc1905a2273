"""Offline evaluation protocol: loading ratings and the seeded per-user hold-out split.

Protocol (shared by every method so figures compare across tools):

* input CSV ``user_id,anime_id,rating`` (MyAnimeList 2016 / 2020 layouts); ratings ``<= 0`` are
  dropped (the 2016 file uses ``-1`` for "watched, not rated"), then duplicate ``(user, anime)``
  pairs are dropped keeping the last occurrence, then users with fewer than ``min_user_ratings``
  ratings are dropped;
* per user, a seeded random ``max(1, floor(0.2 * n))`` of the ratings is held out as test, the
  rest is train (:func:`split`); :func:`validation_split` carves a validation set out of a train
  matrix the same way (for hyper-parameter tuning).

Users and items are integer-encoded in ascending order of their raw ids, so the encoding does
not depend on file order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fuserank.schemas.ingest import ANIME_COL, RATING_COL, RATING_COLUMNS, USER_COL

__all__ = [
    "TEST_FRACTION",
    "Ratings",
    "Split",
    "load_ratings",
    "holdout_mask",
    "split",
    "validation_split",
]

#: Share of each user's ratings held out (floor, at least one).
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Ratings:
    """Filtered, integer-encoded ratings.

    ``user_idx[j]``, ``item_idx[j]``, ``rating[j]`` describe one rating; ``user_ids[u]`` /
    ``item_ids[i]`` map the dense indices back to the raw MyAnimeList ids. Rows are sorted by
    ``(user_idx, item_idx)``.
    """

    user_idx: np.ndarray  # int32, len = n_ratings
    item_idx: np.ndarray  # int32
    rating: np.ndarray  # float32, 1..10
    user_ids: np.ndarray  # int64 raw ids, len = n_users
    item_ids: np.ndarray  # int64 raw ids, len = n_items
    name: str = ""

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def n_ratings(self) -> int:
        return int(len(self.rating))

    def to_csr(self) -> sp.csr_matrix:
        """All ratings as a users x items CSR matrix of raw 1-10 ratings."""
        return _to_csr(self.user_idx, self.item_idx, self.rating, self.n_users, self.n_items)


@dataclass(frozen=True)
class Split:
    """One seeded train/test split. ``train`` and ``test`` are users x items CSR of raw ratings."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    seed: int
    name: str = ""

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    @property
    def n_train_items(self) -> int:
        """Number of distinct items with at least one train rating (the coverage denominator)."""
        return int(np.count_nonzero(np.diff(self.train.tocsc().indptr)))


def _to_csr(rows, cols, data, n_rows: int, n_cols: int) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), (np.asarray(rows), np.asarray(cols))),
        shape=(n_rows, n_cols),
    )
    m.sort_indices()
    return m


def load_ratings(path: str | os.PathLike, min_user_ratings: int = 20) -> Ratings:
    """Read a ``user_id,anime_id,rating`` CSV and apply the protocol's filters (module docstring)."""
    df = pd.read_csv(
        path,
        usecols=list(RATING_COLUMNS),
        dtype={USER_COL: np.int64, ANIME_COL: np.int64, RATING_COL: np.float32},
    )
    df = df[df[RATING_COL].to_numpy() > 0]
    df = df.drop_duplicates(subset=[USER_COL, ANIME_COL], keep="last")
    users = df[USER_COL].to_numpy()
    user_ids, user_inv, user_counts = np.unique(users, return_inverse=True, return_counts=True)
    keep = user_counts[user_inv] >= int(min_user_ratings)
    if not keep.any():
        from fuserank.errors import InputError
        raise InputError(path, f"no user has at least {min_user_ratings} ratings after dropping unrated rows "
                               f"and duplicates", expected="--min-user-ratings at or below the most active user's count")
    users = users[keep]
    items = df[ANIME_COL].to_numpy()[keep]
    rating = df[RATING_COL].to_numpy()[keep].astype(np.float32)

    user_ids, user_idx = np.unique(users, return_inverse=True)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    order = np.lexsort((item_idx, user_idx))
    parent = os.path.basename(os.path.dirname(os.path.abspath(os.fspath(path))))
    return Ratings(
        user_idx=user_idx[order].astype(np.int32),
        item_idx=item_idx[order].astype(np.int32),
        rating=rating[order],
        user_ids=user_ids.astype(np.int64),
        item_ids=item_ids.astype(np.int64),
        name=f"{parent}/{os.path.basename(os.fspath(path))}",
    )


def holdout_mask(user_idx: np.ndarray, n_users: int, seed,
                 fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean mask over ratings: True for the held-out ones.

    Each user with ``n >= 1`` ratings gets ``max(1, floor(fraction * n))`` ratings held out, chosen
    uniformly at random by ``numpy.random.default_rng(seed)`` (``seed``: an int or a sequence of
    ints). Deterministic given ``seed`` and the order of ``user_idx``.
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    n = len(user_idx)
    rng = np.random.default_rng(seed)
    keys = rng.random(n)
    counts = np.bincount(user_idx, minlength=n_users)
    if fraction == TEST_FRACTION:  # exact integer floor(0.2 * n)
        n_out = counts // 5
    else:
        n_out = np.floor(counts * fraction + 1e-9).astype(np.int64)
    n_out = np.where(counts > 0, np.maximum(1, n_out), 0)
    order = np.lexsort((keys, user_idx))  # by user, then by random key
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank_in_user = np.empty(n, dtype=np.int64)
    rank_in_user[order] = np.arange(n) - starts[user_idx[order]]
    return rank_in_user < n_out[user_idx]


def split(ratings: Ratings, seed: int) -> Split:
    """Seeded per-user train/test split of ``ratings`` (see :func:`holdout_mask`)."""
    test_mask = holdout_mask(ratings.user_idx, ratings.n_users, seed)
    train_mask = ~test_mask
    u, i, r = ratings.user_idx, ratings.item_idx, ratings.rating
    shape = (ratings.n_users, ratings.n_items)
    return Split(
        train=_to_csr(u[train_mask], i[train_mask], r[train_mask], *shape),
        test=_to_csr(u[test_mask], i[test_mask], r[test_mask], *shape),
        user_ids=ratings.user_ids,
        item_ids=ratings.item_ids,
        seed=int(seed),
        name=ratings.name,
    )


def validation_split(train_csr: sp.spmatrix, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Carve a validation set out of a train matrix with the test protocol.

    Returns ``(sub_train, validation)``, both CSR of the same shape as ``train_csr``; for every
    user with ratings, ``max(1, floor(0.2 * n))`` of them move to ``validation``. The random
    stream is ``default_rng([seed, 1])``, independent of the test split's ``default_rng(seed)``.
    """
    coo = sp.csr_matrix(train_csr).tocoo()
    # canonical (user, item) order so the result does not depend on the input's storage order
    order = np.lexsort((coo.col, coo.row))
    rows, cols, data = coo.row[order], coo.col[order], coo.data[order]
    mask = holdout_mask(rows, train_csr.shape[0], [int(seed), 1])
    n_rows, n_cols = train_csr.shape
    return (
        _to_csr(rows[~mask], cols[~mask], data[~mask], n_rows, n_cols),
        _to_csr(rows[mask], cols[mask], data[mask], n_rows, n_cols),
    )
