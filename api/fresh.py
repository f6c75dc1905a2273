"""Fresh lists: a user's recommendations recomputed from their history plus what they wrote through the API.

A user's feedback entries (fuserank.feedback's per-user index) that the served list version does not hold
(stream id > the version's ``feedback_until``) make their list *fresh*: the history the served model has for
them (its user lists, or its low-activity rows, or nothing for a new user) with those entries applied (a
rating sets the rating, a status lists the anime unrated, a deletion removes it), folded in and ranked by
the same hybrid as every live answer (``answers.fold_in``). Once a published version's ``feedback_until``
covers all of a user's entries, their precomputed list answers again.

The state lives in Redis, so every worker and pod answers alike. One hash per user (``keys.feedback_fresh``):

    latest   the newest entry id written (set when a write is acknowledged, before the answer)
    built    the newest entry id the stored list holds
    base     the model and list version (and its ``feedback_until``) the list was computed against
    list     the list, ``FRESH_N`` items in the stored-list encoding (``keys.encode_list``)

Both ids only ever move forward (a Lua script on that one key, so it also runs on a Redis Cluster): a slow
computation never overwrites a newer one. The list is computed off the request by a background thread per
API process after each acknowledged write (``Refresher``); a GET that finds it behind (another pod's write
is newer, or the thread has not got to it yet) computes it once itself and stores it.
"""
from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np

from fuserank import feedback, keys
from fuserank.api import answers

log = logging.getLogger("fuserank.api")

FRESH_N = 200                # items stored per fresh list: the most a request may ask for (routes.MAX_N)
PENDING_USERS = 10_000       # users waiting for the background thread per process; beyond, reads compute

# ARGV[1] = id; the remaining ARGV are field/value pairs to set along with ARGV[2] (the id's field) when the id is
# not older than what the hash holds in that field.
_FORWARD = """
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  if not ms then return -1, -1 end
  return tonumber(ms), tonumber(seq)
end
local cur_ms, cur_seq = parse(redis.call('HGET', KEYS[1], ARGV[2]))
local ms, seq = parse(ARGV[1])
if ms < cur_ms or (ms == cur_ms and seq < cur_seq) then return 0 end
local fields = {ARGV[2], ARGV[1]}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
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


def pending(state: dict, view) -> bool:
    """Whether the user has entries the served list version does not hold (``state``: the fresh hash)."""
    return stream_id(state.get(b"latest")) > stream_id(view.feedback_until)


def current(state: dict, view) -> bool:
    """Whether the stored fresh list holds the newest entry and was built against ``view``."""
    return (b"list" in state and stream_id(state.get(b"built")) >= stream_id(state.get(b"latest"))
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
        self._forward = client.register_script(_FORWARD)

    def mark(self, latest: dict[int, str]) -> None:
        """Record each user's newest acknowledged entry id: one EVALSHA per user (a write names one user; a
        Redis Cluster pipeline refuses scripts, and a single node's would add a SCRIPT EXISTS round trip)."""
        for user_id, entry_id in latest.items():
            self._forward(keys=[keys.feedback_fresh(user_id)], args=[entry_id, "latest"])

    def read(self, user_id: int, stored_key: str | None) -> tuple[bytes | None, dict]:
        """The stored list under ``stored_key`` (None: not asked) and the user's fresh hash: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        if stored_key is not None:
            pipe.get(stored_key)
        pipe.hgetall(keys.feedback_fresh(user_id))
        out = pipe.execute()
        return (out[0] if stored_key is not None else None), out[-1]

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
        self._forward(keys=[keys.feedback_fresh(user_id)], args=[newest, "built", "base", base_of(view),
                                                                  "list", stored])
        return stored

    def answer(self, view, user_id: int, state: dict, n: int, live: bool, include_adult: bool, drop,
               explain: bool) -> answers.Answer:
        """The fresh answer: the stored list when current, else computed now (and stored for the next read)."""
        if live or include_adult:
            return self.compute(view, user_id, n, include_adult, drop, explain)[0]
        raw = state[b"list"] if current(state, view) else self.rebuild(view, user_id)
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

    def __init__(self, rebuild, view):
        self._rebuild, self._view = rebuild, view
        self._cond = threading.Condition()
        self._pending: dict[int, None] = {}
        self._pid = None

    def submit(self, user_ids) -> None:
        with self._cond:
            if self._pid != os.getpid():
                self._pending = {}
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="fuserank-fresh").start()
            for uid in user_ids:
                if len(self._pending) < PENDING_USERS:
                    self._pending[uid] = None
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not self._pending

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                uid = next(iter(self._pending))
                del self._pending[uid]
            try:
                self._rebuild(self._view(), uid)
            except Exception as exc:  # noqa: BLE001 - a read computes it instead; the thread keeps serving
                log.warning("fresh list of user %d not rebuilt (%s: %s)", uid, type(exc).__name__, exc)
