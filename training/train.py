"""`fuserank train`: fit the matrix-factorisation model on the ingest output and export the artifact."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from fuserank.training import dataset
from fuserank.training.export import export_artifact
from fuserank.training.model import (WarmupExpDecay, batch_size_for, build_rating_model,
                                     steps_per_epoch)
from fuserank.training.plots import plot_history
from fuserank.training.tracking import start_experiment

log = logging.getLogger("fuserank.train")
OBJECTIVES = ("rating",)


class EpochLog(keras.callbacks.Callback):
    """One progress line per epoch (loss, MAE, learning rate), and the LR in the history for the plot."""

    def __init__(self, schedule: WarmupExpDecay, epochs: int, experiment):
        super().__init__()
        self.schedule, self.epochs, self.experiment = schedule, epochs, experiment
        self.t0 = time.time()
        self.learning_rates: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = self.schedule.rate_at_epoch(epoch + 1)
        self.learning_rates.append(logs["learning_rate"])
        self.experiment.log_metrics({k: float(v) for k, v in logs.items()}, epoch=epoch + 1)
        log.info("epoch %d/%d loss=%.4f val_loss=%.4f mae=%.4f val_mae=%.4f lr=%.2e (%.1fs)", epoch + 1,
                 self.epochs, logs.get("loss", np.nan), logs.get("val_loss", np.nan), logs.get("mae", np.nan),
                 logs.get("val_mae", np.nan), logs["learning_rate"], time.time() - self.t0)


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Swap the finished artifact into place, so a failed run never leaves a half-written model."""
    old = None
    if os.path.exists(out_dir):
        old = out_dir.rstrip("/") + f".old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def train(data: str, out: str, epochs: int = 20, embedding_dim: int = 128, seed: int = 0,
          objective: str = "rating", batch_size: int = 10_000, patience: int = 3) -> dict:
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {OBJECTIVES}, got {objective!r}")
    data_manifest = dataset.load_manifest(data)
    train_s, val_s, test_s = (dataset.load_split(data, s) for s in dataset.SPLITS)
    n_users, n_anime = data_manifest["counts"]["users_kept"], data_manifest["counts"]["anime"]
    keras.utils.set_random_seed(seed)

    bs = batch_size_for(len(train_s), batch_size)
    spe = steps_per_epoch(len(train_s), bs)
    schedule = WarmupExpDecay(spe)
    model = build_rating_model(n_users, n_anime, embedding_dim, seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="binary_crossentropy",
                  metrics=["mae", "mse"])
    params = {"objective": objective, "epochs": epochs, "embedding_dim": embedding_dim, "seed": seed,
              "batch_size": bs, "steps_per_epoch": spe, "lr_scale": schedule.scale, "patience": patience,
              "n_users": n_users, "n_anime": n_anime, "n_train": len(train_s)}
    log.info("training %s", params)

    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".train-", dir=os.path.dirname(os.path.abspath(out)))
    experiment = start_experiment(tmp)
    experiment.log_parameters(params)
    try:
        os.makedirs(os.path.join(tmp, "checkpoint"))
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(os.path.join(tmp, "checkpoint", "best.weights.h5"),
                                            monitor="val_loss", save_best_only=True, save_weights_only=True),
            EpochLog(schedule, epochs, experiment),
        ]
        t0 = time.time()
        fit = model.fit(dataset.to_dataset(train_s, bs, shuffle=True, seed=seed), epochs=epochs,
                        validation_data=dataset.to_dataset(val_s, bs, shuffle=False),
                        callbacks=callbacks, verbose=0)
        train_seconds = time.time() - t0
        history = {k: [float(x) for x in v] for k, v in fit.history.items()}
        history["learning_rate"] = callbacks[-1].learning_rates
        test_loss, test_mae, test_mse = model.evaluate(dataset.to_dataset(test_s, bs, shuffle=False), verbose=0)
        mean = float(train_s.rating.mean())
        metrics = {"test_loss": float(test_loss), "test_mae": float(test_mae), "test_mse": float(test_mse),
                   "best_val_loss": float(min(history["val_loss"])),
                   "best_epoch": int(np.argmin(history["val_loss"]) + 1), "epochs_run": len(history["loss"]),
                   "baseline_val_mae": float(np.abs(val_s.rating - mean).mean()),
                   "baseline_test_mae": float(np.abs(test_s.rating - mean).mean()),
                   "train_seconds": round(train_seconds, 2)}
        # keep the val MAE of the restored (best) weights, the one the early stopping chose
        metrics["val_mae"] = float(history["val_mae"][metrics["best_epoch"] - 1])
        experiment.log_metrics(metrics)
        log.info("test loss=%.4f mae=%.4f mse=%.4f (train-mean predictor mae=%.4f)", test_loss, test_mae,
                 test_mse, metrics["baseline_test_mae"])

        manifest = export_artifact(
            tmp, data, model.get_layer("user_embedding").get_weights()[0],
            model.get_layer("anime_embedding").get_weights()[0], history,
            {"objective": objective, "metrics": metrics, "training": params,
             "data": {k: data_manifest.get(k) for k in ("source", "content_hash", "counts", "min_user_ratings",
                                                        "rating_scale", "seed")}})
        plot_history(history, os.path.join(tmp, "curves.png"),
                     f"FuseRank MF ({objective}) - model {manifest['model_version']}")
        experiment.log_image(os.path.join(tmp, "curves.png"), name="curves")
        experiment.log_other("model_version", manifest["model_version"])
        experiment.end()
        _replace_dir(tmp, out)
        log.info("model %s written to %s", manifest["model_version"], out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
