"""`fuserank train`: fit the matrix-factorisation model on the ingest output and export the artifact."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fuserank.config import RANKING
from fuserank.errors import FuseRankError
from fuserank.training import dataset
from fuserank.training.export import export_artifact
from fuserank.training.model import (ADAGRAD_LR, SparseRatingTrainer, WarmupExpDecay, batch_size_for,
                                     build_ranking_model, build_rating_model, steps_per_epoch)
from fuserank.training.plots import plot_history
from fuserank.training.tracking import NullExperiment, start_experiment

log = logging.getLogger("fuserank.train")
OBJECTIVES = ("rating", "ranking")
DEFAULT_EPOCHS = {"rating": 20, "ranking": 150}
DEFAULT_PATIENCE = {"rating": 3, "ranking": 10}
RANKING_MAX_BATCH_USERS = 1024
RANKING_MIN_STEPS = 16
OPTIMIZERS = ("adagrad", "lazy_adam", "adam")
PROGRESS_EVERY_S = 15.0
DEFAULT_OPTIMIZER = {"rating": "adagrad", "ranking": "adam"}


class EpochLog(keras.callbacks.Callback):
    """A progress line per epoch (loss, MAE, learning rate; at INFO the first, the last and one every
    ``PROGRESS_EVERY_S``, the others at DEBUG), and the LR in the history for the plot."""

    def __init__(self, schedule: WarmupExpDecay, epochs: int, experiment):
        super().__init__()
        self.schedule, self.epochs, self.experiment = schedule, epochs, experiment
        self.t0 = self.shown_at = time.time()
        self.learning_rates: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = self.schedule.rate_at_epoch(epoch + 1)
        self.learning_rates.append(logs["learning_rate"])
        self.experiment.log_metrics({k: float(v) for k, v in logs.items()}, epoch=epoch + 1)
        shown = " ".join(f"{k}={logs[k]:.4f}" for k in ("loss", "val_loss", "mae", "val_mae") if k in logs)
        now = time.time()
        level = logging.DEBUG
        if epoch == 0 or epoch + 1 == self.epochs or now - self.shown_at >= PROGRESS_EVERY_S:
            level, self.shown_at = logging.INFO, now
        log.log(level, "epoch %d/%d %s lr=%.2e (%.1fs)", epoch + 1, self.epochs, shown, logs["learning_rate"],
                now - self.t0)


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Swap the finished artifact into place, so a failed run never leaves a half-written model."""
    old = None
    if os.path.exists(out_dir):
        old = out_dir.rstrip("/") + f".old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class FitResult:
    model: keras.Model
    history: dict
    params: dict
    schedule: WarmupExpDecay

    @property
    def user_embeddings(self) -> np.ndarray:
        return self.model.get_layer("user_embedding").get_weights()[0]

    @property
    def anime_embeddings(self) -> np.ndarray:
        """Anime embeddings oriented so that a higher cosine always means a better predicted rating.

        The rating model maps the cosine through Dense(1) and BatchNormalization before the sigmoid;
        when their combined slope is negative the model predicts high ratings for *low* cosines, and
        every cosine-based search downstream would rank backwards. Flipping the anime side fixes the
        orientation without changing a single prediction's ordering.
        """
        emb = self.model.get_layer("anime_embedding").get_weights()[0]
        return emb * self.rating_direction()

    def rating_direction(self) -> float:
        if self.params["objective"] != "rating":
            return 1.0
        dense = next(l for l in self.model.layers if isinstance(l, keras.layers.Dense))
        norm = next(l for l in self.model.layers if isinstance(l, keras.layers.BatchNormalization))
        slope = float(dense.get_weights()[0].ravel()[0]) * float(norm.gamma.numpy().ravel()[0])
        return -1.0 if slope < 0 else 1.0


def _inputs(split: dataset.SplitArrays):
    """(features, target) arrays for the rating objective: one example per rating."""
    return {"user": split.user, "anime": split.anime}, split.rating


def multinomial_loss(y_true, logits):
    """Softmax cross-entropy summed over each user's rated anime (weights in ``y_true``).

    Entries of ``y_true`` below zero mark anime already on the user's list: they leave the softmax,
    so held-out loss measures the ranking the scorer serves (among candidates) and does not rise
    merely because the model grows confident about what the user already rated.
    """
    known = y_true < 0
    logits = tf.where(known, tf.constant(-1e9, logits.dtype), logits)
    return -tf.reduce_sum(tf.maximum(y_true, 0.0) * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def user_batches(split: dataset.SplitArrays, n_users: int, n_anime: int, batch_users: int, shuffle: bool,
                 seed: int, positive_weight: float, like_threshold: int, low_weight: float = 1.0,
                 low_threshold: int = 0, known: list[dataset.SplitArrays] = ()) -> tf.data.Dataset:
    """Batches of users with their weighted rated anime as a dense target row.

    Equivalent to a softmax cross-entropy per rating, but each user's logits over all anime are
    computed once per epoch instead of once per rating: ~n_ratings/n_users times less work.
    """
    users = np.flatnonzero(np.bincount(split.user, minlength=n_users)).astype(np.int32)
    weight = np.where(split.raw_rating >= like_threshold, positive_weight,
                      np.where(split.raw_rating <= low_threshold, low_weight, 1.0)).astype(np.float32)
    all_users = np.concatenate([split.user] + [k.user for k in known])
    all_anime = np.concatenate([split.anime] + [k.anime for k in known])
    weight = np.concatenate([weight] + [np.full(len(k.user), -1.0, np.float32) for k in known])
    order = np.lexsort((all_anime, all_users))
    counts = np.bincount(all_users, minlength=n_users)
    splits = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    items = tf.RaggedTensor.from_row_splits(all_anime[order].astype(np.int64), splits)
    weights = tf.RaggedTensor.from_row_splits(weight[order], splits)

    def densify(u):
        it, wt = tf.gather(items, u), tf.gather(weights, u)
        idx = tf.stack([it.value_rowids(), it.flat_values], axis=1)
        return {"user": u}, tf.scatter_nd(idx, wt.flat_values, tf.stack([tf.shape(u, tf.int64)[0], n_anime]))

    ds = tf.data.Dataset.from_tensor_slices(users)
    if shuffle:
        ds = ds.shuffle(len(users), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_users).map(densify, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class TrainingOptionError(FuseRankError, ValueError):
    """An objective/optimiser combination `fit` cannot train (the CLI prints it and exits 2)."""


def _check_options(objective: str, optimizer: str | None) -> str:
    """The optimiser to use (the objective's default when None), or TrainingOptionError."""
    if objective not in OBJECTIVES:
        raise TrainingOptionError(f"--objective must be one of {OBJECTIVES}, got {objective!r}")
    optimizer = optimizer or DEFAULT_OPTIMIZER[objective]
    if optimizer not in OPTIMIZERS:
        raise TrainingOptionError(f"--optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if objective == "ranking" and optimizer != "adam":
        raise TrainingOptionError(f"--optimizer {optimizer} trains the rating objective only; ranking uses adam "
                                  "(its softmax touches every anime every step)")
    return optimizer


def fit(train_s: dataset.SplitArrays, val_s: dataset.SplitArrays | None, n_users: int, n_anime: int,
        objective: str = "rating", embedding_dim: int = 128, seed: int = 0, epochs: int = 20,
        batch_size: int = 10_000, patience: int = 3, checkpoint_path: str | None = None, experiment=None,
        temperature: float = RANKING.temperature, positive_weight: float = RANKING.positive_weight,
        like_threshold: int = 8, low_weight: float = RANKING.low_weight, low_threshold: int = RANKING.low_threshold,
        optimizer: str | None = None) -> FitResult:
    """Train one model on in-memory splits (used by `train` and by the offline evaluation).

    ``rating``: the seed's per-rating regression, batches of ratings. ``ranking``: softmax over all
    anime, batches of users (``batch_size`` then bounds users per batch, shrunk to give >= 16 steps);
    a rating counts ``positive_weight`` times when >= ``like_threshold`` and ``low_weight`` times when
    <= ``low_threshold`` (watched but disliked: weaker evidence of taste; chosen on the 2020 validation carve).

    ``optimizer`` (rating): ``adagrad`` (default) or ``lazy_adam`` train with `SparseRatingTrainer`, which
    updates only the embedding rows each batch touches (row-wise Adagrad, or Adam made equal to the dense
    one), fed packed batches from memory (`dataset.RatingBatches`); ``adam`` is Keras' Adam through
    ``model.fit`` (every embedding row and moment slot rewritten every step). The ranking objective
    always uses ``adam``: its softmax touches every anime every step anyway.
    """
    optimizer = _check_options(objective, optimizer)
    keras.utils.set_random_seed(seed)
    experiment = experiment or NullExperiment()
    if objective == "rating":
        bs = batch_size_for(len(train_s), batch_size)
        spe = steps_per_epoch(len(train_s), bs)
        if optimizer == "adam":
            train_ds = dataset.to_dataset(_inputs(train_s), bs, shuffle=True, seed=seed)
            val_ds = dataset.to_dataset(_inputs(val_s), bs, shuffle=False) if val_s is not None else None
        else:
            train_ds = dataset.RatingBatches(train_s, bs, shuffle=True, seed=seed)
            spe = len(train_ds)
            val_ds = dataset.RatingBatches(val_s, bs, shuffle=False) if val_s is not None else None
    else:
        active = int(np.count_nonzero(np.bincount(train_s.user, minlength=n_users)))
        bs = int(max(8, min(batch_size, RANKING_MAX_BATCH_USERS, active // RANKING_MIN_STEPS)))
        spe = steps_per_epoch(active, bs)
        options = dict(positive_weight=positive_weight, like_threshold=like_threshold, low_weight=low_weight,
                       low_threshold=low_threshold)
        train_ds = user_batches(train_s, n_users, n_anime, bs, True, seed, **options)
        val_ds = (user_batches(val_s, n_users, n_anime, bs, False, seed, known=[train_s], **options)
                  if val_s is not None else None)
    schedule = WarmupExpDecay(spe)
    if objective == "rating":
        model = build_rating_model(n_users, n_anime, embedding_dim, seed)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="binary_crossentropy",
                      metrics=["mae", "mse"])
    else:
        model = build_ranking_model(n_users, n_anime, embedding_dim, seed, temperature)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss=multinomial_loss)
    params = {"objective": objective, "optimizer": optimizer, "epochs": epochs, "embedding_dim": embedding_dim,
              "seed": seed, "batch_size": bs, "steps_per_epoch": spe, "lr_scale": schedule.scale,
              "patience": patience, "n_users": n_users, "n_anime": n_anime, "n_train": len(train_s)}
    if objective == "ranking":
        params.update(temperature=temperature, positive_weight=positive_weight, like_threshold=like_threshold,
                      low_weight=low_weight, low_threshold=low_threshold)
    if optimizer == "adagrad":
        params["embedding_learning_rate"] = ADAGRAD_LR
    log.info("training %s", params)
    experiment.log_parameters(params)

    epoch_log = EpochLog(schedule, epochs, experiment)
    if optimizer != "adam":
        trainer = SparseRatingTrainer(model, schedule, optimizer)
        history = _fit_sparse(trainer, train_ds, val_ds, epochs, patience, checkpoint_path, epoch_log)
    else:
        callbacks = [epoch_log]
        if val_ds is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                           restore_best_weights=True))
        if checkpoint_path and val_ds is not None:
            callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint_path, monitor="val_loss",
                                                             save_best_only=True, save_weights_only=True))
        history = model.fit(train_ds, epochs=epochs, validation_data=val_ds, callbacks=callbacks, verbose=0).history
    history = {k: [float(x) for x in v] for k, v in history.items()}
    history["learning_rate"] = epoch_log.learning_rates
    return FitResult(model, history, params, schedule)


def _fit_sparse(trainer: SparseRatingTrainer, train_b: dataset.RatingBatches, val_b: dataset.RatingBatches | None,
                epochs: int, patience: int, checkpoint_path: str | None, epoch_log: EpochLog) -> dict:
    """`model.fit`'s epoch loop with EarlyStopping(restore_best_weights=True) and a best-only weights
    checkpoint, around `SparseRatingTrainer` (the same history keys and the same stopping rule)."""
    model = trainer.model
    history: dict[str, list] = {}
    best, best_weights, wait = np.inf, None, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        logs = trainer.train_epoch(train_b)
        log.debug("epoch %d: %.0f examples/s", epoch + 1, len(train_b.keys) / (time.perf_counter() - t0))
        if val_b is not None:
            logs.update({f"val_{k}": v for k, v in trainer.evaluate(val_b).items()})
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        epoch_log.on_epoch_end(epoch, logs)
        if val_b is None:
            continue
        if logs["val_loss"] < best:
            best, wait = logs["val_loss"], 0
            best_weights = model.get_weights()
            if checkpoint_path:
                model.save_weights(checkpoint_path)
        else:
            wait += 1
            if wait >= patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def train(data: str, out: str, epochs: int | None = None, embedding_dim: int = 128, seed: int = 0,
          objective: str = "rating", batch_size: int = 10_000, patience: int | None = None,
          optimizer: str | None = None, **objective_options) -> dict:
    """`fuserank train`: fit on the ingest output, evaluate on its test split, export the artifact."""
    _check_options(objective, optimizer)
    epochs = epochs or DEFAULT_EPOCHS[objective]
    patience = patience or DEFAULT_PATIENCE[objective]
    data_manifest = dataset.load_manifest(data)
    train_s, val_s, test_s = (dataset.load_split(data, s) for s in dataset.SPLITS)
    n_users, n_anime = data_manifest["counts"]["users_kept"], data_manifest["counts"]["anime"]

    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".train-", dir=os.path.dirname(os.path.abspath(out)))
    experiment = start_experiment(tmp)
    try:
        os.makedirs(os.path.join(tmp, "checkpoint"))
        t0 = time.time()
        result = fit(train_s, val_s, n_users, n_anime, objective, embedding_dim, seed, epochs, batch_size,
                     patience, os.path.join(tmp, "checkpoint", "best.weights.h5"), experiment, optimizer=optimizer,
                     **objective_options)
        history, bs = result.history, result.params["batch_size"]
        if objective == "rating":  # Keras' own evaluation of the exported weights, from the arrays
            features, target = _inputs(test_s)
            test = result.model.evaluate(features, target, batch_size=bs, verbose=0, return_dict=True)
        else:
            test_ds = user_batches(test_s, n_users, n_anime, bs, False, seed, known=[train_s, val_s],
                                   **{k: result.params[k] for k in ("positive_weight", "like_threshold", "low_weight",
                                                                     "low_threshold")})
            test = result.model.evaluate(test_ds, verbose=0, return_dict=True)
        metrics = {f"test_{k}": float(v) for k, v in test.items()}
        metrics.update(best_val_loss=float(min(history["val_loss"])),
                       best_epoch=int(np.argmin(history["val_loss"]) + 1), epochs_run=len(history["loss"]),
                       train_seconds=round(time.time() - t0, 2))
        if objective == "rating":
            mean = float(train_s.rating.mean())
            metrics.update(baseline_val_mae=float(np.abs(val_s.rating - mean).mean()),
                           baseline_test_mae=float(np.abs(test_s.rating - mean).mean()),
                           val_mae=float(history["val_mae"][metrics["best_epoch"] - 1]))
            log.info("test loss=%.4f mae=%.4f mse=%.4f (train-mean predictor mae=%.4f)", metrics["test_loss"],
                     metrics["test_mae"], metrics["test_mse"], metrics["baseline_test_mae"])
        else:
            log.info("test loss=%.4f (softmax over %d anime)", metrics["test_loss"], n_anime)
        experiment.log_metrics(metrics)

        manifest = export_artifact(
            tmp, data, result.user_embeddings, result.anime_embeddings, history,
            {"objective": objective, "metrics": metrics, "training": result.params,
             "data": {k: data_manifest.get(k) for k in ("source", "content_hash", "counts", "min_user_ratings",
                                                        "rating_scale", "seed")}})
        plot_history(history, os.path.join(tmp, "curves.png"),
                     f"FuseRank MF ({objective}) - model {manifest['model_version']}", objective)
        experiment.log_image(os.path.join(tmp, "curves.png"), name="curves")
        experiment.log_other("model_version", manifest["model_version"])
        experiment.end()
        _replace_dir(tmp, out)
        log.info("model %s written to %s", manifest["model_version"], out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
