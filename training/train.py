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
from fuserank.training import dataset, sampled
from fuserank.training.export import export_artifact
from fuserank.training.model import (WarmupExpDecay, batch_size_for, build_ranking_model, build_rating_model,
                                     steps_per_epoch)
from fuserank.training.plots import plot_history
from fuserank.training.tracking import NullExperiment, start_experiment

log = logging.getLogger("fuserank.train")
OBJECTIVES = ("rating", "ranking")
DEFAULT_EPOCHS = {"rating": 20, "ranking": 150}
DEFAULT_PATIENCE = {"rating": 3, "ranking": 10}
RANKING_MAX_BATCH_USERS = 1024
RANKING_MIN_STEPS = 16
TRAINERS = ("sampled", "full")
DEFAULT_NEGATIVES = sampled.DEFAULT_NEGATIVES
PROGRESS_EVERY_S = 15.0


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
    weight = sampled.rating_weights(split.raw_rating, positive_weight, like_threshold, low_weight, low_threshold)
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
    """A training option `fit` cannot use (the CLI prints it and exits 2)."""


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise TrainingOptionError(f"--objective must be one of {OBJECTIVES}, got {objective!r}")


def fit(train_s: dataset.SplitArrays, val_s: dataset.SplitArrays | None, n_users: int, n_anime: int,
        objective: str = "rating", embedding_dim: int = 128, seed: int = 0, epochs: int = 20,
        batch_size: int = 10_000, patience: int = 3, checkpoint_path: str | None = None, experiment=None,
        temperature: float = RANKING.temperature, positive_weight: float = RANKING.positive_weight,
        like_threshold: int = 8, low_weight: float = RANKING.low_weight,
        low_threshold: int = RANKING.low_threshold, trainer: str = "sampled",
        negatives: int = DEFAULT_NEGATIVES) -> FitResult:
    """Train one model on in-memory splits (used by `train` and by the offline evaluation).

    ``rating``: the per-rating regression, batches of ratings. ``ranking``: softmax over all
    anime, batches of users (``batch_size`` then bounds users per batch, shrunk to give >= 16 steps);
    a rating counts ``positive_weight`` times when >= ``like_threshold`` and ``low_weight`` times when
    <= ``low_threshold`` (watched but disliked: weaker evidence of taste). Both train with Keras' Adam.
    ``trainer`` (ranking): ``sampled`` (`training.sampled`: ``negatives`` shared negatives per batch, the
    exact softmax when the catalogue is smaller) or ``full`` (Keras ``fit`` on dense per-user targets over
    the whole catalogue; kept as the benchmark's reference).
    """
    _check_objective(objective)
    keras.utils.set_random_seed(seed)
    experiment = experiment or NullExperiment()
    if objective == "rating":
        bs = batch_size_for(len(train_s), batch_size)
        spe = steps_per_epoch(len(train_s), bs)
        train_ds = dataset.to_dataset(_inputs(train_s), bs, shuffle=True, seed=seed)
        val_ds = dataset.to_dataset(_inputs(val_s), bs, shuffle=False) if val_s is not None else None
    else:
        if trainer not in TRAINERS:
            raise TrainingOptionError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
        active = int(np.count_nonzero(np.bincount(train_s.user, minlength=n_users)))
        bs = int(max(8, min(batch_size, RANKING_MAX_BATCH_USERS, active // RANKING_MIN_STEPS)))
        spe = steps_per_epoch(active, bs)
        options = dict(positive_weight=positive_weight, like_threshold=like_threshold, low_weight=low_weight,
                       low_threshold=low_threshold)
        if trainer == "full":
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
    params = {"objective": objective, "epochs": epochs, "embedding_dim": embedding_dim,
              "seed": seed, "batch_size": bs, "steps_per_epoch": spe, "lr_scale": schedule.scale,
              "patience": patience, "n_users": n_users, "n_anime": n_anime, "n_train": len(train_s)}
    if objective == "ranking":
        params.update(temperature=temperature, positive_weight=positive_weight, like_threshold=like_threshold,
                      low_weight=low_weight, low_threshold=low_threshold, trainer=trainer)
        if trainer == "sampled":
            params["negatives"] = min(negatives, n_anime)
    log.info("training %s", params)
    experiment.log_parameters(params)

    epoch_log = EpochLog(schedule, epochs, experiment)
    if objective == "ranking" and trainer == "sampled":
        history = _fit_sampled(model, schedule, train_s, val_s, n_users, n_anime, bs, epochs, patience, seed,
                               options, negatives, epoch_log, checkpoint_path)
        history["learning_rate"] = epoch_log.learning_rates
        return FitResult(model, history, params, schedule)
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


def _fit_sampled(model, schedule, train_s, val_s, n_users, n_anime, bs, epochs, patience, seed, options,
                 negatives, epoch_log, checkpoint_path) -> dict:
    """`sampled.train_sampled` on the Keras ranking model's two tables (the exported weights)."""
    temperature = model.get_layer("anime_embedding").temperature
    weights = lambda s: sampled.rating_weights(s.raw_rating, **options)
    rows = sampled.UserRows(train_s, n_users, weights(train_s))
    val = sampled.UserRows(val_s, n_users, weights(val_s)) if val_s is not None else None
    trainer = sampled.SampledSoftmaxTrainer(model.get_layer("user_embedding").embeddings,
                                            model.get_layer("anime_embedding").embeddings, temperature,
                                            np.bincount(train_s.anime, minlength=n_anime), schedule, negatives, seed)
    history = sampled.train_sampled(trainer, rows, val, rows if val is not None else None, bs, epochs, patience,
                                    seed, epoch_log.on_epoch_end)
    if checkpoint_path and val is not None:
        model.save_weights(checkpoint_path)
    return history


def _ranking_test_loss(result: FitResult, test_s, known, n_users: int, n_anime: int, seed: int) -> float:
    test_ds = user_batches(test_s, n_users, n_anime, result.params["batch_size"], False, seed, known=known,
                           **{k: result.params[k] for k in ("positive_weight", "like_threshold", "low_weight",
                                                             "low_threshold")})
    return float(result.model.evaluate(test_ds, verbose=0, return_dict=True)["loss"])


def _train_rating(train_s, val_s, test_s, n_users, n_anime, fit_kw) -> tuple[FitResult, dict, dict]:
    """The rating model: one early-stopped fit, Keras' evaluation of it on the test split."""
    result = fit(train_s, val_s, n_users, n_anime, "rating", **fit_kw)
    features, target = _inputs(test_s)
    test = result.model.evaluate(features, target, batch_size=result.params["batch_size"], verbose=0,
                                 return_dict=True)
    metrics = {f"test_{k}": float(v) for k, v in test.items()}
    best = int(np.argmin(result.history["val_loss"]))
    mean = float(train_s.rating.mean())
    metrics.update(baseline_val_mae=float(np.abs(val_s.rating - mean).mean()),
                   baseline_test_mae=float(np.abs(test_s.rating - mean).mean()),
                   val_mae=float(result.history["val_mae"][best]))
    log.info("test loss=%.4f mae=%.4f mse=%.4f (train-mean predictor mae=%.4f)", metrics["test_loss"],
             metrics["test_mae"], metrics["test_mse"], metrics["baseline_test_mae"])
    return result, metrics, {}


def _train_ranking(data, train_s, val_s, test_s, n_users, n_anime, fit_kw, knobs: dict, search: bool,
                   space) -> tuple[FitResult, dict, dict]:
    """Choose the knobs on the validation split (`knobs.choose`), report the test figures of the fit that
    never saw the test split, then refit on every rating for the chosen epoch count (the served model)."""
    from fuserank.config import HybridSettings
    from fuserank.evaluation.model_eval import hide, test_figures
    from fuserank.training import knobs as kn
    from fuserank.training.export import build_user_lists, encoder_ids

    seed = fit_kw["seed"]
    pinned = {k: v for k, v in knobs.items() if v is not None}
    lists = build_user_lists(data, n_users, n_anime)
    user_ids, anime_ids = encoder_ids(data)

    def fit_model(tr, va, **model_knobs):
        return fit(tr, va, n_users, n_anime, "ranking", **{**fit_kw, "checkpoint_path": None}, **model_knobs)

    if search:
        held = dataset.SplitArrays.concat(val_s, test_s)
        scorer = kn.ValidationScorer(hide(lists, held.user, held.anime), val_s, user_ids, anime_ids,
                                     space.max_users, seed)
        choice = kn.choose(train_s, val_s, scorer, fit_model, pinned, space, seed)
    else:
        choice = kn.Choice(model={k: pinned.get(k, getattr(RANKING, k)) for k in kn.MODEL_KNOBS}, hybrid={})
    heldout = choice.fit
    if heldout is None or heldout.params["n_train"] != len(train_s):
        heldout = fit(train_s, val_s, n_users, n_anime, "ranking", **fit_kw, **choice.model)
    best_epoch = int(np.argmin(heldout.history["val_loss"])) + 1
    settings = HybridSettings().with_overrides(**choice.hybrid)
    metrics = {"test_loss": _ranking_test_loss(heldout, test_s, [train_s, val_s], n_users, n_anime, seed),
               **test_figures(heldout.user_embeddings, heldout.anime_embeddings, lists, test_s, user_ids,
                              anime_ids, settings)}
    log.info("held-out fit: test loss=%.4f, served hybrid NDCG@10 %.4f on the test split", metrics["test_loss"],
             metrics["test_ndcg_at_10"])
    served = fit(dataset.SplitArrays.concat(train_s, val_s, test_s), None, n_users, n_anime, "ranking",
                 **{**fit_kw, "epochs": best_epoch, "checkpoint_path": None}, **choice.model)
    served.history = heldout.history
    return served, metrics, {**choice.record(), "heldout": heldout}


def train(data: str, out: str, epochs: int | None = None, embedding_dim: int = 128, seed: int = 0,
          objective: str = "ranking", batch_size: int = 10_000, patience: int | None = None,
          temperature: float | None = None, positive_weight: float | None = None, low_weight: float | None = None,
          low_threshold: int = RANKING.low_threshold, search: bool = True, space=None) -> dict:
    """`fuserank train`: fit on the ingest output, evaluate on its test split, export the artifact.

    ``ranking`` (the served model): knobs left None are chosen on the validation split (``search``;
    without it they take RANKING's defaults), the test figures come from the fit on the train split, and
    the exported embeddings from a refit on all ratings. ``rating``: the rating regression, one fit.
    """
    from fuserank.training.knobs import SearchSpace
    _check_objective(objective)
    epochs = epochs or DEFAULT_EPOCHS[objective]
    patience = patience or DEFAULT_PATIENCE[objective]
    data_manifest = dataset.load_manifest(data)
    train_s, val_s, test_s = dataset.load_splits(data)
    n_users, n_anime = data_manifest["counts"]["users_kept"], data_manifest["counts"]["anime"]

    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".train-", dir=os.path.dirname(os.path.abspath(out)))
    experiment = start_experiment(tmp)
    try:
        os.makedirs(os.path.join(tmp, "checkpoint"))
        t0 = time.time()
        fit_kw = dict(embedding_dim=embedding_dim, seed=seed, epochs=epochs, batch_size=batch_size,
                      patience=patience, checkpoint_path=os.path.join(tmp, "checkpoint", "best.weights.h5"),
                      experiment=experiment)
        if objective == "rating":
            result, metrics, chosen = _train_rating(train_s, val_s, test_s, n_users, n_anime, fit_kw)
        else:
            fit_kw["low_threshold"] = low_threshold
            knobs = dict(temperature=temperature, positive_weight=positive_weight, low_weight=low_weight)
            result, metrics, chosen = _train_ranking(data, train_s, val_s, test_s, n_users, n_anime, fit_kw, knobs,
                                                     search, space or SearchSpace())
        history = result.history
        metrics.update(best_val_loss=float(min(history["val_loss"])),
                       best_epoch=int(np.argmin(history["val_loss"]) + 1), epochs_run=len(history["loss"]),
                       train_seconds=round(time.time() - t0, 2))
        experiment.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        heldout = chosen.pop("heldout", None)
        extra = {"objective": objective, "metrics": metrics, "training": result.params,
                 "data": {k: data_manifest.get(k) for k in ("source", "content_hash", "counts", "min_user_ratings",
                                                            "rating_scale", "seed")}}
        if chosen:
            extra["chosen"] = chosen
        extra.update({k: data_manifest[k] for k in ("feedback_until", "feedback_added") if k in data_manifest})
        manifest = export_artifact(tmp, data, result.user_embeddings, result.anime_embeddings, history, extra,
                                   heldout=(heldout.user_embeddings, heldout.anime_embeddings) if heldout else None)
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
