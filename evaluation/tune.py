"""The served hybrid's settings chosen on validation splits carved from the 2020 train split only.

    python -m fuserank.evaluation.tune --ratings data/sample/mal2020/rating_complete_head100k.csv

For each carve seed (default 0, 1, 2: the test's split seeds), splits with the evaluation protocol,
carves a validation set out of the train part (protocol.validation_split), trains the ranking-objective
embeddings on what is left, and scores on the validation set: EASE, user-KNN, the model's own score and
a grid of the hybrid's stage-2 links (how many neighbours per anime, raw or divided by in-degree) and
weights. Prints each row's per-seed NDCG@10 and its mean. The test splits are never read. The chosen
values are HybridSettings' defaults (fuserank/config.py): the best mean of the grid.
"""
from __future__ import annotations

import argparse
import itertools
import logging

import numpy as np

from fuserank.config import HybridSettings
from fuserank.evaluation import baselines as bl
from fuserank.evaluation.compare import evaluate_model
from fuserank.evaluation.fuserank_methods import TrainOptions, train_embeddings
from fuserank.evaluation.scoring import HybridMethod, OwnScore, artifact_for
from fuserank.evaluation.protocol import Split, load_ratings, split, validation_split
from fuserank.scorer import anime_neighbours

WEIGHTS_STAGE1 = (0.0, 0.05, 0.1)
WEIGHTS_STAGE2 = (0.05, 0.1, 0.15, 0.2, 0.3)
STAGE2_NEIGHBOURS = (None, 20, 5, 2, 1)   # None: the whole 50-long neighbour list


def validation_view(ratings_path: str, seed: int = 0, min_user_ratings: int = 20) -> Split:
    outer = split(load_ratings(ratings_path, min_user_ratings), seed)
    train, val = validation_split(outer.train, seed)
    return Split(train=train, test=val, user_ids=outer.user_ids, item_ids=outer.item_ids, seed=seed,
                 name=f"{outer.name} (validation carve of the train split)")


def grid() -> list[tuple[str, HybridSettings]]:
    return [(f"hybrid stage2_neighbours={k} by_indegree={d} w_stage1={w1} w_stage2={w2} w_model=1",
             HybridSettings(stage2_neighbours=k, stage2_by_indegree=d, weight_stage1=w1, weight_stage2=w2,
                            weight_model=1.0))
            for k, d, w1, w2 in itertools.product(STAGE2_NEIGHBOURS, (False, True), WEIGHTS_STAGE1, WEIGHTS_STAGE2)]


def tune(ratings_path: str, options: TrainOptions = TrainOptions(), seeds=(0, 1, 2)) -> dict[str, list[float]]:
    """{row name: validation NDCG@10 per carve seed}."""
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        view = validation_view(ratings_path, seed)
        add = lambda name, method: rows.setdefault(name, []).append(evaluate_model(method, view)["ndcg@10"])
        add("EASE", bl.EASE(seed=seed).fit(view.train))
        add("user-KNN", bl.UserKNN(k=50).fit(view.train))
        model = artifact_for(view, *train_embeddings(view.train, seed, options))
        add("MF own score", OwnScore(model))
        neighbours = anime_neighbours(model, HybridSettings().neighbours)
        for name, settings in grid():
            add(name, HybridMethod(model, settings, neighbours))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuserank.evaluation.tune", allow_abbrev=False)
    p.add_argument("--ratings", required=True)
    p.add_argument("--seeds", default="0,1,2", help="carve seeds, comma-separated")
    p.add_argument("--temperature", type=float, default=TrainOptions.temperature)
    p.add_argument("--positive-weight", type=float, default=TrainOptions.positive_weight)
    p.add_argument("--low-weight", type=float, default=TrainOptions.low_weight)
    p.add_argument("--low-threshold", type=int, default=TrainOptions.low_threshold)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = tune(a.ratings, TrainOptions(temperature=a.temperature, positive_weight=a.positive_weight,
                                        low_weight=a.low_weight, low_threshold=a.low_threshold),
                tuple(int(s) for s in a.seeds.split(",")))
    width = max(len(name) for name in rows)
    for name, values in rows.items():
        print(f"{name:<{width}}  NDCG@10 mean {np.mean(values):.4f}  per seed " + " ".join(f"{v:.4f}" for v in values))
    hybrids = {k: np.mean(v) for k, v in rows.items() if k.startswith("hybrid")}
    best = max(hybrids, key=hybrids.get)
    print(f"best mean: {best} ({hybrids[best]:.4f}; own score {np.mean(rows['MF own score']):.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
