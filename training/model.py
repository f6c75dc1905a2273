"""The matrix-factorisation models and their learning-rate schedule, made to learn at any data size.

`build_rating_model` / `build_ranking_model` are the Keras models that are exported; `WarmupExpDecay` the
warm-up-then-decay schedule.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf


# The base schedule, tuned for ~5,000 steps per epoch (50M rows at batch 10,000).
BASE_START_LR, BASE_MIN_LR, BASE_MAX_LR = 1e-5, 1e-5, 5e-5
BASE_RAMPUP_EPOCHS, BASE_EXP_DECAY = 5, 0.8
REFERENCE_STEPS_PER_EPOCH = 5000
MAX_LR_CAP = 1e-2
MIN_STEPS_PER_EPOCH = 50


def build_rating_model(n_users: int, n_anime: int, dim: int = 128, seed: int = 0) -> keras.Model:
    """The rating objective's network: cosine of the two embeddings -> Dense -> BatchNorm -> sigmoid."""
    init = keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
    user = keras.Input(name="user", shape=(1,), dtype="int32")
    anime = keras.Input(name="anime", shape=(1,), dtype="int32")
    u = keras.layers.Embedding(n_users, dim, name="user_embedding", embeddings_initializer=init)(user)
    a = keras.layers.Embedding(n_anime, dim, name="anime_embedding", embeddings_initializer=init)(anime)
    x = keras.layers.Dot(axes=2, normalize=True, name="cosine")([u, a])
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1, kernel_initializer=keras.initializers.HeNormal(seed=seed))(x)
    x = keras.layers.BatchNormalization()(x)
    out = keras.layers.Activation("sigmoid")(x)
    return keras.Model(inputs=[user, anime], outputs=out, name="fuserank_mf")


def batch_size_for(n_train: int, requested: int = 10_000) -> int:
    """A batch of 10,000, shrunk so that even a small sample gets MIN_STEPS_PER_EPOCH steps."""
    return int(max(256, min(requested, n_train // MIN_STEPS_PER_EPOCH)))


@keras.saving.register_keras_serializable(package="fuserank")
class WarmupExpDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The base schedule's shape (linear warm-up over 5 epochs, then x0.8 per epoch) expressed in steps.

    The rates are scaled by REFERENCE_STEPS_PER_EPOCH / steps_per_epoch (capped): with 50x fewer
    steps per epoch each step must move 50x further for the same per-epoch progress. At the reference
    scale (5,000 steps per epoch) this is exactly the base schedule.
    """

    def __init__(self, steps_per_epoch: int, scale: float | None = None):
        self.steps_per_epoch = int(steps_per_epoch)
        if scale is None:
            scale = min(max(1.0, REFERENCE_STEPS_PER_EPOCH / self.steps_per_epoch), MAX_LR_CAP / BASE_MAX_LR)
        self.scale = float(scale)

    def rate_at_epoch(self, epoch: float) -> float:
        lo, hi, floor = BASE_START_LR * self.scale, BASE_MAX_LR * self.scale, BASE_MIN_LR * self.scale
        if epoch < BASE_RAMPUP_EPOCHS:
            return lo + (hi - lo) * epoch / BASE_RAMPUP_EPOCHS
        return (hi - floor) * BASE_EXP_DECAY ** (epoch - BASE_RAMPUP_EPOCHS) + floor

    def __call__(self, step):
        epoch = tf.cast(step, tf.float32) / self.steps_per_epoch
        lo, hi, floor = BASE_START_LR * self.scale, BASE_MAX_LR * self.scale, BASE_MIN_LR * self.scale
        warm = lo + (hi - lo) * epoch / BASE_RAMPUP_EPOCHS
        decay = (hi - floor) * tf.pow(BASE_EXP_DECAY, epoch - BASE_RAMPUP_EPOCHS) + floor
        return tf.where(epoch < BASE_RAMPUP_EPOCHS, warm, decay)

    @property
    def peak(self) -> float:
        """The highest rate (end of warm-up): `rate / peak` is the schedule's shape, from 0.2 to 1."""
        return BASE_MAX_LR * self.scale

    def get_config(self):
        return {"steps_per_epoch": self.steps_per_epoch, "scale": self.scale}


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


@keras.saving.register_keras_serializable(package="fuserank")
class CosineSoftmaxLogits(keras.layers.Layer):
    """Holds the anime embeddings; maps a user vector to cosine/temperature logits over every anime."""

    def __init__(self, n_anime: int, dim: int, temperature: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_anime, self.dim, self.temperature, self.seed = n_anime, dim, temperature, seed

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.n_anime, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.1, seed=self.seed))

    def call(self, user_vectors):
        u = keras.ops.normalize(user_vectors, axis=-1)
        v = keras.ops.normalize(self.embeddings, axis=-1)
        return keras.ops.matmul(u, keras.ops.transpose(v)) / self.temperature

    def get_config(self):
        return {**super().get_config(), "n_anime": self.n_anime, "dim": self.dim,
                "temperature": self.temperature, "seed": self.seed}


def build_ranking_model(n_users: int, n_anime: int, dim: int = 128, seed: int = 0,
                        temperature: float = 0.1) -> keras.Model:
    """Same 128-d user/anime embeddings and cosine, trained to rank: softmax over all anime.

    Each rating is a positive for its user against every other anime, so the embeddings learn what a
    user watches and likes, which is what the hybrid's cosine searches need.
    """
    init = keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1)
    user = keras.Input(name="user", shape=(1,), dtype="int32")
    u = keras.layers.Embedding(n_users, dim, name="user_embedding", embeddings_initializer=init)(user)
    u = keras.layers.Flatten()(u)
    logits = CosineSoftmaxLogits(n_anime, dim, temperature, seed, name="anime_embedding")(u)
    return keras.Model(inputs=user, outputs=logits, name="fuserank_softmax_mf")
