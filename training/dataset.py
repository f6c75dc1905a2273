"""Reads the ingest output (Parquet via pyarrow) and feeds it to training.

The rating objective goes through tf.data (`to_dataset`); the ranking objective through `train.user_batches`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

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

    def take(self, rows: np.ndarray) -> "SplitArrays":
        """The rows selected by ``rows`` (a boolean mask or indices), every column alike."""
        return SplitArrays(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(*splits: "SplitArrays") -> "SplitArrays":
        """The splits' rows one after another (e.g. train + val + test for the refit on every rating)."""
        return SplitArrays(*(np.concatenate([getattr(s, f.name) for s in splits]) for f in fields(SplitArrays)))


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
