"""Training curves as a PNG next to the model: people read curves faster than logs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


LOSS_LABELS = {"rating": "binary cross-entropy (per rating)",
               "ranking": "softmax cross-entropy (per user, summed\nover rated anime; held-out masks seen ones)"}


def plot_history(history: dict, path: str, title: str, objective: str = "rating") -> str:
    epochs = range(1, len(history.get("loss", [])) + 1)
    panels = [("loss", LOSS_LABELS[objective]), ("mae", "MAE (scaled rating)"), ("mse", "MSE (scaled rating)")]
    panels = [(k, lab) for k, lab in panels if k in history]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.6))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    lr_ax = axes[-1]
    lr_ax.plot(epochs, history.get("learning_rate", []), marker="o", color="tab:green")
    lr_ax.set_xlabel("epoch")
    lr_ax.set_ylabel("learning rate (end of epoch)")
    lr_ax.set_title("schedule")
    lr_ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
