"""The models being served and the list versions they wrote: what each answer is computed from.

Every answer uses one ``View``: an immutable ``Bundle`` (one model version, its scorer, names, filter
masks and list encoder) and at most one list version that this same model wrote. The view is swapped
whole (one attribute assignment), so an answer never mixes versions. The pointer (``fuserank:current`` /
``fuserank:previous``) is re-read at most every ``POINTER_TTL_S``; when it names a model that is not
loaded, the model is loaded in a background (OS) thread (from the list version's meta ``model_uri``, else
``<models_uri>/<model version>``, else the ``--model`` directory when it is that version) while answers
keep coming from the view before; then the view switches. Bundles of the current and previous versions
are kept (a rollback switches at once), others are dropped. A pointer that names no list version (no meta
naming a model: a hand edit) leaves the view as it is, logged once as an ERROR and reported by ``valid``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from fuserank import artifacts as art
from fuserank import keys, storage
from fuserank.api.background import start_native_thread
from fuserank.api.filters import name_masks
from fuserank.artifacts import ModelArtifact, read_manifest
from fuserank.config import HybridSettings
from fuserank.redis_client import layout
from fuserank.scorer import HybridScorer

log = logging.getLogger("fuserank.api")

POINTER_TTL_S = 1.0         # the pointer and the suppression set are re-read at most this often
LOAD_RETRY_S = 60.0         # a model version that failed to load is tried again after this long
_UNREAD = object()


@dataclass(frozen=True, eq=False)
class LowActivity:
    """Users of the model's source ratings that the ingest left out (below its activity threshold).

    Memory-mapped from the artifact's ``low_activity_*.npy`` (versioned with the model, one copy in the page
    cache for all workers and versions): each user's rows on anime the model knows, raw rating 1-10 or
    -1 = listed, unrated.
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
            log.info("low-activity users: model %s has none exported; they get `popular`", model.version)
            return None
        low = cls(arrays["user_ids"], arrays["indptr"], arrays["anime"], arrays["ratings"])
        log.info("low-activity users: %d users (%d rows) in model %s", len(low), len(low.anime), model.version)
        return low


@dataclass(frozen=True, eq=False)
class Bundle:
    """One model version with everything derived from it; built once, never changed, swapped whole."""

    model: ModelArtifact
    scorer: HybridScorer
    names: np.ndarray
    encoder: keys.ListEncoder
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
        anime = model.anime
        genres = name_masks([g.strip() for g in text.split(",") if g.strip()]
                            for text in anime["genres"].fillna("").astype(str))
        types = name_masks([name.strip()] for name in anime["type"].fillna("Unknown").astype(str))
        names = anime["name"].fillna("").to_numpy(object)
        return cls(model, HybridScorer(model, settings), names, keys.ListEncoder(model.anime_ids, names),
                   genres, types, low_activity)


@dataclass(frozen=True, eq=False)
class View:
    """What one answer uses: a bundle and the list version its model wrote (None: live answers only)."""

    bundle: Bundle
    list_version: str | None
    feedback_until: str = "0-0"     # the last feedback stream id the list version holds (fuserank.feedback)


@dataclass
class Pointer:
    current: str | None = None
    previous: str | None = None
    meta: dict = field(default_factory=dict)   # list version -> {"model_version", "model_uri", "settings"}
    read_at: float = -math.inf

    @property
    def valid(self) -> bool:
        """False when ``current`` is set but names no list version (no meta naming a model)."""
        return self.current is None or bool((self.meta.get(self.current) or {}).get("model_version"))

    @property
    def model_version(self) -> str | None:
        """The model version the current list version was written by."""
        return (self.meta.get(self.current) or {}).get("model_version")


class ModelRegistry:
    """Loads model versions, follows the pointer and hands out the current ``View``."""

    def __init__(self, model_dir: str, redis, settings: HybridSettings | None = None, models_uri: str | None = None,
                 clock=time.monotonic):
        self.model_dir, self.redis, self.models_uri, self.clock = model_dir, redis, models_uri, clock
        self._init_locks()
        self._models: dict[str, ModelArtifact] = {}
        self._low_activity: dict[str, LowActivity | None] = {}
        self._bundles: dict[tuple, Bundle] = {}
        self._failed: dict[tuple, float] = {}
        self.pointer = Pointer()
        self._invalid_logged: str | None = None     # the bad pointer value last logged (once per value)
        self.suppressed: frozenset[int] = frozenset()
        model = self._load_model(model_dir)
        self.settings = settings or HybridSettings.for_model(model.manifest)
        fallback = self._build(model, self.settings)
        self._bundles[fallback.key] = fallback
        self.view = View(fallback, None)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) is not None and s._init_locks())

    def _init_locks(self) -> None:
        """Fresh locks and no loads in flight: at start, and in each forked gunicorn worker."""
        self._lock = threading.Lock()        # pointer refresh and view swaps
        self._load_lock = threading.Lock()   # one model load at a time
        self._loading: set[tuple] = set()

    def stale(self) -> bool:
        return self.clock() - self.pointer.read_at >= POINTER_TTL_S

    def models_loaded(self) -> list[str]:
        return sorted({k[0] for k in tuple(self._bundles)})     # tuple(): one atomic copy

    def loading(self) -> list[str]:
        return sorted({k[0] for k in tuple(self._loading)})

    def refresh(self, load_now: bool = False, blocking: bool = False) -> None:
        """Re-read the pointer and the suppression set; settle the view. Raises RedisError when down.

        ``load_now``: load what the pointer names before returning (at start, before gunicorn forks)."""
        if not self._lock.acquire(blocking=blocking):
            return          # another thread is refreshing: this answer uses the view as it is
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                k = layout(self.redis)
                current, previous, members = pipe.get(k.current).get(k.previous).smembers(k.suppressed).execute()
            self.suppressed = frozenset(int(m) for m in members if m.isdigit())
            current = current.decode() if current is not None else None
            previous = previous.decode() if previous is not None else None
            meta = {}
            for version in (current, previous):
                if version:
                    cached = self.pointer.meta.get(version)
                    meta[version] = cached if cached and cached["model_version"] else self._read_meta(version)
            self.pointer = Pointer(current, previous, meta, self.clock())
            self._settle(load_now)
            self._report_invalid_pointer()
        finally:
            self._lock.release()

    def _read_meta(self, version: str) -> dict:
        model_version, model_uri, settings, until = self.redis.hmget(layout(self.redis).meta(version), "model_version",
                                                                     "model_uri", "settings", "feedback_until")
        out = {"model_version": model_version.decode() if model_version else None,
               "model_uri": model_uri.decode() if model_uri else None, "settings": self.settings,
               "feedback_until": until.decode() if until else "0-0"}
        if settings:
            try:
                out["settings"] = HybridSettings.from_dict(json.loads(settings))
            except (ValueError, TypeError) as exc:
                log.warning("list version %s: unreadable settings in its meta (%s); live answers use the "
                            "API's", version, exc)
        return out

    def _report_invalid_pointer(self) -> None:
        pointer = self.pointer
        if pointer.valid:
            self._invalid_logged = None
        elif pointer.current != self._invalid_logged:
            self._invalid_logged = pointer.current
            log.error("%s names %r, which is no list version in Redis (no meta naming a model); still serving "
                      "list version %s with model %s: point it at a published version (fuserank publish / "
                      "rollback)", layout(self.redis).current, pointer.current[:200], self.view.list_version,
                      self.view.bundle.version)

    def _wanted(self) -> list[tuple[str, tuple]]:
        """(list version, bundle key) of current then previous, where the meta names a model."""
        out = []
        for version in (self.pointer.current, self.pointer.previous):
            meta = self.pointer.meta.get(version) if version else None
            if meta and meta.get("model_version"):
                out.append((version, (meta["model_version"], meta["settings"])))
        return out

    def _settle(self, load_now: bool = False) -> None:
        """Point the view at the newest wanted version whose bundle is loaded; load the missing ones.

        Caller holds ``self._lock``.
        """
        wanted = self._wanted()
        if load_now and wanted and wanted[0][1] not in self._bundles:
            try:
                self._bundles[wanted[0][1]] = self._build_for(*wanted[0])
            except Exception as exc:  # noqa: BLE001 - at start: the --model fallback answers instead
                log.error("list version %s: cannot load model %s (%s)", wanted[0][0], wanted[0][1][0], exc)
                self._failed[wanted[0][1]] = self.clock() + LOAD_RETRY_S
        if not self.pointer.valid and self.view.list_version:
            wanted.insert(0, (self.view.list_version, self.view.bundle.key))   # the last good pair stays
        for version, key in wanted:
            bundle = self._bundles.get(key)
            if bundle is not None:
                view = View(bundle, version, (self.pointer.meta.get(version) or {}).get("feedback_until") or "0-0")
                break
        else:
            view = View(self.view.bundle, None)
        if view.bundle is not self.view.bundle or view.list_version != self.view.list_version \
                or view.feedback_until != self.view.feedback_until:
            log.info("serving list version %s with model %s (pointer: current %s, previous %s)",
                     view.list_version, view.bundle.version, self.pointer.current, self.pointer.previous)
            self.view = view
        keep = {key for _, key in wanted} | {self.view.bundle.key}
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

    def _start_load(self, version: str, key: tuple) -> None:
        if key in self._loading or self.clock() < self._failed.get(key, -math.inf):
            return
        self._loading.add(key)
        start_native_thread(self._load_in_background, version, key, name=f"fuserank-load-{key[0]}")

    def _load_in_background(self, version: str, key: tuple) -> None:
        with self._load_lock:
            try:
                bundle = self._build_for(version, key)
            except Exception as exc:  # noqa: BLE001 - logged; the view before keeps answering
                log.error("list version %s: cannot load model %s (%s); still serving model %s, retrying in %ds",
                          version, key[0], exc, self.view.bundle.version, LOAD_RETRY_S)
                bundle = None
        with self._lock:
            self._loading.discard(key)
            if bundle is None:
                self._failed[key] = self.clock() + LOAD_RETRY_S
                return
            self._failed.pop(key, None)
            self._bundles[key] = bundle
            self._settle()

    def _build_for(self, version: str, key: tuple) -> Bundle:
        model_version, settings = key
        model = self._models.get(model_version) or self._find_model(version, model_version)
        t0 = time.monotonic()
        bundle = self._build(model, settings)
        log.info("model %s ready for list version %s in %.1fs", model_version, version, time.monotonic() - t0)
        return bundle

    def _find_model(self, version: str, model_version: str) -> ModelArtifact:
        """The model a list version was written by: its meta's model_uri, the model store, or --model."""
        candidates = [(self.pointer.meta.get(version) or {}).get("model_uri")]
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
