"""Writes the self-contained model artifact (see fuserank.artifacts) from a trained model and its data."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import scipy.sparse as sp

from fuserank import artifacts as art
from fuserank.similarity import l2_normalise
from fuserank.training.dataset import load_splits, load_unrated, read_output


def build_user_lists(data_dir: str, n_users: int, n_anime: int) -> sp.csr_matrix:
    """Every (user, anime) on a user's list: raw rating 1-10 where rated, -1 where only listed."""
    parts = load_splits(data_dir)
    un_user, un_anime = load_unrated(data_dir)
    users = np.concatenate([p.user for p in parts] + [un_user])
    anime = np.concatenate([p.anime for p in parts] + [un_anime])
    ratings = np.concatenate([p.raw_rating for p in parts] + [np.full(len(un_user), -1, np.int8)])
    coo = sp.coo_matrix((ratings.astype(np.int8), (users, anime)), shape=(n_users, n_anime))
    lists = coo.tocsr()
    lists.sum_duplicates()
    lists.sort_indices()
    return lists


def encoder_ids(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw user id per encoded user, raw anime id per encoded anime) of an ingest output."""
    users, anime = read_output(data_dir, "users"), read_output(data_dir, "anime")
    return users["user_id"][np.argsort(users["user"])], anime["anime_id"][np.argsort(anime["anime"])]


def export_artifact(out_dir: str, data_dir: str, user_emb: np.ndarray, anime_emb: np.ndarray,
                    history: dict, manifest_extra: dict, heldout: tuple | None = None) -> dict:
    """Write embeddings (L2-normalised), encoders, user lists and the manifest; returns the manifest.

    ``heldout``: (user, anime) embeddings of the fit that did not see the test split (`art.HELDOUT_EMB`).
    The model version hashes the files, the history and what training chose (``manifest_extra["chosen"]``).
    """
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, art.USER_EMB), l2_normalise(user_emb))
    np.save(os.path.join(out_dir, art.ANIME_EMB), l2_normalise(anime_emb))
    if heldout is not None:
        for name, emb in zip(("user", "anime"), heldout):
            np.save(os.path.join(out_dir, art.HELDOUT_EMB[name]), l2_normalise(emb))
    for name in (art.USERS, art.ANIME):
        shutil.copyfile(os.path.join(data_dir, name), os.path.join(out_dir, name))
    lists = build_user_lists(data_dir, user_emb.shape[0], anime_emb.shape[0])
    art.save_user_lists(os.path.join(out_dir, art.USER_LISTS), lists)
    low = read_output(data_dir, "low_activity")
    if low is not None:
        art.save_low_activity(out_dir, **low)
    history_blob = json.dumps(history, sort_keys=True).encode()
    with open(os.path.join(out_dir, art.HISTORY), "wb") as fh:
        fh.write(history_blob)
    chosen_blob = json.dumps(manifest_extra["chosen"], sort_keys=True).encode() if "chosen" in manifest_extra else b""
    version, hashes = art.content_version(out_dir, extra=history_blob + chosen_blob)
    manifest = {"schema": art.MODEL_SCHEMA, "model_version": version, "files": hashes,
                "n_users": int(user_emb.shape[0]), "n_anime": int(anime_emb.shape[0]),
                "embedding_dim": int(user_emb.shape[1]), **manifest_extra}
    with open(os.path.join(out_dir, art.MANIFEST), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    return manifest
