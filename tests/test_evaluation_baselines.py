"""Baselines of fuserank.evaluation on tiny synthetic data, and the comparison harness."""
import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fuserank.evaluation import baselines as bl
from fuserank.evaluation.compare import BASELINES, evaluate_model, run_comparison, summarize
from fuserank.evaluation.metrics import top_k
from fuserank.evaluation.protocol import Split, validation_split
from tests.factories import csr


def cooccurrence_data(seed=0, n_users=60, n_items=40):
    """Items 0 and 1 are always rated together (users 0..29); user 0 has 0 but not 1.

    Items 2..39 are rated at random; item 39 is the most popular among the noise items.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = {int(i): int(rng.integers(5, 11)) for i in rng.choice(np.arange(2, 39), 6,
                                                                        replace=False)}
        if u < 30:
            items[0] = 9
            items[1] = 9
        if u % 2 == 0:
            items[39] = 7
        rows.append(items)
    del rows[0][1]  # the query user misses the obvious co-occurring item
    return csr(rows, n_items)


def best_unseen(model, train, user):
    return int(top_k(model.score(np.array([user])), train[[user]], 1)[0, 0])


@pytest.fixture(scope="module")
def train():
    return cooccurrence_data()


def test_popularity_ranks_most_rated_unseen_item_first():
    train = csr([{0: 5, 1: 5, 2: 5}, {0: 5, 1: 5}, {0: 5, 1: 5}, {0: 9, 3: 5}, {2: 3}], 5)
    m = bl.Popularity().fit(train)
    # user 1 has seen 0 and 1: the most-rated unseen item is 2 (2 ratings) before 3 (1)
    assert top_k(m.score(np.array([1])), train[[1]], 3).tolist() == [[2, 3, 4]]
    assert best_unseen(m, train, 4) == 0
    s = m.score(np.array([0, 3]))
    assert s.shape == (2, 5) and s.dtype == np.float32


@pytest.mark.parametrize("factory", [
    lambda: bl.ItemKNN(k=5),
    lambda: bl.ItemKNN(k=5, neighbourhood="source"),
    lambda: bl.EASE(lam=10.0),
    lambda: bl.EASE(lam=10.0, method="primal"),
    lambda: bl.EASE(lambda_grid=(1.0, 10.0, 100.0), seed=0),
    lambda: bl.ImplicitALS(factors=2, seed=0),
], ids=["itemknn", "itemknn-source", "ease-dual", "ease-primal", "ease-tuned", "als-rank2"])
def test_item_models_recover_obvious_cooccurrence(train, factory):
    m = factory().fit(train)
    s = m.score(np.arange(train.shape[0]))
    assert s.shape == train.shape and s.dtype == np.float32
    assert best_unseen(m, train, 0) == 1


@pytest.mark.parametrize("confidence", ["rating", "binary"])
@pytest.mark.parametrize("factors,reg", [(2, 0.1), (8, 5.0)])
def test_als_recovers_block_structure(confidence, factors, reg):
    """Users 0-19 rate only items 0-9, users 20-39 only items 10-19 (7 of 10 each).

    (With more factors than the structure needs, a tiny ``reg`` lets ALS memorise each user's
    seven items on 40 users; a larger ``reg`` is the sensible setting there.)"""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(40):
        base = 0 if u < 20 else 10
        rows.append({base + int(i): int(rng.integers(1, 11))
                     for i in rng.choice(10, 7, replace=False)})
    train = csr(rows, 20)
    m = bl.ImplicitALS(factors=factors, reg=reg, confidence=confidence, seed=3).fit(train)
    top = top_k(m.score(np.arange(40)), train, 3)
    group = np.where(np.arange(40) < 20, 0, 1)[:, None]
    assert np.all(top // 10 == group)


def test_user_knn_follows_like_minded_neighbours():
    # users 0-3 love {0,1,2} and dislike {3}; users 4-7 the reverse and also rate item 5
    rows = []
    for u in range(4):
        rows.append({0: 9, 1: 10, 2: 9, 3: 2, 4: 9})
    for u in range(4):
        rows.append({0: 2, 1: 1, 2: 2, 3: 10, 5: 9})
    rows[0] = {0: 9, 1: 10, 3: 2}  # query: like-minded with 1-3 who all rated 2 and 4
    train = csr(rows, 6)
    m = bl.UserKNN(k=3).fit(train)
    idx, sims = m.neighbours(np.array([0]))
    assert set(idx[0].tolist()) == {1, 2, 3} and (sims > 0).all()
    top = top_k(m.score(np.array([0])), train[[0]], 3)[0].tolist()
    assert top[:2] == [2, 4]
    assert 5 not in top[:2]


def test_user_knn_uses_mean_centred_cosine():
    train = csr([{0: 10, 1: 6}, {0: 9, 1: 5}, {0: 5, 1: 9}], 3)
    m = bl.UserKNN(k=2).fit(train)
    idx, sims = m.neighbours(np.array([0]))
    got = dict(zip(idx[0].tolist(), sims[0].tolist()))
    assert got[1] == pytest.approx(1.0, abs=1e-6)  # same deviations from the mean
    assert got[2] == pytest.approx(-1.0, abs=1e-6)  # opposite deviations


def test_ease_dual_equals_primal(train):
    users = np.arange(train.shape[0])
    dual = bl.EASE(lam=7.0, method="dual").fit(train).score(users)
    primal = bl.EASE(lam=7.0, method="primal").fit(train).score(users)
    np.testing.assert_allclose(dual, primal, atol=1e-4)


def test_ease_fast_dual_tuning_matches_refitting_per_lambda():
    rng = np.random.default_rng(5)
    dense = (rng.random((25, 60)) < 0.25) * rng.integers(1, 11, size=(25, 60))
    train = sp.csr_matrix(dense.astype(np.float32))
    grid = (0.5, 5.0, 50.0)
    fast = bl.EASE(lambda_grid=grid, seed=2, method="dual").fit(train)
    slow = {}
    sub, val = validation_split(train, 2)
    for lam in grid:
        slow[lam] = bl.evaluate_ndcg(bl.EASE(lam=lam, method="primal").fit(sub), sub, val)
    assert fast.validation_ == pytest.approx(slow, abs=1e-9)


def test_ease_tuning_records_validation_scores(train):
    m = bl.EASE(lambda_grid=(1.0, 10.0, 100.0), seed=1).fit(train)
    assert set(m.validation_) == {1.0, 10.0, 100.0}
    assert m.lam_ in m.validation_
    assert m.validation_[m.lam_] == max(m.validation_.values())


def test_als_cg_approaches_exact_solves_and_is_seeded(train):
    users = np.arange(train.shape[0])
    kw = dict(factors=6, reg=0.5, alpha=2.0, iterations=3, seed=4)
    exact = bl.ImplicitALS(cg_steps=None, **kw).fit(train).score(users)
    cg = bl.ImplicitALS(cg_steps=30, **kw).fit(train).score(users)
    np.testing.assert_allclose(cg, exact, atol=1e-3)
    again = bl.ImplicitALS(cg_steps=30, **kw).fit(train).score(users)
    np.testing.assert_array_equal(cg, again)


def test_cold_items_score_zero():
    train = csr([{0: 8, 1: 7}, {1: 9, 2: 6}, {0: 5, 2: 8}], 4)  # item 3 has no train rating
    for m in (bl.ItemKNN(k=2), bl.UserKNN(k=2), bl.EASE(lam=1.0),
              bl.ImplicitALS(factors=2, iterations=2)):
        assert np.all(m.fit(train).score(np.arange(3))[:, 3] == 0)


# --------------------------------------------------------------------------------- harness
class _TrainLover:
    """Scores the user's own train items highest: the harness must still never return them."""

    def __init__(self, train):
        self.train = train

    def score(self, users):
        return (self.train[users].toarray() > 0).astype(np.float32) * 100


def _toy_split():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 25)) < 0.3) * rng.integers(1, 11, size=(30, 25))
    dense[:, 0] = 0
    full = sp.csr_matrix(dense.astype(np.float32))
    test_mask = sp.csr_matrix((rng.random((30, 25)) < 0.25) & (dense > 0))
    test = full.multiply(test_mask).tocsr()
    train = (full - test).tocsr()
    train.eliminate_zeros()
    return Split(train=train, test=test, user_ids=np.arange(30), item_ids=np.arange(25), seed=0)


def test_candidates_exclude_train_items():
    s = _toy_split()
    m = _TrainLover(s.train)
    top = top_k(m.score(np.arange(30)), s.train, 10)
    tr = s.train.toarray() > 0
    valid = top >= 0
    assert not tr[np.nonzero(valid)[0], top[valid]].any()
    res = evaluate_model(m, s)
    assert 0.0 <= res["ndcg@10"] <= 1.0 and 0.0 <= res["coverage@10"] <= 1.0


def test_run_comparison_writes_reports(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rows = []
    for u in range(40):
        for i in rng.choice(60, size=int(rng.integers(20, 40)), replace=False):
            rows.append((u, int(i), int(rng.integers(1, 11))))
    rows.append((0, 5, -1))
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["user_id", "anime_id", "rating"]).to_csv(path, index=False)
    out = tmp_path / "out"
    seen = []

    def extra(split, seed):
        seen.append(seed)
        return bl.Popularity().fit(split.train)

    with caplog.at_level(logging.INFO, logger="fuserank.evaluate"):
        df = run_comparison(path, out, seeds=(0, 1), methods=["popularity", "item-KNN"],
                            extra_methods=[("extra-pop", extra)], dataset_name="toy")
    assert seen == [0, 1]
    assert len(df) == 6 and set(df["method"]) == {"popularity", "item-KNN", "extra-pop"}
    pop = df[df.method == "popularity"]["ndcg@10"].to_numpy()
    np.testing.assert_allclose(pop, df[df.method == "extra-pop"]["ndcg@10"].to_numpy())
    for f in ("results.md", "results.csv", "ndcg_at_10.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "toy" in md and "item-KNN" in md and "±" in md
    assert len(pd.read_csv(out / "results.csv")) == 6
    assert summarize(df)["n_seeds"].tolist() == [2, 2, 2]
    assert any("NDCG@10" in r.getMessage() for r in caplog.records)


def test_registry_lists_the_five_baselines():
    assert list(BASELINES) == ["popularity", "user-KNN", "implicit ALS", "item-KNN", "EASE"]
    with pytest.raises(KeyError):
        run_comparison("unused.csv", "/tmp/unused", methods=["nope"])
