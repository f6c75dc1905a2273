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
from fuserank.schemas import ingest as S


@dataclass
class SplitArrays:
    """The columns of ``schemas.ingest.SPLIT_SCHEMA`` as numpy arrays."""

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
    path = os.path.join(data_dir, S.MANIFEST)
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: missing; run `fuserank ingest` first")
    with open(path) as fh:
        return json.load(fh)


def read_output(data_dir: str, table: str) -> dict[str, np.ndarray] | None:
    """One ingest output table as numpy columns typed by its schema, or None when the file is absent."""
    path = os.path.join(data_dir, S.parquet_file(table))
    if not os.path.exists(path):
        return None
    schema = S.OUTPUT_SCHEMAS[table]
    t = pq.read_table(path, columns=schema.names)
    return {f.name: t[f.name].to_numpy(zero_copy_only=False).astype(f.type.to_pandas_dtype()) for f in schema}


def load_split(data_dir: str, split: str) -> SplitArrays:
    columns = read_output(data_dir, split)
    if columns is None:
        raise ArtifactError(f"{os.path.join(data_dir, S.parquet_file(split))}: missing from the ingest output")
    return SplitArrays(**columns)


def load_splits(data_dir: str) -> tuple[SplitArrays, ...]:
    """Every split, in ``schemas.ingest.SPLITS`` order (train, val, test)."""
    return tuple(load_split(data_dir, split) for split in S.SPLITS)


def load_unrated(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    columns = read_output(data_dir, "unrated")
    if columns is None:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    return columns["user"], columns["anime"]


def to_dataset(arrays: tuple, batch_size: int, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Batches of ``(features, target[, weight])``; shuffling is a fresh permutation per epoch."""
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(arrays[1]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
