"""The per-user figures docs/scale.md multiplies out: the Beam job's CPU per user, Redis bytes per stored list,
and what a smaller stored form (ids and scores only, names joined at read time) would save and cost.

    python -u benchmarks/bench_scale.py                                # 10k users x 20k anime, then x 50k anime
    python -u benchmarks/bench_scale.py --users 5000 --anime 20000     # one shape

Per shape, on ``bench_precompute``'s synthetic artifact (cached under ``--workdir``):

1. ``fuserank.batch.pipeline.precompute()`` twice on the in-process FnApiRunner into a fresh ``redis-server``:
   cold (loads the artifact and builds the scorer: the anime-neighbour graph) and warm (the scorer cached:
   scoring, encoding, writing, publishing only). CPU = this process's ``process_time`` (every thread,
   BLAS included) plus redis-server's ``used_cpu_user + used_cpu_sys``; per user = warm CPU / users;
2. Redis bytes: ``MEMORY USAGE`` of 1,000 user and 1,000 anime lists, ``used_memory`` per version;
3. the compact form of the same 1,000 user lists (per item: int32 anime index, float32 score, 2 x int32
   "because" indices, uint16 similar-user count; 18 B an item) stored in another database, its
   ``MEMORY USAGE``; and the read cost of an answer's 10 items: today's ``GET`` + ``keys.slice_list``
   against ``GET`` + decoding the compact bytes + ``ListEncoder.array`` (the names joined at read time),
   the same bytes out (checked), median of 5 passes over the 1,000 users.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_precompute import cached_model, load_avg  # noqa: E402

ITEM = np.dtype([("item", "<i4"), ("score", "<f4"), ("because", "<i4", (2,)), ("similar_users", "<u2")])
ANSWER_N = 10


def redis_cpu(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def timed_job(model_dir: str, url: str, settings, client) -> dict:
    from fuserank.batch.pipeline import precompute
    wall, cpu, rcpu = time.perf_counter(), time.process_time(), redis_cpu(client)
    job = precompute(model_dir, url, settings)
    return {"version": job["version"], "wall_s": round(time.perf_counter() - wall, 2),
            "job_cpu_s": round(time.process_time() - cpu, 2), "redis_cpu_s": round(redis_cpu(client) - rcpu, 2)}


def compact(ranked, i: int) -> bytes:
    keep = ranked.items[i] >= 0
    rows = np.zeros(int(keep.sum()), ITEM)
    rows["item"], rows["score"] = ranked.items[i][keep], ranked.scores[i][keep]
    rows["because"], rows["similar_users"] = ranked.because[i][keep], ranked.similar_users[i][keep]
    return rows.tobytes()


def read_today(client, key: bytes) -> bytes:
    from fuserank import keys
    return keys.slice_list(client.get(key), ANSWER_N)


def join_names(value: bytes, encoder) -> bytes:
    """An answer's first items from the compact form: the names joined by the catalogue's encoder."""
    rows = np.frombuffer(value, ITEM, count=ANSWER_N)
    return encoder.array(rows["item"], rows["score"].astype(np.float64), rows["because"], rows["similar_users"])


def per_read_us(fn, keys_, passes: int = 5) -> float:
    runs = []
    for _ in range(passes):
        t0 = time.process_time()
        for k in keys_:
            fn(k)
        runs.append((time.process_time() - t0) / len(keys_) * 1e6)
    return round(statistics.median(runs), 1)


def measure(shape: dict, workdir: Path, seed: int) -> dict:
    import redis
    from fuserank import keys
    from fuserank.batch.pipeline import load_encoder, load_scorer
    from fuserank.config import HybridSettings
    from fuserank.redis_server import LocalRedis

    settings = HybridSettings()
    model_dir, summary = cached_model(workdir, shape["users"], shape["anime"], shape["ratings"], shape["dim"], seed)
    out = {"shape": shape, "artifact": {**summary, "path": str(model_dir)}, "load_avg_before": load_avg()}
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        base = int(client.info("memory")["used_memory"])
        out["cold"] = timed_job(str(model_dir), server.url, settings, client)
        out["used_memory_per_version_bytes"] = int(client.info("memory")["used_memory"]) - base
        out["warm"] = timed_job(str(model_dir), server.url, settings, client)
        warm = out["warm"]
        users = shape["users"]
        out["per_user"] = {"job_cpu_ms": round(warm["job_cpu_s"] / users * 1e3, 3),
                           "redis_cpu_ms": round(warm["redis_cpu_s"] / users * 1e3, 3),
                           "wall_ms": round(warm["wall_s"] / users * 1e3, 3)}
        out["one_off_cpu_s"] = round(out["cold"]["job_cpu_s"] - warm["job_cpu_s"], 2)

        scorer, encoder = load_scorer(str(model_dir), settings), load_encoder(str(model_dir), settings)
        model, version = scorer.model, warm["version"]
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(model.n_users, min(1000, model.n_users), replace=False))
        user_keys = [keys.user(version, model.user_ids[u]).encode() for u in sample]
        anime_keys = [keys.anime(version, model.anime_ids[a]).encode()
                      for a in rng.choice(model.n_anime, min(1000, model.n_anime), replace=False)]
        usage = [client.memory_usage(k) for k in user_keys]
        out["user_list"] = {"memory_usage_bytes_mean": round(float(np.mean(usage)), 1),
                            "value_bytes_mean": round(float(np.mean([client.strlen(k) for k in user_keys])), 1)}
        out["anime_list"] = {"memory_usage_bytes_mean": round(float(np.mean([client.memory_usage(k)
                                                                              for k in anime_keys])), 1)}
        ranked = scorer.score_users(sample, explain=True)
        small = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
        compact_keys = [b"c:" + k for k in user_keys]
        small.mset({k: compact(ranked, i) for i, k in enumerate(compact_keys)})
        out["compact_user_list"] = {
            "memory_usage_bytes_mean": round(float(np.mean([small.memory_usage(k) for k in compact_keys])), 1),
            "value_bytes_mean": round(float(np.mean([small.strlen(k) for k in compact_keys])), 1)}
        same = sum(read_today(client, a) == join_names(small.get(b), encoder) for a, b in zip(user_keys, compact_keys))
        out["read_10_items"] = {
            "identical_answers": f"{same}/{len(user_keys)}",
            "today_get_and_slice_us": per_read_us(lambda k: read_today(client, k), user_keys),
            "compact_get_and_join_names_us": per_read_us(lambda k: join_names(small.get(k), encoder), compact_keys),
            "today_slice_only_us": per_read_us(lambda v: keys.slice_list(v, ANSWER_N),
                                               [client.get(k) for k in user_keys]),
            "compact_join_only_us": per_read_us(lambda v: join_names(v, encoder), [small.get(k) for k in compact_keys])}
        small.close()
        client.close()
    out["load_avg_after"] = load_avg()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--anime", type=int, action="append", help="repeatable; default 20000 and 50000")
    p.add_argument("--ratings-per-user", type=int, default=184)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/fuserank-bench/scale")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    a = p.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "command": " ".join([Path(sys.executable).name, "-u", *sys.argv]), "runs": []}
    for anime in a.anime or [20_000, 50_000]:
        shape = {"users": a.users, "anime": anime, "ratings": a.users * a.ratings_per_user, "dim": 128}
        run = measure(shape, Path(a.workdir), a.seed)
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
