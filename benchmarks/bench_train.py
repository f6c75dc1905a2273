"""Training throughput of the rating model at MyAnimeList scale, against its floors, in one process.

    python -u benchmarks/bench_train.py                    # 50M ratings, 310k users x 17.5k anime, 128-d, batch 10,000
    python -u benchmarks/bench_train.py --small            # 2M ratings, 20k users x 4k anime (a quick check)
    python -u benchmarks/bench_train.py --data runs/data   # the train split of a `fuserank ingest` output
    python -u benchmarks/bench_train.py --convergence runs/data   # optimisers compared on validation/test loss

Steps (each timed; figures printed and written to ``benchmarks/results/train.json``):

1. data: synthetic ratings generated in-process with numpy (seeded): power-law user activity (Lomax, tail
   2.5), power-law anime popularity (Zipf over a random popularity order), ratings 1-10 from user bias +
   anime quality + a rank-4 taste term + noise; sorted by user as `fuserank ingest` writes them, and
   written as ``train.parquet`` (cached under ``--workdir``). With ``--data`` the ingest output is used.
2. **load**: the production reader, ``dataset.load_split`` (pyarrow) -> ``dataset.RatingBatches`` (packed
   uint64 rows, one full seeded shuffle); beside it, the alternative that was not chosen: streaming the
   file as pyarrow record batches (``iter_batches``) and packing each, which cannot shuffle a file that
   is grouped by user;
3. **(a) production pipeline**: ``SparseRatingTrainer.train_epoch`` with the default optimiser (row-wise
   Adagrad on the touched rows) over one full epoch of ``RatingBatches`` (per-epoch chunk permutation,
   batch assembly and sort, host -> tensor in the prefetch thread), after a short warm-up that traces
   the step;
4. **(b) in-memory tensors**: the same trainer over the same number of batches already held as
   ``tf.Tensor`` (made before the clock starts): the step alone; (a) / (b) is the input pipeline's share;
5. **(c) dense baseline**: the same model compiled with Keras' Adam (``fuserank train --optimizer adam``)
   stepped with ``train_on_batch`` on in-memory batches for ``--dense-steps`` steps (every embedding row
   and both moment slots rewritten every step);
6. for information, the ranking objective (softmax over all anime, batches of users) for a few batches:
   users/s.

(a) and (b) are also run interleaved in blocks of 50 steps (``--paired-rounds``), and (c) interleaved with
the sparse step and with ``lazy_adam``, so that each comparison sees the same machine load.

``--convergence DATA_DIR`` instead trains the rating model with `fit` (the ``fuserank train`` recipe) with
each optimiser (adagrad, lazy_adam, adam) and seed on an ingest output and records the best validation
loss/MAE and the test split's; results merge into the same JSON (keys ``throughput`` / ``convergence``).

Load averages (``os.getloadavg``) are recorded before and after each timed part: the machine is shared.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# --- synthetic data ---------------------------------------------------------------------------------------

def generate(path: Path, rows: int, n_users: int, n_anime: int, seed: int, chunk: int = 5_000_000) -> None:
    """Write a seeded MyAnimeList-shaped ``train.parquet`` (columns and dtypes of the ingest output)."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(2.5, n_users) + 0.02
    counts = rng.multinomial(rows, activity / activity.sum())
    popularity = 1.0 / (np.arange(n_anime) + 10.0)
    cdf = np.cumsum(popularity) / popularity.sum()
    order = rng.permutation(n_anime).astype(np.int32)
    user_bias, quality = rng.normal(0, 0.8, n_users), rng.normal(0, 0.8, n_anime)
    taste_u, taste_a = rng.normal(0, 0.6, (n_users, 4)), rng.normal(0, 0.6, (n_anime, 4))
    user_of_row = np.repeat(np.arange(n_users, dtype=np.int32), counts)
    schema = pa.schema([("user", pa.int32()), ("anime", pa.int32()), ("rating", pa.float32()),
                        ("raw_rating", pa.int8())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, chunk):
            user = user_of_row[start:start + chunk]
            anime = order[np.searchsorted(cdf, rng.random(len(user)), side="right").clip(0, n_anime - 1)]
            score = (7.6 + user_bias[user] + quality[anime] + np.einsum("ij,ij->i", taste_u[user], taste_a[anime])
                     + rng.normal(0, 1.0, len(user)))
            raw = np.clip(np.rint(score), 1, 10).astype(np.int8)
            writer.write_table(pa.table({"user": user, "anime": anime,
                                         "rating": ((raw - 1) / np.float32(9)).astype(np.float32),
                                         "raw_rating": raw}, schema=schema))
    os.replace(tmp, path)


def dataset_for(args) -> tuple[Path, int, int]:
    """(directory holding train.parquet, n_users, n_anime)."""
    if args.data:
        from fuserank.training import dataset
        counts = dataset.load_manifest(args.data)["counts"]
        return Path(args.data), int(counts["users_kept"]), int(counts["anime"])
    data = Path(args.workdir) / f"train-{args.rows}-{args.users}-{args.anime}-s{args.seed}"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "train.parquet").exists():
        t0 = time.perf_counter()
        generate(data / "train.parquet", args.rows, args.users, args.anime, args.seed)
        log(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s -> {data}")
    return data, args.users, args.anime


# --- the parts --------------------------------------------------------------------------------------------

def stream_record_batches(path: Path, batch_size: int) -> dict:
    """The alternative reader: pyarrow record batches packed one by one (no training)."""
    from fuserank.training.dataset import SplitArrays, pack_ratings
    t0, rows, n = time.perf_counter(), 0, 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size,
                                                columns=["user", "anime", "rating", "raw_rating"]):
        cols = [c.to_numpy() for c in rb.columns]
        keys, _ = pack_ratings(SplitArrays(*cols))
        rows += len(keys)
        n += 1
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 2), "rows_per_s": round(rows / dt), "batches": n,
            "note": "file order (grouped by user): no shuffle possible beyond a buffer"}


def cycle_batches(batches):
    while True:
        yield from batches


def run_block(trainer, source, steps: int, table):
    for _ in range(steps):
        out = trainer._train(tf_constant(next(source)), table)
    out.numpy()


def tf_constant(x):
    import tensorflow as tf
    return x if isinstance(x, tf.Tensor) else tf.constant(x)


def paired(parts: dict, rounds: int) -> dict:
    """Run each part's block in turn, ``rounds`` times: parts compared under the same (shared) load."""
    out = {name: {"seconds": 0.0, "examples": 0} for name in parts}
    before = load()
    for _ in range(rounds):
        for name, (fn, examples) in parts.items():
            t0 = time.perf_counter()
            fn()
            out[name]["seconds"] += time.perf_counter() - t0
            out[name]["examples"] += examples
    for v in out.values():
        v["examples_per_s"] = round(v["examples"] / v["seconds"])
        v["seconds"] = round(v["seconds"], 2)
    out.update(rounds=rounds, load_before=before, load_after=load())
    return out


def step_parts(trainer, tensors, table) -> dict:
    """Mean ms a batch of each part of the fused step (unpack, forward kernel, TF head, update kernel), each
    part run alone over all the given batches on inputs made beforehand (the update with lr 0)."""
    import tensorflow as tf
    from fuserank.training.model import unpack_batch
    unpack = tf.function(lambda k: unpack_batch(k, table))
    forward = tf.function(trainer.fused_cosine_rows)
    head = tf.function(trainer._head_backward)

    @tf.function
    def update(u, a, c, d_u, d_a, sq_u, sq_a):
        trainer.fused_update(u, a, c, d_u, d_a, sq_u, sq_a, 0.0)
        return tf.constant(0)

    unpacked = [unpack(k) for k in tensors]
    inputs = {"unpack": [(k,) for k in tensors], "forward_kernel": [(u, a) for u, a, _ in unpacked]}
    inputs["head_tf"] = [(*forward(u, a), y) for u, a, y in unpacked]
    inputs["update_kernel"] = [(u, a, *head(*h)[4:9]) for (u, a, _), h in zip(unpacked, inputs["head_tf"])]
    result = {}
    for name, fn in (("unpack", unpack), ("forward_kernel", forward), ("head_tf", head), ("update_kernel", update)):
        fn(*inputs[name][0])
        t0 = time.perf_counter()
        for args in inputs[name]:
            out = fn(*args)
        [x.numpy() for x in tf.nest.flatten(out)]
        result[name] = round((time.perf_counter() - t0) / len(inputs[name]) * 1e3, 2)
    return result


def time_steps(fn, n_examples: int) -> dict:
    before = load()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 2), "examples": int(n_examples), "examples_per_s": round(n_examples / dt),
            "load_before": before, "load_after": load()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000_000)
    p.add_argument("--users", type=int, default=310_000)
    p.add_argument("--anime", type=int, default=17_500)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="a `fuserank ingest` output directory (its train split) instead of synthetic")
    p.add_argument("--workdir", default="/tmp/fuserank-bench/train")
    p.add_argument("--small", action="store_true", help="2M ratings, 20k users x 4k anime, fewer dense steps")
    p.add_argument("--dense-steps", type=int, default=None, help="dense baseline steps (default 200; 20 --small)")
    p.add_argument("--ranking-steps", type=int, default=None, help="ranking batches timed (default 20; 0 = skip)")
    p.add_argument("--paired-rounds", type=int, default=None, help="interleaved rounds (default 20; 5 --small)")
    p.add_argument("--convergence", metavar="DATA_DIR",
                   help="instead: train the rating model with each optimiser on a `fuserank ingest` output "
                        "(train/val/test) and compare validation and test loss/MAE (key 'convergence')")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--convergence: seeds")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/train.json"))
    args = p.parse_args(argv)
    if args.convergence:
        return write_results(args.out, {"convergence": convergence(args.convergence, args.seeds)})
    if args.small:
        args.rows, args.users, args.anime = 2_000_000, 20_000, 4_000
    dense_steps = args.dense_steps if args.dense_steps is not None else (20 if args.small else 200)
    ranking_steps = args.ranking_steps if args.ranking_steps is not None else (5 if args.small else 20)
    args.paired_rounds = args.paired_rounds or (5 if args.small else 20)

    import keras
    import tensorflow as tf
    from fuserank.training import dataset
    from fuserank.training.model import SparseRatingTrainer, WarmupExpDecay, build_rating_model

    data, n_users, n_anime = dataset_for(args)
    result = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                          "tensorflow": tf.__version__, "keras": keras.__version__, "pyarrow": pa.__version__},
              "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else list(argv))),
              "data": str(data), "n_users": n_users, "n_anime": n_anime, "dim": args.dim,
              "batch_size": args.batch_size}

    # 2. load -------------------------------------------------------------------------------------------------
    path = data / "train.parquet"
    before = load()
    t0 = time.perf_counter()
    split = dataset.load_split(str(data), "train")
    t_read = time.perf_counter() - t0
    batches = dataset.RatingBatches(split, args.batch_size, shuffle=True, seed=args.seed)
    t_load = time.perf_counter() - t0
    n_rows = len(split)
    del split
    result["rows"] = n_rows
    result["load"] = {"read_parquet_s": round(t_read, 2), "pack_and_shuffle_s": round(t_load - t_read, 2),
                      "total_s": round(t_load, 2), "packed_bytes": int(batches.keys.nbytes),
                      "peak_rss_gib": peak_rss_gib(), "load_before": before, "load_after": load()}
    log(f"load: {n_rows:,} rows, read {t_read:.1f}s + pack/shuffle {t_load - t_read:.1f}s, "
        f"packed {batches.keys.nbytes / 2**20:.0f} MiB, peak RSS {peak_rss_gib()} GiB")
    result["record_batch_stream"] = stream_record_batches(path, args.batch_size)
    log(f"record-batch stream (alternative): {result['record_batch_stream']['rows_per_s'] / 1e6:.2f} M rows/s")

    # 3. (a) production pipeline: one full epoch ---------------------------------------------------------------
    keras.utils.set_random_seed(args.seed)
    model = build_rating_model(n_users, n_anime, args.dim, args.seed)
    trainer = SparseRatingTrainer(model, WarmupExpDecay(len(batches)), "adagrad")
    table = batches.rating_table
    t0 = time.perf_counter()
    trainer.train_epoch([next(iter(batches)) for _ in range(3)], table)   # traces the step
    result["trace_s"] = round(time.perf_counter() - t0, 2)
    logs = {}
    result["a_production"] = time_steps(lambda: logs.update(trainer.train_epoch(batches)), n_rows)
    result["a_production"].update(steps=len(batches), optimizer="adagrad", fused_step=trainer.fused is not None,
                                  train_loss=round(float(logs["loss"]), 4),
                                  train_mae=round(float(logs["mae"]), 4))
    log(f"(a) production pipeline: {result['a_production']['examples_per_s'] / 1e6:.2f} M examples/s, "
        f"epoch {result['a_production']['seconds']:.1f}s, loss {logs['loss']:.4f} (load {load()})")

    # 4. (b) the same trainer fed from in-memory tensors ---------------------------------------------------------
    tensors = list(batches)   # one epoch of batches, made before the clock starts
    n_b = sum(int(t.shape[0]) for t in tensors)
    result["b_in_memory"] = time_steps(lambda: trainer.train_epoch(tensors, table), n_b)
    result["b_in_memory"]["steps"] = len(tensors)
    log(f"(b) in-memory tensors: {result['b_in_memory']['examples_per_s'] / 1e6:.2f} M examples/s, "
        f"epoch {result['b_in_memory']['seconds']:.1f}s (load {load()})")

    if trainer.fused is not None:
        result["step_parts_ms"] = step_parts(trainer, tensors[:50], table)
        log(f"step parts (ms a batch, mean of {len(tensors[:50])}): {result['step_parts_ms']}")

    # the input pipeline's share, (a) and (b) interleaved in blocks so that both see the same machine load
    production = cycle_batches(batches)
    in_memory = itertools.cycle(tensors)
    block = 50
    result["pipeline_share_paired"] = paired({
        "a_production": (lambda: run_block(trainer, production, block, table), block * args.batch_size),
        "b_in_memory": (lambda: run_block(trainer, in_memory, block, table), block * args.batch_size),
    }, rounds=args.paired_rounds)
    shares = result["pipeline_share_paired"]
    shares["input_pipeline_share"] = round(1 - shares["a_production"]["examples_per_s"]
                                           / shares["b_in_memory"]["examples_per_s"], 3)
    a_rate, b_rate = (shares[k]["examples_per_s"] / 1e6 for k in ("a_production", "b_in_memory"))
    log(f"paired (a) vs (b), {args.paired_rounds} x {block} steps each: (a) {a_rate:.2f} vs (b) {b_rate:.2f}"
        f" M examples/s: input pipeline share {shares['input_pipeline_share']:.1%}")

    # 5. (c) dense Keras Adam, interleaved with the sparse step (and lazy Adam, for information) ----------------
    if dense_steps:
        dense = build_rating_model(n_users, n_anime, args.dim, args.seed)
        dense.compile(optimizer=keras.optimizers.Adam(WarmupExpDecay(len(batches))), loss="binary_crossentropy")
        lazy = SparseRatingTrainer(build_rating_model(n_users, n_anime, args.dim, args.seed),
                                   WarmupExpDecay(len(batches)), "lazy_adam")
        lazy.train_epoch(tensors[:3], table)
        ops_step = SparseRatingTrainer(build_rating_model(n_users, n_anime, args.dim, args.seed),
                                       WarmupExpDecay(len(batches)), "adagrad", fused_step=False)
        ops_step.train_epoch(tensors[:3], table)
        rounds = max(1, min(args.paired_rounds, dense_steps))
        per_round = max(1, dense_steps // rounds)
        feeds = []
        for keys in tensors[:per_round]:
            x, y = batches.unpacked(keys.numpy())
            feeds.append(({k: tf.constant(v) for k, v in x.items()}, tf.constant(y)))
        dense.train_on_batch(*feeds[0])

        def run_dense():
            for x, y in feeds:
                dense.train_on_batch(x, y)
        sparse_block = per_round * 10
        lazy._ensure_horizon(int(lazy.iterations.numpy()) + rounds * sparse_block + 1)
        result["c_dense_vs_sparse_paired"] = paired({
            "c_dense_adam": (run_dense, per_round * args.batch_size),
            "b_in_memory_adagrad": (lambda: run_block(trainer, in_memory, sparse_block, table),
                                    sparse_block * args.batch_size),
            "lazy_adam_in_memory": (lambda: run_block(lazy, in_memory, sparse_block, table),
                                    sparse_block * args.batch_size),
            "adagrad_tf_ops_in_memory": (lambda: run_block(ops_step, in_memory, sparse_block, table),
                                         sparse_block * args.batch_size),
        }, rounds=rounds)
        c = result["c_dense_vs_sparse_paired"]
        c["dense_steps"], c["sparse_steps_each"] = rounds * per_round, rounds * sparse_block
        result["speedup_vs_dense"] = round(c["b_in_memory_adagrad"]["examples_per_s"]
                                           / c["c_dense_adam"]["examples_per_s"], 1)
        result["fused_vs_tf_ops"] = round(c["b_in_memory_adagrad"]["examples_per_s"]
                                          / c["adagrad_tf_ops_in_memory"]["examples_per_s"], 2)
        result["lazy_adam_vs_adagrad"] = round(c["lazy_adam_in_memory"]["examples_per_s"]
                                               / c["b_in_memory_adagrad"]["examples_per_s"], 2)
        log(f"(c) dense Keras Adam: {c['c_dense_adam']['examples_per_s'] / 1e6:.3f} M examples/s "
            f"({c['c_dense_adam']['seconds'] / c['dense_steps'] * 1e3:.0f} ms/step, {c['dense_steps']} steps) vs "
            f"adagrad {c['b_in_memory_adagrad']['examples_per_s'] / 1e6:.2f} and lazy_adam "
            f"{c['lazy_adam_in_memory']['examples_per_s'] / 1e6:.2f} M examples/s in the same rounds: "
            f"x{result['speedup_vs_dense']} (load {load()}); the same adagrad as TF ops (no fused kernels): "
            f"{c['adagrad_tf_ops_in_memory']['examples_per_s'] / 1e6:.2f} M examples/s, fused x{result['fused_vs_tf_ops']}")
        del feeds, dense, lazy, ops_step
    del tensors

    # 6. ranking objective (information) ---------------------------------------------------------------------
    if ranking_steps:
        result["ranking"] = ranking_throughput(data, n_users, n_anime, args, ranking_steps)
        log(f"ranking: {result['ranking']['users_per_s']:.0f} users/s "
            f"(batch {result['ranking']['batch_users']} users, {ranking_steps} steps)")

    result["peak_rss_gib"] = peak_rss_gib()
    result["targets"] = {"examples_per_s >= 1M (a)": result["a_production"]["examples_per_s"] >= 1e6,
                         "epoch < 60 s (a)": result["a_production"]["seconds"] < 60}
    result["input_pipeline_share"] = result["pipeline_share_paired"]["input_pipeline_share"]
    log(json.dumps({k: result[k] for k in ("input_pipeline_share", "speedup_vs_dense", "fused_vs_tf_ops",
                                           "lazy_adam_vs_adagrad",
                                           "targets") if k in result}))
    return write_results(args.out, {"throughput": result})


def write_results(path: str, update: dict) -> dict:
    """Merge into the results file: the throughput run and the convergence run each replace their own key."""
    out = Path(path)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(update)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"written {out}")
    return results


def convergence(data_dir: str, seeds: list[int]) -> dict:
    """The rating model trained by `fit` (the `fuserank train` recipe: early stopping on validation loss,
    best weights restored) with each optimiser and seed; best validation loss/MAE and the test split's."""
    import keras
    from fuserank.training import dataset
    from fuserank.training.train import OPTIMIZERS, fit
    manifest = dataset.load_manifest(data_dir)
    train_s, val_s, test_s = (dataset.load_split(data_dir, s) for s in dataset.SPLITS)
    n_users, n_anime = manifest["counts"]["users_kept"], manifest["counts"]["anime"]
    mean = float(train_s.rating.mean())
    runs = []
    for seed in seeds:
        for optimizer in OPTIMIZERS:
            before = load()
            t0 = time.perf_counter()
            r = fit(train_s, val_s, n_users, n_anime, "rating", seed=seed, optimizer=optimizer)
            seconds = time.perf_counter() - t0
            best = int(np.argmin(r.history["val_loss"]))
            test = r.model.evaluate({"user": test_s.user, "anime": test_s.anime}, test_s.rating,
                                    batch_size=r.params["batch_size"], verbose=0, return_dict=True)
            runs.append({"optimizer": optimizer, "seed": seed, "best_epoch": best + 1,
                         "epochs_run": len(r.history["loss"]), "best_val_loss": round(r.history["val_loss"][best], 4),
                         "val_mae": round(r.history["val_mae"][best], 4), "test_loss": round(test["loss"], 4),
                         "test_mae": round(test["mae"], 4), "seconds": round(seconds, 1), "load_before": before})
            log(json.dumps(runs[-1]))
            keras.backend.clear_session()
    summary = {}
    for optimizer in OPTIMIZERS:
        mine = [r for r in runs if r["optimizer"] == optimizer]
        summary[optimizer] = {k: round(float(np.mean([r[k] for r in mine])), 4)
                              for k in ("best_val_loss", "val_mae", "test_loss", "test_mae", "epochs_run", "seconds")}
    log(json.dumps(summary))
    return {"data": data_dir, "source": manifest.get("source"), "counts": manifest["counts"], "seeds": seeds,
            "train_mean_predictor": {"val_mae": round(float(np.abs(val_s.rating - mean).mean()), 4),
                                     "test_mae": round(float(np.abs(test_s.rating - mean).mean()), 4)},
            "mean_over_seeds": summary, "runs": runs}


def ranking_throughput(data: Path, n_users: int, n_anime: int, args, steps: int) -> dict:
    import keras
    from fuserank.training import dataset
    from fuserank.training.model import WarmupExpDecay, build_ranking_model
    from fuserank.training.train import RANKING_MAX_BATCH_USERS, multinomial_loss, user_batches
    split = dataset.load_split(str(data), "train")
    bs = RANKING_MAX_BATCH_USERS
    ds = user_batches(split, n_users, n_anime, bs, True, args.seed, positive_weight=2.0, like_threshold=8)
    model = build_ranking_model(n_users, n_anime, args.dim, args.seed, 0.15)
    model.compile(optimizer=keras.optimizers.Adam(WarmupExpDecay(max(1, n_users // bs))), loss=multinomial_loss)
    model.fit(ds.take(2), verbose=0)
    before = load()
    t0 = time.perf_counter()
    model.fit(ds.take(steps), verbose=0)
    dt = time.perf_counter() - t0
    return {"batch_users": bs, "steps": steps, "seconds": round(dt, 2), "users_per_s": round(steps * bs / dt),
            "epoch_estimate_s": round(n_users / (steps * bs / dt), 1), "load_before": before, "load_after": load()}


if __name__ == "__main__":
    main()
