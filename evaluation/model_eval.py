"""`fuserank evaluate --model M --data D`: one trained model's served hybrid on the ingest test split.

This is the publish gate's number: NDCG@10 of the hybrid exactly as the batch job would serve it,
with the test split's anime hidden from the user's list (they are what it must find).
"""
from __future__ import annotations

import json
import os

import numpy as np
import scipy.sparse as sp

from fuserank.artifacts import HELDOUT_EMB, ModelArtifact
from fuserank.config import HybridSettings
from fuserank.evaluation.compare import evaluate_model
from fuserank.evaluation.scoring import HybridMethod
from fuserank.evaluation.protocol import Split
from fuserank.similarity import l2_normalise
from fuserank.training.dataset import load_manifest, load_split

EVALUATION_FILE = "evaluation.json"


def hide(lists: sp.csr_matrix, users: np.ndarray, anime: np.ndarray) -> sp.csr_matrix:
    """``lists`` without the given (user, anime) entries: the held-out items the model must find."""
    hidden = sp.csr_matrix((np.ones(len(users), np.int8), (users, anime)), shape=lists.shape).astype(bool)
    keep = lists.astype(bool).astype(np.int8) - lists.astype(bool).multiply(hidden).astype(np.int8)
    out = lists.multiply(keep).tocsr().astype(np.int8)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _score_test(model: ModelArtifact, test, settings: HybridSettings, name: str) -> dict:
    """The hybrid's figures on ``test``, with its anime hidden from the users' lists (what it must find)."""
    test_csr = sp.csr_matrix((test.raw_rating.astype(np.float32), (test.user, test.anime)), shape=model.lists.shape)
    model.lists = hide(model.lists, test.user, test.anime)
    split = Split(train=model.lists, test=test_csr, user_ids=model.user_ids, item_ids=model.anime_ids, seed=0,
                  name=name)
    result = evaluate_model(HybridMethod(model, settings), split)
    return {"ndcg_at_10": float(result["ndcg@10"]), "recall_at_20": float(result["recall@20"]),
            "coverage_at_10": float(result["coverage@10"]), "users": int(result["n_eval_users"])}


def test_figures(user_emb: np.ndarray, anime_emb: np.ndarray, lists: sp.csr_matrix, test, user_ids: np.ndarray,
                 anime_ids: np.ndarray, settings: HybridSettings) -> dict:
    """`fuserank train`'s report: the hybrid of embeddings that did not see ``test``, scored on it."""
    model = ModelArtifact.from_arrays(l2_normalise(user_emb), l2_normalise(anime_emb), user_ids, anime_ids, lists)
    return {f"test_{k}": v for k, v in _score_test(model, test, settings, "test").items()}


def evaluate_model_dir(model_dir: str, data_dir: str, settings: HybridSettings | None = None) -> dict:
    """Score the model's served hybrid on the ingest test split and write ``evaluation.json``.

    A model refit on every rating carries the embeddings of its fit without the test split
    (`artifacts.HELDOUT_EMB`): those are scored, so the figure is a held-out one.
    """
    model = ModelArtifact.load(model_dir)
    data_hash = load_manifest(data_dir).get("content_hash")
    if data_hash != model.manifest.get("data", {}).get("content_hash"):
        from fuserank.errors import ArtifactError
        raise ArtifactError(f"{data_dir} (content hash {data_hash}) is not the data model {model.version} was trained on")
    settings = settings or HybridSettings.for_model(model.manifest)
    heldout = [os.path.join(model.path, HELDOUT_EMB[k]) for k in ("user", "anime")]
    if all(os.path.exists(p) for p in heldout):
        model.user_emb, model.anime_emb = (np.load(p).astype(np.float32) for p in heldout)
    figures = _score_test(model, load_split(data_dir, "test"), settings, os.path.basename(os.path.normpath(data_dir)))
    out = {"model_version": model.version, **figures, "settings": settings.to_dict()}
    with open(os.path.join(model_dir, EVALUATION_FILE), "w") as fh:
        json.dump(out, fh, indent=2)
    return out
