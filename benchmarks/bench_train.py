"""The ranking objective's trainers compared on one ingest output, and the whole `fuserank train` timed.

    python -u benchmarks/bench_train.py --data D                      # sampled vs full softmax, seeds 0,1,2
    python -u benchmarks/bench_train.py --data D --trainers sampled   # the served trainer alone
    python -u benchmarks/bench_train.py --data D --whole              # `fuserank train --data D` as a user runs it

Each (trainer, seed) fit runs in its own process (so its peak RSS is its own): `training.train.fit` on the
train split with early stopping on the validation split, then the held-out NDCG@10 on the test split of
the model's own score and of the hybrid at HybridSettings' defaults (`evaluation.model_eval.test_figures`).
Printed per fit: seconds per epoch, epochs to the stop (best epoch) and run, wall, peak RSS, NDCG@10; then
per trainer the mean over seeds, and the sampled trainer's NDCG relative to the full softmax's.
``--whole`` instead times the `fuserank train` command (knob search, held-out fit, refit) in a child
process: wall and the child's peak RSS. Results go to ``--out`` (JSON) and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def peak_rss_gib(who=resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 2 ** 20, 3)     # ru_maxrss is KiB on Linux


def one_fit(data: str, trainer: str, seed: int, negatives: int) -> dict:
    from fuserank.config import HybridSettings
    from fuserank.evaluation.model_eval import test_figures
    from fuserank.training import dataset
    from fuserank.training.export import build_user_lists, encoder_ids
    from fuserank.training.train import fit
    counts = dataset.load_manifest(data)["counts"]
    n_users, n_anime = counts["users_kept"], counts["anime"]
    train_s, val_s, test_s = dataset.load_splits(data)
    t0 = time.perf_counter()
    result = fit(train_s, val_s, n_users, n_anime, "ranking", epochs=150, patience=10, seed=seed, trainer=trainer,
                 negatives=negatives)
    wall = time.perf_counter() - t0
    lists = build_user_lists(data, n_users, n_anime)
    users, anime = encoder_ids(data)
    own = HybridSettings(weight_stage1=0.0, weight_stage2=0.0, weight_model=1.0)
    figures = {name: test_figures(result.user_embeddings, result.anime_embeddings, lists, test_s, users, anime,
                                  settings)["test_ndcg_at_10"]
               for name, settings in (("own", own), ("hybrid", HybridSettings()))}
    epochs = len(result.history["loss"])
    return {"trainer": trainer, "seed": seed, "negatives": result.params.get("negatives"),
            "s_per_epoch": round(wall / epochs, 3), "epochs_run": epochs,
            "best_epoch": int(np.argmin(result.history["val_loss"])) + 1, "wall_s": round(wall, 1),
            "peak_rss_gib": peak_rss_gib(), "test_ndcg_at_10_own": round(figures["own"], 5),
            "test_ndcg_at_10_hybrid": round(figures["hybrid"], 5), "load": os.getloadavg()}


def whole_train(data: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fuserank", "train", "--data", data, "--out", f"{tmp}/m"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        manifest = json.load(open(f"{tmp}/m/manifest.json"))
    return {"command": f"fuserank train --data {data}", "wall_s": round(wall, 1),
            "peak_rss_gib": peak_rss_gib(resource.RUSAGE_CHILDREN), "metrics": manifest["metrics"],
            "chosen": {k: manifest["chosen"][k] for k in ("model", "hybrid", "val_ndcg_at_10", "search_seconds")},
            "load": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--data", required=True, help="a `fuserank ingest` output")
    p.add_argument("--trainers", default="sampled,full")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--negatives", type=int, default=2048)
    p.add_argument("--whole", action="store_true", help="time the whole `fuserank train` command instead")
    p.add_argument("--one", nargs=2, metavar=("TRAINER", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/train.json")
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one_fit(a.data, a.one[0], int(a.one[1]), a.negatives)))
        return 0
    if a.whole:
        result = whole_train(a.data)
        print(json.dumps(result, indent=2))
    else:
        runs = []
        for trainer in a.trainers.split(","):
            for seed in a.seeds.split(","):
                proc = subprocess.run([sys.executable, __file__, "--data", a.data, "--negatives", str(a.negatives),
                                       "--one", trainer, seed], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
        means = {}
        for trainer in a.trainers.split(","):
            mine = [r for r in runs if r["trainer"] == trainer]
            means[trainer] = {k: round(float(np.mean([r[k] for r in mine])), 4)
                              for k in ("s_per_epoch", "epochs_run", "best_epoch", "wall_s", "peak_rss_gib",
                                        "test_ndcg_at_10_own", "test_ndcg_at_10_hybrid")}
            print(trainer, json.dumps(means[trainer]))
        result = {"data": a.data, "runs": runs, "means": means}
        if {"sampled", "full"} <= set(means):
            result["sampled_vs_full_ndcg_hybrid"] = round(means["sampled"]["test_ndcg_at_10_hybrid"]
                                                          / means["full"]["test_ndcg_at_10_hybrid"], 4)
            print("sampled / full held-out NDCG@10 (hybrid):", result["sampled_vs_full_ndcg_hybrid"])
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
