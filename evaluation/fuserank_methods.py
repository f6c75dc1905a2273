"""FuseRank's own methods for the offline comparison: the TensorFlow model and the hybrid built on it.

Every method here trains the same TensorFlow embeddings on the split's train matrix (early stopping
on a validation carve of it) and ranks with the production scorer (fuserank.scorer), so the figures
describe exactly what the batch job and the API serve.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import RANKING, HybridSettings
from fuserank.evaluation.protocol import Split, validation_split
from fuserank.schemas.ingest import ANIME_COL, RATING_COL, USER_COL
from fuserank.evaluation.scoring import HybridMethod, OwnScore, artifact_for
from fuserank.scorer import HybridScorer
from fuserank.similarity import l2_normalise

log = logging.getLogger("fuserank.evaluate")


@dataclass(frozen=True)
class TrainOptions:
    objective: str = "ranking"
    epochs: int = 150
    embedding_dim: int = 128
    patience: int = 10
    temperature: float = RANKING.temperature
    positive_weight: float = RANKING.positive_weight
    low_weight: float = RANKING.low_weight
    low_threshold: int = RANKING.low_threshold
    refit_full: bool = True


def _split_arrays(csr: sp.csr_matrix):
    from fuserank.training.dataset import SplitArrays
    coo = csr.tocoo()
    raw = coo.data.astype(np.float32)
    return SplitArrays(coo.row.astype(np.int32), coo.col.astype(np.int32), ((raw - 1) / 9).astype(np.float32),
                       raw.astype(np.int8))


def train_embeddings(train: sp.csr_matrix, seed: int, options: TrainOptions) -> tuple[np.ndarray, np.ndarray]:
    """Fit the TF model on ``train``, L2-normalised embeddings.

    Early stopping on a seeded validation carve picks the epoch count; with ``refit_full`` the model
    is then trained again on the whole train matrix for that many epochs (no rating left unused).
    """
    from fuserank.training.train import fit
    fit_part, val_part = validation_split(train, seed)
    kw = dict(objective=options.objective, embedding_dim=options.embedding_dim, seed=seed,
              patience=options.patience, temperature=options.temperature, positive_weight=options.positive_weight,
              low_weight=options.low_weight, low_threshold=options.low_threshold)
    result = fit(_split_arrays(fit_part), _split_arrays(val_part), train.shape[0], train.shape[1],
                 epochs=options.epochs, **kw)
    if options.refit_full:
        best = int(np.argmin(result.history["val_loss"])) + 1
        result = fit(_split_arrays(train), None, train.shape[0], train.shape[1], epochs=best, **kw)
    return l2_normalise(result.user_embeddings), l2_normalise(result.anime_embeddings)


class ServedPath:
    """What the README's pipeline by hand serves, trained on the split's train matrix: `fuserank ingest`
    (every user kept) and `fuserank train` with its defaults, then the precompute's scorer with the model's
    chosen settings; scored in the split's user and item order (anime the model lacks never rank)."""

    def __init__(self, split: Split, seed: int, workdir: str):
        import os

        import pandas as pd

        from fuserank.training.ingest import ingest
        from fuserank.training.train import train
        coo = split.train.tocoo()
        path = os.path.join(workdir, "train.csv")
        pd.DataFrame({USER_COL: split.user_ids[coo.row], ANIME_COL: split.item_ids[coo.col],
                      RATING_COL: coo.data.astype(np.int64)}).to_csv(path, index=False)
        ingest(path, os.path.join(workdir, "data"), min_user_ratings=1, seed=seed)
        train(os.path.join(workdir, "data"), os.path.join(workdir, "model"), seed=seed)
        model = ModelArtifact.load(os.path.join(workdir, "model"))
        self.scorer = HybridScorer(model, HybridSettings.for_model(model.manifest))
        self.rows = model.user_index(split.user_ids)
        self.cols = model.anime_index(split.item_ids)
        self.n_items = split.n_items

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.n_items), -np.inf, np.float32)
        rows = self.rows[users]
        known = rows >= 0
        m = self.scorer.model
        scores = self.scorer.combined_scores(m.user_emb[rows[known]], self.scorer.liked[rows[known]],
                                             m.lists[rows[known]], rows[known], include_adult=True)
        cols = self.cols >= 0
        out[np.ix_(np.flatnonzero(known), np.flatnonzero(cols))] = scores[:, self.cols[cols]]
        return out


def served_path(split: Split, seed: int) -> ServedPath:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="fuserank-served-") as workdir:
        return ServedPath(split, seed, workdir)


class EmbeddingCache:
    """Trains each (split seed, options) once and shares the embeddings across the methods that use them."""

    def __init__(self):
        self._store: dict = {}

    def get(self, split: Split, seed: int, options: TrainOptions):
        key = (id(split), seed, options)
        if key not in self._store:
            log.info("training %s embeddings for split seed %d", options.objective, seed)
            self._store = {k: v for k, v in self._store.items() if k[0] == id(split)}
            self._store[key] = train_embeddings(split.train, seed, options)
        return self._store[key]


def fuserank_methods(settings: HybridSettings, options: TrainOptions = TrainOptions(),
                     rating_options: TrainOptions | None = TrainOptions(objective="rating", epochs=20, patience=3)):
    """(name, factory) pairs for run_comparison: MF own score, stage 1, stage 2, hybrid, random hybrid."""
    cache = EmbeddingCache()

    def trained(split, seed, opts=options):
        return artifact_for(split, *cache.get(split, seed, opts))

    def random_model(split, seed):
        rng = np.random.default_rng(seed + 1000)
        dim = options.embedding_dim
        return artifact_for(split, l2_normalise(rng.normal(size=(split.n_users, dim))),
                            l2_normalise(rng.normal(size=(split.n_items, dim))))

    only = lambda **w: settings.with_overrides(**{"weight_stage1": 0.0, "weight_stage2": 0.0, "weight_model": 0.0, **w})
    methods = [
        ("FuseRank served (fuserank train, its chosen knobs)", served_path),
        (f"MF own score ({options.objective})", lambda s, seed: OwnScore(trained(s, seed))),
        ("stage 1 alone", lambda s, seed: HybridMethod(trained(s, seed), only(weight_stage1=1.0))),
        ("stage 2 alone", lambda s, seed: HybridMethod(trained(s, seed), only(weight_stage2=1.0))),
        ("FuseRank hybrid (served)", lambda s, seed: HybridMethod(trained(s, seed), settings)),
        ("hybrid, random embeddings", lambda s, seed: HybridMethod(random_model(s, seed), settings)),
    ]
    if rating_options is not None:
        methods.insert(1, ("MF own score (rating objective)",
                           lambda s, seed: OwnScore(trained(s, seed, rating_options))))
        methods.append(("hybrid on rating-objective model",
                        lambda s, seed: HybridMethod(trained(s, seed, rating_options), settings)))
    return methods
