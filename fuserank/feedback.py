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
import time
from dataclasses import dataclass
from typing import Iterator

from fuserank import keys

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
        return keys.compact_json({"kind": self.kind, "rating": self.rating, "status": self.status, "ts": self.ts,
                                  "id": self.id})


def append(client, events: list[Event], now=time.time, also=None) -> list[str]:
    """Store ``events`` (one pipeline, one round trip): XADD each to the stream, then index entry events per user.

    Returns the stream ids. The stream append is what makes a write acknowledged; the per-user index is derived
    from it (``reindex`` rebuilds it) and never spans a transaction with the stream, so it also works on a
    Redis Cluster, where the stream and a user's hash live in different slots. ``also(pipe, entries)`` adds
    commands to the index's round trip (``entries``: the stored entry events, ids set).
    """
    stamped = [e if e.ts else Event(**{**e.__dict__, "ts": now()}) for e in events]
    pipe = client.pipeline(transaction=False)
    for e in stamped:
        pipe.xadd(keys.FEEDBACK_EVENTS, e.fields())
    ids = [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]
    entries = [Event(**{**e.__dict__, "id": i}) for e, i in zip(stamped, ids) if e.kind in ENTRY_KINDS]
    if entries:
        pipe = client.pipeline(transaction=False)
        for e in entries:
            pipe.hset(keys.feedback_user(e.user_id), str(e.anime_id), e.state())
        if also is not None:
            also(pipe, entries)
        pipe.execute()
    return ids


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
