"""Ingest stage: MyAnimeList ratings (+ optional anime metadata) -> encoded, split Parquet data.

Built for the full dumps (57M-109M rows) on one 2-core machine, in bounded memory whether or not
the file is grouped by user:

* every block the reader delivers is packed at once into one int64 per row,
  ``user << 36 | anime << 4 | (rating + 1)`` (8 bytes a row, kept in file order; ids too large to
  pack as they are get rank-coded first, which keeps their order);
* one in-place sort of a copy of those keys groups the rows by user (a shuffled file only makes it
  a random instead of a nearly sorted sort) and puts duplicated (user, anime) pairs side by side;
  only duplicated pairs look back at the file-order keys, to keep the file's last row; then the
  file-order keys are dropped;
* everything after runs over user-aligned slices of the sorted keys (tens of MB of temporaries):
  one pass counts rows per user and finds the anime in use, one pass encodes, splits and fills
  preallocated output columns while a writer thread streams finished row groups to Parquet (the
  row groups ``pyarrow.parquet.write_table`` would write);
* the content hash reads the finished columns in place.

Peak memory is about 16 bytes a row while sorting, then 8 bytes a row plus 13 per kept rating and
8 per kept unrated row. Users on the suppression list (``fuserank forget``) are dropped as their
rows are read and only counted. The output directory is published with a rename so readers never
see a half-written one.

Feedback written through the API (``feedback``: fuserank.training.feedback_source) is added after the
file's rows, so it wins on duplicated pairs as a later file row does; its deletion markers remove their
pair after de-duplication. What was merged is written beside the splits (``feedback.parquet``).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fuserank import storage
from fuserank.errors import FuseRankError, InputError
from fuserank.failures import Tried, explain
from fuserank.schemas import ingest as S
from fuserank.training import readers
from fuserank.training.feedback_source import DELETED, FeedbackRows

log = logging.getLogger("fuserank.ingest")

USER_SHIFT, ANIME_SHIFT = 36, 4
ANIME_MASK, RATING_MASK = (1 << 32) - 1, 15
USER_LIMIT = 1 << 27          # user ids below this are packed as they are ...
ANIME_LIMIT = 1 << 22         # ... and anime ids below this (their lookup tables stay small)
PACKED_CHUNK_ROWS = 1 << 23   # file-order keys are kept in 64 MB chunks (pages only touched as filled)
SLICE_ROWS = 1 << 18          # rows per user-aligned slice of the sorted keys (temporaries stay in cache)
ROW_GROUP_ROWS = 1 << 20      # pyarrow.parquet.write_table's default row group length
MAX_SORT_THREADS, PARALLEL_SORT_MIN = 4, 1 << 22


def ingest(ratings: str, out: str, anime: str | None = None, min_user_ratings: int = 400,
           seed: int = 0, lenient: bool = False, chunk_rows: int = 2_000_000,
           suppressed: Iterable[int] | None = None, suppression_sources: Iterable[str] = (),
           feedback: FeedbackRows | None = None) -> dict:
    """Read, clean, encode and split ratings into ``out``; returns the manifest written there.

    ``suppressed``: user ids (see ``load_suppressed``) whose rows are dropped as they are read;
    they reach no output and are only counted (``counts.suppressed_users``/``suppressed_rows``).
    ``feedback``: the feedback store's rows (``feedback_source.drain``), merged as the newest rows.
    ``chunk_rows``: read progress is logged every this many rows.
    """
    _check_args(out, min_user_ratings, seed, chunk_rows)
    _keep_freed_temporaries()
    started = time.perf_counter()
    skipped = readers.SkipReport()
    suppressed_ids = _id_array(suppressed)
    with _stage("read anime metadata"):
        meta = readers.read_metadata(anime, lenient=lenient, skipped=skipped) if anime else None
    sink = _KeySink(suppressed_ids)
    with _stage("read and pack ratings"):
        scan = readers.scan_ratings(ratings, sink, lenient=lenient, skipped=skipped, progress_rows=chunk_rows)
        if feedback is not None and len(feedback.user):
            sink.add(feedback.user, feedback.anime, feedback.rating)
        packed = sink.finish()
    del sink
    with _stage(f"sort and deduplicate {packed.rows} rows"):
        keys, duplicates = _sort_dedupe(packed)
        if feedback is not None:
            keys = _drop_deleted(keys)
    with _stage("count rows per user and anime"):
        survey = _survey(keys, int(min_user_ratings), packed.anime_codes)
        plan = _Plan(survey, packed, meta, keys, int(seed))
    out_path = _checked_out(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    writer = None
    try:
        with _stage("encode, split and stream to parquet"):
            writer = plan.fill(tmp)
        del keys
        tables = plan.tables()
        for name in ("users", "anime", "low_activity"):
            pq.write_table(tables[name], tmp / S.parquet_file(name))
        counts = {"rows_read": scan.rows, **plan.counts(duplicates), "skipped_rows": skipped.rows,
                  "suppressed_users": packed.suppressed_users, "suppressed_rows": packed.suppressed_rows}
        with _stage("hash (parquet still streaming)"):
            digest = content_hash(tables)
        with _stage("finish parquet files"):
            writer.finish()
        manifest = _manifest(ratings, anime, scan.layout, meta, min_user_ratings, seed, plan.scale, counts,
                             skipped, digest, suppressed_ids, suppression_sources)
        if feedback is not None:
            pq.write_table(feedback.table, tmp / S.FEEDBACK_FILE)
            manifest.update(feedback.manifest())
        (tmp / S.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _check_replaceable(out_path)
        _swap_in(tmp, out_path)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log_summary(manifest, scan.seconds, time.perf_counter() - started)
    return manifest


def _manifest(ratings, anime, layout, meta, min_user_ratings, seed, scale, counts, skipped, digest,
              suppressed_ids, suppression_sources) -> dict:
    return {
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
        "suppression": {"sources": list(suppression_sources), "ids_listed": int(len(suppressed_ids))},
        "content_hash": digest,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _keep_freed_temporaries():
    """Let glibc keep freed temporaries (below 32 MB) for reuse instead of handing them back.

    The slice loops allocate the same few MB again and again; by default glibc returns them to the
    kernel and faults them back in, which shows as system time in the encode pass. Arrays
    of 32 MB and more (the keys, the output columns) are still mapped separately and go back to the
    kernel when freed. No-op where mallopt is not available.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 128 << 20)


@contextmanager
def _stage(name: str):
    """Log each stage's wall time: the 100M-row runs are tuned from these lines."""
    started, cpu = time.perf_counter(), os.times()
    yield
    now = os.times()
    log.info("%s: %.1fs (cpu user %.1fs, sys %.1fs)", name, time.perf_counter() - started, now.user - cpu.user,
             now.system - cpu.system)


def _checked_out(out) -> Path:
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out)
    return out


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


# ---------------------------------------------------------------- suppression (fuserank forget)

def load_suppressed(redis_url=None, path: str | None = None) -> tuple[frozenset[int], list[str]]:
    """User ids to leave out of the ingest, from ``fuserank:suppressed`` in Redis (``redis_url``: a URL or a
    fuserank.redis_client.Target) and/or a file of one id per line (blank lines and ``#`` comments allowed);
    returns (ids, sources read).

    An unreachable Redis is an error, never "nobody to suppress".
    """
    ids: set[int] = set()
    sources = []
    if path:
        ids |= _read_id_file(path)
        sources.append("file")
    if redis_url:
        import redis

        from fuserank.privacy import suppressed
        from fuserank.redis_client import connect, target
        where = target(redis_url)
        client = None
        try:
            client = connect(where)
            ids |= suppressed(client)
        except (redis.RedisError, ValueError) as exc:
            why = explain(exc, Tried(redis_url=where.url)) or f"{type(exc).__name__}: {exc}"
            raise FuseRankError(f"cannot read the suppression list ({why}); "
                                "refusing to ingest users who may have asked to be forgotten") from exc
        finally:
            if client is not None:
                client.close()
        sources.append("redis")
    return frozenset(ids), sources


def _read_id_file(path) -> set[int]:
    ids = set()
    with readers.open_input(path) as stream:
        for number, raw in enumerate(stream, start=1):
            text = raw.split(b"#", 1)[0].strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                value = -1
            if value < 0:
                raise InputError(path, f"not a user id: {text[:40].decode('utf-8', 'replace')!r}", line=number,
                                 expected="one non-negative integer user id per line")
            ids.add(value)
    return ids


def _id_array(ids) -> np.ndarray:
    if ids is None:
        return np.empty(0, np.int64)
    return np.unique(np.fromiter((int(i) for i in ids), np.int64))


# ---------------------------------------------------------------- reading into packed keys

@dataclass
class _Packed:
    """Packed keys in file order, and how codes map back to raw ids (None: codes are the ids)."""

    chunks: list
    rows: int
    max_user: int
    anime_codes: int
    user_ids: np.ndarray | None
    anime_ids: np.ndarray | None
    suppressed_users: int
    suppressed_rows: int


class _KeySink(readers.RatingSink):
    """Packs each block straight into 64 MB chunk buffers; keeps raw columns instead only when ids
    are too large to pack."""

    def __init__(self, suppressed: np.ndarray):
        self.suppressed = suppressed
        self.reset()

    def reset(self):
        self.chunks, self.buffer, self.filled = [], None, 0
        self.scratch = np.empty(0, np.int64)
        self.raw = None
        self.max_user = self.max_anime = -1
        self.suppressed_rows, self.suppressed_found = 0, []

    def add(self, user, anime, rating):
        if len(self.suppressed) and len(user):
            drop = np.isin(user, self.suppressed)
            if drop.any():
                self.suppressed_rows += int(np.count_nonzero(drop))
                self.suppressed_found.append(np.unique(user[drop]))
                keep = ~drop
                user, anime, rating = user[keep], anime[keep], rating[keep]
        if not len(user):
            return
        self.max_user = max(self.max_user, int(user.max()))
        self.max_anime = max(self.max_anime, int(anime.max()))
        if self.raw is None and (self.max_user >= USER_LIMIT or self.max_anime >= ANIME_LIMIT):
            self._unpack_to_raw()
        if self.raw is not None:
            self.raw.append((user.astype(np.int64), anime.astype(np.int64), rating.astype(np.int8)))
            return
        user, anime = user.astype(np.int64, copy=False), anime.astype(np.int64, copy=False)
        done = 0
        while done < len(user):
            if self.buffer is None or self.filled == len(self.buffer):
                self._new_buffer()
            n = min(len(user) - done, len(self.buffer) - self.filled)
            key = self.buffer[self.filled:self.filled + n]
            np.left_shift(user[done:done + n], USER_SHIFT, out=key)
            if len(self.scratch) < n:
                self.scratch = np.empty(n, np.int64)
            shifted = np.left_shift(anime[done:done + n], ANIME_SHIFT, out=self.scratch[:n])
            key |= shifted
            key |= rating[done:done + n] + 1
            self.filled += n
            done += n

    def _new_buffer(self):
        self._close_buffer()
        self.buffer, self.filled = np.empty(PACKED_CHUNK_ROWS, np.int64), 0

    def _close_buffer(self):
        if self.buffer is not None and self.filled:
            self.chunks.append(self.buffer[:self.filled])
        self.buffer, self.filled = None, 0

    def parts(self, n):
        return [_KeySink(self.suppressed) for _ in range(n)]

    def join(self, parts):
        """Append the parts' keys in order; if any part met ids too large to pack, all go raw."""
        self._close_buffer()
        for part in parts:
            part._close_buffer()
        if self.raw is not None or any(part.raw is not None for part in parts):
            for sink in (self, *parts):
                if sink.raw is None:
                    sink._unpack_to_raw()
            self.raw = [block for sink in (self, *parts) for block in sink.raw]
        else:
            self.chunks = [chunk for sink in (self, *parts) for chunk in sink.chunks]
        for part in parts:
            self.max_user, self.max_anime = max(self.max_user, part.max_user), max(self.max_anime, part.max_anime)
            self.suppressed_rows += part.suppressed_rows
            self.suppressed_found += part.suppressed_found
            part.reset()

    def _unpack_to_raw(self):
        self._close_buffer()
        self.raw = [(k >> USER_SHIFT, (k >> ANIME_SHIFT) & ANIME_MASK, ((k & RATING_MASK) - 1).astype(np.int8))
                    for k in self.chunks]
        self.chunks = []

    def finish(self) -> _Packed:
        found = np.unique(np.concatenate(self.suppressed_found)) if self.suppressed_found else ()
        common = {"suppressed_users": len(found), "suppressed_rows": self.suppressed_rows}
        if self.raw is None:
            self._close_buffer()
            chunks, self.chunks = self.chunks, []
            return _Packed(chunks, sum(map(len, chunks)), self.max_user, self.max_anime + 1, None, None, **common)
        return self._rank_coded(common)

    def _rank_coded(self, common) -> _Packed:
        """Ids too large to pack: replace them by their rank among the distinct ids (same order)."""
        user, anime, rating = (np.concatenate(cols) for cols in zip(*self.raw))
        self.raw = None
        user_ids, user_code = np.unique(user, return_inverse=True)
        del user
        anime_ids, anime_code = np.unique(anime, return_inverse=True)
        del anime
        if len(user_ids) >= USER_LIMIT or len(anime_ids) >= ANIME_LIMIT:
            raise FuseRankError(f"too many distinct ids to encode ({len(user_ids)} users, {len(anime_ids)} anime)")
        key = user_code.astype(np.int64) << USER_SHIFT
        key |= anime_code.astype(np.int64) << ANIME_SHIFT
        key |= rating + 1
        return _Packed([key], len(key), len(user_ids) - 1, len(anime_ids), user_ids.astype(np.int64),
                       anime_ids.astype(np.int64), **common)


# ---------------------------------------------------------------- sorting and de-duplicating

def _sort_dedupe(packed: _Packed) -> tuple[np.ndarray, int]:
    """Keys sorted by (user, anime), one per pair: the file's last row of a duplicated pair wins.

    Drops ``packed.chunks`` (the file-order copy) once duplicates are resolved.
    """
    keys = np.empty(packed.rows, np.int64)
    at = 0
    for chunk in packed.chunks:
        keys[at:at + len(chunk)] = chunk
        at += len(chunk)
    _sort_in_place(keys)
    not_last = _not_last_of_pair(keys)
    if len(not_last):
        pairs = np.unique(keys[not_last] >> ANIME_SHIFT)
        last_rating = _last_in_file(packed.chunks, pairs, packed.max_user)
        packed.chunks = []
        keys = _delete_positions(keys, not_last)
        keys[np.searchsorted(keys, pairs << ANIME_SHIFT)] = (pairs << ANIME_SHIFT) | last_rating
    packed.chunks = []
    return keys, int(len(not_last))


def _sort_in_place(keys: np.ndarray):
    """``keys.sort()`` on every CPU: an in-place partition at the quantiles, then one thread per part
    (numpy sorts without the GIL)."""
    parts = min(MAX_SORT_THREADS, readers.usable_cpus())
    if parts < 2 or len(keys) < PARALLEL_SORT_MIN:
        keys.sort()
        return
    bounds = [len(keys) * i // parts for i in range(1, parts)]
    keys.partition(bounds)
    edges = [0, *bounds, len(keys)]
    threads = [threading.Thread(target=keys[a:b].sort, name=f"ingest-sort-{i}", daemon=True)
               for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _not_last_of_pair(keys: np.ndarray) -> np.ndarray:
    """Positions whose next key has the same (user, anime) pair, found slice by slice."""
    found = [np.empty(0, np.int64)]
    for start in range(0, max(len(keys) - 1, 0), SLICE_ROWS):
        end = min(start + SLICE_ROWS, len(keys) - 1)
        same = (keys[start + 1:end + 1] ^ keys[start:end]) <= RATING_MASK
        found.append(np.flatnonzero(same) + start)
    return np.concatenate(found)


def _last_in_file(chunks, pairs: np.ndarray, max_user: int) -> np.ndarray:
    """Packed rating (rating + 1) of the last file row of each of ``pairs`` (sorted user<<32|anime).

    Only rows of users with a duplicate are compared, so rare duplicates cost one light pass.
    """
    has_dup = np.zeros(max_user + 1, bool)
    has_dup[pairs >> 32] = True
    hit_pairs, hit_ratings = [], []
    for chunk in chunks:
        candidates = chunk[has_dup[chunk >> USER_SHIFT]]
        pair = candidates >> ANIME_SHIFT
        pos = np.searchsorted(pairs, pair).clip(0, len(pairs) - 1)
        hit = pairs[pos] == pair
        hit_pairs.append(pair[hit])
        hit_ratings.append(candidates[hit] & RATING_MASK)
    in_file_order = np.concatenate(hit_pairs)
    ratings = np.concatenate(hit_ratings)
    _, last = np.unique(in_file_order[::-1], return_index=True)
    return ratings[::-1][last]


def _delete_positions(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``np.delete`` done in place slice by slice (no second full-size array)."""
    write = 0
    bounds = np.searchsorted(positions, np.arange(0, len(keys) + SLICE_ROWS, SLICE_ROWS))
    for i, start in enumerate(range(0, len(keys), SLICE_ROWS)):
        part = keys[start:start + SLICE_ROWS]
        keep = np.ones(len(part), bool)
        keep[positions[bounds[i]:bounds[i + 1]] - start] = False
        kept = part[keep]
        keys[write:write + len(kept)] = kept
        write += len(kept)
    return keys[:write]


def _drop_deleted(keys: np.ndarray) -> np.ndarray:
    """The sorted, de-duplicated keys without the pairs whose last row is a feedback deletion marker."""
    marked = np.flatnonzero((keys & RATING_MASK) == DELETED + 1)
    return _delete_positions(keys, marked) if len(marked) else keys


def _user_slices(keys: np.ndarray):
    """(start, end) ranges of about SLICE_ROWS sorted keys that never cut a user in two."""
    start, n = 0, len(keys)
    while start < n:
        end = min(start + SLICE_ROWS, n)
        if end < n:
            next_user = ((int(keys[end - 1]) >> USER_SHIFT) + 1) << USER_SHIFT
            end = int(np.searchsorted(keys, next_user))
        yield start, end
        start = end


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    if not len(sorted_values):
        return np.empty(0, np.int64)
    return np.flatnonzero(np.append(True, sorted_values[1:] != sorted_values[:-1]))


# ---------------------------------------------------------------- pass 1: users and anime in use

@dataclass
class _Survey:
    user_code: np.ndarray        # per seen user (in key order): raw-id code
    n_rated: np.ndarray          # per seen user: rated rows
    keep: np.ndarray             # per seen user: enough rated rows
    used_per_anime: np.ndarray   # per anime code: kept ratings
    unrated_per_anime: np.ndarray
    rows: int
    rows_rated: int
    rating_range: tuple[int, int]
    min_user_ratings: int


def _survey(keys: np.ndarray, min_user_ratings: int, anime_codes: int) -> _Survey:
    """One pass over the sorted keys: rated rows per user, and kept ratings/unrated rows per anime."""
    users, n_rated = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    used_per_anime = np.zeros(max(anime_codes, 0), np.int64)
    unrated_per_anime = np.zeros(max(anime_codes, 0), np.int64)
    rows_rated, lo, hi = 0, RATING_MASK + 1, -1
    for start, end in _user_slices(keys):
        k = keys[start:end]
        user = k >> USER_SHIFT
        starts = _group_starts(user)
        sizes = np.diff(np.append(starts, len(k)))
        packed_rating = (k & RATING_MASK).astype(np.int8)
        rated = packed_rating >= 2
        rated_per_user = np.add.reduceat(rated, starts, dtype=np.int64)
        kept_row = np.repeat(rated_per_user >= min_user_ratings, sizes)
        anime = ((k >> ANIME_SHIFT) & ANIME_MASK).astype(np.int32)
        used = kept_row & rated
        used_per_anime += np.bincount(anime[used], minlength=anime_codes)
        unrated_per_anime += np.bincount(anime[kept_row & ~rated], minlength=anime_codes)
        if used.any():
            used_ratings = packed_rating[used]
            lo, hi = min(lo, int(used_ratings.min())), max(hi, int(used_ratings.max()))
        rows_rated += int(np.count_nonzero(rated))
        users.append(user[starts])
        n_rated.append(rated_per_user)
    n_rated = np.concatenate(n_rated)
    keep = n_rated >= min_user_ratings
    if not keep.any():
        best = int(n_rated.max()) if len(n_rated) else 0
        raise FuseRankError(
            f"no user has >= {min_user_ratings} rated rows (users seen: {len(n_rated)}, most rated rows: {best}); "
            "lower min_user_ratings or use a larger ratings file")
    return _Survey(np.concatenate(users), n_rated, keep, used_per_anime, unrated_per_anime, len(keys), rows_rated,
                   (lo - 1, hi - 1), min_user_ratings)


# ---------------------------------------------------------------- splits

class _SplitLabeller:
    """``split_labels`` one user-aligned slice at a time: same random stream, same labels.

    The bit widths of the within-user shuffle key depend on all users, so they are fixed up front
    from the full ``n_per_user``; the generator draws once per row, in row order.
    """

    def __init__(self, n_per_user: np.ndarray, seed: int):
        self.rng = np.random.default_rng(seed)
        self.user_bits = int(max(len(n_per_user) - 1, 0)).bit_length()
        self.local_bits = int(max(int(n_per_user.max(initial=1)) - 1, 0)).bit_length()
        self.noise_bits = min(32, 63 - self.user_bits - self.local_bits)

    def labels(self, user: np.ndarray, n_per_user: np.ndarray) -> np.ndarray:
        """0 train / 1 val / 2 test for rows of whole users, sorted by user (global user codes)."""
        n = len(user)
        n_per_user = n_per_user.astype(np.int64)
        first_row = np.repeat(np.cumsum(n_per_user) - n_per_user, n_per_user)
        local = np.arange(n, dtype=np.int64) - first_row
        shuffled = self._shuffle_within_user(user, local)
        quota = {name: np.repeat(np.where(n_per_user >= 3, np.maximum(1, np.floor(n_per_user * frac)), 0)
                                 .astype(np.int32), n_per_user) for name, frac in S.SPLIT_FRACTIONS.items()}
        by_rank = np.zeros(n, np.int8)
        by_rank[local < quota["test"] + quota["val"]] = 1
        by_rank[local < quota["test"]] = 2
        labels = np.empty(n, np.int8)
        labels[first_row + shuffled] = by_rank
        return labels

    def _shuffle_within_user(self, user, local) -> np.ndarray:
        """Within-user row indices reordered by a random key; position p keeps user[p].

        Packs (user, random key, index) into one int64 and sorts it in place when the bits allow
        (always for MAL-sized data), else falls back to an argsort over (user, key).
        """
        if self.noise_bits < 20:
            noise = self.rng.integers(0, 2**32, size=len(user), dtype=np.int64)
            return local[np.argsort((user.astype(np.int64) << 32) | noise, kind="stable")]
        key = self.rng.integers(0, 2**self.noise_bits, size=len(user), dtype=np.int64)
        key <<= self.local_bits
        key |= local
        key |= user.astype(np.int64) << (self.noise_bits + self.local_bits)
        key.sort()
        return key & ((1 << self.local_bits) - 1)


def split_labels(user: np.ndarray, n_per_user: np.ndarray, seed: int) -> np.ndarray:
    """0 train / 1 val / 2 test per row of user-sorted rows: a seeded random subset per user.

    Each user with >= 3 rows gets max(1, floor(10%)) test and val rows, so every evaluated user
    also has training rows; smaller users stay entirely in train. Rows are ranked within their
    user by a random key (sort by user, key); the rank decides the split.
    """
    return _SplitLabeller(n_per_user, seed).labels(user, n_per_user)


def _quotas(n_per_user: np.ndarray) -> dict[str, int]:
    n = n_per_user.astype(np.int64)
    sizes = {name: int(np.where(n >= 3, np.maximum(1, np.floor(n * frac)), 0).sum())
             for name, frac in S.SPLIT_FRACTIONS.items()}
    return {"train": int(n.sum()) - sizes["val"] - sizes["test"], **sizes}


# ---------------------------------------------------------------- pass 2: encode, split, write

class _Plan:
    """Encoders and preallocated output columns, filled by one pass over the sorted keys."""

    def __init__(self, survey: _Survey, packed: _Packed, meta, keys: np.ndarray, seed: int):
        self.survey, self.keys, self.seed = survey, keys, seed
        keep = survey.keep
        self.user_code = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int32)
        raw_users = survey.user_code[keep]
        self.user_ids = packed.user_ids[raw_users] if packed.user_ids is not None else raw_users.astype(np.int64)
        self.n_ratings = survey.n_rated[keep].astype(np.int32)
        present = survey.used_per_anime > 0
        self.anime_lut = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
        codes = np.flatnonzero(present)
        self.anime_ids = packed.anime_ids[codes] if packed.anime_ids is not None else codes.astype(np.int64)
        self.per_anime = survey.used_per_anime[present]
        self.unrated_kept = int(survey.unrated_per_anime[present].sum())
        self.scale, self.scaled_by_packed = _scale_table(*survey.rating_range)
        self.anime_table, self.missing = _anime_table(self.anime_ids, meta)
        self.sizes = _quotas(self.n_ratings)
        self.columns = {name: _empty_columns(S.OUTPUT_SCHEMAS[name], size)
                        for name, size in {**self.sizes, "unrated": self.unrated_kept}.items()}
        self.raw_user_ids = packed.user_ids
        self.low_activity: list[tuple] = []   # per slice: raw user ids, their row counts, anime, raw rating

    def fill(self, directory: Path) -> "_StreamWriter":
        """Encode and split every slice into the columns; returns the writer, still finishing.

        The sorted keys are released at the end (the caller's reference is the last one)."""
        writer = _StreamWriter(directory, {name: (S.OUTPUT_SCHEMAS[name], columns)
                                           for name, columns in self.columns.items()})
        try:
            self._fill(writer)
        except BaseException:
            writer.abort()
            raise
        self.keys = None
        return writer

    def _fill(self, writer: "_StreamWriter"):
        labeller = _SplitLabeller(self.n_ratings, self.seed)
        filled = dict.fromkeys(self.columns, 0)
        seen = 0
        for start, end in _user_slices(self.keys):
            k = self.keys[start:end]
            starts = _group_starts(k >> USER_SHIFT)
            sizes = np.diff(np.append(starts, len(k)))
            slice_users = slice(seen, seen + len(starts))
            seen += len(starts)
            user = np.repeat(self.user_code[slice_users], sizes)
            packed_rating = (k & RATING_MASK).astype(np.int8)
            rated = packed_rating >= 2
            anime = self.anime_lut[(k >> ANIME_SHIFT) & ANIME_MASK]
            kept_row = user >= 0
            used = kept_row & rated
            u, a, r = user[used], anime[used], packed_rating[used]
            labels = labeller.labels(u, self.survey.n_rated[slice_users][self.survey.keep[slice_users]])
            for label, name in enumerate(S.SPLITS):
                pick = labels == label
                r_pick = r[pick]
                _put(self.columns[name], filled, name, pick, user=u, anime=a,
                     rating=self.scaled_by_packed[r_pick], raw_rating=r_pick - 1)
            unrated = kept_row & ~rated & (anime >= 0)
            if unrated.any():
                _put(self.columns["unrated"], filled, "unrated", unrated, user=user, anime=anime)
            low = ~kept_row & (anime >= 0)
            if low.any():
                per_user = np.add.reduceat(low, starts, dtype=np.int64)
                some = per_user > 0
                raw_code = self.survey.user_code[slice_users][some]
                raw_id = self.raw_user_ids[raw_code] if self.raw_user_ids is not None else raw_code.astype(np.int64)
                self.low_activity.append((raw_id, per_user[some], anime[low],
                                          np.where(rated[low], packed_rating[low] - 1, -1).astype(np.int8)))
            writer.filled(filled)
        for name, size in filled.items():
            expected = len(next(iter(self.columns[name].values())))
            if size != expected:
                raise AssertionError(f"{name}: filled {size} rows, planned {expected}")

    def tables(self) -> dict[str, pa.Table]:
        tables = {name: _table(S.OUTPUT_SCHEMAS[name], **columns) for name, columns in self.columns.items()}
        tables["users"] = _table(S.USERS_SCHEMA, user=np.arange(len(self.user_ids), dtype=np.int32),
                                 user_id=self.user_ids, n_ratings=self.n_ratings)
        tables["anime"] = self.anime_table
        parts = self.low_activity or [(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32),
                                       np.empty(0, np.int8))]
        ids, sizes, anime, ratings = (np.concatenate([p[i] for p in parts]) for i in range(4))
        tables["low_activity"] = _table(S.LOW_ACTIVITY_SCHEMA, user_id=np.repeat(ids, sizes), anime=anime,
                                        raw_rating=ratings)
        return tables

    def counts(self, duplicates: int) -> dict:
        survey = self.survey
        return {
            "rows_rated": survey.rows_rated,
            "rows_unrated": survey.rows - survey.rows_rated,
            "duplicates_dropped": duplicates,
            "users_seen": len(survey.keep),
            "users_kept": len(self.user_ids),
            "anime": len(self.anime_ids),
            "ratings_kept": int(self.per_anime.sum()),
            **{name: self.sizes[name] for name in S.SPLITS},
            "unrated_kept": self.unrated_kept,
            "low_activity_users": sum(len(p[0]) for p in self.low_activity),
            "low_activity_rows": sum(len(p[2]) for p in self.low_activity),
            "anime_missing_metadata": int(self.missing.sum()),
            "ratings_missing_metadata": int(self.per_anime[self.missing].sum()),
        }


def _empty_columns(schema: pa.Schema, rows: int) -> dict[str, np.ndarray]:
    return {f.name: np.empty(rows, f.type.to_pandas_dtype()) for f in schema}


def _put(columns: dict, filled: dict, name: str, pick: np.ndarray, **values):
    """Append the ``pick``-ed rows of full-length ``values`` (already-picked ones as they are) to
    ``columns[name]``, compressing straight into the output (no temporary copies)."""
    at = filled[name]
    n = int(np.count_nonzero(pick))
    for column, array in values.items():
        out = columns[column][at:at + n]
        if len(array) == n:
            out[:] = array
        else:
            np.compress(pick, array, out=out)
    filled[name] = at + n


def _scale_table(lo: int, hi: int) -> tuple[dict, np.ndarray]:
    """Rating scale and the scaled rating of each packed rating (rating + 1):
    ``(raw - lo) / (hi - lo)`` in float32, or 1 when every kept rating is the same."""
    raw = np.arange(-1, RATING_MASK, dtype=np.int8)
    if lo == hi:
        return {"min": lo, "max": hi}, np.ones(len(raw), np.float32)
    return {"min": lo, "max": hi}, ((raw.astype(np.float32) - lo) / np.float32(hi - lo)).astype(np.float32)


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


class _StreamWriter:
    """A thread writing the filled prefix of preallocated columns to Parquet, a row group at a time.

    Row groups are exactly those ``pq.write_table(whole_table)`` writes (ROW_GROUP_ROWS rows, the
    last one shorter), so the files are the same as writing each table at the end.
    """

    def __init__(self, directory: Path, tables: dict):
        self.tables = tables
        self.written = dict.fromkeys(tables, 0)
        self.writers = {name: pq.ParquetWriter(directory / S.parquet_file(name), schema)
                        for name, (schema, _) in tables.items()}
        self.updates: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ingest-parquet", daemon=True)
        self.thread.start()

    def filled(self, filled: dict):
        if self.error is not None:
            raise self.error
        self.updates.put(dict(filled))

    def _run(self):
        try:
            while (update := self.updates.get()) is not None:
                if update == "abort":
                    return
                for name, upto in update.items():
                    while upto - self.written[name] >= ROW_GROUP_ROWS:
                        self._write(name, ROW_GROUP_ROWS)
            for name, (_, columns) in self.tables.items():
                total = len(next(iter(columns.values())))
                if total == 0 or total > self.written[name]:
                    self._write(name, total - self.written[name])
            for writer in self.writers.values():
                writer.close()
        except BaseException as exc:
            self.error = exc

    def _write(self, name: str, rows: int):
        schema, columns = self.tables[name]
        at = self.written[name]
        table = pa.Table.from_arrays([pa.array(columns[f.name][at:at + rows], type=f.type) for f in schema],
                                     schema=schema)
        self.writers[name].write_table(table, row_group_size=ROW_GROUP_ROWS if rows else None)
        self.written[name] = at + rows

    def finish(self):
        self.updates.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self):
        self.updates.put("abort")
        self.thread.join()
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception:  # the directory is removed anyway
                pass


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
                for chunk in column.chunks:  # the bytes of the whole column, read in place
                    values = chunk.to_numpy(zero_copy_only=False)
                    digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).data)
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
            pq.write_table(table, tmp / S.parquet_file(name))
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
