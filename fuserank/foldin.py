"""Folding a user the model has never seen into its embedding space from a handful of ratings.

The user vector maximises the ranking objective's likelihood of their rated anime (softmax over all
anime on cosine / temperature, ratings >= the like threshold weighted up) with the anime embeddings
held fixed: a few projected gradient steps from the weighted mean of the rated anime's embeddings.
The result goes through the same hybrid scorer as every other user.
"""
from __future__ import annotations

import numpy as np

from fuserank.similarity import l2_normalise

TEMPERATURE = 0.15
POSITIVE_WEIGHT = 2.0


def fold_in(anime_emb: np.ndarray, anime: np.ndarray, ratings: np.ndarray, like_threshold: int = 8,
            steps: int = 30, step_size: float = 0.5) -> np.ndarray:
    """Unit user vector (1 x d) for encoded ``anime`` rated ``ratings`` (1-10)."""
    weights = np.where(ratings >= like_threshold, POSITIVE_WEIGHT, 1.0).astype(np.float32)
    weights /= weights.sum()
    target = weights @ anime_emb[anime]
    u = l2_normalise(target[None, :])[0]
    for _ in range(steps):
        logits = anime_emb @ u / TEMPERATURE
        p = np.exp(logits - logits.max())
        p /= p.sum()
        grad = (target - p @ anime_emb) / TEMPERATURE
        u = u + step_size * grad
        u /= max(np.linalg.norm(u), 1e-12)
    return u[None, :].astype(np.float32)
