"""The feedback store: what users write through the API, kept in Redis until a published list version holds it.

Two structures (names in fuserank.keys):

    FEEDBACK_EVENTS             stream, the log and the source of truth: every acknowledged write, in order
    feedback_user(user_id)      hash anime_id -> the user's latest entry for it (compact JSON of ``Event.state``),
                                a read-side index of the stream for fresh lists and ``GET .../ratings``

An event is one of ``KINDS``: a rating 1-10, a list entry without a rating (``status``, the animelist
layout's watching_status), the deletion of a user's entry, or an impression / click on a served list.
Ratings, statuses and deletions change what the user has; impressions and clicks only feed online evaluation.
Later events win over earlier ones for the same (user, anime), in stream order.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import redis

from fuserank import keys
from fuserank.redis_client import layout

log = logging.getLogger("fuserank.feedback")

ENTRY_KINDS = ("rating", "status", "delete")
SIGNAL_KINDS = ("impression", "click")
KINDS = ENTRY_KINDS + SIGNAL_KINDS
STATUSES = {"watching": 1, "completed": 2, "on_hold": 3, "dropped": 4, "plan_to_watch": 6}   # animelist codes
RATING_MIN, RATING_MAX = 1, 10


@dataclass(frozen=True)
class Event:
    kind: str
    user_id: int
    anime_id: int
    rating: int | None = None          # kind "rating"
    status: str | None = None          # kind "status" (a key of STATUSES)
    list_version: str | None = None    # impressions and clicks: the list version that was served
    ts: float = 0.0                    # unix seconds at the API that accepted it
    id: str | None = None              # the stream id once stored ("<ms>-<seq>")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "rating" and not (isinstance(self.rating, int) and RATING_MIN <= self.rating <= RATING_MAX):
            raise ValueError(f"rating: expected an integer {RATING_MIN}-{RATING_MAX}, got {self.rating!r}")
        if self.kind == "status" and self.status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {self.status!r}")

    def fields(self) -> dict[str, str]:
        """The stream entry: strings only, empty fields left out."""
        out = {"kind": self.kind, "user_id": str(self.user_id), "anime_id": str(self.anime_id), "ts": f"{self.ts:.3f}"}
        for name in ("rating", "status", "list_version"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out

    @classmethod
    def from_entry(cls, entry_id, fields: dict) -> "Event":
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        return cls(kind=f["kind"], user_id=int(f["user_id"]), anime_id=int(f["anime_id"]),
                   rating=int(f["rating"]) if "rating" in f else None, status=f.get("status"),
                   list_version=f.get("list_version"), ts=float(f.get("ts", 0)),
                   id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id)

    def state(self) -> str:
        """The per-user index value of an entry event."""
        return self.state_head() + json.dumps(self.id) + "}"

    def state_head(self) -> str:
        """``state()`` up to its last value, the stream id (``_APPEND`` completes it in Redis)."""
        return keys.compact_json({"kind": self.kind, "rating": self.rating, "status": self.status,
                                  "ts": self.ts})[:-1] + ',"id":'


# One call stores a batch of events on a single Redis node: per event ARGV holds its field count, whether it is
# an entry ("1": index it in the next KEYS pair, the user's hash and mark), its anime and ``state_head``, then
# its stream fields. Returns the stream ids.
_APPEND = """
local ids, a, k = {}, 1, 2
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, a + 4, a + 3 + n))
  if ARGV[a + 1] == '1' then
    redis.call('HSET', KEYS[k], ARGV[a + 2], ARGV[a + 3] .. '"' .. id .. '"}')
    redis.call('SET', KEYS[k + 1], id)
    k = k + 2
  end
  ids[#ids + 1] = id
  a = a + 4 + n
end
return ids
"""


def append(client, events: list[Event], now=time.time) -> list[str]:
    """Store ``events``: XADD each to the stream, index entry events per user and mark each writer's newest entry
    (``keys.feedback_mark``, what fresh lists compare against). Returns the stream ids.

    The stream append is what makes a write acknowledged; the index is derived from it (``reindex`` rebuilds
    it). On one Redis node all of it is one Lua call (one round trip, all keys passed as KEYS); on a Redis
    Cluster, where the stream and a user's keys live in different slots, the stream's pipeline comes first and
    the index and marks follow in a second round trip (no transaction spans them).
    """
    stamped = [e if e.ts else Event(**{**e.__dict__, "ts": now()}) for e in events]
    if not stamped:
        return []
    if not isinstance(client, redis.RedisCluster):
        return _append_script(client, stamped)
    pipe = client.pipeline(transaction=False)
    for e in stamped:
        pipe.xadd(keys.FEEDBACK_EVENTS, e.fields())
    ids = [_text(i) for i in pipe.execute()]
    entries = [Event(**{**e.__dict__, "id": i}) for e, i in zip(stamped, ids) if e.kind in ENTRY_KINDS]
    if entries:
        pipe = client.pipeline(transaction=False)
        for e in entries:
            pipe.hset(keys.feedback_user(e.user_id), str(e.anime_id), e.state())
        for user_id, entry_id in {e.user_id: e.id for e in entries}.items():
            pipe.set(keys.feedback_mark(user_id), entry_id)
        pipe.execute()
    return ids


def _append_script(client, events: list[Event]) -> list[str]:
    names, args = [keys.FEEDBACK_EVENTS], []
    for e in events:
        fields = [x for pair in e.fields().items() for x in pair]
        entry = e.kind in ENTRY_KINDS
        args += [len(fields), "1" if entry else "0", e.anime_id, e.state_head() if entry else ""] + fields
        if entry:
            names += [keys.feedback_user(e.user_id), keys.feedback_mark(e.user_id)]
    return [_text(i) for i in client.register_script(_APPEND)(keys=names, args=args)]


def read(client, start: str = "-", end: str = "+", page: int = 10_000) -> Iterator[Event]:
    """Every event from stream id ``start`` to ``end`` (inclusive), in order, ``page`` at a time."""
    while True:
        batch = client.xrange(keys.FEEDBACK_EVENTS, min=start, max=end, count=page)
        for entry_id, fields in batch:
            yield Event.from_entry(entry_id, fields)
        if len(batch) < page:
            return
        last = batch[-1][0].decode() if isinstance(batch[-1][0], bytes) else batch[-1][0]
        start = "(" + last


def user_entries(client, user_id: int) -> dict[int, dict]:
    """anime_id -> the user's latest entry (``{"kind", "rating", "status", "ts", "id"}``) since the index was
    last trimmed."""
    raw = client.hgetall(keys.feedback_user(user_id))
    return {int(k): json.loads(v) for k, v in raw.items()}


# ---------------------------------------------------------------- what a published version holds, and trimming

NONE = "0-0"                       # a stream id below every real one: "no feedback"
STREAM_KEEP_S = 9 * 86400          # the stream keeps every event this long (online evaluation's 7-day window + 2)
# Lua: stream ids ("<ms>-<seq>") compared as numbers; an absent or malformed id is older than every real one.
LUA_ID_ORDER = """
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  if not ms then return -1, -1 end
  return tonumber(ms), tonumber(seq)
end
local function older(id, than)
  local ms, seq = parse(id)
  local cur_ms, cur_seq = parse(than)
  return ms < cur_ms or (ms == cur_ms and seq < cur_seq)
end
"""
# KEYS[1], a user's mark (a string) or fresh list (a hash, its field ``built``), is deleted when the entry id it
# names is not newer than ARGV[1]: a write meanwhile keeps it.
_TRIM_COVERED = LUA_ID_ORDER + """
local id
if redis.call('TYPE', KEYS[1]).ok == 'hash' then id = redis.call('HGET', KEYS[1], 'built')
else id = redis.call('GET', KEYS[1]) end
if id and not older(ARGV[1], id) then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TRIM_INDEX = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return n
"""


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id ``"<ms>-<seq>"`` as a comparable pair; ValueError naming it when it is none."""
    ms, sep, seq = str(entry_id).partition("-")
    try:
        return int(ms), int(seq) if sep else 0
    except ValueError:
        raise ValueError(f"feedback_until: expected a stream id <ms>-<seq>, got {entry_id!r}") from None


def after(entry_id: str) -> str:
    """The smallest stream id greater than ``entry_id``."""
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}"


def head(client) -> tuple[str, int]:
    """``(last id ever added, entries ever added)`` of the stream, read in one command (XINFO STREAM);
    ``(NONE, 0)`` before the first write. Redis < 7 has no counter: the stream length stands in."""
    if not client.exists(keys.FEEDBACK_EVENTS):
        return NONE, 0
    info = client.xinfo_stream(keys.FEEDBACK_EVENTS)
    added = info.get("entries-added", info.get(b"entries-added"))
    return _text(info["last-generated-id"]), int(added if added is not None else info["length"])


def added_until(client, until: str) -> int:
    """How many entries the stream had taken when ``until`` was added (entries-added less the newer ones)."""
    last, added = head(client)
    if id_key(until) >= id_key(last):
        return added
    return added - sum(1 for _ in read(client, "(" + until, last))


def version_feedback(client, version: str | None) -> tuple[str, int]:
    """``(feedback_until, feedback_added)`` recorded in a list version's meta; ``(NONE, 0)`` when it holds none."""
    if version is None:
        return NONE, 0
    until, added = client.hmget(layout(client).meta(version), "feedback_until", "feedback_added")
    return _text(until) or NONE, int(added or 0)


def published_until(client) -> str:
    """The stream id every version that may be served (current, and previous for a rollback) holds."""
    versions = [_text(v) for v in (client.get(layout(client).current), client.get(layout(client).previous)) if v is not None]
    if not versions:
        return NONE
    return min((version_feedback(client, v)[0] for v in versions), key=id_key)


def trim_published(client, now=time.time, keep_s: float = STREAM_KEEP_S) -> dict:
    """After a publish: drop what every servable version already holds.

    Per-user index entries with id <= ``published_until`` go (only where the index still holds that very
    entry: a newer write to the same anime meanwhile stays), and so do the user's fresh-list mark and list
    (``keys.feedback_mark``, ``keys.feedback_fresh``) once their newest entry is that old; then the stream is trimmed below the same id,
    but never below ``keep_s`` ago (online evaluation reads impressions and ratings from the stream). The
    hash ``keys.FEEDBACK_TRIMMED`` records both marks; ``fuserank ingest --feedback`` checks the stream
    mark against the feedback it carries over. Single-key commands only (Redis Cluster).
    """
    until = published_until(client)
    marks = {_text(k): _text(v) for k, v in client.hgetall(keys.FEEDBACK_TRIMMED).items()}
    done = marks.get("index", NONE)
    index_removed = fresh_removed = 0
    if id_key(until) > id_key(done):
        script, covered = client.register_script(_TRIM_INDEX), client.register_script(_TRIM_COVERED)
        users = {e.user_id for e in read(client, "(" + done, until) if e.kind in ENTRY_KINDS}
        for user_id in sorted(users):
            stale = [(field, value) for field, value in client.hgetall(keys.feedback_user(user_id)).items()
                     if id_key(json.loads(value)["id"]) <= id_key(until)]
            if stale:
                index_removed += int(script(keys=[keys.feedback_user(user_id)],
                                            args=[x for pair in stale for x in pair]))
            for key in (keys.feedback_mark(user_id), keys.feedback_fresh(user_id)):
                fresh_removed += int(covered(keys=[key], args=[until]))
        client.hset(keys.FEEDBACK_TRIMMED, "index", until)
    stream_removed = 0
    if until != NONE:
        floor = min(after(until), f"{max(int((now() - keep_s) * 1000), 0)}-0", key=id_key)
        if id_key(floor) > id_key(marks.get("stream", NONE)):
            stream_removed = int(client.xtrim(keys.FEEDBACK_EVENTS, minid=floor, approximate=False))
            client.hset(keys.FEEDBACK_TRIMMED, "stream", floor)
    return {"until": until, "index_entries": index_removed, "fresh_keys": fresh_removed,
            "stream_entries": stream_removed}


def trim_after_publish(client) -> dict | None:
    """``trim_published`` where a publish happens: the pointer has moved, so a failed trim is logged, not raised
    (the next publish trims what this one left)."""
    try:
        result = trim_published(client)
    except (redis.RedisError, ValueError) as exc:
        log.warning("feedback store not trimmed after the publish (%s: %s); the next publish retries",
                    type(exc).__name__, exc)
        return None
    if result["index_entries"] or result["fresh_keys"] or result["stream_entries"]:
        log.info("feedback store trimmed up to %s: %d index entries, %d fresh-list keys, %d stream entries",
                 result["until"], result["index_entries"], result["fresh_keys"], result["stream_entries"])
    return result


def trimmed_below(client) -> str:
    """Every stream id below this one may have been trimmed (NONE: nothing was)."""
    return _text(client.hget(keys.FEEDBACK_TRIMMED, "stream")) or NONE


def backlog(client, now=time.time) -> dict:
    """Events the served version does not hold yet, and the oldest one's age in seconds (None: no backlog).

    Three commands: the version's meta, XINFO STREAM's entries-added counter against the one recorded at
    ingest, and XRANGE COUNT 1 after its ``feedback_until``. Events a `fuserank forget` deleted since still
    count until the next publish.
    """
    until, added = version_feedback(client, _text(client.get(layout(client).current)))
    _, total = head(client)
    oldest = client.xrange(keys.FEEDBACK_EVENTS, min="(" + until, max="+", count=1)
    age = max(0.0, now() - id_key(_text(oldest[0][0]))[0] / 1000) if oldest else None
    return {"events": max(0, total - added) if oldest else 0, "oldest_age_s": age}


def forget_user(client, user_id: int, page: int = 10_000) -> dict:
    """Delete every event of ``user_id`` from the stream (XDEL, page by page), their index and their fresh list."""
    removed = 0
    batch: list[str] = []
    for event in read(client, page=page):
        if event.user_id == int(user_id):
            batch.append(event.id)
        if len(batch) >= 1000:
            removed += int(client.xdel(keys.FEEDBACK_EVENTS, *batch))
            batch = []
    if batch:
        removed += int(client.xdel(keys.FEEDBACK_EVENTS, *batch))
    return {"events_deleted": removed, "index_deleted": int(client.delete(keys.feedback_user(user_id))),
            "fresh_deleted": int(client.delete(keys.feedback_fresh(user_id)))}
