"""FuseRank's own rows of the comparison and the publish-gate evaluation: no test item ever leaks in."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fuserank.evaluation.fuserank_methods import _split_arrays
from fuserank.evaluation.scoring import artifact_for
from fuserank.evaluation.model_eval import hide
from fuserank.evaluation.protocol import load_ratings, split, validation_split


def synthetic_ratings(path, n_users=80, n_items=40, seed=0):
    """Two taste groups: users mostly watch (and rate high) their group's anime, a few others (rated low)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 2
        own = np.arange(group, n_items, 2)
        other = np.arange(1 - group, n_items, 2)
        for i in rng.choice(own, size=17, replace=False):
            rows.append((u, int(i), int(rng.integers(8, 11))))
        for i in rng.choice(other, size=4, replace=False):
            rows.append((u, int(i), int(rng.integers(1, 6))))
    pd.DataFrame(rows, columns=["user_id", "anime_id", "rating"]).to_csv(path, index=False)
    return str(path)


def test_tf_methods_train_only_on_the_train_split(tmp_path):
    s = split(load_ratings(synthetic_ratings(tmp_path / "r.csv")), seed=0)
    fed = _split_arrays(s.train)
    fed_pairs = set(zip(fed.user.tolist(), fed.anime.tolist()))
    test = s.test.tocoo()
    assert not fed_pairs & set(zip(test.row.tolist(), test.col.tolist()))
    assert len(fed_pairs) == s.train.nnz
    fit_part, val_part = validation_split(s.train, 0)
    assert (fit_part + val_part != s.train).nnz == 0
    model = artifact_for(s, np.ones((s.n_users, 4)), np.ones((s.n_items, 4)))
    assert (model.lists.astype(bool) != s.train.astype(bool)).nnz == 0
    assert np.all(fed.rating >= 0) and np.all(fed.rating <= 1)


def test_hide_removes_exactly_the_held_out_entries():
    lists = sp.csr_matrix(np.array([[9, -1, 0, 7], [0, 5, 10, 0]], dtype=np.int8))
    out = hide(lists, np.array([0, 1]), np.array([3, 2]))
    assert out.toarray().tolist() == [[9, -1, 0, 0], [0, 5, 0, 0]]


@pytest.mark.slow
def test_comparison_cli_writes_the_table_and_chart(tmp_path):
    ratings = synthetic_ratings(tmp_path / "r.csv")
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "fuserank", "evaluate", "--ratings", ratings, "--out", str(out),
                        "--seeds", "0", "--no-rating-objective"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (out / "results.md").read_text()
    for method in ("popularity", "user-KNN", "EASE", "stage 1 alone", "stage 2 alone",
                   "FuseRank hybrid (served)", "hybrid, random embeddings"):
        assert method in table
    assert (out / "ndcg_at_10.png").stat().st_size > 10_000
    results = pd.read_csv(out / "results.csv")
    ndcg = results.set_index("method")["ndcg@10"]
    # two clean taste groups: trained embeddings must find them, random ones cannot
    assert ndcg["FuseRank hybrid (served)"] > 1.2 * ndcg["hybrid, random embeddings"]


def test_model_gate_evaluation_writes_its_json(trained_model, sample_data):
    from fuserank.evaluation.model_eval import evaluate_model_dir
    model_dir, manifest = trained_model
    result = evaluate_model_dir(model_dir, sample_data)
    assert result["model_version"] == manifest["model_version"]
    assert 0 < result["ndcg_at_10"] <= 1 and result["users"] > 0
    assert json.load(open(os.path.join(model_dir, "evaluation.json")))["ndcg_at_10"] == result["ndcg_at_10"]


def test_tuning_view_is_carved_from_the_train_split_only(tmp_path):
    from fuserank.evaluation.tune import validation_view
    path = synthetic_ratings(tmp_path / "r.csv")
    outer = split(load_ratings(path), 0)
    view = validation_view(path, 0)
    assert ((view.train + view.test).astype(bool) != outer.train.astype(bool)).nnz == 0
    assert view.train.multiply(outer.test).nnz == 0 and view.test.multiply(outer.test).nnz == 0


def test_the_served_hybrid_settings_are_a_cell_of_the_tuning_grid():
    from fuserank.config import HybridSettings
    from fuserank.evaluation.tune import grid
    assert HybridSettings() in [settings for _, settings in grid()]
