"""What the API answers, independent of Flask: the facade the routes call.

It ties the rooms together: the model registry (fuserank.api.registry: what is served), the answer paths
(fuserank.api.answers), the filters (fuserank.api.filters), the Redis breaker (fuserank.api.breaker) and
the rate limiter (fuserank.api.ratelimit). ``source`` tells the client where an answer came from:
``precomputed`` (a stored list), ``live`` (the in-memory model), ``popular`` (a user the model has
never seen) or ``fresh`` (a user who wrote feedback the served list version does not hold yet:
fuserank.api.fresh). Redis calls use the factory's ``serve`` role (short timeouts, no retries); a failure
opens the breaker, and answers are ``live`` with ``degraded: true`` until it closes.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import redis

from fuserank import feedback, keys, redis_client
from fuserank.api import answers, fresh
from fuserank.api.answers import Answer
from fuserank.api.breaker import RedisBreaker
from fuserank.api.errors import NotFound
from fuserank.api.filters import NO_FILTERS, Filters, drop_mask
from fuserank.api.filters import values as filter_values
from fuserank.api.ratelimit import RateLimiter
from fuserank.api.registry import ModelRegistry, View
from fuserank.config import ServeSettings

log = logging.getLogger("fuserank.api")


class RecommendationService:
    def __init__(self, settings: ServeSettings, clock=None):
        """``clock``: one fake clock for the breaker, the pointer's re-read, load retries and rate-limit
        windows (tests); default the real monotonic and wall clocks."""
        self.redis = redis_client.connect(redis_client.Target(settings.redis_url, settings.redis_cluster), "serve")
        monotonic, wall = (clock, clock) if clock else (time.monotonic, time.time)
        self.breaker = RedisBreaker(clock=monotonic)
        self.registry = ModelRegistry(settings.model, self.redis, settings.hybrid, settings.models_uri, monotonic)
        self.limiter = RateLimiter(self.redis, self.breaker, wall)
        self.fresh = fresh.FreshLists(self.redis)
        self.refresher = fresh.Refresher(self.fresh.rebuild, self.view)
        self._durable: bool | str | None = None
        try:
            self.registry.refresh(load_now=True)   # at start (before gunicorn forks): load what the pointer names
        except redis.RedisError as exc:
            log.warning("redis unavailable at start (%s): answering live from model %s", type(exc).__name__,
                        self.model.version)
        log.info("model %s loaded: %d users, %d anime", self.model.version, self.model.n_users, self.model.n_anime)
        self.feedback_durable()

    @property
    def model(self):
        return self.registry.view.bundle.model

    def view(self) -> View:
        return self.registry.view

    def request_view(self) -> tuple[View, bool]:
        """The view to answer from (the pointer re-read when due), and True when Redis cannot be used now."""
        if self.breaker.is_open():
            return self.registry.view, True
        if self.registry.stale():
            try:
                self.registry.refresh()
            except redis.RedisError as exc:
                self.breaker.failed(exc)
                return self.registry.view, True
        return self.registry.view, False

    def refresh(self) -> View:
        """Re-read the pointer now (tests, operators); raises RedisError when Redis is down."""
        self.registry.refresh(blocking=True)
        return self.registry.view

    def wait_for(self, model_version: str, timeout: float = 60.0) -> View:
        """Block until the view serves ``model_version`` (tests and the CLI; never on a request)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = self.refresh()
            except redis.RedisError:
                view = self.registry.view
            if view.bundle.version == model_version and (view.list_version or not self.registry.pointer.current):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"still serving model {view.bundle.version}, not {model_version}")
            time.sleep(0.05)

    def pointer_valid(self) -> bool:
        """False while ``fuserank:current`` names no list version (the last good one keeps answering)."""
        return self.registry.pointer.valid

    def redis_state(self) -> dict:
        """Redis's state, the pointer and what is served; when Redis is down, the last pointer seen."""
        try:
            self.redis.ping()
            if self.registry.stale():
                self.registry.refresh()
            state = {"redis": "up"}
        except redis.RedisError as exc:
            self.breaker.failed(exc)
            state = {"redis": "down", "error": type(exc).__name__}
        view, pointer = self.registry.view, self.registry.pointer
        return {**state, "feedback_durable": self.feedback_durable(), "list_version": pointer.current,
                "pointer_valid": pointer.valid,
                "list_model_version": pointer.model_version, "previous_list_version": pointer.previous,
                "serving": {"model_version": view.bundle.version, "list_version": view.list_version},
                "models_loaded": self.registry.models_loaded(), "loading": self.registry.loading()}

    def feedback_durable(self) -> bool | str | None:
        """Whether an acknowledged feedback write survives a crash of Redis: ``appendonly yes`` and ``appendfsync
        always`` (CONFIG GET); "unknown" where CONFIG is refused (managed Redis), None while Redis is down.
        Logged once as a WARNING when not True."""
        if self._durable is None:
            try:
                config = self.redis.config_get("append*")
            except redis.ResponseError:
                self._durable = "unknown"
            except redis.RedisError:
                return None
            else:
                self._durable = config.get("appendonly") == "yes" and config.get("appendfsync") == "always"
            if self._durable is not True:
                log.warning("feedback is not durable (%s): Redis must run with appendonly yes and appendfsync "
                            "always, or an acknowledged rating can be lost when Redis crashes",
                            "CONFIG GET refused" if self._durable == "unknown" else
                            f"appendonly {config.get('appendonly')}, appendfsync {config.get('appendfsync')}")
        return self._durable

    def write_feedback(self, events: list[feedback.Event]) -> list[str]:
        """Append ``events`` to the feedback store (the acknowledgement; it also marks the writers' fresh lists
        behind), then hand them to the background thread. Raises RedisError (the route answers 503)."""
        try:
            ids = feedback.append(self.redis, events)
        except redis.RedisError as exc:
            self.breaker.failed(exc)
            raise
        self.refresher.submit({e.user_id for e in events if e.kind in feedback.ENTRY_KINDS})
        return ids

    def user_feedback(self, user_id: int) -> tuple[View, list[dict]]:
        """The user's entries the served list version does not hold, oldest first."""
        view = self.registry.view
        until = fresh.stream_id(view.feedback_until)
        entries = feedback.user_entries(self.redis, user_id)
        kept = [{"anime_id": aid, **e} for aid, e in entries.items() if fresh.stream_id(e["id"]) > until]
        return view, sorted(kept, key=lambda e: fresh.stream_id(e["id"]))

    def filter_values(self) -> dict:
        return filter_values(self.registry.view.bundle)

    def rate_limit(self, client: str, limit: int, window_s: int, peek: bool = False) -> int | None:
        return self.limiter.retry_after(client, limit, window_s, peek)

    def _stored(self, view: View, key: str, n: int, drop, explain: bool) -> tuple[Answer | None, bool]:
        """The stored list's answer (None: not stored or too short), and whether Redis failed."""
        try:
            raw = self.redis.get(key)
        except redis.RedisError as exc:
            self.breaker.failed(exc)
            return None, True
        return (answers.precomputed(raw, view, n, drop, explain) if raw is not None else None), False

    def user_recommendations(self, user_id: int, n: int, live: bool = False, include_adult: bool = False,
                             filters: Filters = NO_FILTERS, explain: bool = True) -> Answer:
        view, degraded = self.request_view()
        bundle = view.bundle
        drop = drop_mask(bundle, filters)
        if user_id in self.registry.suppressed:
            return answers.popular(bundle, n, include_adult, drop)
        u = int(bundle.model.user_index(user_id)[0])
        if not degraded:
            stored = u >= 0 and not live and not include_adult and view.list_version
            try:
                raw, mark = self.fresh.read(user_id, keys.user(view.list_version, user_id) if stored else None)
            except redis.RedisError as exc:
                self.breaker.failed(exc)
                raw, mark, degraded = None, None, True
            if fresh.pending(mark, view):
                try:
                    return self.fresh.answer(view, user_id, mark, n, live, include_adult, drop, explain)
                except redis.RedisError as exc:
                    self.breaker.failed(exc)
                    degraded = True
            answer = answers.precomputed(raw, view, n, drop, explain) if raw is not None else None
            if answer is not None:
                return answer
        if u >= 0:
            return answers.live_user(view, u, n, include_adult, drop, explain, degraded)
        rows = bundle.low_activity.get(user_id) if bundle.low_activity is not None else None
        if rows is None:
            return answers.popular(bundle, n, include_adult, drop)
        return answers.fold_in(view, *rows, n, include_adult, drop, explain)

    def new_user_recommendations(self, anime_ids: np.ndarray, ratings: np.ndarray, n: int,
                                 include_adult: bool = False, filters: Filters = NO_FILTERS,
                                 explain: bool = True) -> tuple[Answer, list[int]]:
        """A user the model has never seen: fold their ratings in, then the same hybrid (``live``)."""
        view, _ = self.request_view()
        bundle = view.bundle
        drop = drop_mask(bundle, filters)
        enc = bundle.model.anime_index(anime_ids)
        known = enc >= 0
        ignored = sorted({int(a) for a in np.asarray(anime_ids)[~known]})
        if not known.any():
            return answers.popular(bundle, n, include_adult, drop), ignored
        return answers.fold_in(view, enc[known], np.asarray(ratings)[known], n, include_adult, drop, explain), ignored

    def similar_anime(self, anime_id: int, n: int, include_adult: bool = False, filters: Filters = NO_FILTERS,
                      explain: bool = True) -> Answer:
        """The anime's nearest neighbours; NotFound when the model does not know it."""
        view, degraded = self.request_view()
        bundle = view.bundle
        a = int(bundle.model.anime_index(anime_id)[0])
        if a < 0:
            raise NotFound(f"anime {anime_id} is not in model {bundle.version}")
        drop = drop_mask(bundle, filters)
        if not include_adult and not degraded and view.list_version:
            answer, degraded = self._stored(view, keys.anime(view.list_version, anime_id), n, drop, explain)
            if answer is not None:
                answer.name = bundle.names[a]
                return answer
        return answers.similar(view, a, n, include_adult, drop, degraded)

