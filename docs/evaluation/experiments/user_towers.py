"""Session-12 experiment: two ways to get the 128-d user vector, with regularisation knobs, scored on the
2020 validation carve (fuserank.evaluation.tune.validation_view; the test split is not read).

    .venv/bin/python docs/evaluation/experiments/user_towers.py data/sample/mal2020/rating_complete_head100k.csv \
        --tower history --lr 1e-3 --epochs 200

``free``: a learned row per user (the served ranking model, re-implemented in plain TF for the knobs).
``history``: the user vector is normalise(weights of the user's train ratings @ Q), a second anime table
(Mult-DAE-like, ``--dropout`` of the input entries per step). ``both``: the sum of the two (SVD++-like:
a learned row plus the history term, ``--hist-scale`` times the history term's mean row). Both: cosine / temperature softmax over all
anime, a rating counting ``--pw`` when >= 8 and ``--lw`` when <= 5. The epoch count is picked on an inner
carve of the carve's train part (NDCG@10 every ``--every`` epochs), then the model is refit on the whole
carve train part and scored by its own cosine. Results: docs/evaluation/experiments.md, "User towers".
"""
import argparse
import logging
import time

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from fuserank.evaluation.compare import evaluate_model
from fuserank.evaluation.protocol import Split, validation_split
from fuserank.evaluation.tune import validation_view

p = argparse.ArgumentParser()
p.add_argument("path")
p.add_argument("--seeds", default="0")
p.add_argument("--tower", choices=["free", "history", "both"], default="free")
p.add_argument("--temperature", type=float, default=0.15)
p.add_argument("--epochs", type=int, default=80)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--batch", type=int, default=32, help="users per step")
p.add_argument("--pw", type=float, default=2.0)
p.add_argument("--lw", type=float, default=0.5)
p.add_argument("--dropout", type=float, default=0.5, help="history: share of input entries dropped per step")
p.add_argument("--tied", action="store_true", help="history: one anime table for input and output")
p.add_argument("--hist-scale", type=float, default=1.0, help="both: weight of the history term")
p.add_argument("--wd", type=float, default=0.0, help="free: AdamW weight decay")
p.add_argument("--udrop", type=float, default=0.0, help="free: dropout on the user vector")
p.add_argument("--idrop", type=float, default=0.0, help="free: share of target entries dropped per step")
p.add_argument("--every", type=int, default=5)
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)


def weights(m):
    m = sp.csr_matrix(m, dtype=np.float32).copy()
    m.data = np.where(m.data >= 8, a.pw, np.where(m.data <= 5, a.lw, 1.0)).astype(np.float32)
    return m


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class Own:
    def __init__(self, users, anime):
        self.users, self.anime = unit(users), unit(anime)

    def score(self, rows):
        return self.users[rows] @ self.anime.T


def train(X, seed, epochs, val=None):
    """Returns (user vectors, anime output table, [(epoch, inner NDCG@10)])."""
    tf.keras.utils.set_random_seed(seed)
    n_users, n_items = X.shape
    dense = X.toarray()
    out = tf.Variable(tf.random.normal((n_items, 128), stddev=0.1, seed=seed))
    rows = tf.Variable(tf.random.normal((n_users, 128), stddev=0.1, seed=seed + 1)) if a.tower != "history" else None
    hist_seed = seed + (1 if a.tower == "history" else 2)
    hist_table = out if a.tied else tf.Variable(tf.random.normal((n_items, 128), stddev=0.1, seed=hist_seed))
    counts = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1e-9).astype(np.float32)
    variables = {"free": [rows, out], "history": [hist_table] if a.tied else [hist_table, out],
                 "both": [rows, out] if a.tied else [rows, hist_table, out]}[a.tower]
    opt = tf.keras.optimizers.AdamW(a.lr, weight_decay=a.wd) if a.wd else tf.keras.optimizers.Adam(a.lr)

    counts_t = tf.constant(counts)

    @tf.function
    def step(idx, xb):
        with tf.GradientTape() as tape:
            target = xb
            if a.tower != "history":
                u = tf.gather(rows, idx)
                if a.udrop:
                    u = tf.nn.dropout(u, a.udrop)
                if a.idrop:
                    target = xb * tf.cast(tf.random.uniform(tf.shape(xb)) >= a.idrop, tf.float32)
            if a.tower != "free":
                h = tf.matmul(xb * tf.cast(tf.random.uniform(tf.shape(xb)) >= a.dropout, tf.float32), hist_table)
                if a.tower == "history":
                    u = h
                else:
                    u = u + a.hist_scale * h / tf.gather(counts_t, idx)[:, None]
            logits = tf.matmul(tf.math.l2_normalize(u, axis=1), tf.math.l2_normalize(out, axis=1),
                               transpose_b=True) / a.temperature
            loss = -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=1))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        opt.apply_gradients(zip(grads, variables))

    def users_now():
        if a.tower == "free":
            return rows.numpy()
        h = X @ hist_table.numpy()
        if a.tower == "history":
            return h
        return rows.numpy() + a.hist_scale * (1 - a.dropout) * h / counts[:, None]

    rng = np.random.default_rng(seed)
    active = np.flatnonzero(np.diff(X.indptr))
    hist = []
    for ep in range(epochs):
        order = rng.permutation(active)
        for s in range(0, len(order), a.batch):
            b = order[s:s + a.batch]
            step(tf.constant(b), tf.constant(dense[b]))
        if val is not None and (ep + 1) % a.every == 0:
            hist.append((ep + 1, val(users_now(), out.numpy())))
            print(f"  epoch {ep + 1} inner NDCG@10 {hist[-1][1]:.4f}", flush=True)
    return users_now(), out.numpy(), hist


results = []
for seed in [int(s) for s in a.seeds.split(",")]:
    view = validation_view(a.path, seed)
    sub, inner = validation_split(view.train, seed)
    inner_view = Split(train=sub, test=inner, user_ids=view.user_ids, item_ids=view.item_ids, seed=seed, name="inner")
    t0 = time.time()
    _, _, hist = train(weights(sub), seed, a.epochs, val=lambda u, v: evaluate_model(Own(u, v), inner_view)["ndcg@10"])
    best_epoch = max(hist, key=lambda x: x[1])[0]
    users, anime, _ = train(weights(view.train), seed, best_epoch)
    results.append(evaluate_model(Own(users, anime), view)["ndcg@10"])
    print(f"carve seed {seed}: best epoch {best_epoch}, validation NDCG@10 {results[-1]:.4f} "
          f"({time.time() - t0:.0f} s)")
print(f"mean validation NDCG@10 {np.mean(results):.4f}", {k: v for k, v in vars(a).items() if k != "path"})
