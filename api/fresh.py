"""Fresh lists: a user's recommendations recomputed from their history plus what they wrote through the API.

A user's feedback entries (fuserank.feedback's per-user index) that the served list version does not hold
(stream id > the version's ``feedback_until``) make their list *fresh*: the history the served model has for
them (its user lists, or its low-activity rows, or nothing for a new user) with those entries applied (a
rating sets the rating, a status lists the anime unrated, a deletion removes it), folded in and ranked by
the same hybrid as every live answer (``answers.fold_in``). Once a published version's ``feedback_until``
covers all of a user's entries, their precomputed list answers again.

The state lives in Redis, so every worker and pod answers alike:

    keys.feedback_mark(user)    the newest entry id written (set by ``feedback.append`` with the write, before
                                the answer); read in the same round trip as the user's stored list, so a user
                                without feedback costs one more key in that MGET and nothing else
    keys.feedback_fresh(user)   hash: ``built`` (the newest entry id the list holds), ``base`` (the model,
                                list version and ``feedback_until`` it was computed against) and ``list``
                                (``FRESH_N`` items in the stored-list encoding, ``keys.encode_list``)

A stored list only ever moves forward (a Lua script on its one key, so it also runs on a Redis Cluster): a
slow computation never overwrites a newer one. The mark is a plain SET: two writes of one user racing
through two workers may leave the older id, which still says "pending", and the list built after both holds
both (it reads the user's entries, not the mark). The list is computed off the request by a background
thread per API process after each acknowledged write (``Refresher``, at most ``BACKGROUND_SHARE`` of a
core, so a burst of writes cannot starve the requests); a GET that finds it behind (another pod's write is
newer, or the thread has not got to it yet) computes it once itself and stores it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

import numpy as np
import redis

from fuserank import feedback, keys
from fuserank.api import answers
from fuserank.api.background import start_native_thread

log = logging.getLogger("fuserank.api")

FRESH_N = 200                # items stored per fresh list: the most a request may ask for (routes.MAX_N)
PENDING_USERS = 10_000       # users waiting for the background thread per process; beyond, reads compute
BACKGROUND_SHARE = 0.1      # the most of one core the background thread uses (it rests in between)

# The hash KEYS[1] gets built = ARGV[1] and the field/value pairs after it, unless it holds a newer list.
_STORE = feedback.LUA_ID_ORDER + """
if older(ARGV[1], redis.call('HGET', KEYS[1], 'built')) then return 0 end
redis.call('HSET', KEYS[1], 'built', unpack(ARGV))
return 1
"""


def stream_id(raw) -> tuple[int, int]:
    """A stream id ("<ms>-<seq>", str or bytes) as a comparable pair; (-1, -1) when absent."""
    if not raw:
        return -1, -1
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def base_of(view) -> str:
    """What a fresh list depends on besides the entries: the model, the list version and its feedback_until."""
    return f"{view.bundle.version}|{view.list_version or ''}|{view.feedback_until}"


def pending(mark, view) -> bool:
    """Whether the user's newest entry (``mark``) is one the served list version does not hold."""
    return mark is not None and stream_id(mark) > stream_id(view.feedback_until)


def current(state: dict, mark, view) -> bool:
    """Whether the stored fresh list (``state``: the fresh hash) holds entry ``mark`` and was built against
    ``view``."""
    return (b"list" in state and stream_id(state.get(b"built")) >= stream_id(mark)
            and state.get(b"base", b"").decode() == base_of(view))


def history(view, user_id: int, entries: dict[int, dict]) -> tuple[np.ndarray, np.ndarray, str]:
    """Encoded anime and raw ratings (-1: listed, unrated) of the user's history with ``entries`` newer than the
    view's ``feedback_until`` applied; and the newest entry id used."""
    bundle = view.bundle
    model = bundle.model
    u = int(model.user_index(user_id)[0])
    if u >= 0:
        row = model.lists[u]
        have = dict(zip(row.indices.tolist(), row.data.tolist()))
    else:
        rows = bundle.low_activity.get(user_id) if bundle.low_activity is not None else None
        have = dict(zip(rows[0].tolist(), rows[1].tolist())) if rows is not None else {}
    until, newest = stream_id(view.feedback_until), "0-0"
    ordered = sorted(entries.items(), key=lambda item: stream_id(item[1]["id"]))
    enc = model.anime_index(np.fromiter((aid for aid, _ in ordered), np.int64, len(ordered)))
    for (aid, entry), a in zip(ordered, enc.tolist()):
        if stream_id(entry["id"]) <= until:
            continue
        newest = entry["id"]
        if a < 0:
            continue
        if entry["kind"] == "rating":
            have[a] = int(entry["rating"])
        elif entry["kind"] == "status":
            have[a] = -1
        else:
            have.pop(a, None)
    return np.fromiter(have, np.int64, len(have)), np.fromiter(have.values(), np.int64, len(have)), newest


class FreshLists:
    """Reads, computes and stores fresh lists in ``client`` (the service's Redis)."""

    def __init__(self, client):
        self.redis = client
        self._store = client.register_script(_STORE)
        self._cluster = isinstance(client, redis.RedisCluster)

    def read(self, user_id: int, stored_key: str | None) -> tuple[bytes | None, bytes | None]:
        """The stored list under ``stored_key`` (None: not asked) and the user's newest entry id: one MGET (a
        pipeline on a Redis Cluster, where the two keys live in different slots)."""
        if stored_key is None:
            return None, self.redis.get(keys.feedback_mark(user_id))
        if self._cluster:
            with self.redis.pipeline(transaction=False) as pipe:
                return tuple(pipe.get(stored_key).get(keys.feedback_mark(user_id)).execute())
        return tuple(self.redis.mget(stored_key, keys.feedback_mark(user_id)))

    def compute(self, view, user_id: int, n: int = FRESH_N, include_adult: bool = False, drop=None,
                explain: bool = True) -> tuple[answers.Answer, str]:
        """The user's fresh answer from their entries now (one index read), and the newest entry id it holds."""
        enc, ratings, newest = history(view, user_id, feedback.user_entries(self.redis, user_id))
        answer = answers.fold_in(view, enc, ratings, n, include_adult, drop, explain)
        answer.source = "fresh"
        answer.list_version = view.list_version
        return answer, newest

    def rebuild(self, view, user_id: int) -> bytes:
        """Compute the stored fresh list against ``view`` and store it unless a newer one is there; returns it."""
        answer, newest = self.compute(view, user_id)
        stored = encode_items(answer.items)
        self._store(keys=[keys.feedback_fresh(user_id)], args=[newest, "base", base_of(view), "list", stored])
        return stored

    def answer(self, view, user_id: int, mark: bytes, n: int, live: bool, include_adult: bool, drop,
               explain: bool) -> answers.Answer:
        """The fresh answer: the stored list when current, else computed now (and stored for the next read)."""
        if live or include_adult:
            return self.compute(view, user_id, n, include_adult, drop, explain)[0]
        state = self.redis.hgetall(keys.feedback_fresh(user_id))
        raw = state[b"list"] if current(state, mark, view) else self.rebuild(view, user_id)
        answer = answers.precomputed(raw, view, n, drop, explain)
        if answer is None:      # filters left fewer than n: rank the rest of the catalogue too
            return self.compute(view, user_id, n, include_adult, drop, explain)[0]
        answer.source = "fresh"
        return answer


def encode_items(items: bytes) -> bytes:
    """An answer's JSON array of ``keys.item_json`` items in the stored-list encoding (the same bytes per item)."""
    parsed = json.loads(items)
    return keys.encode_list([i["anime_id"] for i in parsed], [i["score"] for i in parsed],
                            [i["name"] for i in parsed], [i.get("reasons") for i in parsed])


class Refresher:
    """A background thread per API process that rebuilds the fresh lists of users who just wrote.

    Users queued while one is being computed are coalesced (a set); the thread is started on first use in each
    process (gunicorn forks after the app is built, and threads do not survive a fork)."""

    def __init__(self, rebuild, view, share: float = BACKGROUND_SHARE):
        self._rebuild, self._view, self._share = rebuild, view, share
        self._cond = threading.Condition()
        self._pending: dict[int, None] = {}
        self._busy = False
        self._pid = None

    def submit(self, user_ids) -> None:
        if not user_ids:
            return
        with self._cond:
            if self._pid != os.getpid():
                self._pending = {}
                self._pid = os.getpid()
                start_native_thread(self._run, name="fuserank-fresh")
            for uid in user_ids:
                if len(self._pending) < PENDING_USERS:
                    self._pending[uid] = None
            self._cond.notify()

    def idle(self) -> bool:
        """Whether no user is queued or being computed."""
        with self._cond:
            return not self._pending and not self._busy

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                uid = next(iter(self._pending))
                del self._pending[uid]
                self._busy = True
            t0 = time.thread_time()
            try:
                self._rebuild(self._view(), uid)
            except Exception as exc:  # noqa: BLE001 - a read computes it instead; the thread keeps serving
                log.warning("fresh list of user %d not rebuilt (%s: %s)", uid, type(exc).__name__, exc)
            finally:
                with self._cond:
                    self._busy = False
            time.sleep((time.thread_time() - t0) * (1 / self._share - 1))
