"""What the API answers, independent of Flask: Redis lookups first, the shared scorer when needed.

``source`` tells the client where an answer came from: ``precomputed`` (a stored list), ``live``
(the in-memory model, via fuserank.scorer) or ``popular`` (a user the model has never seen).

Versions. Every answer is computed from one ``View``: an immutable ``Bundle`` (one model version, its
scorer, names and filter masks) and at most one list version that this same model wrote. The view is
swapped whole (one attribute assignment), so an answer never mixes versions. The pointer
(``fuserank:current`` / ``fuserank:previous``) is re-read at most every ``POINTER_TTL_S``; when it names
a model that is not loaded, the model is loaded in a background thread (from the list version's meta
``model_uri``, else ``$FUSERANK_MODELS_URI/<model version>``, else the ``--model`` directory when it is
that version) while answers keep coming from the view before; then the view switches. Bundles of the
current and previous versions are kept (a rollback switches at once), others are dropped. A pointer that
names no list version (no meta naming a model: a hand edit) leaves the view as it is, logged once as an
ERROR and reported by ``pointer_valid()`` (``/readyz``, ``/metrics``).

Redis down or slow: every call has 0.25 s socket timeouts and no retries; after a failure Redis is left
alone for ``REDIS_RETRY_S`` (answers are ``live`` with ``degraded: true`` meanwhile), then tried again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import redis
import scipy.sparse as sp
from redis.backoff import NoBackoff
from redis.retry import Retry

from fuserank import artifacts as art
from fuserank import keys
from fuserank.api.errors import BadParameter, NotFound
from fuserank.artifacts import ModelArtifact, read_manifest
from fuserank.config import HybridSettings
from fuserank.foldin import fold_in
from fuserank.scorer import HybridScorer
from fuserank.similarity import top_k_rows

log = logging.getLogger("fuserank.api")

POINTER_TTL_S = 1.0         # the pointer and the suppression set are re-read at most this often
REDIS_TIMEOUT_S = 0.25      # connect and read timeout of every Redis call on the request path
REDIS_RETRY_S = 0.5         # after a Redis failure, answer without Redis this long before trying it again
LOAD_RETRY_S = 60.0         # a model version that failed to load is tried again after this long
MODELS_URI_ENV = "FUSERANK_MODELS_URI"       # the model store: <uri>/<model version>/ (batch/nightly.py)
RATE_LIMIT_PREFIX = keys.RATE_LIMIT
LOCAL_RATE_CLIENTS = 10_000  # clients counted per window per process while Redis is down
_EXCLUDE_MARK = 50           # added to a user's stored list row: never cancels a rating (-1..10) to 0
_UNREAD = object()


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
    """One answer; a precomputed one keeps the stored JSON array (``raw_items``) to splice as-is."""

    items: list[dict] | None
    source: str
    model_version: str
    list_version: str | None = None
    degraded: bool = False
    raw_items: bytes | None = None
    name: str | None = None     # the name of the anime asked about (similar anime)

    def _head(self, key: str, value) -> dict:
        out = {key: value, **({"name": self.name} if self.name is not None else {}),
               "model_version": self.model_version, "source": self.source}
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
        items = self.raw_items if self.raw_items is not None else keys.compact_json(self.items).encode()
        head = b'{"%s":%s,' % (key.encode(), b"null" if value is None else b"%d" % value)
        if self.name is not None:
            head += b'"name":%s,' % keys.compact_json(self.name).encode()
        return head + _head_fields(self.model_version, self.source, self.list_version, self.degraded) \
            + b',"items":' + items + b"}"


@dataclass(frozen=True)
class Filters:
    """``?exclude=ID,ID``, ``?genre=NAME[,NAME]``, ``?type=TV[,Movie]`` (any of the names given)."""

    exclude: tuple[int, ...] = ()
    genres: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.exclude or self.genres or self.types)


NO_FILTERS = Filters()


@dataclass(frozen=True, eq=False)
class LowActivity:
    """Users of the model's source ratings that the ingest left out (below its activity threshold).

    Memory-mapped from the artifact's ``low_activity_*.npy`` (written by ingest + export, so versioned with
    the model and reachable wherever the model is, local or ``gs://``; one copy in the page cache for all
    workers and versions): each user's rows on anime the model knows, raw rating 1-10 or -1 = listed, unrated.
    """

    user_ids: np.ndarray    # sorted raw user ids
    indptr: np.ndarray
    anime: np.ndarray       # encoded anime of the model
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        i = int(np.searchsorted(self.user_ids, user_id))
        if i >= len(self.user_ids) or self.user_ids[i] != user_id:
            return None
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.anime[lo:hi], self.ratings[lo:hi]

    @classmethod
    def from_artifact(cls, model: ModelArtifact) -> "LowActivity | None":
        arrays = art.load_low_activity(model.path)
        if arrays is None:
            log.info("low-activity users: model %s has none exported (an artifact from before they were); "
                     "they get `popular`", model.version)
            return None
        low = cls(arrays["user_ids"], arrays["indptr"], arrays["anime"], arrays["ratings"])
        log.info("low-activity users: %d users (%d rows) in model %s", len(low), len(low.anime), model.version)
        return low


def _one_row(cols: np.ndarray, n: int, value, dtype) -> sp.csr_matrix:
    """A 1 x n sparse row holding ``value`` at ``cols``: one user's list, likes or exclusions for the scorer."""
    return sp.csr_matrix((np.full(len(cols), value, dtype), (np.zeros(len(cols), np.int64), cols)), shape=(1, n))


@dataclass(frozen=True, eq=False)
class Bundle:
    """One model version with everything derived from it; built once, never changed, swapped whole."""

    model: ModelArtifact
    scorer: HybridScorer
    names: np.ndarray
    genres: dict            # lower-case genre -> (name, bool mask over encoded anime)
    types: dict             # lower-case type -> (name, bool mask)
    low_activity: LowActivity | None = None

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def key(self) -> tuple[str, HybridSettings]:
        return self.model.version, self.scorer.settings

    @classmethod
    def build(cls, model: ModelArtifact, settings: HybridSettings, low_activity: LowActivity | None = None):
        n = model.n_anime
        genres: dict[str, list] = {}
        for a, text in enumerate(model.anime["genres"].fillna("").astype(str)):
            for name in (g.strip() for g in text.split(",")):
                if name:
                    genres.setdefault(name.lower(), [name, np.zeros(n, bool)])[1][a] = True
        types: dict[str, list] = {}
        for a, name in enumerate(model.anime["type"].fillna("Unknown").astype(str)):
            types.setdefault(name.strip().lower(), [name.strip(), np.zeros(n, bool)])[1][a] = True
        return cls(model, HybridScorer(model, settings), model.anime["name"].to_numpy(object),
                   {k: tuple(v) for k, v in genres.items()}, {k: tuple(v) for k, v in types.items()},
                   low_activity)


@dataclass(frozen=True, eq=False)
class View:
    """What one answer uses: a bundle and the list version its model wrote (None: live answers only)."""

    bundle: Bundle
    list_version: str | None


@dataclass
class _Pointer:
    current: str | None = None
    previous: str | None = None
    meta: dict = field(default_factory=dict)   # list version -> {"model_version", "model_uri", "settings"}

    @property
    def valid(self) -> bool:
        """False when ``current`` is set but names no list version (no meta naming a model)."""
        return self.current is None or bool((self.meta.get(self.current) or {}).get("model_version"))


class RecommendationService:
    def __init__(self, model_dir: str, redis_url: str, settings: HybridSettings | None = None):
        self.settings = settings
        self.model_dir = model_dir
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                          socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        self.models_uri = os.environ.get(MODELS_URI_ENV) or None
        self._init_locks()
        self._models: dict[str, ModelArtifact] = {}
        self._low_activity: dict[str, LowActivity | None] = {}
        self._bundles: dict[tuple, Bundle] = {}
        self._failed: dict[tuple, float] = {}
        self._pointer: tuple[float, str | None, str | None] = (0.0, None, None)  # fetched at, current, its model
        self._state = _Pointer()
        self._invalid_logged: str | None = None     # the bad pointer value last logged (once per value)
        self._suppressed: frozenset[int] = frozenset()
        self._redis_down_until = 0.0
        self._local_counts: tuple[int, dict] = (-1, {})
        model = self._load_model(model_dir)
        self.settings = settings or HybridSettings.for_model(model.manifest)
        fallback = self._build(model, self.settings)
        self._bundles[fallback.key] = fallback
        self._view = View(fallback, None)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) is not None and s._init_locks())
        try:
            self._refresh(load_now=True)   # at start (before gunicorn forks): load what the pointer names
        except redis.RedisError as exc:
            log.warning("redis unavailable at start (%s): answering live from model %s", type(exc).__name__,
                        fallback.version)
        log.info("model %s loaded: %d users, %d anime", self.model.version, self.model.n_users, self.model.n_anime)

    def _init_locks(self) -> None:
        """Fresh locks and no loads in flight: at start, and in each forked gunicorn worker."""
        self._lock = threading.Lock()        # pointer refresh and view swaps
        self._load_lock = threading.Lock()   # one model load at a time
        self._loading: set[tuple] = set()

    # -- what is being served ----------------------------------------------------------------
    @property
    def model(self) -> ModelArtifact:
        return self._view.bundle.model

    @property
    def scorer(self) -> HybridScorer:
        return self._view.bundle.scorer

    @property
    def names(self) -> np.ndarray:
        return self._view.bundle.names

    def view(self) -> View:
        return self._view

    def _request_view(self) -> tuple[View, bool]:
        """The view to answer from, and True when Redis cannot be used for this answer."""
        now = time.monotonic()
        if now < self._redis_down_until:
            return self._view, True
        if now - self._pointer[0] >= POINTER_TTL_S:
            try:
                self._refresh()
            except redis.RedisError as exc:
                self._redis_failed(exc)
                return self._view, True
        return self._view, False

    def _redis_failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning("redis unavailable (%s): answering live for %.1fs", type(exc).__name__, REDIS_RETRY_S)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_S

    def refresh(self) -> View:
        """Re-read the pointer now (tests, operators); raises RedisError when Redis is down."""
        self._refresh(blocking=True)
        return self._view

    def wait_for(self, model_version: str, timeout: float = 60.0) -> View:
        """Block until the view serves ``model_version`` (tests and the CLI; never on a request)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = self.refresh()
            except redis.RedisError:
                view = self._view
            if view.bundle.version == model_version and (view.list_version or not self._state.current):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"still serving model {view.bundle.version}, not {model_version}")
            time.sleep(0.05)

    def _refresh(self, load_now: bool = False, blocking: bool = False) -> None:
        """Re-read the pointer and the suppression set; settle the view. Raises RedisError when down."""
        if not self._lock.acquire(blocking=blocking):
            return          # another thread is refreshing: this answer uses the view as it is
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                current, previous, members = pipe.get(keys.CURRENT).get(keys.PREVIOUS).smembers(
                    keys.SUPPRESSED).execute()
            self._suppressed = frozenset(int(m) for m in members if m.isdigit())
            current = current.decode() if current is not None else None
            previous = previous.decode() if previous is not None else None
            meta = {}
            for version in (current, previous):
                if version:
                    cached = self._state.meta.get(version)
                    meta[version] = cached if cached and cached["model_version"] else self._read_meta(version)
            self._state = _Pointer(current, previous, meta)
            self._pointer = (time.monotonic(), current, (meta.get(current) or {}).get("model_version"))
            self._settle(load_now)
            self._report_invalid_pointer()
        finally:
            self._lock.release()

    def _read_meta(self, version: str) -> dict:
        model_version, model_uri, settings = self.redis.hmget(keys.meta(version), "model_version", "model_uri",
                                                              "settings")
        out = {"model_version": model_version.decode() if model_version else None,
               "model_uri": model_uri.decode() if model_uri else None, "settings": self.settings}
        if settings:
            try:
                out["settings"] = HybridSettings.from_dict(json.loads(settings))
            except (ValueError, TypeError) as exc:
                log.warning("list version %s: unreadable settings in its meta (%s); live answers use the "
                            "API's", version, exc)
        return out

    def _report_invalid_pointer(self) -> None:
        state = self._state
        if state.valid:
            self._invalid_logged = None
        elif state.current != self._invalid_logged:
            self._invalid_logged = state.current
            log.error("%s names %r, which is no list version in Redis (no meta naming a model); still serving "
                      "list version %s with model %s: point it at a published version (fuserank publish / "
                      "rollback)", keys.CURRENT, state.current[:200], self._view.list_version,
                      self._view.bundle.version)

    def _wanted(self) -> list[tuple[str, tuple]]:
        """(list version, bundle key) of current then previous, where the meta names a model."""
        state = self._state
        out = []
        for version in (state.current, state.previous):
            meta = state.meta.get(version) if version else None
            if meta and meta.get("model_version"):
                out.append((version, (meta["model_version"], meta["settings"])))
        return out

    def _settle(self, load_now: bool = False) -> None:
        """Point the view at the newest wanted version whose bundle is loaded; load the missing ones.

        Caller holds ``self._lock``.
        """
        wanted = self._wanted()
        if load_now and wanted and wanted[0][1] not in self._bundles:
            self._load_bundle(*wanted[0], quiet=True)
        if not self._state.valid and self._view.list_version:
            wanted.insert(0, (self._view.list_version, self._view.bundle.key))   # the last good pair stays
        for version, key in wanted:
            bundle = self._bundles.get(key)
            if bundle is not None:
                view = View(bundle, version)
                break
        else:
            view = View(self._view.bundle, None)
        if view.bundle is not self._view.bundle or view.list_version != self._view.list_version:
            log.info("serving list version %s with model %s (pointer: current %s, previous %s)",
                     view.list_version, view.bundle.version, self._state.current, self._state.previous)
            self._view = view
        keep = {key for _, key in wanted} | {self._view.bundle.key}
        for key in [k for k in tuple(self._bundles) if k not in keep]:
            del self._bundles[key]
        used = {key[0] for key in tuple(self._bundles)}
        for version in [v for v in tuple(self._models) if v not in used]:   # a loader thread may be adding one
            self._models.pop(version, None)
            self._low_activity.pop(version, None)
        if not load_now:
            for version, key in wanted:
                if key not in self._bundles:
                    self._start_load(version, key)

    # -- loading model versions --------------------------------------------------------------
    def _start_load(self, version: str, key: tuple) -> None:
        if key in self._loading or time.monotonic() < self._failed.get(key, -math.inf):
            return
        self._loading.add(key)
        threading.Thread(target=self._load_in_background, args=(version, key), daemon=True,
                         name=f"fuserank-load-{key[0]}").start()

    def _load_in_background(self, version: str, key: tuple) -> None:
        with self._load_lock:
            try:
                bundle = self._build_for(version, key)
            except Exception as exc:  # noqa: BLE001 - logged; the view before keeps answering
                log.error("list version %s: cannot load model %s (%s); still serving model %s, retrying in %ds",
                          version, key[0], exc, self._view.bundle.version, LOAD_RETRY_S)
                bundle = None
        with self._lock:
            self._loading.discard(key)
            if bundle is None:
                self._failed[key] = time.monotonic() + LOAD_RETRY_S
                return
            self._failed.pop(key, None)
            self._bundles[key] = bundle
            self._settle()

    def _load_bundle(self, version: str, key: tuple, quiet: bool = False) -> None:
        try:
            self._bundles[key] = self._build_for(version, key)
        except Exception as exc:  # noqa: BLE001 - at start: the --model fallback answers instead
            log.error("list version %s: cannot load model %s (%s)", version, key[0], exc)
            self._failed[key] = time.monotonic() + LOAD_RETRY_S
            if not quiet:
                raise

    def _build_for(self, version: str, key: tuple) -> Bundle:
        model_version, settings = key
        model = self._models.get(model_version)
        if model is None:
            model = self._find_model(version, model_version)
        t0 = time.monotonic()
        bundle = self._build(model, settings)
        log.info("model %s ready for list version %s in %.1fs", model_version, version, time.monotonic() - t0)
        return bundle

    def _find_model(self, version: str, model_version: str) -> ModelArtifact:
        """The model a list version was written by: its meta's model_uri, the model store, or --model."""
        from fuserank import storage
        candidates = [(self._state.meta.get(version) or {}).get("model_uri")]
        if self.models_uri:
            candidates.append(f"{self.models_uri.rstrip('/')}/{model_version}")
        candidates.append(self.model_dir)
        errors = []
        for uri in dict.fromkeys(c for c in candidates if c):
            try:
                if not storage.is_gcs(uri) and read_manifest(uri).get("model_version") != model_version:
                    errors.append(f"{uri}: holds another model")
                    continue
                model = self._load_model(uri)
            except Exception as exc:  # noqa: BLE001 - try the next place; all failures are reported
                errors.append(f"{uri}: {exc}")
                continue
            if model.version == model_version:
                return model
            errors.append(f"{uri}: holds model {model.version}")
        raise LookupError(f"model {model_version} not found ({'; '.join(errors) or 'no model_uri in the meta'})")

    def _load_model(self, uri: str) -> ModelArtifact:
        model = ModelArtifact.load(uri)
        return self._models.setdefault(model.version, model)

    def _build(self, model: ModelArtifact, settings: HybridSettings) -> Bundle:
        low = self._low_activity.get(model.version, _UNREAD)
        if low is _UNREAD:
            try:
                low = LowActivity.from_artifact(model)
            except Exception as exc:  # noqa: BLE001 - optional: those users then get `popular`
                log.warning("low-activity users of model %s not available (%s)", model.version, exc)
                low = None
            self._low_activity[model.version] = low
        return Bundle.build(model, settings, low)

    # -- published list version, cached briefly so the hot path does one Redis GET ------------
    def list_version(self) -> tuple[str | None, str | None]:
        """(list version, its model version) named by the pointer; re-read at most every POINTER_TTL_S."""
        if time.monotonic() - self._pointer[0] >= POINTER_TTL_S:
            self._refresh()
        return self._pointer[1], self._pointer[2]

    def pointer_valid(self) -> bool:
        """False while ``fuserank:current`` names no list version (the last good one keeps answering)."""
        return self._state.valid

    def redis_state(self) -> dict:
        """Redis's state, the pointer and what is served; when Redis is down, the last pointer seen."""
        try:
            self.redis.ping()
            self.list_version()
            state = {"redis": "up"}
        except redis.RedisError as exc:
            state = {"redis": "down", "error": type(exc).__name__}
        view, pointer = self._view, self._state
        return {**state, "list_version": pointer.current, "pointer_valid": pointer.valid,
                "list_model_version": (pointer.meta.get(pointer.current) or {}).get("model_version"),
                "previous_list_version": pointer.previous,
                "serving": {"model_version": view.bundle.version, "list_version": view.list_version},
                "models_loaded": sorted({k[0] for k in tuple(self._bundles)}),   # tuple(): one atomic copy
                "loading": sorted({k[0] for k in tuple(self._loading)})}

    # -- filters ---------------------------------------------------------------------------
    @staticmethod
    def _mask_of(table: dict, names: tuple[str, ...], parameter: str) -> np.ndarray:
        out = None
        for name in names:
            entry = table.get(name.strip().lower())
            if entry is None:
                valid = ", ".join(sorted(v[0] for v in table.values()))
                raise BadParameter(parameter, f"unknown value {name[:40]!r}; valid: {valid}")
            out = entry[1].copy() if out is None else out | entry[1]
        return out

    def _drop_mask(self, bundle: Bundle, filters: Filters) -> np.ndarray | None:
        """Encoded anime the filters leave out (True = dropped), or None without filters."""
        if not filters:
            return None
        drop = np.zeros(bundle.model.n_anime, bool)
        if filters.exclude:
            enc = bundle.model.anime_index(np.asarray(filters.exclude, np.int64))
            drop[enc[enc >= 0]] = True
        if filters.genres:
            drop |= ~self._mask_of(bundle.genres, filters.genres, "genre")
        if filters.types:
            drop |= ~self._mask_of(bundle.types, filters.types, "type")
        return drop

    def filter_values(self) -> dict:
        """Valid ``genre`` and ``type`` values of the model being served."""
        b = self._view.bundle
        return {"genre": sorted(v[0] for v in b.genres.values()), "type": sorted(v[0] for v in b.types.values())}

    # -- answers -----------------------------------------------------------------------------
    def _items(self, bundle: Bundle, encoded: np.ndarray, scores: np.ndarray, reasons=None) -> list[dict]:
        ids = bundle.model.anime_ids
        items = [{"anime_id": int(ids[a]), "name": bundle.names[a], "score": round(float(s), 4)}
                 for a, s in zip(encoded, scores)]
        if reasons is not None:
            for item, why in zip(items, reasons):
                if why is not None:
                    item["reasons"] = why
        return items

    @staticmethod
    def _explained(items: list[dict], explain: bool) -> list[dict]:
        if explain:
            return items
        return [{k: v for k, v in item.items() if k != "reasons"} for item in items]

    def _precomputed(self, view: View, key: str, n: int, drop: np.ndarray | None, explain: bool) -> Answer | None:
        """The stored list if it holds n items (after the filters); raises RedisError when down."""
        raw = self.redis.get(key)
        if raw is None:
            return None
        bundle = view.bundle
        if drop is None:
            if keys.list_length(raw) < n:
                return None
            items = keys.slice_list(raw, n)
            if not explain and b'"reasons":' in items:
                return Answer(self._explained(json.loads(items), False), "precomputed", bundle.version,
                              view.list_version)
            return Answer(None, "precomputed", bundle.version, view.list_version, raw_items=items)
        stored = keys.decode_list(raw)
        enc = bundle.model.anime_index(np.fromiter((i["anime_id"] for i in stored), np.int64, len(stored)))
        kept = [item for item, a in zip(stored, enc) if a >= 0 and not drop[a]]
        if len(kept) < n:
            return None
        return Answer(self._explained(kept[:n], explain), "precomputed", bundle.version, view.list_version)

    def _popular(self, bundle: Bundle, n: int, include_adult: bool, drop: np.ndarray | None = None) -> list[dict]:
        model = bundle.model
        order = model.popularity
        if not include_adult:
            order = order[~model.adult_mask[order]]
        if drop is not None:
            order = order[~drop[order]]
        top = order[:n]
        return self._items(bundle, top, model.liked_share[top])

    def user_recommendations(self, user_id: int, n: int, live: bool = False, include_adult: bool = False,
                             filters: Filters = NO_FILTERS, explain: bool = True) -> Answer:
        view, degraded = self._request_view()
        bundle = view.bundle
        drop = self._drop_mask(bundle, filters)
        if user_id in self._suppressed:
            return Answer(self._popular(bundle, n, include_adult, drop), "popular", bundle.version)
        u = int(bundle.model.user_index(user_id)[0])
        if u >= 0 and not live and not include_adult and not degraded and view.list_version:
            try:
                answer = self._precomputed(view, keys.user(view.list_version, user_id), n, drop, explain)
                if answer is not None:
                    return answer
            except redis.RedisError as exc:
                self._redis_failed(exc)
                degraded = True
        if u < 0:
            rows = bundle.low_activity.get(user_id) if bundle.low_activity is not None else None
            if rows is None:
                return Answer(self._popular(bundle, n, include_adult, drop), "popular", bundle.version)
            return self._fold_in(view, *rows, n, include_adult, drop, explain)
        exclude = None
        if drop is not None and drop.any():
            cols = np.flatnonzero(drop)
            exclude = _one_row(cols, bundle.model.n_anime, _EXCLUDE_MARK, np.int8)
        ranked = bundle.scorer.score_users(np.array([u]), n=n, include_adult=include_adult, exclude=exclude,
                                           explain=explain)
        items, scores = ranked.row(0)
        return Answer(self._items(bundle, items, scores, bundle.scorer.reasons(ranked, 0)), "live", bundle.version,
                      view.list_version, degraded=degraded)

    def _fold_in(self, view: View, enc: np.ndarray, ratings: np.ndarray, n: int, include_adult: bool,
                 drop: np.ndarray | None, explain: bool) -> Answer:
        """A user the model has no row for, from their ratings (< 1 = listed, unrated): the same hybrid."""
        bundle = view.bundle
        model, like = bundle.model, bundle.scorer.settings.like_threshold
        rated = ratings >= 1
        if not rated.any():
            listed = np.zeros(model.n_anime, bool)
            listed[enc] = True
            drop = listed if drop is None else drop | listed
            return Answer(self._popular(bundle, n, include_adult, drop), "popular", bundle.version)
        vector = fold_in(model.anime_emb, enc[rated], ratings[rated], like)
        cols = np.unique(enc) if drop is None else np.union1d(enc, np.flatnonzero(drop))
        on_list = _one_row(cols, model.n_anime, 1, np.int8)
        liked = _one_row(np.unique(enc[ratings >= like]), model.n_anime, 1, np.float32)
        ranked = bundle.scorer.score_vectors(vector, liked, on_list, None, n, include_adult, explain=explain)
        items, scores = ranked.row(0)
        return Answer(self._items(bundle, items, scores, bundle.scorer.reasons(ranked, 0)), "live", bundle.version,
                      view.list_version)

    def new_user_recommendations(self, anime_ids: np.ndarray, ratings: np.ndarray, n: int,
                                 include_adult: bool = False, filters: Filters = NO_FILTERS,
                                 explain: bool = True) -> tuple[Answer, list[int]]:
        """A user the model has never seen: fold their ratings in, then the same hybrid (``live``)."""
        view, _ = self._request_view()
        bundle = view.bundle
        drop = self._drop_mask(bundle, filters)
        enc = bundle.model.anime_index(anime_ids)
        known = enc >= 0
        ignored = sorted({int(a) for a in np.asarray(anime_ids)[~known]})
        if not known.any():
            return Answer(self._popular(bundle, n, include_adult, drop), "popular", bundle.version), ignored
        answer = self._fold_in(view, enc[known], np.asarray(ratings)[known], n, include_adult, drop, explain)
        return answer, ignored

    def similar_anime(self, anime_id: int, n: int, include_adult: bool = False, filters: Filters = NO_FILTERS,
                      explain: bool = True) -> Answer:
        """The anime's nearest neighbours; NotFound when the model does not know it."""
        view, degraded = self._request_view()
        bundle = view.bundle
        a = int(bundle.model.anime_index(anime_id)[0])
        if a < 0:
            raise NotFound(f"anime {anime_id} is not in model {bundle.version}")
        drop = self._drop_mask(bundle, filters)
        if not include_adult and not degraded and view.list_version:
            try:
                answer = self._precomputed(view, keys.anime(view.list_version, anime_id), n, drop, explain)
                if answer is not None:
                    answer.name = bundle.names[a]
                    return answer
            except redis.RedisError as exc:
                self._redis_failed(exc)
                degraded = True
        model = bundle.model
        sims = model.anime_emb @ model.anime_emb[a]
        sims[a] = -np.inf
        if not include_adult:
            sims[model.adult_mask] = -np.inf
        if drop is not None:
            sims[drop] = -np.inf
        order, scores = top_k_rows(sims[None, :], n)
        keep = np.isfinite(scores[0])
        return Answer(self._explained(self._items(bundle, order[0][keep], scores[0][keep]), explain), "live",
                      bundle.version, view.list_version, degraded=degraded, name=bundle.names[a])

    # -- rate limiting (POST /v1/recommendations) ------------------------------------------------
    def rate_limit(self, client: str, limit: int, window_s: int, peek: bool = False) -> int | None:
        """Seconds until ``client`` may call again when over ``limit`` calls in this fixed window, else None.

        A counter per client and window in Redis (INCR + EXPIRE), so every worker and pod shares it. While
        Redis is down each process counts on its own (fail open, but at most ``limit`` per process).
        ``peek``: read the count without adding this call (is ``client`` already over the limit?).
        """
        now = time.time()
        window = int(now // window_s)
        count = None
        if time.monotonic() >= self._redis_down_until:
            key = f"{RATE_LIMIT_PREFIX}:{window_s}:{window}:{hashlib.sha256(client.encode()).hexdigest()[:24]}"
            try:
                if peek:
                    count = int(self.redis.get(key) or 0)
                else:
                    with self.redis.pipeline(transaction=False) as pipe:
                        count = pipe.incr(key).expire(key, window_s + 1).execute()[0]
            except redis.RedisError as exc:
                self._redis_failed(exc)
        if count is None:
            count = self._local_count(client, window, add=not peek)
        if count <= limit - peek:
            return None
        return max(1, math.ceil((window + 1) * window_s - now))

    def _local_count(self, client: str, window: int, add: bool = True) -> int:
        current, counts = self._local_counts
        if current != window:
            counts = {}
            self._local_counts = (window, counts)
        if client not in counts and len(counts) >= LOCAL_RATE_CLIENTS:
            return 0        # fail open: no room to count one more client this window
        counts[client] = counts.get(client, 0) + add
        return counts[client]
