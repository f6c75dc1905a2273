"""Metrics, top-N selection and the split protocol of fuserank.evaluation (hand-computed cases)."""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fuserank.evaluation.metrics import coverage, ndcg_at_k, recall_at_k, top_k
from fuserank.evaluation.protocol import load_ratings, split, validation_split
from tests.factories import csr


def pad(lists, k=10):
    return np.array([list(x) + [-1] * (k - len(x)) for x in lists], dtype=np.int64)


# ------------------------------------------------------------------------------------- top_k
def test_top_k_ties_broken_by_lower_index_and_excludes_train():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0],
                       [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    before = scores.copy()
    exclude = csr([{1: 7}, {0: 9, 3: 1}], 6)
    top = top_k(scores, exclude, 3)
    assert top.tolist() == [[2, 4, 3], [1, 2, 4]]
    np.testing.assert_array_equal(scores, before)  # input untouched


def test_top_k_tie_at_the_cut_uses_lowest_indices():
    scores = np.zeros((1, 50), dtype=np.float32)
    scores[0, 40] = 1.0
    top = top_k(scores, None, 4)
    assert top.tolist() == [[40, 0, 1, 2]]


def test_top_k_pads_with_minus_one_and_treats_nan_as_excluded():
    scores = np.array([[0.5, np.nan, 0.2, 0.9]], dtype=np.float32)
    exclude = csr([{3: 8}], 4)
    top = top_k(scores, exclude, 5)
    assert top.tolist() == [[0, 2, -1, -1, -1]]


def test_top_k_matches_full_stable_sort_on_random_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(40, 200)).astype(np.float32)
    exclude = sp.random(40, 200, density=0.2, random_state=1, format="csr")
    top = top_k(scores, exclude, 15)
    masked = scores.copy()
    masked[exclude.toarray() != 0] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :15]
    np.testing.assert_array_equal(top, expected)
    ex = exclude.toarray() != 0
    assert not ex[np.arange(40)[:, None], top].any()


# -------------------------------------------------------------------------------------- NDCG
def test_ndcg_hand_computed_and_user_without_relevant_excluded():
    test = csr([{1: 9, 2: 5, 3: 8},  # relevant {1, 3}
                {4: 7, 5: 5},  # nothing relevant -> excluded from the mean
                {6: 10}], 10)  # relevant {6}
    top = pad([[3, 0, 1], [4, 5], [0, 2, 6]])
    res = ndcg_at_k(top, test, k=10)
    u0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    u2 = (1 / math.log2(4)) / 1.0
    assert res.per_user[0] == pytest.approx(u0)
    assert math.isnan(res.per_user[1])
    assert res.per_user[2] == pytest.approx(u2)
    assert res.n_users == 2
    assert res.mean == pytest.approx((u0 + u2) / 2)


def test_ndcg_ideal_uses_min_k_relevant():
    # 2 relevant items both ranked first -> perfect, although fewer than 10 exist
    test = csr([{7: 8, 8: 9}], 20)
    assert ndcg_at_k(pad([[8, 7, 0, 1]]), test, k=10).mean == pytest.approx(1.0)
    # 15 relevant items, 10 hits in the top 10 -> perfect; ideal DCG over 10 positions
    test = csr([{i: 10 for i in range(15)}], 20)
    assert ndcg_at_k(pad([range(10)]), test, k=10).mean == pytest.approx(1.0)
    # one hit at rank 1 out of 15 relevant
    top = pad([[0] + list(range(15, 20))])
    idcg = sum(1 / math.log2(r + 2) for r in range(10))
    assert ndcg_at_k(top, test, k=10).mean == pytest.approx(1 / idcg)


def test_ndcg_only_counts_first_k_positions():
    test = csr([{5: 9}], 30)
    top = np.array([list(range(10, 20)) + [5]], dtype=np.int64)  # hit at rank 11
    assert ndcg_at_k(top, test, k=10).mean == 0.0


# ------------------------------------------------------------------------------------ Recall
def test_recall_denominator_is_min_k_relevant():
    test = csr([{i: 9 for i in range(25)},  # 25 relevant -> denominator 20
                {30: 8, 31: 10, 32: 9, 33: 3},  # 3 relevant -> denominator 3
                {40: 2}], 50)  # none -> excluded
    top = np.full((3, 20), -1, dtype=np.int64)
    top[0, :10] = np.arange(10)  # 10 hits
    top[0, 10:] = np.arange(40, 50)  # misses
    top[1, :3] = [30, 33, 31]  # 2 hits
    res = recall_at_k(top, test, k=20)
    assert res.per_user[0] == pytest.approx(10 / 20)
    assert res.per_user[1] == pytest.approx(2 / 3)
    assert math.isnan(res.per_user[2])
    assert res.mean == pytest.approx((0.5 + 2 / 3) / 2)


def test_threshold_defines_relevance():
    test = csr([{1: 7, 2: 8}], 5)
    top = pad([[1, 2]], k=20)
    assert recall_at_k(top, test, k=20).mean == pytest.approx(1.0)
    assert recall_at_k(top, test, k=20, threshold=7).mean == pytest.approx(1.0)
    assert ndcg_at_k(top, test, k=10).mean == pytest.approx((1 / math.log2(3)) / 1.0)


# ---------------------------------------------------------------------------------- coverage
def test_coverage_counts_distinct_items_over_train_catalogue():
    top = np.array([[0, 1, 5], [1, 2, -1], [0, 2, 9]])
    assert coverage(top, n_train_items=10) == pytest.approx(5 / 10)
    assert coverage(top, n_train_items=10, k=2) == pytest.approx(3 / 10)


# ---------------------------------------------------------------------------------- protocol
def _write(tmp_path, rows, name="r.csv"):
    p = tmp_path / name
    pd.DataFrame(rows, columns=["user_id", "anime_id", "rating"]).to_csv(p, index=False)
    return p


def test_load_ratings_filters_and_encodes(tmp_path):
    rows = [(50, 7, 8), (50, 3, -1), (50, 9, 0), (50, 7, 6),  # dup (50,7): keep last = 6
            (50, 11, 10), (20, 3, 9), (20, 11, 4), (20, 12, 5), (99, 3, 5)]
    r = load_ratings(_write(tmp_path, rows), min_user_ratings=2)
    assert r.user_ids.tolist() == [20, 50]  # user 99 has one rating -> dropped
    assert r.item_ids.tolist() == [3, 7, 11, 12]  # sorted raw ids, -1/0 rows dropped
    got = {(int(r.user_ids[u]), int(r.item_ids[i])): float(v)
           for u, i, v in zip(r.user_idx, r.item_idx, r.rating)}
    assert got == {(20, 3): 9, (20, 11): 4, (20, 12): 5, (50, 7): 6, (50, 11): 10}
    # a user whose ratings fall below the threshold only after dropping -1 is removed
    r3 = load_ratings(_write(tmp_path, rows, "r3.csv"), min_user_ratings=3)
    assert r3.user_ids.tolist() == [20]


def _synthetic_ratings(tmp_path, n_users=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 60))
        items = rng.choice(300, size=n, replace=False)
        rows += [(1000 + u, int(i), int(rng.integers(1, 11))) for i in items]
    return load_ratings(_write(tmp_path, rows), min_user_ratings=1)


def test_split_disjoint_complete_and_sized(tmp_path):
    r = _synthetic_ratings(tmp_path)
    s = split(r, 0)
    full = r.to_csr()
    assert (s.train + s.test != full).nnz == 0  # union = all ratings, values kept
    assert s.train.multiply(s.test).nnz == 0  # train and test are disjoint
    n = np.diff(full.indptr)
    n_test = np.diff(s.test.indptr)
    np.testing.assert_array_equal(n_test, np.maximum(1, n // 5))
    for u in range(r.n_users):  # per-user check, as written in the protocol
        tr = set(s.train[u].indices)
        te = set(s.test[u].indices)
        assert not tr & te
        assert len(te) == max(1, math.floor(0.2 * n[u]))
    assert s.n_train_items == len(np.unique(s.train.indices))


def test_split_is_deterministic_per_seed_and_differs_across_seeds(tmp_path):
    r = _synthetic_ratings(tmp_path)
    a, b, c = split(r, 0), split(r, 0), split(r, 1)
    assert (a.test != b.test).nnz == 0 and (a.train != b.train).nnz == 0
    assert (a.test != c.test).nnz > 0
    assert (split(r, 2).test != c.test).nnz > 0


def test_validation_split_carves_from_train_only(tmp_path):
    r = _synthetic_ratings(tmp_path)
    s = split(r, 0)
    sub, val = validation_split(s.train, 0)
    assert (sub + val != s.train).nnz == 0
    assert sub.multiply(val).nnz == 0
    assert val.multiply(s.test).nnz == 0
    n = np.diff(s.train.indptr)
    np.testing.assert_array_equal(np.diff(val.indptr), np.where(n > 0, np.maximum(1, n // 5), 0))
    sub2, val2 = validation_split(s.train, 0)
    assert (val2 != val).nnz == 0
    assert (validation_split(s.train, 1)[1] != val).nnz > 0
