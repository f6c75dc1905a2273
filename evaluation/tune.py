"""How the served hybrid's settings were chosen: a validation split carved from the 2020 train split only.

    python -m fuserank.evaluation.tune --ratings data/sample/mal2020/rating_complete_head100k.csv

Splits with the evaluation protocol (seed 0), carves a validation set out of the train part
(protocol.validation_split), trains the ranking-objective embeddings on what is left, and prints
NDCG@10 on the validation set for EASE, user-KNN, the model's own score and a grid of hybrid weights.
The test split is never read. The chosen values are HybridSettings' defaults (fuserank/config.py).
"""
from __future__ import annotations

import argparse
import itertools
import logging

from fuserank.config import HybridSettings
from fuserank.evaluation import baselines as bl
from fuserank.evaluation.compare import evaluate_model
from fuserank.evaluation.fuserank_methods import HybridMethod, OwnScore, TrainOptions, artifact_for, train_embeddings
from fuserank.evaluation.protocol import Split, load_ratings, split, validation_split

WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.3)


def validation_view(ratings_path: str, seed: int = 0, min_user_ratings: int = 20) -> Split:
    outer = split(load_ratings(ratings_path, min_user_ratings), seed)
    train, val = validation_split(outer.train, seed)
    return Split(train=train, test=val, user_ids=outer.user_ids, item_ids=outer.item_ids, seed=seed,
                 name=f"{outer.name} (validation carve of the train split)")


def tune(ratings_path: str, options: TrainOptions = TrainOptions(), seed: int = 0) -> list[tuple[str, float]]:
    view = validation_view(ratings_path, seed)
    rows = [("EASE", evaluate_model(bl.EASE(seed=seed).fit(view.train), view)["ndcg@10"]),
            ("user-KNN", evaluate_model(bl.UserKNN(k=50).fit(view.train), view)["ndcg@10"])]
    model = artifact_for(view, *train_embeddings(view.train, seed, options))
    rows.append(("MF own score", evaluate_model(OwnScore(model), view)["ndcg@10"]))
    for w1, w2 in itertools.product(WEIGHTS, WEIGHTS):
        settings = HybridSettings(weight_stage1=w1, weight_stage2=w2, weight_model=1.0)
        rows.append((f"hybrid w_stage1={w1} w_stage2={w2} w_model=1",
                     evaluate_model(HybridMethod(model, settings), view)["ndcg@10"]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuserank.evaluation.tune", allow_abbrev=False)
    p.add_argument("--ratings", required=True)
    p.add_argument("--temperature", type=float, default=TrainOptions.temperature)
    p.add_argument("--positive-weight", type=float, default=TrainOptions.positive_weight)
    p.add_argument("--low-weight", type=float, default=TrainOptions.low_weight)
    p.add_argument("--low-threshold", type=int, default=TrainOptions.low_threshold)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = tune(a.ratings, TrainOptions(temperature=a.temperature, positive_weight=a.positive_weight,
                                             low_weight=a.low_weight, low_threshold=a.low_threshold))
    width = max(len(name) for name, _ in rows)
    for name, ndcg in rows:
        print(f"{name:<{width}}  NDCG@10 {ndcg:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
