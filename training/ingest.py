"""Ingest stage: MyAnimeList ratings (+ optional anime metadata) -> encoded, split Parquet data.

Everything after reading is vectorised numpy over the whole rating set (up to ~109M rows), and
the output directory is published with a rename so readers never see a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fuserank import storage
from fuserank.errors import FuseRankError
from fuserank.schemas import ingest as S
from fuserank.training import readers

log = logging.getLogger("fuserank.ingest")

LUT_MAX_ID = 50_000_000
SPLITS = ("train", "val", "test")


@dataclass
class _Rows:
    """Deduplicated rows sorted by (raw user, raw anime)."""

    user: np.ndarray
    anime: np.ndarray
    rating: np.ndarray
    duplicates: int


@dataclass
class _Users:
    raw_ids: np.ndarray
    n_rated: np.ndarray
    code: np.ndarray
    seen: int


def ingest(ratings: str, out: str, anime: str | None = None, min_user_ratings: int = 400,
           seed: int = 0, lenient: bool = False, chunk_rows: int = 2_000_000) -> dict:
    """Read, clean, encode and split ratings into ``out``; returns the manifest written there."""
    _check_args(out, min_user_ratings, seed, chunk_rows)
    started = time.perf_counter()
    skipped = readers.SkipReport()
    with _stage("read anime metadata"):
        meta = readers.read_metadata(anime, lenient=lenient, skipped=skipped) if anime else None
    raw = readers.read_ratings(ratings, lenient=lenient, chunk_rows=chunk_rows, skipped=skipped)
    rows_read, layout, read_s = len(raw.rating), raw.layout, raw.seconds
    with _stage("deduplicate"):
        rows = _dedupe_last(raw.user, raw.anime, raw.rating)
    del raw
    with _stage("select users, encode, split"):
        users = _select_users(rows, min_user_ratings)
        tables, counts, scale = _build_tables(rows, users, meta, seed)
    del rows, users
    counts = {"rows_read": rows_read, **counts, "skipped_rows": skipped.rows}
    with _stage("hash"):
        digest = content_hash(tables)
    manifest = {
        "schema": S.DATA_SCHEMA,
        "source": {"ratings": str(ratings), "anime": str(anime) if anime else None},
        "layout": layout,
        "anime_layout": meta.layout if meta else None,
        "min_user_ratings": int(min_user_ratings),
        "seed": int(seed),
        "split": dict(S.SPLIT_FRACTIONS),
        "rating_scale": scale,
        "counts": counts,
        "skipped": skipped.as_dict(),
        "content_hash": digest,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with _stage("write"):
        publish(Path(out), tables, manifest)
    _log_summary(manifest, read_s, time.perf_counter() - started)
    return manifest


@contextmanager
def _stage(name: str):
    """Log each stage's wall time: the 100M-row runs are tuned from these lines."""
    started = time.perf_counter()
    yield
    log.info("%s: %.1fs", name, time.perf_counter() - started)


def _check_args(out, min_user_ratings, seed, chunk_rows):
    if storage.is_gcs(out):
        raise FuseRankError(f"{out}: the ingest output must be a local directory")
    if int(min_user_ratings) < 1:
        raise FuseRankError(f"min_user_ratings must be >= 1, got {min_user_ratings}")
    if int(seed) < 0:
        raise FuseRankError(f"seed must be >= 0, got {seed}")
    if int(chunk_rows) < 1:
        raise FuseRankError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _check_replaceable(Path(out))


# ---------------------------------------------------------------- cleaning and encoding

def _dedupe_last(user, anime, rating) -> _Rows:
    """Keep the last row per (user, anime): later rows in a MAL dump are the current rating."""
    if not len(user):
        return _Rows(user, anime, rating, 0)
    if user.max() < 2**27 and anime.max() < 2**32:
        return _dedupe_packed(user, anime, rating)
    return _dedupe_argsort(user, anime, rating)


def _dedupe_packed(user, anime, rating) -> _Rows:
    """Sort (user, anime, rating) packed into one int64 in place: several times faster than
    argsort plus gathers at 100M rows. File order is lost, so duplicated pairs are resolved apart."""
    packed = user.astype(np.int64)
    packed <<= 32
    packed |= anime
    packed <<= 4
    packed |= rating + 1
    packed.sort()
    last = np.empty(len(packed), bool)
    np.greater(packed[1:] ^ packed[:-1], 15, out=last[:-1])
    last[-1] = True
    dup_pairs = np.unique(packed[:-1][~last[:-1]] >> 4)
    kept = packed[last]
    del packed, last
    out_rating = (kept & 15).astype(np.int8)
    out_rating -= 1
    kept >>= 4
    if len(dup_pairs):
        out_rating[np.searchsorted(kept, dup_pairs)] = _last_in_file(user, anime, rating, dup_pairs)
    out_anime = (kept & 0xFFFFFFFF).astype(anime.dtype)
    kept >>= 32
    return _Rows(kept.astype(user.dtype), out_anime, out_rating, int(len(user) - len(kept)))


def _last_in_file(user, anime, rating, dup_pairs) -> np.ndarray:
    """Rating of the last file row of each duplicated pair (``dup_pairs`` sorted, as user<<32|anime).

    Only rows of users with a duplicate are searched, so rare duplicates cost little.
    """
    has_dup = np.zeros(int(user.max()) + 1, bool)
    has_dup[dup_pairs >> 32] = True
    candidates = np.flatnonzero(has_dup[user])
    file_pair = (user[candidates].astype(np.int64) << 32) | anime[candidates].astype(np.int64)
    pos = np.searchsorted(dup_pairs, file_pair).clip(0, len(dup_pairs) - 1)
    hit = dup_pairs[pos] == file_pair
    rows, file_pair = candidates[hit], file_pair[hit]
    order = np.argsort(file_pair, kind="stable")
    grouped = file_pair[order]
    last = np.append(grouped[1:] != grouped[:-1], True)
    return rating[rows[order[last]]]


def _dedupe_argsort(user, anime, rating) -> _Rows:
    """General path for ids too large to pack: stable lexsort keeps file order within a pair."""
    order = np.lexsort((anime, user))
    us, an = user[order], anime[order]
    last = np.append((us[1:] != us[:-1]) | (an[1:] != an[:-1]), True)
    keep = order[last]
    return _Rows(user[keep], anime[keep], rating[keep], int(len(order) - len(keep)))


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    if not len(sorted_values):
        return np.empty(0, np.int64)
    return np.flatnonzero(np.append(True, sorted_values[1:] != sorted_values[:-1]))


def _select_users(rows: _Rows, min_user_ratings: int) -> _Users:
    """Users with enough rated rows, encoded 0..U-1 in raw-id order; ``code`` maps rows (-1 = dropped)."""
    starts = _group_starts(rows.user)
    sizes = np.diff(np.append(starts, len(rows.user)))
    n_rated = np.add.reduceat(rows.rating >= 1, starts, dtype=np.int64) if len(starts) else starts
    keep = n_rated >= min_user_ratings
    if not keep.any():
        best = int(n_rated.max()) if len(n_rated) else 0
        raise FuseRankError(
            f"no user has >= {min_user_ratings} rated rows (users seen: {len(starts)}, most rated rows: {best}); "
            "lower min_user_ratings or use a larger ratings file")
    user_code = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int32)
    return _Users(rows.user[starts[keep]].astype(np.int64), n_rated[keep].astype(np.int32),
                  np.repeat(user_code, sizes), len(starts))


def _encode_anime(anime: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted raw ids of anime in ``used`` rows and the code of every row (-1 = not encoded)."""
    if len(anime) and anime.max() <= LUT_MAX_ID:
        present = np.zeros(int(anime.max()) + 1, bool)
        present[anime[used]] = True
        lut = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
        return np.flatnonzero(present).astype(np.int64), lut[anime]
    ids = np.unique(anime[used]).astype(np.int64)
    pos = np.searchsorted(ids, anime).clip(0, max(len(ids) - 1, 0))
    found = ids[pos] == anime if len(ids) else np.zeros(len(anime), bool)
    return ids, np.where(found, pos, -1).astype(np.int32)


def _scale(raw: np.ndarray) -> tuple[np.ndarray, dict]:
    lo, hi = int(raw.min()), int(raw.max())
    if lo == hi:
        return np.ones(len(raw), np.float32), {"min": lo, "max": hi}
    return ((raw.astype(np.float32) - lo) / np.float32(hi - lo)).astype(np.float32), {"min": lo, "max": hi}


def split_labels(user: np.ndarray, n_per_user: np.ndarray, seed: int) -> np.ndarray:
    """0 train / 1 val / 2 test per row of user-sorted rows: a seeded random subset per user.

    Each user with >= 3 rows gets max(1, floor(10%)) test and val rows, so every evaluated user
    also has training rows; smaller users stay entirely in train. Rows are ranked within their
    user by a random key (sort by user, key); the rank decides the split.
    """
    n = len(user)
    first_row = np.repeat(np.cumsum(n_per_user) - n_per_user, n_per_user)
    local = np.arange(n, dtype=np.int64) - first_row
    shuffled = _shuffle_within_user(user, local, n_per_user, np.random.default_rng(seed))
    quota = {name: np.repeat(np.where(n_per_user >= 3, np.maximum(1, np.floor(n_per_user * frac)), 0)
                             .astype(np.int32), n_per_user) for name, frac in S.SPLIT_FRACTIONS.items()}
    by_rank = np.zeros(n, np.int8)
    by_rank[local < quota["test"] + quota["val"]] = 1
    by_rank[local < quota["test"]] = 2
    labels = np.empty(n, np.int8)
    labels[first_row + shuffled] = by_rank
    return labels


def _shuffle_within_user(user, local, n_per_user, rng) -> np.ndarray:
    """Within-user row indices reordered by a random key; position p keeps user[p].

    Packs (user, random key, index) into one int64 and sorts it in place when the bits allow
    (always for MAL-sized data), else falls back to an argsort over (user, key).
    """
    user_bits = int(max(len(n_per_user) - 1, 0)).bit_length()
    local_bits = int(max(int(n_per_user.max(initial=1)) - 1, 0)).bit_length()
    noise_bits = min(32, 63 - user_bits - local_bits)
    if noise_bits < 20:
        noise = rng.integers(0, 2**32, size=len(user), dtype=np.int64)
        return local[np.argsort((user.astype(np.int64) << 32) | noise, kind="stable")]
    key = rng.integers(0, 2**noise_bits, size=len(user), dtype=np.int64)
    key <<= local_bits
    key |= local
    key |= user.astype(np.int64) << (noise_bits + local_bits)
    key.sort()
    return key & ((1 << local_bits) - 1)


def _build_tables(rows: _Rows, users: _Users, meta, seed):
    """All output tables plus the manifest counts and rating scale."""
    kept = users.code >= 0
    rated = rows.rating >= 1
    used = kept & rated
    anime_ids, anime_code = _encode_anime(rows.anime, used)
    u, a, raw_rating = users.code[used], anime_code[used], rows.rating[used]
    scaled, scale = _scale(raw_rating)
    labels = split_labels(u, users.n_rated.astype(np.int64), seed)
    tables = {}
    for label, name in enumerate(SPLITS):
        pick = labels == label
        tables[name] = _table(S.SPLIT_SCHEMA, user=u[pick], anime=a[pick], rating=scaled[pick],
                              raw_rating=raw_rating[pick])
    unrated = kept & ~rated & (anime_code >= 0)
    tables["unrated"] = _table(S.UNRATED_SCHEMA, user=users.code[unrated], anime=anime_code[unrated])
    tables["users"] = _table(S.USERS_SCHEMA, user=np.arange(len(users.raw_ids), dtype=np.int32),
                             user_id=users.raw_ids, n_ratings=users.n_rated)
    tables["anime"], missing = _anime_table(anime_ids, meta)
    per_anime = np.bincount(a, minlength=len(anime_ids))
    counts = {
        "rows_rated": int(rated.sum()),
        "rows_unrated": int(len(rated) - rated.sum()),
        "duplicates_dropped": rows.duplicates,
        "users_seen": users.seen,
        "users_kept": len(users.raw_ids),
        "anime": len(anime_ids),
        "ratings_kept": int(len(u)),
        **{name: tables[name].num_rows for name in SPLITS},
        "unrated_kept": int(unrated.sum()),
        "anime_missing_metadata": int(missing.sum()),
        "ratings_missing_metadata": int(per_anime[missing].sum()),
    }
    return tables, counts, scale


def _table(schema: pa.Schema, **columns) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)


def _anime_table(anime_ids: np.ndarray, meta) -> tuple[pa.Table, np.ndarray]:
    """Encoder table with metadata joined; rated anime the metadata lacks keep placeholder values."""
    if meta is not None and len(meta.anime_id):
        pos = np.searchsorted(meta.anime_id, anime_ids).clip(0, len(meta.anime_id) - 1)
        found = meta.anime_id[pos] == anime_ids
    else:
        pos, found = np.zeros(len(anime_ids), np.int64), np.zeros(len(anime_ids), bool)
    names, genres, types = [], [], []
    for anime_id, p, ok in zip(anime_ids.tolist(), pos.tolist(), found.tolist()):
        names.append((meta.name[p] if ok else None) or S.placeholder_name(anime_id))
        genres.append(meta.genres[p] if ok else "")
        types.append(meta.type[p] if ok else S.UNKNOWN_TYPE)
    table = _table(S.ANIME_SCHEMA, anime=np.arange(len(anime_ids), dtype=np.int32), anime_id=anime_ids,
                   name=names, genres=genres, type=types, in_metadata=found)
    return table, ~found


# ---------------------------------------------------------------- hashing and publishing

def content_hash(tables: dict[str, pa.Table]) -> str:
    """sha256 over every output column's values, independent of Parquet encoding and timestamps."""
    digest = hashlib.sha256()
    for name in sorted(tables):
        for column_name, column in zip(tables[name].column_names, tables[name].columns):
            digest.update(f"{name}.{column_name}:{column.type}:{len(column)}\n".encode())
            if pa.types.is_string(column.type):
                for value in column.to_pylist():
                    encoded = value.encode("utf-8")
                    digest.update(len(encoded).to_bytes(8, "little") + encoded)
            else:
                values = column.to_numpy()
                digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _check_replaceable(out: Path):
    """Refuse to overwrite anything but an empty directory or an earlier ingest output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FuseRankError(f"{out}: exists and is not a directory")
    if any(out.iterdir()) and not (out / S.MANIFEST).is_file():
        raise FuseRankError(f"{out}: exists, is not empty and holds no {S.MANIFEST}; refusing to replace it")


def publish(out: Path, tables: dict[str, pa.Table], manifest: dict):
    """Write into a sibling temp dir, then swap it in, so ``out`` is always complete or untouched."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        (tmp / S.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, out: Path):
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _log_summary(manifest: dict, read_s: float, total_s: float):
    c = manifest["counts"]
    log.info("read %d rows in %.1fs (%.1fM rows/s); total %.1fs", c["rows_read"], read_s,
             c["rows_read"] / max(read_s, 1e-9) / 1e6, total_s)
    log.info("kept %d users, %d anime, %d ratings (train %d, val %d, test %d), %d unrated; "
             "dropped %d duplicates, skipped %d rows; %d anime without metadata",
             c["users_kept"], c["anime"], c["ratings_kept"], c["train"], c["val"], c["test"],
             c["unrated_kept"], c["duplicates_dropped"], c["skipped_rows"], c["anime_missing_metadata"])
