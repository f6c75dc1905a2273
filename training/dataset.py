"""Reads the ingest output (Parquet via pyarrow) and feeds it to training.

The rating objective's default path packs each rating into one uint64 and serves shuffled batches from
memory (`RatingBatches`, for `model.SparseRatingTrainer`); the dense-Adam path and the ranking objective
go through tf.data (`to_dataset`, `train.user_batches`).
"""
from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf

from fuserank.errors import ArtifactError

SPLITS = ("train", "val", "test")


@dataclass
class SplitArrays:
    user: np.ndarray
    anime: np.ndarray
    rating: np.ndarray       # scaled 0-1 (the training target)
    raw_rating: np.ndarray   # 1-10

    def __len__(self):
        return len(self.user)


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: missing; run `fuserank ingest` first")
    with open(path) as fh:
        return json.load(fh)


def load_split(data_dir: str, split: str) -> SplitArrays:
    path = os.path.join(data_dir, f"{split}.parquet")
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: missing from the ingest output")
    t = pq.read_table(path, columns=["user", "anime", "rating", "raw_rating"])
    return SplitArrays(t["user"].to_numpy().astype(np.int32), t["anime"].to_numpy().astype(np.int32),
                       t["rating"].to_numpy().astype(np.float32), t["raw_rating"].to_numpy().astype(np.int8))


def load_unrated(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(data_dir, "unrated.parquet")
    if not os.path.exists(path):
        return np.empty(0, np.int32), np.empty(0, np.int32)
    t = pq.read_table(path, columns=["user", "anime"])
    return t["user"].to_numpy().astype(np.int32), t["anime"].to_numpy().astype(np.int32)


def to_dataset(arrays: tuple, batch_size: int, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Batches of ``(features, target[, weight])``; shuffling is a fresh permutation per epoch."""
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(arrays[1]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- The rating objective's input pipeline --------------------------------------------------------------
#
# One example is packed into a single uint64 (user in bits 32-62, anime in 8-31, a rating code in 0-7 that
# indexes a 256-entry table of scaled ratings): 8 bytes a rating (400 MB at 50M rows) instead of 13 in the
# split's four columns, one contiguous slice per batch, and sorting a batch's keys sorts it by user. The
# keys are shuffled once in full when loaded (the ingest output is sorted by user); every epoch then draws
# its batches as a fresh random permutation of fixed chunks (batch_size / CHUNKS_PER_BATCH rows each), so
# each batch is a random sample of the ratings that differs from epoch to epoch, for one small permutation
# per epoch instead of a full 50M-row shuffle (4-14 s on this machine, a quarter of an epoch's budget).
# Each training batch is sorted (by user, then anime): the order of examples within a batch changes
# nothing in the step's sums, and sorted rows make its gathers and scatters walk the user table in order.

CHUNKS_PER_BATCH = 8
CODE_BITS, ANIME_BITS, USER_BITS = 8, 24, 31
PACK_BLOCK = 1 << 22
PREFETCH_BATCHES = 4


def rating_codes(rating: np.ndarray, raw_rating: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 code per row, float32[256] table) with ``table[code] == rating`` exactly.

    The raw 1-10 rating is the code whenever the scaled rating is a function of it (always for the
    ingest output and the evaluation's splits); otherwise the distinct scaled values are numbered.
    """
    table = np.zeros(256, np.float32)
    if len(rating) and raw_rating.min() >= 0:
        code = raw_rating.astype(np.uint8, copy=False)
        table[code] = rating
        if np.array_equal(table[code], rating):
            return code, table
    values, code = np.unique(rating, return_inverse=True)
    if len(values) > 256:
        raise ValueError(f"{len(values)} distinct rating values: the packed pipeline holds at most 256")
    table = np.zeros(256, np.float32)
    table[:len(values)] = values
    return code.astype(np.uint8), table


def pack_ratings(split: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 keys, rating table): see the comment above; `model.unpack_batch` undoes it in the graph."""
    n = len(split)
    if n and (int(split.user.min()) < 0 or int(split.user.max()) >= 1 << USER_BITS
              or int(split.anime.min()) < 0 or int(split.anime.max()) >= 1 << ANIME_BITS):
        raise ValueError(f"ids out of range for packing (users < 2^{USER_BITS}, anime < 2^{ANIME_BITS})")
    code, table = rating_codes(split.rating, split.raw_rating)
    keys = np.empty(n, np.uint64)
    for start in range(0, n, PACK_BLOCK):      # blocks: temporaries stay small at 50M rows
        part = slice(start, start + PACK_BLOCK)
        block = split.user[part].astype(np.uint64) << np.uint64(CODE_BITS + ANIME_BITS)
        block |= split.anime[part].astype(np.uint64) << np.uint64(CODE_BITS)
        block |= code[part]
        keys[part] = block
    return keys, table


class RatingBatches:
    """Batches of packed ratings (uint64 tensors) for `SparseRatingTrainer`, reshuffled every epoch.

    Iterating gives one epoch. With ``shuffle`` the rows are permuted once here (seeded) and each epoch
    visits the chunks of ``batch_size // CHUNKS_PER_BATCH`` rows in a fresh seeded order,
    CHUNKS_PER_BATCH chunks to a batch, each batch sorted; without it, contiguous batches in file order.
    """

    def __init__(self, split: SplitArrays, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.keys, self.table = pack_ratings(split)
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.rng = np.random.default_rng(seed)
        if shuffle:
            self.rng.shuffle(self.keys)
        self.chunk = max(1, self.batch_size // CHUNKS_PER_BATCH)
        self.per_batch = -(-self.batch_size // self.chunk)

    def __len__(self) -> int:
        n = len(self.keys)
        if not self.shuffle:
            return -(-n // self.batch_size)
        return -(-(-(-n // self.chunk)) // self.per_batch)

    def __iter__(self):
        """One epoch of uint64 tf.Tensors. Shuffled epochs are assembled (chunk gather, sort, tensor) by a
        background thread PREFETCH_BATCHES ahead: numpy and TF release the GIL, so it overlaps the step."""
        if not self.shuffle:
            keys = self.keys
            for start in range(0, len(keys), self.batch_size):
                yield tf.constant(keys[start:start + self.batch_size])
            return
        order = self.rng.permutation(-(-len(self.keys) // self.chunk))   # drawn here: seeded epoch order
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for batch in self._shuffled_epoch(order):
                    if not put(tf.constant(batch)):
                        return
                put(None)
            except BaseException as exc:   # re-raised in the consumer
                put(exc)

        worker = threading.Thread(target=produce, name="rating-batches", daemon=True)
        worker.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _shuffled_epoch(self, order: np.ndarray):
        keys, n = self.keys, len(self.keys)
        full = n // self.chunk
        grid = keys[:full * self.chunk].reshape(full, self.chunk)
        for start in range(0, len(order), self.per_batch):
            picked = order[start:start + self.per_batch]
            if picked.max() < full:
                batch = grid[picked].reshape(-1)
            else:
                batch = np.concatenate([keys[c * self.chunk:(c + 1) * self.chunk] for c in picked])
            batch.sort()
            yield batch

    @property
    def rating_table(self) -> tf.Tensor:
        if getattr(self, "_table_tensor", None) is None:
            self._table_tensor = tf.constant(self.table)
        return self._table_tensor

    def unpacked(self, keys) -> tuple[dict, np.ndarray]:
        """A batch as the Keras model's inputs and target (numpy)."""
        keys = np.asarray(keys)
        user = (keys >> np.uint64(CODE_BITS + ANIME_BITS)).astype(np.int32)
        anime = ((keys >> np.uint64(CODE_BITS)) & np.uint64((1 << ANIME_BITS) - 1)).astype(np.int32)
        rating = self.table[(keys & np.uint64(0xFF)).astype(np.uint8)]
        return {"user": user, "anime": anime}, rating
