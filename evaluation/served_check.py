"""EASE against the served path (`fuserank ingest` + `fuserank train` with its defaults) on the same splits.

    python -m fuserank.evaluation.served_check --ratings FILE.csv --seeds 0,1,2

The offline protocol (evaluation/protocol.py) split per seed; prints each seed's NDCG@10 of both and the
ratio, then the means. The lighter sibling of `fuserank evaluate --ratings`, which has both rows too.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from fuserank.evaluation import baselines as bl
from fuserank.evaluation.compare import evaluate_model
from fuserank.evaluation.fuserank_methods import served_path
from fuserank.evaluation.protocol import load_ratings, split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuserank.evaluation.served_check", allow_abbrev=False)
    p.add_argument("--ratings", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--min-user-ratings", type=int, default=20)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ratings = load_ratings(a.ratings, a.min_user_ratings)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        s = split(ratings, seed)
        ease = evaluate_model(bl.EASE(seed=seed).fit(s.train), s)["ndcg@10"]
        served = evaluate_model(served_path(s, seed), s)["ndcg@10"]
        rows.append((ease, served))
        print(json.dumps({"seed": seed, "ease": round(ease, 4), "served": round(served, 4),
                          "ratio": round(served / ease, 4)}), flush=True)
    ease, served = (float(np.mean(x)) for x in zip(*rows))
    print(json.dumps({"ratings": a.ratings, "seeds": a.seeds, "ease_mean": round(ease, 4),
                      "served_mean": round(served, 4), "ratio": round(served / ease, 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
