"""The answer paths, independent of Flask and Redis: a stored list (``precomputed``), the in-memory model
(``live``, via fuserank.scorer, fold-in included), the most liked anime (``popular``: a user the model has
never seen) and an anime's nearest neighbours. Items are ``keys.item_json`` objects, the stored lists' own
form, so a stored list is spliced into the response as it is."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fuserank import keys
from fuserank.foldin import fold_in as fold_in_vector
from fuserank.similarity import top_k_rows

_EXCLUDE_MARK = 50           # added to a user's stored list row: never cancels a rating (-1..10) to 0


@functools.lru_cache(maxsize=256)
def _head_fields(model_version: str, source: str, list_version: str | None, degraded: bool) -> bytes:
    """The answer's version/source fields as JSON text, built once per combination."""
    fields = {"model_version": model_version, "source": source}
    if list_version:
        fields["list_version"] = list_version
    if degraded:
        fields["degraded"] = True
    return keys.compact_json(fields).encode()[1:-1]


@dataclass
class Answer:
    items: bytes                # JSON array of keys.item_json items
    source: str
    model_version: str
    list_version: str | None = None
    degraded: bool = False
    name: str | None = None     # the name of the anime asked about (similar anime)

    def to_json(self, key: str, value) -> bytes:
        """The response body: ``{key: value, [name], model_version, source, [list_version], [degraded], items}``."""
        head = b'{"%s":%s,' % (key.encode(), b"null" if value is None else b"%d" % value)
        if self.name is not None:
            head += b'"name":%s,' % keys.compact_json(self.name).encode()
        return head + _head_fields(self.model_version, self.source, self.list_version, self.degraded) \
            + b',"items":' + self.items + b"}"

    def body(self, key: str, value) -> dict:
        return json.loads(self.to_json(key, value))


def _one_row(cols: np.ndarray, n: int, value, dtype) -> sp.csr_matrix:
    """A 1 x n sparse row holding ``value`` at ``cols``: one user's list, likes or exclusions for the scorer."""
    return sp.csr_matrix((np.full(len(cols), value, dtype), (np.zeros(len(cols), np.int64), cols)), shape=(1, n))


def _ranked(view, ranked, degraded: bool = False) -> Answer:
    keep = ranked.items[0] >= 0
    explained = ranked.because is not None
    items = view.bundle.encoder.array(ranked.items[0][keep], ranked.scores[0][keep],
                                      ranked.because[0][keep] if explained else None,
                                      ranked.similar_users[0][keep] if explained else None)
    return Answer(items, "live", view.bundle.version, view.list_version, degraded)


def precomputed(raw: bytes, view, n: int, drop: np.ndarray | None, explain: bool) -> Answer | None:
    """A stored list's first ``n`` items (after the filters); None when it holds fewer."""
    bundle = view.bundle
    if drop is None:
        if keys.list_length(raw) < n:
            return None
        items = keys.slice_list(raw, n)
        if explain or b'"reasons":' not in items:
            return Answer(items, "precomputed", bundle.version, view.list_version)
        kept = json.loads(items)
    else:
        stored = keys.decode_list(raw)
        enc = bundle.model.anime_index(np.fromiter((i["anime_id"] for i in stored), np.int64, len(stored)))
        kept = [item for item, a in zip(stored, enc) if a >= 0 and not drop[a]][:n]
        if len(kept) < n:
            return None
    if not explain:
        kept = [{k: v for k, v in item.items() if k != "reasons"} for item in kept]
    return Answer(keys.compact_json(kept).encode(), "precomputed", bundle.version, view.list_version)


def popular(bundle, n: int, include_adult: bool, drop: np.ndarray | None = None) -> Answer:
    model = bundle.model
    order = model.popularity
    if not include_adult:
        order = order[~model.adult_mask[order]]
    if drop is not None:
        order = order[~drop[order]]
    top = order[:n]
    return Answer(bundle.encoder.array(top, model.liked_share[top]), "popular", bundle.version)


def live_user(view, u: int, n: int, include_adult: bool, drop: np.ndarray | None, explain: bool,
              degraded: bool) -> Answer:
    """A user the model has a row for (encoded ``u``), scored now."""
    bundle = view.bundle
    exclude = None
    if drop is not None and drop.any():
        exclude = _one_row(np.flatnonzero(drop), bundle.model.n_anime, _EXCLUDE_MARK, np.int8)
    ranked = bundle.scorer.score_users(np.array([u]), n=n, include_adult=include_adult, exclude=exclude,
                                       explain=explain)
    return _ranked(view, ranked, degraded)


def fold_in(view, enc: np.ndarray, ratings: np.ndarray, n: int, include_adult: bool, drop: np.ndarray | None,
            explain: bool) -> Answer:
    """A user the model has no row for, from their ratings (< 1 = listed, unrated): the same hybrid."""
    bundle = view.bundle
    model, like = bundle.model, bundle.scorer.settings.like_threshold
    rated = ratings >= 1
    if not rated.any():
        listed = np.zeros(model.n_anime, bool)
        listed[enc] = True
        return popular(bundle, n, include_adult, listed if drop is None else drop | listed)
    vector = fold_in_vector(model.anime_emb, enc[rated], ratings[rated], like)
    cols = np.unique(enc) if drop is None else np.union1d(enc, np.flatnonzero(drop))
    on_list = _one_row(cols, model.n_anime, 1, np.int8)
    liked = _one_row(np.unique(enc[ratings >= like]), model.n_anime, 1, np.float32)
    return _ranked(view, bundle.scorer.score_vectors(vector, liked, on_list, None, n, include_adult, explain=explain))


def similar(view, a: int, n: int, include_adult: bool, drop: np.ndarray | None, degraded: bool) -> Answer:
    """Encoded anime ``a``'s nearest neighbours by the model's embeddings, computed now."""
    bundle = view.bundle
    model = bundle.model
    sims = model.anime_emb @ model.anime_emb[a]
    sims[a] = -np.inf
    if not include_adult:
        sims[model.adult_mask] = -np.inf
    if drop is not None:
        sims[drop] = -np.inf
    order, scores = top_k_rows(sims[None, :], n)
    keep = np.isfinite(scores[0])
    return Answer(bundle.encoder.array(order[0][keep], scores[0][keep]), "live", bundle.version,
                  view.list_version, degraded, name=bundle.names[a])
