"""`fuserank train` chooses the model's and the hybrid's knobs on its validation split and records them."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from fuserank.config import HybridSettings


def _ingest(tmp_path, rows, name):
    from fuserank.training.ingest import ingest
    path = tmp_path / f"{name}.csv"
    pd.DataFrame(rows, columns=["user_id", "anime_id", "rating"]).to_csv(path, index=False)
    out = tmp_path / name
    ingest(str(path), str(out), min_user_ratings=10, seed=0)
    return str(out)


def noisy_lows(n_users=240, n_items=120, seed=0):
    """Four taste groups; each user rates 14 of their group's anime high and 10 random others <= 5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        own = np.arange(u % 4, n_items, 4)
        rows += [(u, int(i), int(rng.integers(8, 11))) for i in rng.choice(own, 14, replace=False)]
        other = np.setdiff1d(np.arange(n_items), own)
        rows += [(u, int(i), int(rng.integers(1, 6))) for i in rng.choice(other, 10, replace=False)]
    return rows


@pytest.mark.slow
def test_the_search_picks_what_scores_best_on_validation_and_the_artifact_records_it(tmp_path):
    """Low ratings here are noise (other groups' anime): a lower low-weight must win over counting them
    fully, the choice must be the best trial, and precompute/serve/evaluate resolve the recorded knobs."""
    from fuserank.artifacts import ModelArtifact
    from fuserank.evaluation.model_eval import evaluate_model_dir
    from fuserank.training.knobs import SearchSpace
    from fuserank.training.train import train
    data = _ingest(tmp_path, noisy_lows(), "noisy")
    space = SearchSpace(temperature=(), low_weight=(0.05, 1.0), positive_weight=(), stage2_neighbours=(2,),
                        weight_stage1=(0.0,), weight_stage2=(0.0, 0.15), budget_s=600)
    manifest = train(data, str(tmp_path / "m"), embedding_dim=16, seed=0, temperature=0.15, epochs=60, space=space)
    chosen = manifest["chosen"]
    trials = {t["low_weight"]: t["val_ndcg_at_10"] for t in chosen["trials"]}
    assert set(trials) == {0.5, 0.05, 1.0}
    best = max(trials, key=trials.get)
    assert chosen["model"]["low_weight"] == best and chosen["val_ndcg_at_10"] == trials[best]
    assert trials[1.0] < max(trials[0.05], trials[0.5])          # counting the noise fully loses
    assert manifest["training"]["low_weight"] == best              # the served refit uses the choice
    assert manifest["training"]["n_train"] == sum(manifest["data"]["counts"][k] for k in ("train", "val", "test"))
    assert 0 < manifest["metrics"]["test_ndcg_at_10"] <= 1

    settings = HybridSettings.for_model(manifest)
    assert {k: getattr(settings, k) for k in chosen["hybrid"]} == chosen["hybrid"]
    # `fuserank evaluate --model --data` scores the held-out fit with the chosen knobs: train's own figure
    evaluation = evaluate_model_dir(str(tmp_path / "m"), data)
    assert evaluation["settings"] == settings.to_dict()
    assert evaluation["ndcg_at_10"] == pytest.approx(manifest["metrics"]["test_ndcg_at_10"], abs=1e-6)
    model = ModelArtifact.load(str(tmp_path / "m"))
    assert model.manifest["chosen"] == json.loads(json.dumps(chosen))
    assert os.path.exists(os.path.join(str(tmp_path / "m"), "heldout_user_embeddings.npy"))


def test_pinned_knobs_are_not_searched(tmp_path):
    from fuserank.training.knobs import SearchSpace
    from fuserank.training.train import train
    data = _ingest(tmp_path, noisy_lows(n_users=120), "small")
    space = SearchSpace(temperature=(0.3,), low_weight=(1.0,), positive_weight=(1.0,), stage2_neighbours=(2,),
                        weight_stage1=(0.0,), weight_stage2=(0.0,), budget_s=600)
    manifest = train(data, str(tmp_path / "m"), embedding_dim=8, seed=0, epochs=5, temperature=0.2,
                     positive_weight=3.0, space=space)
    trials = manifest["chosen"]["trials"]
    assert {t["temperature"] for t in trials} == {0.2} and {t["positive_weight"] for t in trials} == {3.0}
    assert {t["low_weight"] for t in trials} == {0.5, 1.0}
