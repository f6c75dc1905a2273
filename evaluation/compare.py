"""Offline comparison harness: every method on every split seed, same protocol, one report.

Usage (library)::

    from fuserank.evaluation.compare import run_comparison
    df = run_comparison("data/sample/mal2020/rating_complete_head100k.csv", "/tmp/eval2020",
                        extra_methods=[("TF-MF", lambda split, seed: MyModel(seed).fit(split.train))])

or ``python -m fuserank.evaluation.compare RATINGS.csv OUT_DIR [--seeds 0 1 2]``.

Each method is a ``factory(split, seed)`` returning a fitted object with ``score(users)``
(``(len(users), n_items)`` scores, higher = better); see :mod:`fuserank.evaluation.baselines`.
Outputs in ``out_dir``: ``results.md`` (summary table + per-seed NDCG), ``results.csv`` (one row
per method and seed) and ``ndcg_at_10.png`` (mean NDCG@10 with the seed spread).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from . import baselines as bl
from .metrics import coverage, ndcg_at_k, recall_at_k, top_k
from .protocol import Split, load_ratings, split as make_split

__all__ = [
    "BASELINES",
    "DEFAULT_SEEDS",
    "evaluate_model",
    "run_comparison",
    "summarize",
    "write_markdown",
    "plot_ndcg",
    "main",
]

log = logging.getLogger("fuserank.evaluate")

DEFAULT_SEEDS = (0, 1, 2)
NDCG_K, RECALL_K, COVERAGE_K = 10, 20, 10

Factory = Callable[[Split, int], object]

#: The classical baselines, in report order: name -> factory(split, seed) -> fitted model.
BASELINES: dict[str, Factory] = {
    "popularity": lambda s, seed: bl.Popularity().fit(s.train),
    "user-KNN": lambda s, seed: bl.UserKNN(k=50).fit(s.train),
    "implicit ALS": lambda s, seed: bl.ImplicitALS(factors=64, reg=0.1, alpha=1.0,
                                                   confidence="rating", seed=seed).fit(s.train),
    "item-KNN": lambda s, seed: bl.ItemKNN(k=50, neighbourhood="target").fit(s.train),
    "EASE": lambda s, seed: bl.EASE(seed=seed).fit(s.train),
}


def evaluate_model(model, split: Split, block_elements: int = 32_000_000) -> dict:
    """Score every user of ``split`` in blocks and compute NDCG@10, Recall@20 and Coverage@10.

    Candidates exclude the user's train items. NDCG/Recall are averaged over users with at least
    one relevant (>= 8) held-out item; coverage counts the distinct items of all users' top-10
    lists over the number of distinct train items.
    """
    n_users, n_items = split.train.shape
    block = max(1, block_elements // max(1, n_items))
    k = max(NDCG_K, RECALL_K, COVERAGE_K)
    tops = []
    for start in range(0, n_users, block):
        users = np.arange(start, min(n_users, start + block))
        scores = np.asarray(model.score(users))
        if scores.shape != (len(users), n_items):
            raise ValueError(f"score() returned shape {scores.shape}, "
                             f"expected {(len(users), n_items)}")
        tops.append(top_k(scores, split.train[users], k))
    top = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
    nd = ndcg_at_k(top, split.test, NDCG_K)
    rc = recall_at_k(top, split.test, RECALL_K)
    return {
        f"ndcg@{NDCG_K}": nd.mean,
        f"recall@{RECALL_K}": rc.mean,
        f"coverage@{COVERAGE_K}": coverage(top, split.n_train_items, COVERAGE_K),
        "n_eval_users": nd.n_users,
    }


def _resolve_methods(methods, extra_methods) -> list[tuple[str, Factory]]:
    if methods is None:
        chosen = list(BASELINES.items())
    else:
        chosen = []
        for m in methods:
            if isinstance(m, str):
                if m not in BASELINES:
                    raise KeyError(f"unknown method {m!r}; known: {sorted(BASELINES)}")
                chosen.append((m, BASELINES[m]))
            else:
                name, factory = m
                chosen.append((str(name), factory))
    chosen += [(str(n), f) for n, f in (extra_methods or [])]
    names = [n for n, _ in chosen]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate method names: {sorted(dupes)}")
    return chosen


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per-method mean, std (ddof=1; 0 for one seed), min and max of each metric over seeds."""
    metrics = [c for c in (f"ndcg@{NDCG_K}", f"recall@{RECALL_K}", f"coverage@{COVERAGE_K}")
               if c in results]
    g = results.groupby("method", sort=False)
    out = pd.DataFrame(index=pd.Index(results["method"].unique(), name="method"))
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1).fillna(0.0)
        out[f"{m}_min"] = g[m].min()
        out[f"{m}_max"] = g[m].max()
    out["fit_s_mean"] = g["fit_s"].mean()
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index()


def write_markdown(results: pd.DataFrame, path: str, dataset: str, info: str = "") -> None:
    """Write the summary table (mean +- std over seeds, plus per-seed NDCG@10) as markdown."""
    s = summarize(results)
    seeds = sorted(results["seed"].unique())
    nd, rc, cv = f"ndcg@{NDCG_K}", f"recall@{RECALL_K}", f"coverage@{COVERAGE_K}"
    head = (["method", "NDCG@10 (mean ± std)", "NDCG@10 min-max", "Recall@20 (mean ± std)",
             "Coverage@10"] + [f"NDCG@10 seed {x}" for x in seeds] + ["fit s (mean)"])
    lines = [f"# Offline comparison — {dataset}", ""]
    if info:
        lines += [info, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in s.iterrows():
        per_seed = results[results["method"] == row["method"]].set_index("seed")[nd]
        cells = [
            str(row["method"]),
            f"{row[nd + '_mean']:.4f} ± {row[nd + '_std']:.4f}",
            f"{row[nd + '_min']:.4f}–{row[nd + '_max']:.4f}",
            f"{row[rc + '_mean']:.4f} ± {row[rc + '_std']:.4f}",
            f"{row[cv + '_mean']:.4f}",
        ] + [f"{per_seed[x]:.4f}" if x in per_seed.index else "" for x in seeds]
        cells.append(f"{row['fit_s_mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Protocol: ratings <= 0 dropped, duplicates keep the last, users with >= "
              "min_user_ratings ratings; per user a seeded random max(1, floor(20%)) held out; "
              "relevant = held-out rating >= 8; candidates exclude the user's train items; "
              "NDCG@10 binary gains, ideal over min(10, #relevant); Recall@20 over "
              "min(20, #relevant); both averaged over users with >= 1 relevant held-out item; "
              "Coverage@10 = distinct top-10 items / distinct train items. Spread = sample std "
              "over seeds.", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def plot_ndcg(results: pd.DataFrame, path: str, dataset: str) -> None:
    """Horizontal bar chart of mean NDCG@10 per method with min-max error bars over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    s = summarize(results)
    nd = f"ndcg@{NDCG_K}"
    mean = s[f"{nd}_mean"].to_numpy()
    err = np.vstack([mean - s[f"{nd}_min"].to_numpy(), s[f"{nd}_max"].to_numpy() - mean])
    n_seeds = int(results["seed"].nunique())
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(s) + 1.6))
    y = np.arange(len(s))
    ax.barh(y, mean, xerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_yticks(y, labels=list(s["method"]))
    ax.invert_yaxis()
    for yi, m, hi in zip(y, mean, mean + err[1]):
        ax.text(hi, yi, f"  {m:.3f}", va="center", ha="left", fontsize=8)
    ax.set_xlabel(f"NDCG@10 (mean over {n_seeds} split seed(s); bars: min-max)")
    ax.set_ylabel("method")
    ax.set_title(f"NDCG@10 — {dataset}")
    ax.set_xlim(0, max(0.05, float(np.nanmax(mean + err[1])) * 1.2))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_comparison(ratings_path, out_dir, seeds: Sequence[int] = DEFAULT_SEEDS,
                   min_user_ratings: int = 20, methods: Iterable | None = None,
                   extra_methods: Iterable[tuple[str, Factory]] | None = None,
                   dataset_name: str | None = None) -> pd.DataFrame:
    """Evaluate every method on every split seed; write results.md/.csv and ndcg_at_10.png.

    ``methods``: ``None`` (all of :data:`BASELINES`) or a list of baseline names and/or
    ``(name, factory)`` pairs; ``extra_methods``: more ``(name, factory)`` pairs, where
    ``factory(split, seed)`` returns a fitted object with ``score(users)``. Returns one row per
    (method, seed) with ``ndcg@10``, ``recall@20``, ``coverage@10``, ``n_eval_users``, ``fit_s``,
    ``eval_s`` and ``params``.
    """
    t_all = time.perf_counter()
    chosen = _resolve_methods(methods, extra_methods)
    os.makedirs(out_dir, exist_ok=True)
    ratings = load_ratings(ratings_path, min_user_ratings=min_user_ratings)
    dataset = dataset_name or ratings.name or os.path.basename(os.fspath(ratings_path))
    log.info("%s: %d users, %d items, %d ratings (min_user_ratings=%d)", dataset,
             ratings.n_users, ratings.n_items, ratings.n_ratings, min_user_ratings)
    rows = []
    for seed in seeds:
        sp_ = make_split(ratings, int(seed))
        log.info("seed %d: %d train / %d test ratings, %d train items", seed, sp_.train.nnz,
                 sp_.test.nnz, sp_.n_train_items)
        for name, factory in chosen:
            t0 = time.perf_counter()
            model = factory(sp_, int(seed))
            t1 = time.perf_counter()
            res = evaluate_model(model, sp_)
            t2 = time.perf_counter()
            params = model.params() if hasattr(model, "params") else {}
            log.info("seed %d %-14s NDCG@10 %.4f  Recall@20 %.4f  Cov@10 %.4f  "
                     "(fit %.1fs, eval %.1fs) %s", seed, name, res[f"ndcg@{NDCG_K}"],
                     res[f"recall@{RECALL_K}"], res[f"coverage@{COVERAGE_K}"], t1 - t0, t2 - t1,
                     params)
            rows.append({"dataset": dataset, "method": name, "seed": int(seed), **res,
                         "fit_s": t1 - t0, "eval_s": t2 - t1, "params": repr(params)})
    df = pd.DataFrame(rows)
    total = time.perf_counter() - t_all
    df.to_csv(os.path.join(out_dir, "results.csv"), index=False)
    info = (f"{ratings.n_users} users, {ratings.n_items} items, {ratings.n_ratings} ratings; "
            f"seeds {list(seeds)}; total run time {total:.1f} s.")
    write_markdown(df, os.path.join(out_dir, "results.md"), dataset, info)
    plot_ndcg(df, os.path.join(out_dir, "ndcg_at_10.png"), dataset)
    log.info("wrote %s/results.{md,csv} and ndcg_at_10.png in %.1f s", out_dir, total)
    return df


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Offline comparison of the FuseRank baselines.")
    ap.add_argument("ratings", help="user_id,anime_id,rating CSV")
    ap.add_argument("out_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument("--min-user-ratings", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=None, choices=list(BASELINES))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    df = run_comparison(args.ratings, args.out_dir, seeds=args.seeds,
                        min_user_ratings=args.min_user_ratings, methods=args.methods)
    print(summarize(df).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
