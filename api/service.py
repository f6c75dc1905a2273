"""What the API answers, independent of Flask: Redis lookups first, the shared scorer when needed.

``source`` tells the client where an answer came from: ``precomputed`` (a stored list), ``live``
(the in-memory model, via fuserank.scorer) or ``popular`` (a user the model has never seen).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import redis
import scipy.sparse as sp

from fuserank import keys
from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.foldin import fold_in
from fuserank.publish import read_meta
from fuserank.scorer import HybridScorer
from fuserank.similarity import top_k_rows

log = logging.getLogger("fuserank.api")
POINTER_TTL_S = 1.0


@dataclass
class Answer:
    """One answer; a precomputed one keeps the stored JSON array (``raw_items``) to splice as-is."""

    items: list[dict] | None
    source: str
    model_version: str
    list_version: str | None = None
    degraded: bool = False
    raw_items: bytes | None = None

    def _head(self, key: str, value) -> dict:
        out = {key: value, "model_version": self.model_version, "source": self.source}
        if self.list_version:
            out["list_version"] = self.list_version
        if self.degraded:
            out["degraded"] = True
        return out

    def body(self, key: str, value) -> dict:
        items = self.items if self.raw_items is None else json.loads(self.raw_items)
        return {**self._head(key, value), "items": items}

    def to_json(self, key: str, value) -> bytes:
        """The response body; a stored list is not decoded and re-encoded on the hot path."""
        items = self.raw_items if self.raw_items is not None else json.dumps(self.items).encode()
        return json.dumps(self._head(key, value)).encode()[:-1] + b', "items": ' + items + b"}"


class RecommendationService:
    def __init__(self, model_dir: str, redis_url: str, settings: HybridSettings | None = None):
        self.model = ModelArtifact.load(model_dir)
        self.settings = settings or HybridSettings()
        self.scorer = HybridScorer(self.model, self.settings)
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                          retry_on_timeout=False)
        self._pointer: tuple[float, str | None, str | None] = (0.0, None, None)
        self._suppressed: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self.names = self.model.anime["name"].to_numpy(object)
        log.info("model %s loaded: %d users, %d anime", self.model.version, self.model.n_users, self.model.n_anime)

    # -- published list version, cached briefly so the hot path does one Redis GET ------------
    def list_version(self) -> tuple[str | None, str | None]:
        """(list version, its model version) named by the pointer; re-read at most every POINTER_TTL_S."""
        fetched_at, version, model_version = self._pointer
        if time.monotonic() - fetched_at < POINTER_TTL_S:
            return version, model_version
        with self._lock:
            with self.redis.pipeline(transaction=False) as pipe:
                raw, members = pipe.get(keys.CURRENT).smembers(keys.SUPPRESSED).execute()
            self._suppressed = frozenset(int(m) for m in members)
            version = raw.decode() if raw is not None else None
            if version != self._pointer[1]:
                model_version = read_meta(self.redis, version).get("model_version") if version else None
            self._pointer = (time.monotonic(), version, model_version)
        return version, model_version

    def redis_state(self) -> dict:
        """Redis's state and the list version; when Redis is down, the last version seen (still served live)."""
        try:
            self.redis.ping()
            version, model_version = self.list_version()
            return {"redis": "up", "list_version": version, "list_model_version": model_version}
        except redis.RedisError as exc:
            _, version, model_version = self._pointer
            return {"redis": "down", "error": type(exc).__name__, "list_version": version,
                    "list_model_version": model_version}

    # -- answers -----------------------------------------------------------------------------
    def _items(self, encoded: np.ndarray, scores: np.ndarray) -> list[dict]:
        return [{"anime_id": int(self.model.anime_ids[a]), "name": self.names[a], "score": round(float(s), 4)}
                for a, s in zip(encoded, scores)]

    def _precomputed(self, key_of, n: int) -> Answer | None:
        """The stored list under the current version if it holds n items; raises RedisError when down."""
        version, model_version = self.list_version()
        raw = self.redis.get(key_of(version)) if version else None
        if raw is None:
            return None
        if keys.list_length(raw) < n:
            return None
        return Answer(None, "precomputed", model_version or self.model.version, version,
                      raw_items=keys.slice_list(raw, n))

    def user_recommendations(self, user_id: int, n: int, live: bool = False, include_adult: bool = False) -> Answer:
        u = int(self.model.user_index(user_id)[0])
        degraded = False
        try:
            self.list_version()  # refreshes the pointer and the suppression set at most once a second
        except redis.RedisError:
            degraded = True  # keep the last suppression set seen
        if user_id in self._suppressed:
            return Answer(self._popular(n, include_adult), "popular", self.model.version)
        if u >= 0 and not live and not include_adult:
            try:
                answer = self._precomputed(lambda v: keys.user(v, user_id), n)
                if answer is not None:
                    return answer
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s): answering live", type(exc).__name__)
                degraded = True
        if u < 0:
            return Answer(self._popular(n, include_adult), "popular", self.model.version)
        ranked = self.scorer.score_users(np.array([u]), n=n, include_adult=include_adult)
        items, scores = ranked.row(0)
        return Answer(self._items(items, scores), "live", self.model.version, degraded=degraded)

    def new_user_recommendations(self, anime_ids: np.ndarray, ratings: np.ndarray, n: int,
                                 include_adult: bool = False) -> tuple[Answer, list[int]]:
        """A user the model has never seen: fold their ratings in, then the same hybrid (``live``)."""
        enc = self.model.anime_index(anime_ids)
        known = enc >= 0
        ignored = sorted({int(a) for a in np.asarray(anime_ids)[~known]})
        if not known.any():
            return Answer(self._popular(n, include_adult), "popular", self.model.version), ignored
        enc, ratings = enc[known], np.asarray(ratings)[known]
        vector = fold_in(self.model.anime_emb, enc, ratings, self.settings.like_threshold)
        shape = (1, self.model.n_anime)
        on_list = sp.csr_matrix((np.ones(len(enc), np.int8), (np.zeros(len(enc), int), enc)), shape=shape)
        liked_enc = enc[ratings >= self.settings.like_threshold]
        liked = sp.csr_matrix((np.ones(len(liked_enc), np.float32), (np.zeros(len(liked_enc), int), liked_enc)),
                              shape=shape)
        ranked = self.scorer.score_vectors(vector, liked, on_list, None, n, include_adult)
        items, scores = ranked.row(0)
        return Answer(self._items(items, scores), "live", self.model.version), ignored

    def _popular(self, n: int, include_adult: bool) -> list[dict]:
        order = self.model.popularity
        if not include_adult:
            order = order[~self.model.adult_mask[order]]
        top = order[:n]
        return self._items(top, self.model.liked_share[top])

    def similar_anime(self, anime_id: int, n: int, include_adult: bool = False) -> Answer | None:
        a = int(self.model.anime_index(anime_id)[0])
        if a < 0:
            return None
        degraded = False
        if not include_adult:
            try:
                answer = self._precomputed(lambda v: keys.anime(v, anime_id), n)
                if answer is not None:
                    return answer
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s): answering live", type(exc).__name__)
                degraded = True
        sims = self.model.anime_emb @ self.model.anime_emb[a]
        sims[a] = -np.inf
        if not include_adult:
            sims[self.model.adult_mask] = -np.inf
        order, scores = top_k_rows(sims[None, :], n)
        keep = np.isfinite(scores[0])
        return Answer(self._items(order[0][keep], scores[0][keep]), "live", self.model.version, degraded=degraded)
