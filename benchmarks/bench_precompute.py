"""Precompute at full MyAnimeList scale: the Beam job against its numpy floor, in one process.

    python -u benchmarks/bench_precompute.py                       # 310k users x 17.5k anime, ~57M ratings, 128-d
    python -u benchmarks/bench_precompute.py --small               # 20k users x 4k anime, ~2M ratings (a minute)
    python -u benchmarks/bench_precompute.py --users 100000 --anime 10000 --ratings 18000000
    python -u benchmarks/bench_precompute.py --small --cluster     # one node vs a 3-primary Redis Cluster

``--cluster`` measures only the job into one redis-server and into a loopback Redis Cluster of 3 primaries
with a replica each (tests/cluster.py), one after the other in the same run: end-to-end time of each, and
the write path alone (the Beam writer, ``WriteListsFn``, rewriting every stored list of the version in its
batches of 500) in lists/s and MB/s, with the ratios cluster / one node.

Steps (each timed; figures printed and written to ``benchmarks/results/precompute.json``):

1. a synthetic model artifact, seeded and cached under ``--workdir`` (``user_embeddings.npy`` ...
   ``manifest.json``, as ``fuserank train`` exports it): 128-d user and anime embeddings with cluster
   structure (a 16-d latent taste space of 120 Gaussian clusters, randomly projected to 128-d, plus
   isotropic noise), power-law user activity (Lomax, tail 2.5, capped at half the catalogue) and anime
   popularity (Zipf-Mandelbrot); half of each user's anime are drawn from their own taste cluster, half
   by global popularity; ratings 1-10 follow the latent cosine plus noise, ~3% listed but unrated;
   ~1% adult titles; names of realistic length, some with quotes and non-ASCII;
2. the **floor**: a pure numpy pass computing the same lists with no Beam and no Redis: load the
   artifact, build the scorer (anime-neighbour graph, similar-user index), every user's hybrid top-N
   with its reasons, every anime's neighbours (adult titles left out);
3. the **job**: ``fuserank.batch.pipeline.precompute()`` on Beam's in-process FnApiRunner into a real
   ``redis-server`` started on a free port with ``--maxmemory-policy noeviction``, then published;
4. checks: lists in Redis equal the floor's for a sample of users; recall@10 of the approximate
   similar-user search against exact search on a 2,000-user sample; Redis memory (``INFO memory`` for
   the version, ``MEMORY USAGE`` on a sample of user and anime keys).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuserank import artifacts as art  # noqa: E402
from fuserank.similarity import l2_normalise  # noqa: E402

FULL = {"users": 310_000, "anime": 17_500, "ratings": 57_000_000, "dim": 128}
SMALL = {"users": 20_000, "anime": 4_000, "ratings": 2_000_000, "dim": 128}
LATENT, CLUSTERS, LATENT_SD, EMB_NOISE = 16, 120, 0.6, 0.15
ACTIVITY_TAIL, POPULARITY_ALPHA, POPULARITY_OFFSET = 2.5, 1.4, 150.0
TASTE_SHARE, UNRATED_SHARE, ADULT_SHARE = 0.5, 0.03, 0.01
WORDS = ["Sword", "Star", "Ghost", "Shell", "Cowboy", "Bebop", "Steins", "Gate", "Titan", "Attack", "Hunter",
         "Alchemist", "Fullmetal", "Brotherhood", "Code", "Geass", "Rebellion", "Spirited", "Away", "Night",
         "Summer", "Wars", "Clannad", "After", "Story", "Monogatari", "Second", "Season", "Kōkaku", "Kidōtai",
         "Shingeki", "no", "Kyojin", "Tengen", "Toppa", "Gurren", "Lagann", "Mushishi", "Zoku", "Shou"]


# ------------------------------------------------------------------------------------------- the artifact
def _activity(rng, n_users: int, rows: int, cap: int) -> np.ndarray:
    """Rows per user: Lomax-distributed, capped, scaled to sum to about ``rows``."""
    w = (1 - rng.random(n_users)) ** (-1 / ACTIVITY_TAIL) - 1
    counts = np.ones(n_users, np.int64)
    free = np.ones(n_users, bool)
    for _ in range(50):
        left = rows - int(counts.sum())
        if left <= 0:
            break
        share = np.where(free, w, 0)
        counts += np.floor(share / share.sum() * left).astype(np.int64)
        over = counts > cap
        counts[over] = cap
        free &= ~over
    return counts


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sort (numpy 2.4's hash-based unique is ~10x slower on these int64 keys)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _names(rng, anime_ids: np.ndarray) -> list[str]:
    n_words = rng.integers(1, 5, len(anime_ids))
    picks = rng.integers(0, len(WORDS), (len(anime_ids), 4))
    names = []
    for i, a in enumerate(anime_ids.tolist()):
        name = " ".join(WORDS[j] for j in picks[i, :n_words[i]]) + f" {a}"
        if i % 97 == 0:
            name += ': "Part 2"'
        names.append(name)
    return names


def make_model(out: Path, users: int, anime: int, ratings: int, dim: int, seed: int) -> dict:
    """Writes the synthetic artifact to ``out`` (see the module docstring); returns a summary."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    centres = rng.normal(0, 1, (CLUSTERS, LATENT)).astype(np.float32)
    cluster_w = rng.pareto(1.5, CLUSTERS) + 1
    cluster_w /= cluster_w.sum()
    user_cluster = rng.choice(CLUSTERS, users, p=cluster_w)
    anime_cluster = rng.choice(CLUSTERS, anime, p=cluster_w)
    user_z = centres[user_cluster] + rng.normal(0, LATENT_SD, (users, LATENT)).astype(np.float32)
    anime_z = centres[anime_cluster] + rng.normal(0, LATENT_SD, (anime, LATENT)).astype(np.float32)
    proj = (rng.normal(0, 1, (LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    user_emb = np.empty((users, dim), np.float32)
    for s in range(0, users, 65536):
        z = user_z[s:s + 65536]
        user_emb[s:s + 65536] = l2_normalise(z @ proj + rng.normal(0, EMB_NOISE, (len(z), dim)).astype(np.float32))
    anime_emb = l2_normalise(anime_z @ proj + rng.normal(0, EMB_NOISE, (anime, dim)).astype(np.float32))

    # who rated what: power-law activity, half by own taste cluster, half by global popularity
    counts = _activity(rng, users, ratings, max(anime // 2, 1))
    pop_w = (rng.permutation(anime) + POPULARITY_OFFSET) ** -POPULARITY_ALPHA
    pop_cdf = np.cumsum(pop_w / pop_w.sum())
    by_cluster = np.argsort(anime_cluster, kind="stable")
    within = pop_w[by_cluster]
    seg = anime_cluster[by_cluster]
    seg_total = np.bincount(seg, weights=within, minlength=CLUSTERS)
    # cumulative popularity inside each cluster, shifted by the cluster number: a uniform draw u in
    # [c, c+1) lands on anime of cluster c in proportion to their popularity
    seg_cdf = seg + (np.cumsum(within) - np.r_[0, np.cumsum(seg_total)][seg]) / seg_total[seg]
    row_user = np.repeat(np.arange(users, dtype=np.int64), counts)
    taste_ok = np.flatnonzero(seg_total > 0)

    def draw(who: np.ndarray, uniform: bool) -> np.ndarray:
        if uniform:
            return who * anime + rng.integers(0, anime, len(who))
        picked = np.searchsorted(pop_cdf, rng.random(len(who))).clip(0, anime - 1)
        taste = np.flatnonzero((rng.random(len(who)) < TASTE_SHARE) & np.isin(user_cluster[who], taste_ok))
        picked[taste] = by_cluster[np.searchsorted(seg_cdf, user_cluster[who[taste]] + rng.random(len(taste)))
                                   .clip(0, anime - 1)]
        return who * anime + picked

    pairs = _sorted_unique(draw(row_user, False))
    for round_ in range(8):           # redraw what collided (heavy users collide most), then uniformly
        short = counts - np.bincount(pairs // anime, minlength=users)
        if short.sum() <= 0.002 * ratings:
            break
        who = np.repeat(np.arange(users, dtype=np.int64), np.maximum(short, 0))
        pairs = _sorted_unique(np.concatenate([pairs, draw(who, uniform=round_ >= 3)]))
    del row_user
    if len(pairs) > ratings:
        pairs = np.sort(rng.choice(pairs, ratings, replace=False))
    u_idx, a_idx = (pairs // anime).astype(np.int32), (pairs % anime).astype(np.int32)
    del pairs
    rating = np.empty(len(u_idx), np.int8)
    zu, za = l2_normalise(user_z), l2_normalise(anime_z)
    for s in range(0, len(u_idx), 4_000_000):
        cos = np.einsum("ij,ij->i", zu[u_idx[s:s + 4_000_000]], za[a_idx[s:s + 4_000_000]])
        r = 6.8 + 3.2 * cos + rng.normal(0, 1.3, len(cos))
        rating[s:s + 4_000_000] = np.clip(np.rint(r), 1, 10)
    rating[rng.random(len(rating)) < UNRATED_SHARE] = -1
    indptr = np.zeros(users + 1, np.int64)
    np.cumsum(np.bincount(u_idx, minlength=users), out=indptr[1:])
    lists = sp.csr_matrix((rating, a_idx, indptr), shape=(users, anime))
    del u_idx, a_idx, rating

    user_ids = np.sort(rng.choice(int(users * 1.14) + 1, users, replace=False)).astype(np.int64)
    anime_ids = np.sort(rng.choice(np.arange(1, int(anime * 2.77) + 2), anime, replace=False)).astype(np.int64)
    adult = rng.random(anime) < ADULT_SHARE
    np.save(out / art.USER_EMB, user_emb)
    np.save(out / art.ANIME_EMB, anime_emb)
    pd.DataFrame({"user": np.arange(users, dtype=np.int32), "user_id": user_ids,
                  "n_ratings": np.diff(lists.indptr).astype(np.int32)}).to_parquet(out / art.USERS)
    pd.DataFrame({"anime": np.arange(anime, dtype=np.int32), "anime_id": anime_ids, "name": _names(rng, anime_ids),
                  "genres": np.where(adult, "Hentai", "Action, Drama"), "type": "TV",
                  "in_metadata": True}).to_parquet(out / art.ANIME)
    art.save_user_lists(str(out / art.USER_LISTS), lists)
    version, hashes = art.content_version(str(out))
    summary = {"model_version": version, "users": users, "anime": anime, "dim": dim, "ratings": int(lists.nnz),
               "liked_8plus": int((lists.data >= 8).sum()), "max_user_ratings": int(np.diff(lists.indptr).max()),
               "median_user_ratings": int(np.median(np.diff(lists.indptr))), "adult_anime": int(adult.sum()),
               "seed": seed, "generate_s": round(time.perf_counter() - t0, 1)}
    with open(out / art.MANIFEST, "w") as fh:
        json.dump({"model_version": version, "files": hashes, "synthetic": summary}, fh)
    return summary


def cached_model(workdir: Path, users: int, anime: int, ratings: int, dim: int, seed: int) -> tuple[Path, dict]:
    tag = hashlib.sha256(json.dumps([users, anime, ratings, dim, seed, LATENT, CLUSTERS]).encode()).hexdigest()[:10]
    out = workdir / f"model-{users}x{anime}-{tag}"
    manifest = out / art.MANIFEST
    if manifest.exists():
        with open(manifest) as fh:
            return out, {**json.load(fh)["synthetic"], "cached": True}
    return out, make_model(out, users, anime, ratings, dim, seed)


# ------------------------------------------------------------------------------------------- measurements
def load_avg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def floor(model_dir: str, settings, block: int) -> tuple[dict, dict, object]:
    """The same lists with no Beam and no Redis: arrays only (no encoding), timed per step."""
    from fuserank.artifacts import ModelArtifact
    from fuserank.scorer import HybridScorer, MAX_BECAUSE
    t = {}
    t0 = time.perf_counter()
    model = ModelArtifact.load(model_dir)
    model.liked_matrix(settings.like_threshold)
    t["load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    scorer = HybridScorer(model, settings)
    t["scorer_build_s"] = time.perf_counter() - t1          # anime-neighbour graph + similar-user index
    t2 = time.perf_counter()
    n, k = model.n_users, settings.top_n
    out = {"items": np.empty((n, k), np.int32), "scores": np.empty((n, k), np.float32),
           "because": np.empty((n, k, MAX_BECAUSE), np.int32), "similar_users": np.empty((n, k), np.int32)}
    order = scorer.user_order()
    step = max(block, n // 10 // block * block)
    for start in range(0, n, block):
        users = order[start:start + block]
        r = scorer.score_users(users, explain=True)
        out["items"][users], out["scores"][users] = r.items, r.scores
        out["because"][users], out["similar_users"][users] = r.because, r.similar_users
        if (start + block) % step == 0:
            done = min(start + block, n)
            print(f"  floor: {done:,}/{n:,} users scored ({done / (time.perf_counter() - t2):.0f}/s, "
                  f"load {load_avg()})", flush=True)
    t["score_users_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    keep = ~model.adult_mask[scorer.neighbour_idx]
    out["anime_lists"] = [scorer.neighbour_idx[a][keep[a]] for a in range(model.n_anime)]
    t["anime_lists_s"] = time.perf_counter() - t3
    t["total_s"] = time.perf_counter() - t0
    return {key: round(v, 2) for key, v in t.items()}, out, scorer


def recall_at_10(scorer, sample_size: int, seed: int) -> dict:
    """The scorer's similar-user search against exact blocked search, on a seeded sample of users."""
    from fuserank.similarity import top_k_rows
    emb = scorer.model.user_emb
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(emb), min(sample_size, len(emb)), replace=False))
    t0 = time.perf_counter()
    exact = []
    for chunk in np.array_split(sample, max(1, len(sample) // 250)):
        sims = emb[chunk] @ emb.T
        sims[np.arange(len(chunk)), chunk] = -np.inf
        exact.append(top_k_rows(sims, 10)[0])
    exact = np.concatenate(exact)
    exact_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    approx, _ = scorer.similar_users(emb[sample], sample)
    approx_s = time.perf_counter() - t1
    hits = [len(set(e.tolist()) & set(a[:10].tolist())) for e, a in zip(exact, approx)]
    index = scorer.user_index
    out = {"sample": len(sample), "recall_at_10": round(float(np.mean(hits)) / 10, 4),
           "min_user_recall_at_10": round(min(hits) / 10, 2),
           "exact_s": round(exact_s, 2), "scorer_search_s": round(approx_s, 2),
           "exact_all_users_estimate_s": round(exact_s / len(sample) * len(emb), 0),
           "search": "exact" if index is None else "ivf"}
    if index is not None:
        sizes = np.diff(index.offsets)
        out.update({"n_lists": index.n_lists, "n_probe": index.n_probe,
                    "candidates_per_query": int(np.mean([len(index.candidates(int(c))[0])
                                                         for c in index.cell[sample[:200]]])),
                    "cell_size_min_median_max": [int(sizes.min()), int(np.median(sizes)), int(sizes.max())]})
    return out


def redis_memory(client, version: str, model, sample: int, seed: int) -> dict:
    from fuserank import keys
    rng = np.random.default_rng(seed)
    users = rng.choice(model.user_ids, min(sample, model.n_users), replace=False)
    anime = rng.choice(model.anime_ids, min(sample, model.n_anime), replace=False)
    out = {}
    for kind, ids, key in (("user", users, keys.user), ("anime", anime, keys.anime)):
        with client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.memory_usage(key(version, i))
                pipe.strlen(key(version, i))
            got = pipe.execute()
        usage, length = np.array(got[0::2], float), np.array(got[1::2], float)
        out[kind] = {"sampled_keys": len(ids), "memory_usage_bytes_mean": round(float(usage.mean()), 1),
                     "value_bytes_mean": round(float(length.mean()), 1),
                     "value_bytes_max": int(length.max())}
    info = client.info("memory")
    out["used_memory_bytes"] = int(info["used_memory"])
    out["used_memory_rss_bytes"] = int(info["used_memory_rss"])
    out["mem_fragmentation_ratio"] = info.get("mem_fragmentation_ratio")
    out["per_version_estimate_bytes"] = int(out["user"]["memory_usage_bytes_mean"] * model.n_users
                                            + out["anime"]["memory_usage_bytes_mean"] * model.n_anime)
    return out


def _stored(client, version: str) -> list[tuple[bytes, bytes]]:
    """Every list of ``version`` as ``(key, value)``, read back by SCAN + pipelined GETs (per node on a cluster)."""
    from fuserank import keys
    names = [k for k in client.scan_iter(match=keys.version_pattern(version), count=1000)
             if (keys.parse_key(k) or {}).get("kind") in ("user", "anime")]
    out = []
    for start in range(0, len(names), 2000):
        chunk = names[start:start + 2000]
        with client.pipeline(transaction=False) as pipe:
            for k in chunk:
                pipe.get(k)
            out += list(zip(chunk, pipe.execute()))
    return out


def _rewrite(where, pairs) -> dict:
    """The write path alone: the Beam writer's DoFn rewriting ``pairs`` in its own batches, timed."""
    from fuserank.batch.redis_io import WriteListsFn
    fn = WriteListsFn(where, "users")
    fn.setup()
    fn.start_bundle()
    t0 = time.perf_counter()
    for pair in pairs:
        for _ in fn.process(pair):
            pass
    list(fn.finish_bundle())
    seconds = time.perf_counter() - t0
    fn.teardown()
    mb = sum(len(v) for _, v in pairs) / 1e6
    return {"lists": len(pairs), "seconds": round(seconds, 2), "lists_per_s": round(len(pairs) / seconds),
            "mb_per_s": round(mb / seconds, 1), "batch_size": fn.batch_size}


def cluster_comparison(model_dir: str, settings, block_size: int, result: dict) -> dict:
    """The precompute into one redis-server, then into a 3-primary cluster (1 replica each): each end to end,
    and the writer alone on the same stored lists."""
    from fuserank.batch.pipeline import precompute
    from fuserank.redis_client import Target, connect
    from fuserank.redis_server import LocalRedis
    from tests.cluster import LocalCluster
    out = {}
    pairs = None
    for name in ("single_node", "cluster_3_primaries"):
        with LocalRedis() if name == "single_node" else LocalCluster() as server:
            where = Target(server.url, cluster=name != "single_node")
            load_start = load_avg()
            t0 = time.perf_counter()
            job = precompute(model_dir, where, settings, block_size=block_size)
            wall = time.perf_counter() - t0
            client = connect(where, "batch")
            if pairs is None:
                pairs = _stored(client, job["version"])
            client.close()
            rewrite = _rewrite(where, pairs)
            out[name] = {"job_wall_s": round(wall, 2), "job": job, "writer_alone": rewrite,
                         "load_avg_before": load_start, "load_avg_after": load_avg()}
            print(f"{name}: job {wall:.1f}s; writer alone {rewrite['lists_per_s']} lists/s "
                  f"({rewrite['mb_per_s']} MB/s)  (load {load_avg()})", flush=True)
    one, many = out["single_node"], out["cluster_3_primaries"]
    out["ratios_cluster_to_single"] = {
        "job_wall": round(many["job_wall_s"] / one["job_wall_s"], 3),
        "writer_lists_per_s": round(many["writer_alone"]["lists_per_s"] / one["writer_alone"]["lists_per_s"], 3)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--anime", type=int, default=None)
    p.add_argument("--ratings", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--small", action="store_true", help="20k users x 4k anime x 2M ratings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--recall-sample", type=int, default=2000)
    p.add_argument("--workdir", default="/tmp/fuserank-bench/precompute", help="where the artifact is cached")
    p.add_argument("--out", default=None, help="default: benchmarks/results/precompute.json "
                   "(precompute-cluster.json with --cluster)")
    p.add_argument("--cluster", action="store_true", help="only: the job into one node vs a 3-primary Redis Cluster")
    a = p.parse_args(argv)
    a.out = a.out or str(ROOT / "benchmarks/results" / ("precompute-cluster.json" if a.cluster else "precompute.json"))
    shape = dict(SMALL if a.small else FULL)
    for k in shape:
        if getattr(a, k, None):
            shape[k] = getattr(a, k)

    from fuserank import keys
    from fuserank.batch.pipeline import load_encoder, load_scorer, precompute
    from fuserank.config import HybridSettings
    from fuserank.redis_server import LocalRedis

    settings = HybridSettings()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_avg_start": load_avg()},
              "command": " ".join([Path(sys.executable).name, "-u", *sys.argv]), "shape": shape,
              "settings": settings.to_dict(), "block_size": a.block_size}
    print(f"load average at start: {result['machine']['load_avg_start']}", flush=True)
    t0 = time.perf_counter()
    model_dir, summary = cached_model(Path(a.workdir), shape["users"], shape["anime"], shape["ratings"], shape["dim"],
                                      a.seed)
    result["artifact"] = {**summary, "path": str(model_dir), "prepare_s": round(time.perf_counter() - t0, 1)}
    print(f"artifact {model_dir}: {json.dumps(summary)}", flush=True)
    if a.cluster:
        result["cluster_comparison"] = cluster_comparison(str(model_dir), settings, a.block_size, result)
        result["machine"]["load_avg_end"] = load_avg()
        return _write(result, a.out)

    # 1. the floor, and the similar-user search's recall, on the floor's own scorer
    fl, lists, scorer = floor(str(model_dir), settings, a.block_size)
    result["floor"] = {**fl, "load_avg_after": load_avg()}
    print(f"numpy floor: {json.dumps(fl)}  (load {load_avg()})", flush=True)
    rec = recall_at_10(scorer, a.recall_sample, a.seed + 1)
    result["similar_user_search"] = rec
    print(f"similar-user search: {json.dumps(rec)}", flush=True)
    del scorer
    import gc
    gc.collect()

    # 2. the Beam job into a real redis-server
    with LocalRedis() as server:
        import redis
        client = redis.Redis.from_url(server.url)
        base = int(client.info("memory")["used_memory"])
        load_start = load_avg()
        t1 = time.perf_counter()
        job = precompute(str(model_dir), server.url, settings, block_size=a.block_size)
        job_s = time.perf_counter() - t1
        result["job"] = {**job, "wall_s": round(job_s, 2), "load_avg_before": load_start, "load_avg_after": load_avg(),
                         "runner": "FnApiRunner (in process)"}
        print(f"Beam job: {json.dumps(result['job'])}", flush=True)
        mem = redis_memory(client, job["version"], load_scorer(str(model_dir), settings).model, 1000, a.seed + 2)
        mem["version_used_memory_bytes"] = mem["used_memory_bytes"] - base
        result["redis_memory"] = mem
        print(f"Redis memory: {json.dumps(mem)}", flush=True)

        # 3. the stored lists are the floor's
        model = load_scorer(str(model_dir), settings).model
        encoder = load_encoder(str(model_dir), settings)
        rng = np.random.default_rng(a.seed + 3)
        check = rng.choice(model.n_users, min(1000, model.n_users), replace=False)
        same = 0
        for u in check:
            keep = lists["items"][u] >= 0
            want = encoder.encode(lists["items"][u][keep], lists["scores"][u][keep], lists["because"][u][keep],
                                  lists["similar_users"][u][keep])
            same += client.get(keys.user(job["version"], model.user_ids[u])) == want
        result["stored_equals_floor"] = {"users_checked": len(check), "identical": int(same)}
        client.close()
    ratio = job_s / fl["total_s"]
    result["ratio_job_to_floor"] = round(ratio, 2)
    result["ratio_job_to_floor_scoring_only"] = round(job_s / (fl["total_s"] - fl["load_s"]), 2)
    result["targets"] = {"job_under_600s": job_s <= 600, "within_5x_floor": ratio <= 5,
                         "recall_at_10_at_least_0.95": rec["recall_at_10"] >= 0.95}
    result["machine"]["load_avg_end"] = load_avg()
    print(f"\njob {job_s:.1f}s  floor {fl['total_s']:.1f}s  ratio {ratio:.2f}x  recall@10 {rec['recall_at_10']}  "
          f"stored==floor {same}/{len(check)}  Redis {mem['version_used_memory_bytes'] / 2**30:.2f} GiB per version, "
          f"{mem['user']['memory_usage_bytes_mean']:.0f} B per user list  targets {result['targets']}", flush=True)
    return _write(result, a.out)


def _write(result: dict, path: str) -> int:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
