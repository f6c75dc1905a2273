"""Scoring methods over a trained model for the offline evaluation: the served hybrid and the model's own
score, as dense per-user scores for ``evaluation.compare.evaluate_model``. Nothing here trains, so
training (knob search, the held-out figures) and the comparison both use it without importing each other.
"""
from __future__ import annotations

import numpy as np

from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.evaluation.protocol import Split
from fuserank.scorer import HybridScorer


def artifact_for(split: Split, user_emb: np.ndarray, anime_emb: np.ndarray) -> ModelArtifact:
    lists = split.train.copy().astype(np.int8)
    return ModelArtifact.from_arrays(user_emb, anime_emb, split.user_ids, split.item_ids, lists)


class HybridMethod:
    """The production scorer over one split; ``score`` gives dense scores for evaluate_model."""

    def __init__(self, model: ModelArtifact, settings: HybridSettings, neighbours=None):
        self.scorer = HybridScorer(model, settings, neighbours)

    def score(self, users: np.ndarray) -> np.ndarray:
        m = self.scorer.model
        return self.scorer.combined_scores(m.user_emb[users], self.scorer.liked[users], m.lists[users],
                                           np.asarray(users), include_adult=True)


class OwnScore:
    """The MF model ranking by its own score (cosine of the user and anime embeddings)."""

    def __init__(self, model: ModelArtifact):
        self.model = model

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.model.user_emb[users] @ self.model.anime_emb.T
