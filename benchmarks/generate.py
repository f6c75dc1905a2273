"""Seeded synthetic MyAnimeList-shaped data at full scale, in the real file layouts.

    python benchmarks/generate.py --out /tmp/fuserank-bench/rating_complete.csv            # 57M rows
    python benchmarks/generate.py --out /tmp/fuserank-bench/animelist.csv --layout animelist --rows 109000000
    python benchmarks/generate.py --out /tmp/fuserank-bench/shuffled.csv --shuffle          # rows not grouped by user

Shape (defaults: 310k users, 17.5k anime, 57M rows, as in the 2020 ``rating_complete.csv``):

* user activity is power-law (Lomax, tail index 2.5: median ~90, mean rows/users, a few users with
  thousands of rows, capped at half the catalogue) and scaled to exactly ``--rows`` rows;
* anime popularity is power-law (Zipf-Mandelbrot over a random popularity rank);
* ratings are 1-10: ``round(7.6 + user bias + anime quality + rank-4 taste + noise)`` clipped, so a
  model has something to learn (the real distribution peaks at 7-8 as this one does);
* user ids and anime ids are sparse like MAL's (310k users among ids 0..353k, 17.5k anime among
  1..48.5k); files are grouped by user with random anime order within a user (as the real dump),
  or globally shuffled with ``--shuffle`` (a two-pass bucket shuffle on disk: bounded memory);
* ``rating_complete``: ``user_id,anime_id,rating``; ``animelist``:
  ``user_id,anime_id,rating,watching_status,watched_episodes`` with rating 0 = on the list but not
  rated (plan-to-watch rows always, ~25% of the others);
* the anime metadata is written beside it (``--anime-out``, default ``anime.csv`` in the same
  directory) in the full 2020 ``anime.csv`` layout (35 columns, ``MAL_ID`` ...).

A (user, anime) pair is drawn at most once per user: collisions are redrawn (popularity first, then
uniformly); any left after the redraw rounds are written as duplicates and counted. A summary
(rows, users, anime, duplicates, seconds) is printed and written to ``<out>.json``.

Everything is vectorised numpy over chunks of users (~``--chunk-rows`` rows); CSV text is written
by pyarrow in a background thread, so memory stays bounded (a few hundred MB) at any row count.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

LAYOUTS = {
    "rating_complete": ("user_id", "anime_id", "rating"),
    "animelist": ("user_id", "anime_id", "rating", "watching_status", "watched_episodes"),
}
ANIME_2020_COLUMNS = [
    "MAL_ID", "Name", "Score", "Genres", "English name", "Japanese name", "Type", "Episodes", "Aired",
    "Premiered", "Producers", "Licensors", "Studios", "Source", "Duration", "Rating", "Ranked",
    "Popularity", "Members", "Favorites", "Watching", "Completed", "On-Hold", "Dropped", "Plan to Watch",
    "Score-10", "Score-9", "Score-8", "Score-7", "Score-6", "Score-5", "Score-4", "Score-3", "Score-2",
    "Score-1",
]
GENRES = ["Action", "Adventure", "Comedy", "Drama", "Sci-Fi", "Space", "Mystery", "Romance", "Slice of Life",
          "Fantasy", "School", "Shounen", "Seinen", "Shoujo", "Supernatural", "Music", "Sports", "Mecha",
          "Psychological", "Historical", "Military", "Horror", "Kids", "Hentai"]
TYPES = ["TV", "Movie", "OVA", "ONA", "Special", "Music"]
TYPE_P = [0.30, 0.17, 0.20, 0.14, 0.13, 0.06]
# watching_status codes of the 2020 dump (watching_status.csv) and their shares of animelist rows
STATUS = np.array([1, 2, 3, 4, 6], np.int8)
STATUS_P = [0.08, 0.52, 0.04, 0.04, 0.32]
PLAN_TO_WATCH = 6
UNRATED_P = 0.25          # share of non-plan-to-watch rows left unrated (rating 0)

ACTIVITY_TAIL = 2.5       # Lomax tail index of rows per user
POPULARITY_ALPHA, POPULARITY_OFFSET = 1.4, 150.0
MEAN_RATING, USER_SD, ANIME_SD, NOISE_SD, TASTE_RANK, TASTE_SD = 7.6, 0.9, 0.8, 1.0, 4, 0.45
POPULARITY_REDRAWS, MAX_REDRAWS = 3, 40


# ---------------------------------------------------------------- the population

class World:
    """Users, anime and their latent traits; everything drawn from one seeded generator."""

    def __init__(self, rows: int, n_users: int, n_anime: int, seed: int):
        if n_users < 1 or n_anime < 2 or rows < n_users:
            raise SystemExit(f"need users >= 1, anime >= 2 and rows >= users (got {rows=}, {n_users=}, {n_anime=})")
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.n_users, self.n_anime, self.rows = n_users, n_anime, rows
        self.user_ids = np.sort(rng.choice(int(n_users * 1.14) + 1, n_users, replace=False)).astype(np.int32)
        self.anime_ids = np.sort(rng.choice(np.arange(1, int(n_anime * 2.77) + 2), n_anime,
                                            replace=False)).astype(np.int32)
        popularity_rank = rng.permutation(n_anime)
        weight = (popularity_rank + POPULARITY_OFFSET) ** -POPULARITY_ALPHA
        self.popularity = weight / weight.sum()
        self.cdf = np.cumsum(self.popularity)
        self.cdf[-1] = 1.0
        log_pop = np.log(self.popularity)
        self.quality = (rng.normal(0, ANIME_SD, n_anime) + 0.3 * (log_pop - log_pop.mean()) / log_pop.std()
                        ).astype(np.float32)
        self.anime_taste = rng.normal(0, TASTE_SD, (n_anime, TASTE_RANK)).astype(np.float32)
        self.user_bias = rng.normal(0, USER_SD, n_users).astype(np.float32)
        self.user_taste = rng.normal(0, TASTE_SD, (n_users, TASTE_RANK)).astype(np.float32)
        self.counts = self._activity(rows, min(n_anime // 2, 15_000))
        types = rng.choice(len(TYPES), n_anime, p=TYPE_P)
        self.anime_type = types
        episodes = np.clip(np.round(rng.lognormal(2.4, 0.9, n_anime)), 1, 2000).astype(np.int32)
        episodes[types == TYPES.index("Movie")] = 1
        self.episodes = episodes

    def _activity(self, rows: int, cap: int) -> np.ndarray:
        """Rows per user: Lomax-distributed, capped, scaled to sum to exactly ``rows``."""
        n_users = self.n_users
        cap = max(cap, -(-rows // n_users))
        if rows > cap * n_users:
            raise SystemExit(f"{rows} rows do not fit {n_users} users x {cap} anime each; add --users or --anime")
        w = (1 - self.rng.random(n_users)) ** (-1 / ACTIVITY_TAIL) - 1
        counts = np.ones(n_users, np.int64)
        free = np.ones(n_users, bool)
        left = rows - n_users
        while left > 0:
            share = np.where(free, w, 0)
            add = np.floor(share / share.sum() * left).astype(np.int64)
            if add.sum() == 0:          # hand the last few rows to the heaviest free users
                order = np.argsort(-share, kind="stable")[:left]
                add[order] = 1
            counts += add
            over = counts > cap
            counts[over] = cap
            free &= ~over
            left = rows - int(counts.sum())
        return counts

    def ratings(self, user_idx: np.ndarray, anime_idx: np.ndarray, rng) -> np.ndarray:
        score = MEAN_RATING + self.user_bias[user_idx] + self.quality[anime_idx]
        score += np.einsum("ij,ij->i", self.user_taste[user_idx], self.anime_taste[anime_idx])
        score += rng.normal(0, NOISE_SD, len(user_idx)).astype(np.float32)
        return np.clip(np.rint(score), 1, 10).astype(np.int8)


# ---------------------------------------------------------------- rows, chunk by chunk

def user_groups(counts: np.ndarray, chunk_rows: int):
    """(first user, end user) ranges holding about ``chunk_rows`` rows each."""
    ends = np.cumsum(counts)
    first = 0
    while first < len(counts):
        target = (ends[first - 1] if first else 0) + chunk_rows
        end = max(first + 1, int(np.searchsorted(ends, target, side="right")))
        yield first, end
        first = end


def draw_anime(world: World, user_local: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """Anime index per row, distinct within each user where the redraw rounds manage; returns leftovers."""
    a = world.n_anime
    keys = user_local.astype(np.int64) * a + np.searchsorted(world.cdf, rng.random(len(user_local)))
    keys.sort()
    for round_ in range(MAX_REDRAWS):
        pos = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        if not len(pos):
            return keys, 0
        if round_ < POPULARITY_REDRAWS:
            fresh = np.searchsorted(world.cdf, rng.random(len(pos)))
        else:
            fresh = rng.integers(0, a, len(pos))
        keys[pos] = keys[pos] // a * a + fresh
        keys.sort(kind="stable")
    return keys, int((keys[1:] == keys[:-1]).sum())


def make_chunk(world: World, first: int, end: int, layout: str, rng) -> tuple[dict, int]:
    """Columns for users ``first:end`` (grouped by user, random anime order within a user)."""
    counts = world.counts[first:end]
    user_local = np.repeat(np.arange(end - first, dtype=np.int32), counts)
    keys, duplicates = draw_anime(world, user_local, rng)
    a = world.n_anime
    # random order within each user, as in the real dump
    order = np.argsort((keys // a << 32) | rng.integers(0, 2**32, len(keys)), kind="stable")
    keys = keys[order]
    user_idx = (keys // a).astype(np.int32) + first
    anime_idx = (keys % a).astype(np.int32)
    rating = world.ratings(user_idx, anime_idx, rng)
    cols = {"user_id": world.user_ids[user_idx], "anime_id": world.anime_ids[anime_idx], "rating": rating}
    if layout == "animelist":
        status = STATUS[rng.choice(len(STATUS), len(rating), p=STATUS_P)]
        unrated = (status == PLAN_TO_WATCH) | (rng.random(len(rating)) < UNRATED_P)
        cols["rating"] = np.where(unrated, 0, rating).astype(np.int8)
        cols["watching_status"] = status
        eps = world.episodes[anime_idx]
        watched = np.where(status == 2, eps, np.floor(rng.random(len(eps)) * (eps + 1)).astype(np.int32))
        cols["watched_episodes"] = np.where(status == PLAN_TO_WATCH, 0, watched).astype(np.int16)
    return cols, duplicates


class CsvSink:
    """pyarrow CSV writer fed from a bounded queue by a background thread (writing overlaps drawing)."""

    def __init__(self, path: Path, columns):
        self.path, self.columns = path, columns
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        writer = None
        try:
            while (cols := self.queue.get()) is not None:
                table = pa.table({name: cols[name] for name in self.columns})
                if writer is None:
                    options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
                    writer = pacsv.CSVWriter(str(self.path), table.schema, write_options=options)
                writer.write_table(table)
        except BaseException as exc:  # reported by close()
            self.error = exc
            while self.queue.get() is not None:
                pass
        finally:
            if writer is not None:
                writer.close()

    def put(self, cols: dict):
        if self.error:
            raise self.error
        self.queue.put(cols)

    def close(self):
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def write_ratings(world: World, out: Path, layout: str, shuffle: bool, chunk_rows: int, seed: int) -> int:
    rng = np.random.default_rng([seed, 1])
    columns = LAYOUTS[layout]
    sink = CsvSink(out, columns)
    duplicates, written, started = 0, 0, time.perf_counter()
    spill = Path(tempfile.mkdtemp(prefix=".shuffle-", dir=out.parent)) if shuffle else None
    n_buckets = max(1, -(-world.rows // chunk_rows))
    try:
        for first, end in user_groups(world.counts, chunk_rows):
            cols, dups = make_chunk(world, first, end, layout, rng)
            duplicates += dups
            n = len(cols["rating"])
            if spill is None:
                sink.put(cols)
            else:
                _spill(spill, cols, rng.integers(0, n_buckets, n), n_buckets)
            written += n
            _progress("drawn" if shuffle else "written", written, world.rows, started)
        if spill is not None:
            for bucket in range(n_buckets):
                cols = _load_bucket(spill, bucket, columns)
                perm = rng.permutation(len(cols["rating"]))
                sink.put({name: values[perm] for name, values in cols.items()})
                _progress("shuffled and written", (bucket + 1) * written // n_buckets, world.rows, started)
    finally:
        sink.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
    return duplicates


def _spill(spill: Path, cols: dict, bucket: np.ndarray, n_buckets: int):
    """Append each row to a random bucket's raw column files (pass 1 of the shuffle)."""
    order = np.argsort(bucket.astype(np.int16), kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
    for name, values in cols.items():
        values = values[order]
        for b in range(n_buckets):
            if bounds[b + 1] > bounds[b]:
                with open(spill / f"{b}.{name}.{values.dtype.str.lstrip('<|')}", "ab") as fh:
                    values[bounds[b]:bounds[b + 1]].tofile(fh)


def _load_bucket(spill: Path, bucket: int, columns) -> dict:
    cols = {}
    for name in columns:
        path = next(spill.glob(f"{bucket}.{name}.*"), None)
        cols[name] = np.fromfile(path, np.dtype(path.suffix[1:])) if path else np.empty(0, np.int32)
    return cols


def _progress(what: str, done: int, total: int, started: float):
    elapsed = time.perf_counter() - started
    print(f"  {what} {done:,}/{total:,} rows ({done / max(elapsed, 1e-9) / 1e6:.1f}M rows/s)",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------- anime.csv (2020 full layout)

def write_anime(world: World, path: Path, seed: int):
    rng = np.random.default_rng([seed, 2])
    members = np.maximum(1, np.round(world.popularity * 1.2e8)).astype(np.int64)
    popularity_pos = np.argsort(np.argsort(-members, kind="stable"), kind="stable") + 1
    score = np.clip(7.0 + 0.6 * world.quality + rng.normal(0, 0.2, world.n_anime), 1.5, 9.2)
    ranked = np.argsort(np.argsort(-score, kind="stable"), kind="stable") + 1
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(ANIME_2020_COLUMNS)
        for i, anime_id in enumerate(world.anime_ids.tolist()):
            kind = TYPES[world.anime_type[i]]
            n_genres = int(rng.integers(1, 5))
            genres = ", ".join(sorted(rng.choice(GENRES[:-1], n_genres, replace=False).tolist()))
            if rng.random() < 0.01:
                genres = "Hentai" if rng.random() < 0.5 else genres + ", Hentai"
            if rng.random() < 0.005:
                genres = "Unknown"
            name = f"Synthetic Anime {anime_id}" + (', "Part 2"' if i % 97 == 0 else "")
            unknown_score = members[i] < 200
            votes = (members[i] * np.array([0.12, 0.18, 0.25, 0.2, 0.11, 0.06, 0.04, 0.02, 0.01, 0.01])).astype(int)
            row = [anime_id, name, "Unknown" if unknown_score else f"{score[i]:.2f}", genres, "Unknown",
                   "Unknown", kind, world.episodes[i], "Unknown", "Unknown", "Unknown", "Unknown", "Unknown",
                   "Original", "24 min. per ep.", "PG-13 - Teens 13 or older",
                   "Unknown" if unknown_score else ranked[i],
                   popularity_pos[i], members[i], members[i] // 50, members[i] // 10, members[i] // 2,
                   members[i] // 30, members[i] // 20, members[i] // 5] + [f"{v:.1f}" for v in votes]
            w.writerow(row)


# ---------------------------------------------------------------- command line

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="ratings CSV to write (keep big files out of the repo)")
    p.add_argument("--rows", type=int, default=57_000_000)
    p.add_argument("--users", type=int, default=310_000)
    p.add_argument("--anime", type=int, default=17_500)
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="rating_complete")
    p.add_argument("--shuffle", action="store_true", help="rows in random order, not grouped by user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anime-out", help="anime.csv to write (default: anime.csv beside --out); 'none' to skip")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="rows drawn per chunk (memory bound)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    world = World(a.rows, a.users, a.anime, a.seed)
    tmp = out.with_name(f".{out.name}.partial")
    duplicates = write_ratings(world, tmp, a.layout, a.shuffle, a.chunk_rows, a.seed)
    os.replace(tmp, out)
    anime_out = None if (a.anime_out or "").lower() == "none" else Path(a.anime_out or out.parent / "anime.csv")
    if anime_out is not None:
        write_anime(world, anime_out, a.seed)
    summary = {
        "out": str(out), "layout": a.layout, "shuffled": a.shuffle, "seed": a.seed,
        "rows": a.rows, "users": a.users, "anime": a.anime, "duplicate_rows": duplicates,
        "max_rows_per_user": int(world.counts.max()), "median_rows_per_user": float(np.median(world.counts)),
        "bytes": out.stat().st_size, "anime_csv": str(anime_out) if anime_out else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(f"{out}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
