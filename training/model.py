"""The seed's matrix-factorisation model and its learning-rate schedule, made to learn at any data size.

`build_rating_model` / `build_ranking_model` are the Keras models that are exported; `WarmupExpDecay` the
seed's schedule. `SparseRatingTrainer` (bottom) trains the rating model at full MyAnimeList scale on CPU:
a hand-written step that reads and writes only the embedding rows in the batch (row-wise Adagrad by
default, or Adam made equal to the dense one), instead of Keras' Adam, which rewrites all 42M embedding
weights and their moments every step.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from fuserank.training import fused

# The seed's schedule, tuned for ~5,000 steps per epoch (50M rows at batch 10,000).
SEED_START_LR, SEED_MIN_LR, SEED_MAX_LR = 1e-5, 1e-5, 5e-5
SEED_RAMPUP_EPOCHS, SEED_EXP_DECAY = 5, 0.8
REFERENCE_STEPS_PER_EPOCH = 5000
MAX_LR_CAP = 1e-2
MIN_STEPS_PER_EPOCH = 50


def build_rating_model(n_users: int, n_anime: int, dim: int = 128, seed: int = 0) -> keras.Model:
    """The seed's network, layer for layer: cosine of the two embeddings -> Dense -> BatchNorm -> sigmoid."""
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
    """The seed's batch of 10,000, shrunk so that even a small sample gets MIN_STEPS_PER_EPOCH steps."""
    return int(max(256, min(requested, n_train // MIN_STEPS_PER_EPOCH)))


@keras.saving.register_keras_serializable(package="fuserank")
class WarmupExpDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The seed's shape (linear warm-up over 5 epochs, then x0.8 per epoch) expressed in steps.

    The rates are scaled by REFERENCE_STEPS_PER_EPOCH / steps_per_epoch (capped): with 50x fewer
    steps per epoch each step must move 50x further for the same per-epoch progress. At the seed's
    scale (5,000 steps per epoch) this is exactly the seed's schedule.
    """

    def __init__(self, steps_per_epoch: int, scale: float | None = None):
        self.steps_per_epoch = int(steps_per_epoch)
        if scale is None:
            scale = min(max(1.0, REFERENCE_STEPS_PER_EPOCH / self.steps_per_epoch), MAX_LR_CAP / SEED_MAX_LR)
        self.scale = float(scale)

    def rate_at_epoch(self, epoch: float) -> float:
        lo, hi, floor = SEED_START_LR * self.scale, SEED_MAX_LR * self.scale, SEED_MIN_LR * self.scale
        if epoch < SEED_RAMPUP_EPOCHS:
            return lo + (hi - lo) * epoch / SEED_RAMPUP_EPOCHS
        return (hi - floor) * SEED_EXP_DECAY ** (epoch - SEED_RAMPUP_EPOCHS) + floor

    def __call__(self, step):
        epoch = tf.cast(step, tf.float32) / self.steps_per_epoch
        lo, hi, floor = SEED_START_LR * self.scale, SEED_MAX_LR * self.scale, SEED_MIN_LR * self.scale
        warm = lo + (hi - lo) * epoch / SEED_RAMPUP_EPOCHS
        decay = (hi - floor) * tf.pow(SEED_EXP_DECAY, epoch - SEED_RAMPUP_EPOCHS) + floor
        return tf.where(epoch < SEED_RAMPUP_EPOCHS, warm, decay)

    @property
    def peak(self) -> float:
        """The highest rate (end of warm-up): `rate / peak` is the schedule's shape, from 0.2 to 1."""
        return SEED_MAX_LR * self.scale

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


# --- Row-sparse training of the rating model ---------------------------------------------------------------
#
# Keras 3's Adam (TF 2.21) receives the embeddings' gradients as tf.IndexedSlices but densifies them in
# ``update_step`` (``ops.subtract(gradient, m)``): every step rewrites all 42M weights and 84M moment slots at
# MyAnimeList scale (~1 GB of memory traffic a step). `SparseRatingTrainer` reads and writes only the rows a
# batch touches, with one of two embedding optimisers (the 4 scalars of the Dense/BatchNorm head always use
# ordinary Adam on the schedule):
#
# * ``adagrad`` (the default): row-wise Adagrad (one accumulator per row, the embedding optimiser of DLRM /
#   FBGEMM / TorchRec). A row's accumulator grows by the mean squared gradient of every example that touches
#   it, and the row moves by -lr * (its summed gradient) / sqrt(accumulator). With no momentum a row outside
#   the batch would not move under a dense update either, so lazy and dense are the same algorithm, and the
#   only state is one float a row. The gradient is the per-example one (of the summed loss, not the mean), so
#   the step does not depend on the batch size; the rate is ADAGRAD_LR times the schedule's shape (warm-up,
#   then x0.8 per epoch). ADAGRAD_LR = 0.2 was picked on the 2020 sample's validation split (0.1-0.8 all
#   within 0.5% of its loss); there it reaches a lower validation and test loss than Keras' dense Adam
#   (benchmarks/README.md, "Training").
# * ``lazy_adam``: Adam restricted to the touched rows, made exactly Keras' dense Adam by catching each row up
#   on the momentum steps it skipped (see `_LazyAdam`): the same convergence as ``adam`` (tests check the
#   weights), ~2.5x slower than ``adagrad`` (three [rows, dim] tables to gather, update and scatter, and the
#   per-example gradient materialised for the second moment).

ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7   # keras.optimizers.Adam's defaults
KERAS_NORM_EPSILON = 1e-7                                  # keras.backend.epsilon(), used by Dot(normalize=True)
ADAGRAD_LR, ADAGRAD_EPSILON = 0.2, 1e-8
SPARSE_OPTIMIZERS = ("adagrad", "lazy_adam")
FLUSH_BLOCK_ROWS = 65536
CATCH_UP_MARGIN = 512


def _l2_normalize(x):
    """keras.ops.normalize exactly: x * min(rsqrt(sum x^2), 1/eps)."""
    inv = tf.minimum(tf.math.rsqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)), 1.0 / KERAS_NORM_EPSILON)
    return x * inv


def unpack_batch(keys, rating_table):
    """uint64 keys (user << 32 | anime << 8 | rating code, see dataset.pack_ratings) -> (user, anime, rating)."""
    keys = tf.bitcast(keys, tf.int64) if keys.dtype == tf.uint64 else keys
    user = tf.cast(tf.bitwise.right_shift(keys, 32), tf.int32)
    anime = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(keys, 8), 0xFFFFFF), tf.int32)
    code = tf.cast(tf.bitwise.bitwise_and(keys, 0xFF), tf.int32)
    return user, anime, tf.gather(rating_table, code)


class _RowGrad:
    """One side's per-example gradient of the summed loss, g_i = c_i * other_i - d_i * own_i, kept factored:
    Adagrad needs only mean_j g_ij^2, which the scalars give without materialising g (``sq``)."""

    def __init__(self, c, other, d, own, sq, n):
        self.c, self.other, self.d, self.own, self.sq, self.n = c, other, d, own, sq, n

    def scaled(self, coef):
        return (coef * self.c)[:, None] * self.other - (coef * self.d)[:, None] * self.own

    def of_mean_loss(self):
        """g_i / batch size: the per-example terms of the mean loss's gradient (what Keras differentiates)."""
        return self.scaled(tf.fill(tf.shape(self.c), 1.0 / self.n))


class _RowwiseAdagrad:
    """Row-wise Adagrad on one embedding table, in place in the Keras variable (see the comment above).

    Per step the batch's distinct rows are gathered once (``lookup``). A row's gradient sum is
    sum_i c_i other_i - (sum_i d_i) w_row (`_RowGrad`, own_i = w_row), and its step coef * that sum
    (coef = lr / sqrt(accumulator)): coef is folded into the per-example scale and the sum taken by one
    sorted SparseSegmentSum (TF's CPU ScatterSub / UnsortedSegmentSum kernels are 3-5x slower); the rows
    go back with one ScatterUpdate, an assignment, the fast scatter. The step's big tensors are thus 2
    gathers, 2 products, 1 segment sum and 1 scatter per table.
    """

    def __init__(self, weights: tf.Variable, epsilon: float = ADAGRAD_EPSILON):
        self.weights, self.epsilon = weights, float(epsilon)
        self.accumulator = tf.Variable(tf.zeros(weights.shape[0]), trainable=False, name="row_accumulator")

    def lookup(self, ids, t):
        """(per-example rows, their squared norms, context for `apply`)."""
        rows, inv = tf.unique(ids)
        # SparseSegmentSum wants the segment ids sorted: free when the batch is sorted by these ids
        order = tf.cond(tf.reduce_all(inv[1:] >= inv[:-1]), lambda: tf.range(tf.size(inv)), lambda: tf.argsort(inv))
        w = tf.gather(self.weights, rows)
        norm2 = tf.square(tf.math.reduce_euclidean_norm(w, axis=1))
        return tf.gather(w, inv), tf.gather(norm2, inv), (rows, inv, order, tf.gather(inv, order), w)

    def apply(self, ctx, grad: _RowGrad, t, lr):
        rows, inv, order, sorted_inv, w = ctx
        n = tf.shape(rows)[0]
        acc = tf.gather(self.accumulator, rows) + tf.math.unsorted_segment_sum(grad.sq, inv, n)
        coef = lr * tf.math.rsqrt(acc + self.epsilon)
        d_sum = tf.math.unsorted_segment_sum(grad.d, inv, n)
        pulled = tf.raw_ops.SparseSegmentSumWithNumSegments(
            data=(grad.c * tf.gather(coef, inv))[:, None] * grad.other, indices=order, segment_ids=sorted_inv,
            num_segments=n)
        # w - coef * (sum_i c_i other_i - d_sum * w)
        self.weights.scatter_update(tf.IndexedSlices(w * (1.0 + coef * d_sum)[:, None] - pulled, rows))
        self.accumulator.scatter_update(tf.IndexedSlices(acc, rows))

    def flush(self, t):
        pass


class _LazyAdam:
    """Keras' Adam on one embedding table, computed on the touched rows only.

    A row no batch touched for k steps would, under the dense update, have decayed its moments (m b1^k,
    v b2^k) and kept moving by sum_j alpha_j m b1^j / (sqrt(v b2^j) + eps) ~= m / (sqrt(v) + eps) *
    sum_j alpha_j r^j (r = b1 / sqrt(b2); exact but for eps). That sum is G[last] - r^k G[t-1] over the
    precomputed discounted step sizes G (`discounted_alphas`), so each row is caught up when a batch next
    touches it (before the forward pass) and every row at `flush` (end of epoch). The second moment sums
    the squares of the per-example gradients, as Keras' Adam does with an IndexedSlices gradient.
    """

    def __init__(self, weights: tf.Variable, trainer: "SparseRatingTrainer"):
        n, d = weights.shape
        self.weights, self.trainer = weights, trainer
        self.m = tf.Variable(tf.zeros((n, d)), trainable=False, name="m")
        self.v = tf.Variable(tf.zeros((n, d)), trainable=False, name="v")
        self.last = tf.Variable(tf.zeros(n), trainable=False, name="last_step")   # float32: exact to 2^24 steps

    def _catch_up(self, w, m, v, last, t):
        tr = self.trainer
        k = tf.maximum(t - 1.0 - last, 0.0)
        r = tr.beta_1 / math.sqrt(tr.beta_2)
        sums = tr.alpha_sums
        skipped = tf.gather(sums, tf.cast(last, tf.int32)) - tf.pow(r, k) * tf.gather(sums, tf.cast(t, tf.int32) - 1)
        w = w - skipped[:, None] * (m / (tf.sqrt(v) + tr.epsilon))
        return w, m * tf.pow(tr.beta_1, k)[:, None], v * tf.pow(tr.beta_2, k)[:, None]

    def lookup(self, ids, t):
        rows, inv = tf.unique(ids)
        w, m, v = self._catch_up(tf.gather(self.weights, rows), tf.gather(self.m, rows), tf.gather(self.v, rows),
                                 tf.gather(self.last, rows), t)
        return tf.gather(w, inv), tf.gather(tf.reduce_sum(w * w, axis=1), inv), (rows, inv, w, m, v)

    def apply(self, ctx, grad: _RowGrad, t, alpha):
        tr = self.trainer
        rows, inv, w, m, v = ctx
        g = grad.of_mean_loss()
        n = tf.shape(rows)[0]
        m = m + (tf.math.unsorted_segment_sum(g, inv, n) - m) * (1.0 - tr.beta_1)
        v = v + (tf.math.unsorted_segment_sum(tf.square(g), inv, n) - v) * (1.0 - tr.beta_2)
        w = w - alpha * m / (tf.sqrt(v) + tr.epsilon)
        for var, value in ((self.weights, w), (self.m, m), (self.v, v), (self.last, tf.fill([n], t))):
            var.scatter_update(tf.IndexedSlices(value, rows))

    def flush(self, t):
        """Catch every row up through step t - 1, in blocks."""
        n = int(self.weights.shape[0])
        for start in range(0, n, FLUSH_BLOCK_ROWS):
            rows = tf.range(start, min(start + FLUSH_BLOCK_ROWS, n))
            w, m, v = self._catch_up(*(x.sparse_read(rows) for x in (self.weights, self.m, self.v, self.last)), t)
            last = tf.fill([tf.size(rows)], t - 1.0)
            for var, value in ((self.weights, w), (self.m, m), (self.v, v), (self.last, last)):
                var.scatter_update(tf.IndexedSlices(value, rows))


class SparseRatingTrainer:
    """Trains `build_rating_model`'s weights in place, updating only the embedding rows each batch touches.

    The forward pass is the Keras model's written out on the gathered rows (Dot(normalize=True) -> Dense(1)
    -> BatchNormalization with batch statistics, moving averages at momentum 0.99 -> sigmoid, binary
    cross-entropy on the logit) and the backward pass is written by hand (per example the cosine's
    gradient is two scaled rows, so no [batch, dim] tensor is made that is not needed). The embeddings use
    ``optimizer`` (see the comment above); the Dense/BatchNorm head uses Adam on ``schedule``. With
    ``adagrad`` the row work runs in two fused C++ kernels (`fused`, kernels/rowwise_adagrad.cc) around the
    same `_head_backward`, unless they cannot be built here or ``fused_step=False``.
    A test checks the forward and gradients against Keras' own.

    Batches are uint64 key vectors (`dataset.RatingBatches`, `unpack_batch`). `train_epoch` / `evaluate`
    return the epoch's mean loss, MAE and MSE per example, as ``model.fit`` / ``model.evaluate`` report.
    """

    def __init__(self, model: keras.Model, schedule, optimizer: str = "adagrad",
                 embedding_learning_rate: float = ADAGRAD_LR, fused_step: bool = True):
        if optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {SPARSE_OPTIMIZERS}, got {optimizer!r}")
        self.model, self.schedule, self.optimizer = model, schedule, optimizer
        self.embedding_learning_rate = float(embedding_learning_rate)
        self.beta_1, self.beta_2, self.epsilon = ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON
        user_layer, anime_layer = model.get_layer("user_embedding"), model.get_layer("anime_embedding")
        self.dim = int(user_layer.output_dim)
        dense = next(l for l in model.layers if isinstance(l, keras.layers.Dense))
        norm = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
        self.momentum, self.norm_epsilon = float(norm.momentum), float(norm.epsilon)
        # Keras variables are tf.Variables underneath (.value): updated in place, nothing to copy back
        self.head = [v.value for v in (dense.kernel, dense.bias, norm.gamma, norm.beta)]
        self.moving_mean, self.moving_var = norm.moving_mean.value, norm.moving_variance.value
        self.head_m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.head]
        self.head_v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.head]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.sums = tf.Variable(tf.zeros(4, tf.float64), trainable=False, name="epoch_sums")  # loss, |e|, e^2, n
        self.alpha_sums = tf.Variable(tf.zeros(1), shape=tf.TensorShape([None]), trainable=False, name="alpha_sums")
        self.horizon = 0
        # adagrad runs as two fused C++ ops when they can be built here (training/fused.py), else as TF ops
        self.fused = fused.load() if optimizer == "adagrad" and fused_step else None
        make = (lambda w: _RowwiseAdagrad(w)) if optimizer == "adagrad" else (lambda w: _LazyAdam(w, self))
        self.users, self.anime = make(user_layer.embeddings.value), make(anime_layer.embeddings.value)
        specs = [tf.TensorSpec([None], tf.uint64), tf.TensorSpec([256], tf.float32)]
        self._train = tf.function(self._train_step, input_signature=specs)
        self._eval = tf.function(self._eval_step, input_signature=specs)
        self._flush = tf.function(self._flush_all)

    # -- the graph -------------------------------------------------------------------------------------------
    def _logits(self, u, a, head, training):
        """Per-example embedding rows -> logit, as the Keras model computes it (used for evaluation)."""
        kernel, bias, gamma, beta = head
        x = tf.reduce_sum(_l2_normalize(u) * _l2_normalize(a), axis=1, keepdims=True) * kernel[0, 0] + bias
        if training:
            mean, var = tf.nn.moments(x, axes=[0])
        else:
            mean, var = self.moving_mean, self.moving_var
        return tf.nn.batch_normalization(x, mean, var, beta, gamma, self.norm_epsilon)[:, 0], mean, var

    def forward_backward(self, u, a, y, uu=None, aa=None):
        """Training-mode forward and hand-written backward on per-example rows ``u``, ``a`` [batch, dim]
        (``uu``, ``aa``: their squared norms, when the caller has them).

        Returns (per-example loss, logits, batch mean, batch variance, user grad, anime grad, head grads):
        the embedding gradients are per example of the summed loss (`_RowGrad`), the head's of the mean loss.
        """
        uu = tf.reduce_sum(u * u, 1) if uu is None else uu
        aa = tf.reduce_sum(a * a, 1) if aa is None else aa
        loss, logits, mean, var, c, d_u, d_a, sq_u, sq_a, head_grads = self._head_backward(
            uu, aa, tf.reduce_sum(u * a, 1), y)
        n = tf.cast(tf.shape(y)[0], tf.float32)
        return (loss, logits, mean, var, _RowGrad(c, a, d_u, u, sq_u, n), _RowGrad(c, u, d_a, a, sq_a, n), head_grads)

    def _head_backward(self, uu, aa, ua, y):
        """Everything of the step that needs only the per-example scalars |u|^2, |a|^2, u.a: the head's
        forward and backward, and the embedding gradients' factors. A user row's per-example gradient (of
        the summed loss) is c a - d_u u, an anime row's c u - d_a a; sq_* is each one's mean square."""
        kernel, bias, gamma, beta = (tf.reshape(tf.convert_to_tensor(h), []) for h in self.head)
        n = tf.cast(tf.shape(y)[0], tf.float32)
        inv_u = tf.minimum(tf.math.rsqrt(uu), 1.0 / KERAS_NORM_EPSILON)
        inv_a = tf.minimum(tf.math.rsqrt(aa), 1.0 / KERAS_NORM_EPSILON)
        cos = ua * inv_u * inv_a
        x = cos * kernel + bias
        mean = tf.reduce_mean(x)
        var = tf.reduce_mean(tf.square(x - mean))
        rstd = tf.math.rsqrt(var + self.norm_epsilon)
        xhat = (x - mean) * rstd
        logits = gamma * xhat + beta
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
        dz = (tf.sigmoid(logits) - y) / n                          # d mean-loss / d logit
        dxhat = dz * gamma
        dx = rstd * (dxhat - tf.reduce_mean(dxhat) - xhat * tf.reduce_mean(dxhat * xhat))
        head_grads = [tf.reduce_sum(dx * cos), tf.reduce_sum(dx), tf.reduce_sum(dz * xhat), tf.reduce_sum(dz)]
        dcos = dx * kernel * n                                      # per example, of the summed loss
        c = dcos * inv_u * inv_a
        d_u, d_a = dcos * cos * inv_u * inv_u, dcos * cos * inv_a * inv_a
        dim = float(self.dim)
        sq_u = tf.maximum(c * c * aa + d_u * d_u * uu - 2.0 * c * d_u * ua, 0.0) / dim
        sq_a = tf.maximum(c * c * uu + d_a * d_a * aa - 2.0 * c * d_a * ua, 0.0) / dim
        return loss, logits, mean, var, c, d_u, d_a, sq_u, sq_a, head_grads

    def _accumulate(self, y, logits, loss):
        err = tf.sigmoid(logits) - y
        self.sums.assign_add(tf.cast(tf.stack([tf.reduce_sum(loss), tf.reduce_sum(tf.abs(err)),
                                               tf.reduce_sum(tf.square(err)), tf.cast(tf.size(y), tf.float32)]),
                                     tf.float64))

    def _alpha(self):
        """(t, Adam's bias-corrected step size at t, the schedule's shape) for the step about to run."""
        lr = tf.cast(self.schedule(self.iterations), tf.float32)
        t = tf.cast(self.iterations + 1, tf.float32)
        shape = lr / float(getattr(self.schedule, "peak", 1.0) or 1.0)
        return t, lr * tf.sqrt(1.0 - tf.pow(self.beta_2, t)) / (1.0 - tf.pow(self.beta_1, t)), shape

    def fused_cosine_rows(self, user, anime):
        """The fused forward kernel on this trainer's tables: per example |u|^2, |a|^2, u.a."""
        return self.fused.fuse_rank_cosine_rows(self.users.weights.handle, self.anime.weights.handle, user, anime)

    def fused_update(self, user, anime, c, d_u, d_a, sq_u, sq_a, lr):
        """The fused row-wise Adagrad kernel on this trainer's tables and accumulators (in place)."""
        self.fused.fuse_rank_rowwise_adagrad(self.users.weights.handle, self.users.accumulator.handle,
                                             self.anime.weights.handle, self.anime.accumulator.handle, user, anime,
                                             c, d_u, d_a, sq_u, sq_a, lr, epsilon=self.users.epsilon)

    def _train_step(self, keys, rating_table):
        user, anime, y = unpack_batch(keys, rating_table)
        t, alpha, shape = self._alpha()
        if self.fused is not None:
            loss, logits, mean, var, c, d_u, d_a, sq_u, sq_a, head_grads = self._head_backward(
                *self.fused_cosine_rows(user, anime), y)
            self.fused_update(user, anime, c, d_u, d_a, sq_u, sq_a, self.embedding_learning_rate * shape)
        else:
            u, uu, user_ctx = self.users.lookup(user, t)
            a, aa, anime_ctx = self.anime.lookup(anime, t)
            loss, logits, mean, var, grad_u, grad_a, head_grads = self.forward_backward(u, a, y, uu, aa)
            step = self.embedding_learning_rate * shape if self.optimizer == "adagrad" else alpha
            self.users.apply(user_ctx, grad_u, t, step)
            self.anime.apply(anime_ctx, grad_a, t, step)
        self._accumulate(y, logits, loss)
        for var_, m, v, g in zip(self.head, self.head_m, self.head_v, head_grads):
            g = tf.reshape(g, tf.shape(var_))
            m.assign_add((g - m) * (1.0 - self.beta_1))
            v.assign_add((tf.square(g) - v) * (1.0 - self.beta_2))
            var_.assign_sub(alpha * m / (tf.sqrt(v) + self.epsilon))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_var.assign(self.moving_var * self.momentum + var * (1.0 - self.momentum))
        self.iterations.assign_add(1)
        return tf.reduce_mean(loss)

    def _eval_step(self, keys, rating_table):
        user, anime, y = unpack_batch(keys, rating_table)
        u, a = tf.gather(self.users.weights, user), tf.gather(self.anime.weights, anime)
        logits, _, _ = self._logits(u, a, self.head, training=False)
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
        self._accumulate(y, logits, loss)
        return tf.reduce_sum(loss)

    def _flush_all(self):
        t = tf.cast(self.iterations + 1, tf.float32)
        self.users.flush(t)
        self.anime.flush(t)

    # -- lazy Adam's discounted step sizes ------------------------------------------------------------------
    def discounted_alphas(self, horizon: int) -> np.ndarray:
        """G[s] = sum_{j >= 1} alpha(s + j) r^j for s = 0..horizon (float64 backward recurrence), where
        alpha(s) = lr(s - 1) sqrt(1 - b2^s) / (1 - b1^s) is Adam's step size at step s as Keras computes it."""
        steps = np.arange(1, horizon + 1, dtype=np.float64)
        lr = self.schedule(tf.range(horizon, dtype=tf.int64)) if callable(self.schedule) else self.schedule
        lr = np.broadcast_to(np.asarray(lr, np.float64), steps.shape)
        alpha = lr * np.sqrt(1.0 - self.beta_2 ** steps) / (1.0 - self.beta_1 ** steps)
        r = self.beta_1 / math.sqrt(self.beta_2)
        sums = np.zeros(horizon + 1)
        for s in range(horizon - 1, -1, -1):   # ~1 us a step: 100k steps in 0.1 s
            sums[s] = r * (alpha[s] + sums[s + 1])
        return sums.astype(np.float32)

    def _ensure_horizon(self, last_step: int) -> None:
        """G must reach CATCH_UP_MARGIN steps past the last step to run (r^512 ~ 1e-23: the tail is nil)."""
        need = int(last_step) + CATCH_UP_MARGIN
        if self.optimizer == "lazy_adam" and self.horizon <= need:
            self.horizon = 2 * need
            self.alpha_sums.assign(self.discounted_alphas(self.horizon))

    # -- epochs ----------------------------------------------------------------------------------------------
    def _run(self, step, batches, rating_table) -> dict:
        self.sums.assign(tf.zeros(4, tf.float64))
        table = tf.convert_to_tensor(rating_table, tf.float32)
        for keys in batches:
            step(keys, table)
        loss, abs_err, sq_err, n = self.sums.numpy()
        n = max(n, 1.0)
        return {"loss": loss / n, "mae": abs_err / n, "mse": sq_err / n}

    def train_epoch(self, batches, rating_table=None) -> dict:
        """One pass over uint64 key batches (e.g. `dataset.RatingBatches`, whose rating table is the default),
        then `flush`; mean loss/MAE/MSE over the epoch's examples (the model's weights are current after)."""
        if not hasattr(batches, "__len__"):
            batches = list(batches)
        self._ensure_horizon(int(self.iterations.numpy()) + len(batches) + 1)
        logs = self._run(self._train, batches, batches.rating_table if rating_table is None else rating_table)
        self._flush()
        return logs

    def evaluate(self, batches, rating_table=None) -> dict:
        """Loss/MAE/MSE with the moving BatchNorm statistics (what `model.evaluate` reports)."""
        return self._run(self._eval, batches, batches.rating_table if rating_table is None else rating_table)
