"""Draws docs/architecture.svg, the picture in docs/architecture.md: the units and the data's way through them.

    .venv/bin/python docs/architecture.py          # rewrites docs/architecture.svg (deterministic bytes)

Edit the tables below, not the SVG.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "architecture.svg")

# (step, owning modules, what it writes), top to bottom.
PIPELINE = [
    ("ingest", "training/ingest.py, training/readers.py\nschemas/ingest.py (the output's tables)",
     "data dir: train/val/test/unrated/users/anime/low_activity.parquet + manifest.json"),
    ("train", "training/train.py, knobs.py, sampled.py, model.py\ntraining/export.py -> fuserank/artifacts.py",
     "model dir: embeddings .npy, encoders, user_lists.npz, manifest.json (model version)"),
    ("evaluate", "evaluation/model_eval.py (publish gate)\nevaluation/compare.py (offline comparison)",
     "evaluation.json in the model dir (held-out NDCG@10)"),
    ("precompute", "batch/pipeline.py (Apache Beam), batch/redis_io.py\nfuserank/scorer.py, fuserank/similarity.py",
     "every user's and anime's top-N lists, one list version"),
    ("Redis", "fuserank/keys.py (key layout, list encoding)\nfuserank/publish.py (pointer flips when complete)",
     "fuserank:current -> list version; lists by version"),
    ("API", "api/app.py (Flask factory), api/hotpath.py\nunder gunicorn: api/server.py",
     "JSON answers: /v1/users/<id>/recommendations, /v1/anime/<id>/similar"),
]
CORE = ("shared by every step: fuserank/config.py (settings), fuserank/redis_client.py (Redis clients),\n"
        "fuserank/artifacts.py (model artifact), fuserank/storage.py (local and gs:// files), fuserank/errors.py")
CLI = "fuserank/cli.py\nfuserank <command>\nruns each step\nby hand"
NIGHTLY = ("batch/nightly.py\n(Kubernetes CronJob)\n\ndvc repro: ingest ->\ntrain -> evaluate;\nquality gate;\nstore the model;\nprecompute -> publish;\nAPI rollout")

BOX_W, BOX_H, GAP = 7.4, 1.05, 0.75   # a step's row: name box + modules box; GAP holds what it writes
STEP_W = 1.7
X0 = 2.6
NIGHTLY_X, NIGHTLY_W = X0 + BOX_W + 0.45, 2.7


def _box(ax, x, y, w, h, text, colour, size=9, weight="normal", align="center"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04,rounding_size=0.12",
                                facecolor=colour, edgecolor="#333333", linewidth=1))
    tx = x + w / 2 if align == "center" else x + 0.15
    ax.text(tx, y + h / 2, text, ha=align, va="center", fontsize=size, weight=weight, linespacing=1.35)


def _arrow(ax, start, end, style="-|>", colour="#333333", dashed=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=colour, linewidth=1.2,
                                 linestyle="--" if dashed else "-"))


def draw(path: str = OUT) -> None:
    plt.rcParams["svg.hashsalt"] = "fuserank-architecture"
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["font.family"] = "DejaVu Sans"
    ys = [-i * (BOX_H + GAP) for i in range(len(PIPELINE))]
    top, bottom = ys[0] + BOX_H, ys[-1]
    width = NIGHTLY_X + NIGHTLY_W + 0.1
    fig, ax = plt.subplots(figsize=(width * 0.85, (top - bottom + 3.2) * 0.85))
    ax.set_xlim(0, width)
    ax.set_ylim(bottom - 2.3, top + 0.7)
    ax.axis("off")
    ax.text(0.1, top + 0.45, "FuseRank: the units and the data's way through them", fontsize=12, weight="bold",
            va="center")
    for (step, modules, _), y in zip(PIPELINE, ys):
        _box(ax, X0, y, STEP_W, BOX_H, step, "#cfe2f3", size=11, weight="bold")
        _box(ax, X0 + STEP_W + 0.1, y, BOX_W - STEP_W - 0.1, BOX_H, modules, "#f3f6fa", size=8.5, align="left")
    for i, (_, _, writes) in enumerate(PIPELINE):
        y_from = ys[i]
        y_to = ys[i + 1] + BOX_H if i + 1 < len(ys) else y_from - 0.6
        _arrow(ax, (X0 + STEP_W / 2, y_from), (X0 + STEP_W / 2, y_to))
        ax.text(X0 + STEP_W / 2 + 0.2, (y_from + y_to) / 2, writes, ha="left", va="center", fontsize=7.5,
                style="italic", color="#444444")
    _box(ax, 0.1, bottom, X0 - 0.5, top - bottom, CLI, "#fff2cc", size=9)
    _box(ax, NIGHTLY_X, bottom, NIGHTLY_W, top - bottom, NIGHTLY, "#d9ead3", size=9)
    for y in ys:
        _arrow(ax, (X0 - 0.4, y + BOX_H / 2), (X0, y + BOX_H / 2), colour="#b58900", dashed=True)
        _arrow(ax, (NIGHTLY_X, y + BOX_H / 2), (X0 + BOX_W, y + BOX_H / 2), colour="#38761d", dashed=True)
    _box(ax, 0.1, bottom - 2.2, width - 0.2, 0.95, CORE, "#eeeeee", size=8.5)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)


if __name__ == "__main__":
    draw()
    print(OUT)
