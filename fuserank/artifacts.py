"""The self-contained model artifact that training writes and the batch job and API read.

MODEL_DIR holds everything downstream needs, so ``precompute`` and ``serve`` take nothing else:
``user_embeddings.npy`` / ``anime_embeddings.npy`` (L2-normalised float32), ``users.parquet`` and
``anime.parquet`` (encoders + anime metadata), ``user_lists.npz`` (each user's whole list as CSR:
raw 1-10 ratings, -1 = on the list but unrated), ``low_activity_*.npy`` (the same for the users below
the ingest's activity threshold, keyed by raw id: the API folds them in; plain .npy so that every worker
memory-maps one copy) and ``manifest.json`` (model version, metrics).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fuserank.config import environment
from fuserank.errors import ArtifactError
from fuserank.schemas.ingest import ANIME_SCHEMA, MANIFEST, UNKNOWN_TYPE, parquet_file, placeholder_name

MODEL_SCHEMA = "fuserank.model/1"
USER_EMB = "user_embeddings.npy"
ANIME_EMB = "anime_embeddings.npy"
USERS, ANIME = parquet_file("users"), parquet_file("anime")   # the ingest's encoder tables, copied as they are
HISTORY = "history.json"
USER_LISTS = "user_lists.npz"
LOW_ACTIVITY = {part: f"low_activity_{part}.npy" for part in ("user_ids", "indptr", "anime", "ratings")}
VERSIONED_FILES = (USER_EMB, ANIME_EMB, USERS, ANIME, USER_LISTS)
# The embeddings of the fit that did not see the ingest's test split (the served ones are refit on every
# rating): what `fuserank evaluate --model --data` scores, so its figures are held-out ones.
HELDOUT_EMB = {"user": "heldout_user_embeddings.npy", "anime": "heldout_anime_embeddings.npy"}
OPTIONAL_FILES = tuple(LOW_ACTIVITY.values()) + tuple(HELDOUT_EMB.values())   # versioned when present
ADULT_GENRE = "Hentai"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(model_dir: str, extra: bytes = b"") -> tuple[str, dict]:
    """Model version = hash of the artifact's content (weights, encoders, lists, history), not a time."""
    present = [name for name in OPTIONAL_FILES if os.path.exists(os.path.join(model_dir, name))]
    hashes = {name: file_sha256(os.path.join(model_dir, name)) for name in VERSIONED_FILES + tuple(present)}
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode() + extra).hexdigest()
    return digest[:16], hashes


def localise(model_dir: str, into: str | None = None) -> str:
    """A local directory with the artifact: the path itself, or a verified cached copy of a ``gs://`` one
    (``into``: a verified copy in that directory, of a local artifact too).

    Dataflow workers and API pods read the model from GCS; every file is checked against the
    sha256 in the manifest, so a half-uploaded or tampered artifact is refused.
    """
    from fuserank import storage
    if into is None and not storage.is_gcs(model_dir):
        return model_dir
    uri = model_dir.rstrip("/")
    root = environment().cache_dir or os.path.join(tempfile.gettempdir(), "fuserank-models")
    local = into or os.path.join(root, hashlib.sha256(uri.encode()).hexdigest()[:16])
    os.makedirs(local, exist_ok=True)
    try:
        with storage.open_binary(f"{uri}/{MANIFEST}") as fh:
            manifest_bytes = fh.read()
    except FileNotFoundError:
        raise ArtifactError(f"{uri}/{MANIFEST}: missing (is this a FuseRank model directory?)") from None
    expected = json.loads(manifest_bytes).get("files", {})
    for name in VERSIONED_FILES + tuple(name for name in OPTIONAL_FILES if name in expected):
        target = os.path.join(local, name)
        if os.path.exists(target) and file_sha256(target) == expected.get(name):
            continue
        tmp = f"{target}.part-{os.getpid()}"
        with storage.open_binary(f"{uri}/{name}") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if expected.get(name) and file_sha256(tmp) != expected[name]:
            os.remove(tmp)
            raise ArtifactError(f"{uri}/{name}: content does not match the manifest's sha256")
        os.replace(tmp, target)
    with open(os.path.join(local, MANIFEST), "wb") as fh:
        fh.write(manifest_bytes)
    return local


def save_user_lists(path: str, lists: sp.csr_matrix) -> None:
    np.savez_compressed(path, indptr=lists.indptr.astype(np.int64), indices=lists.indices.astype(np.int32),
                        ratings=lists.data.astype(np.int8), shape=np.array(lists.shape, dtype=np.int64))


def save_low_activity(model_dir: str, user_id: np.ndarray, anime: np.ndarray, raw_rating: np.ndarray) -> None:
    """Rows of the users below the ingest's activity threshold as CSR keyed by raw user id.

    The ingest writes them sorted by user and de-duplicated (``low_activity.parquet``), so the user
    boundaries are all that is left to find."""
    if len(user_id) > 1 and not np.all(user_id[1:] >= user_id[:-1]):
        raise ArtifactError("low-activity rows are not sorted by user id (expected the ingest's low_activity.parquet)")
    starts = np.flatnonzero(np.r_[True, user_id[1:] != user_id[:-1]]) if len(user_id) else np.empty(0, np.int64)
    parts = {"user_ids": user_id[starts].astype(np.int64), "indptr": np.append(starts, len(user_id)).astype(np.int64),
             "anime": anime.astype(np.int32), "ratings": raw_rating.astype(np.int8)}
    for part, array in parts.items():
        np.save(os.path.join(model_dir, LOW_ACTIVITY[part]), array)


def load_low_activity(model_dir: str) -> dict[str, np.ndarray] | None:
    """The low-activity arrays memory-mapped read-only (shared by every process that maps them), or None."""
    paths = {part: os.path.join(model_dir, name) for part, name in LOW_ACTIVITY.items()}
    if not all(os.path.exists(p) for p in paths.values()):
        return None
    return {part: np.load(p, mmap_mode="r") for part, p in paths.items()}


def read_manifest(model_dir: str) -> dict:
    """A local model directory's manifest; a clear ArtifactError when there is none."""
    path = os.path.join(model_dir, MANIFEST)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (is this a FuseRank model directory?)") from None


@dataclass
class ModelArtifact:
    """An exported model, loaded into memory; id lookups are vectorised searchsorted over sorted raw ids."""

    path: str
    manifest: dict
    user_emb: np.ndarray
    anime_emb: np.ndarray
    user_ids: np.ndarray          # raw MAL user id per encoded user (sorted ascending)
    anime: pd.DataFrame           # encoded anime -> anime_id, name, genres, type (sorted by anime_id)
    lists: sp.csr_matrix          # users x anime, raw rating 1-10, -1 = on the list but unrated
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, model_dir: str) -> "ModelArtifact":
        """Load from a local directory or a ``gs://`` URI (cached locally, checksums verified)."""
        model_dir = localise(model_dir)
        manifest = read_manifest(model_dir)
        try:
            user_emb = np.load(os.path.join(model_dir, USER_EMB))
            anime_emb = np.load(os.path.join(model_dir, ANIME_EMB))
            users = pd.read_parquet(os.path.join(model_dir, USERS))
            anime = pd.read_parquet(os.path.join(model_dir, ANIME))
            with np.load(os.path.join(model_dir, USER_LISTS)) as z:
                lists = sp.csr_matrix((z["ratings"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{model_dir}: incomplete model artifact ({exc.filename} missing)") from None
        if user_emb.shape[0] != len(users) or anime_emb.shape[0] != len(anime):
            raise ArtifactError(f"{model_dir}: embeddings do not match the encoders")
        anime = anime.sort_values("anime").reset_index(drop=True)
        return cls(model_dir, manifest, user_emb.astype(np.float32), anime_emb.astype(np.float32),
                   users.sort_values("user")["user_id"].to_numpy(np.int64), anime, lists)

    @classmethod
    def from_arrays(cls, user_emb: np.ndarray, anime_emb: np.ndarray, user_ids: np.ndarray,
                    anime_ids: np.ndarray, lists: sp.csr_matrix, version: str = "in-memory") -> "ModelArtifact":
        """An artifact that never touched disk (offline evaluation trains one per split)."""
        anime = pd.DataFrame({"anime": np.arange(len(anime_ids), dtype=np.int32), "anime_id": anime_ids,
                              "name": [placeholder_name(a) for a in anime_ids], "genres": "", "type": UNKNOWN_TYPE,
                              "in_metadata": False}, columns=ANIME_SCHEMA.names)
        return cls("", {"model_version": version}, user_emb.astype(np.float32), anime_emb.astype(np.float32),
                   np.asarray(user_ids, np.int64), anime, lists.tocsr())

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def n_users(self) -> int:
        return self.user_emb.shape[0]

    @property
    def n_anime(self) -> int:
        return self.anime_emb.shape[0]

    @cached_property
    def anime_ids(self) -> np.ndarray:
        return self.anime["anime_id"].to_numpy(np.int64)

    @staticmethod
    def _lookup(sorted_ids: np.ndarray, raw) -> np.ndarray:
        if isinstance(raw, (int, np.integer)):      # one id (the API's hot path): no temporaries
            pos = int(np.searchsorted(sorted_ids, raw))
            return np.array([pos if pos < len(sorted_ids) and sorted_ids[pos] == raw else -1])
        raw = np.atleast_1d(np.asarray(raw, dtype=np.int64))
        pos = np.searchsorted(sorted_ids, raw).clip(0, max(len(sorted_ids) - 1, 0))
        return np.where(sorted_ids[pos] == raw, pos, -1)

    def user_index(self, raw_ids) -> np.ndarray:
        """Encoded index per raw user id, -1 where unknown."""
        return self._lookup(self.user_ids, raw_ids)

    def anime_index(self, raw_ids) -> np.ndarray:
        """Encoded index per raw anime id, -1 where unknown."""
        return self._lookup(self.anime_ids, raw_ids)

    def liked_matrix(self, threshold: int) -> sp.csr_matrix:
        """Binary "rated highly" users x anime matrix, cached per threshold (the threshold is a setting)."""
        key = ("liked", threshold)
        if key not in self._cache:
            m = self.lists.copy()
            m.data = (m.data >= threshold).astype(np.float32)
            m.eliminate_zeros()
            self._cache[key] = m.tocsr()
        return self._cache[key]

    @cached_property
    def adult_mask(self) -> np.ndarray:
        genres = self.anime["genres"].fillna("").str.split(",\\s*", regex=True)
        return genres.map(lambda g: ADULT_GENRE in g).to_numpy(bool)

    @cached_property
    def liked_share(self) -> np.ndarray:
        """Per encoded anime, the share of users who rated it >= 8 (the cold-start score)."""
        counts = np.asarray((self.lists >= 8).sum(axis=0)).ravel()
        return (counts / max(self.n_users, 1)).astype(np.float32)

    @cached_property
    def popularity(self) -> np.ndarray:
        """Encoded anime ordered by how many users rated them highly (the cold-start answer)."""
        return np.lexsort((np.arange(self.n_anime), -self.liked_share)).astype(np.int32)
