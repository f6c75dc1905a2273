"""The ranking objective's trainer: per-user softmax over a shared sample of anime, in one TF step.

Each step takes a batch of users with their weighted rated anime (ragged, flat rows). The softmax of a
user's cosine / temperature logits is normalised over a sample of ``negatives`` anime shared by the
batch, drawn from the anime's rating counts ^ 0.75 and corrected by log-Q (the estimated partition
function is sum_j exp(s_uj) / (S q_j)), plus the positive itself; with at least as many negatives as
anime it is the exact softmax over the catalogue. A batch costs users x negatives x dim instead of
users x catalogue x dim. Early stopping watches the exact softmax loss on the validation split (the
user's other anime masked, as `train.multinomial_loss`), on at most ``val_users`` users.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from fuserank.training.dataset import SplitArrays

log = logging.getLogger("fuserank.train")

SAMPLE_POWER = 0.75
DEFAULT_NEGATIVES = 2048
VAL_USERS = 20_000
VAL_BLOCK = 1024


def rating_weights(raw: np.ndarray, positive_weight: float, like_threshold: int, low_weight: float,
                   low_threshold: int) -> np.ndarray:
    """Each rating's weight in the ranking loss: ``positive_weight`` when liked, ``low_weight`` when disliked."""
    return np.where(raw >= like_threshold, positive_weight,
                    np.where(raw <= low_threshold, low_weight, 1.0)).astype(np.float32)


class UserRows:
    """A split grouped by user: ``rows(users)`` gives the batch's flat (row id, anime, weight)."""

    def __init__(self, split: SplitArrays, n_users: int, weights: np.ndarray):
        order = np.argsort(split.user, kind="stable")
        self.anime, self.weight = split.anime[order].astype(np.int32), weights[order]
        counts = np.bincount(split.user, minlength=n_users)
        self.starts = np.concatenate(([0], np.cumsum(counts)))[:-1]
        self.counts = counts
        self.users = np.flatnonzero(counts).astype(np.int32)

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lens = self.counts[users]
        rowid = np.repeat(np.arange(len(users), dtype=np.int32), lens)
        offsets = np.concatenate(([0], np.cumsum(lens)))[:-1]
        idx = np.repeat(self.starts[users] - offsets, lens) + np.arange(int(lens.sum()))
        return rowid, self.anime[idx], self.weight[idx]


class SampledSoftmaxTrainer:
    """Trains the ranking model's two embedding tables (Keras variables) with Adam on the sampled softmax."""

    def __init__(self, user_table: tf.Variable, anime_table: tf.Variable, temperature: float,
                 anime_counts: np.ndarray, schedule, negatives: int = DEFAULT_NEGATIVES, seed: int = 0):
        import keras
        self.users, self.anime = user_table, anime_table
        self.temperature = float(temperature)
        n_anime = int(anime_table.shape[0])
        self.full = negatives >= n_anime
        q = (np.asarray(anime_counts, np.float64) + 1.0) ** SAMPLE_POWER
        q /= q.sum()
        self.negatives = n_anime if self.full else int(negatives)
        self.cdf = tf.constant(np.cumsum(q), tf.float64)
        self.log_sq = tf.constant(np.log(self.negatives * q), tf.float32)
        self.rng = tf.random.Generator.from_seed(seed)
        self.optimizer = keras.optimizers.Adam(learning_rate=schedule)
        self.optimizer.build([self.users, self.anime])
        spec = [tf.TensorSpec([None], tf.int32)] * 3 + [tf.TensorSpec([None], tf.float32)]
        self._step = tf.function(self._train_step, input_signature=spec)
        self._val = tf.function(self._val_loss, input_signature=[
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)])

    def _logits(self, users):
        u = tf.math.l2_normalize(tf.gather(self.users, users), axis=1)
        if self.full:
            cand = tf.range(tf.shape(self.anime)[0])
            correction = 0.0
        else:
            draw = self.rng.uniform([self.negatives], dtype=tf.float64)
            cand = tf.cast(tf.minimum(tf.searchsorted(self.cdf, draw), tf.shape(self.cdf)[0] - 1), tf.int32)
            correction = tf.gather(self.log_sq, cand)
        a = tf.math.l2_normalize(tf.gather(self.anime, cand), axis=1)
        return u, tf.matmul(u, a, transpose_b=True) / self.temperature - correction

    def _train_step(self, users, rowid, anime, weight):
        with tf.GradientTape() as tape:
            u, logits = self._logits(users)
            a_pos = tf.math.l2_normalize(tf.gather(self.anime, anime), axis=1)
            s_pos = tf.reduce_sum(tf.gather(u, rowid) * a_pos, axis=1) / self.temperature
            log_z = tf.gather(tf.reduce_logsumexp(logits, axis=1), rowid)
            if not self.full:
                log_z = tf.math.reduce_logsumexp(tf.stack([log_z, s_pos]), axis=0)
            loss = tf.reduce_sum(weight * (log_z - s_pos)) / tf.cast(tf.shape(users)[0], tf.float32)
        grads = tape.gradient(loss, [self.users, self.anime])
        self.optimizer.apply(grads, [self.users, self.anime])
        return loss

    def _val_loss(self, users, known, rowid, anime, weight):
        u = tf.math.l2_normalize(tf.gather(self.users, users), axis=1)
        a = tf.math.l2_normalize(self.anime, axis=1)
        logits = tf.matmul(u, a, transpose_b=True) / self.temperature
        shape = tf.shape(logits, out_type=tf.int64)
        mask = tf.scatter_nd(known, tf.ones(tf.shape(known)[:1], tf.bool), shape)
        logits = tf.where(mask, tf.constant(-1e9, logits.dtype), logits)
        picked = tf.gather_nd(tf.nn.log_softmax(logits, axis=-1), tf.stack([rowid, anime], axis=1))
        return tf.reduce_sum(weight * picked)

    def train_epoch(self, rows: UserRows, batch_users: int, rng: np.random.Generator) -> float:
        order = rng.permutation(rows.users)
        total = 0.0
        for start in range(0, len(order), batch_users):
            users = order[start:start + batch_users]
            rowid, anime, weight = rows.rows(users)
            total += float(self._step(tf.constant(users), tf.constant(rowid), tf.constant(anime),
                                      tf.constant(weight))) * len(users)
        return total / len(order)

    def val_loss(self, val: UserRows, known: UserRows, users: np.ndarray) -> float:
        """Mean over ``users`` of the exact softmax loss of their validation anime, their other anime masked."""
        key = (id(val), id(known), len(users))
        if getattr(self, "_val_key", None) != key:       # the blocks' index tensors, built once per fit
            self._val_key, self._val_blocks = key, []
            for start in range(0, len(users), VAL_BLOCK):
                block = users[start:start + VAL_BLOCK]
                k_row, k_anime, _ = known.rows(block)
                rowid, anime, weight = val.rows(block)
                self._val_blocks.append(tuple(tf.constant(x) for x in (
                    block, np.stack([k_row, k_anime], 1).astype(np.int64), rowid.astype(np.int64),
                    anime.astype(np.int64), weight)))
        total = -sum(float(self._val(*b)) for b in self._val_blocks)
        return total / max(1, len(users))


def train_sampled(trainer: SampledSoftmaxTrainer, rows: UserRows, val: UserRows | None, known: UserRows | None,
                  batch_users: int, epochs: int, patience: int, seed: int, on_epoch) -> dict:
    """Epochs with early stopping on the validation loss (best weights restored); the Keras-like history."""
    rng = np.random.default_rng(seed)
    val_users = None
    if val is not None:
        val_users = val.users
        if len(val_users) > VAL_USERS:
            val_users = np.sort(rng.choice(val_users, VAL_USERS, replace=False))
    history: dict[str, list] = {"loss": []}
    best, best_weights, wait = np.inf, None, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        logs = {"loss": trainer.train_epoch(rows, batch_users, rng)}
        if val is not None:
            logs["val_loss"] = trainer.val_loss(val, known, val_users)
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        log.debug("epoch %d: %.2f s", epoch + 1, time.perf_counter() - t0)
        on_epoch(epoch, logs)
        if val is None:
            continue
        if logs["val_loss"] < best:
            best, wait = logs["val_loss"], 0
            best_weights = (trainer.users.numpy(), trainer.anime.numpy())
        else:
            wait += 1
            if wait >= patience:
                break
    if best_weights is not None:
        trainer.users.assign(best_weights[0])
        trainer.anime.assign(best_weights[1])
    return history
