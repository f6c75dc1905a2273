"""Online evaluation: how the served lists did, from the feedback stream's impressions, clicks and ratings.

Definitions (``evaluate``):

* **served list**: all impressions of one user for one list version, the pair (user_id, list_version); it is
  dated by its first impression (the UTC day that figures are bucketed by).
* **position**: impression events carry none. A served list's anime are ranked by the order of their first
  impression in the stream (the API and the web page post a list's impressions in list order, in one batch),
  so its first ``TOP_K`` distinct anime are positions 1-10.
* **clicked**: the user clicked, with the same list_version, an anime of the served list at or after that
  anime's first impression.
* **hit@10**: the user rated one of the first ``TOP_K`` anime ``LIKED`` or more at or after its first
  impression and within ``WINDOW_S`` (7 days) of it.

Per (list version, day): ``lists``, ``clicked`` and ``hits`` counts; click share = clicked / lists, hit
rate@10 = hits / lists. A day's figures are final once ``WINDOW_S`` has passed since the day ended; the stream
keeps every event at least ``fuserank.feedback.STREAM_KEEP_S`` (9 days), so a day is computed from all of its
events until it is final, and stored (``keys.ONLINE_DAILY``) so that trimming never loses it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterable

from fuserank import feedback, keys

WINDOW_S = 7 * 86400
TOP_K = 10
LIKED = 8
DAY_S = 86400


@dataclass
class Figures:
    lists: int = 0
    clicked: int = 0
    hits: int = 0
    final: bool = False

    @property
    def click_share(self) -> float | None:
        return self.clicked / self.lists if self.lists else None

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lists if self.lists else None

    def add(self, other: "Figures") -> "Figures":
        return Figures(self.lists + other.lists, self.clicked + other.clicked, self.hits + other.hits,
                       self.final and other.final)

    def as_dict(self) -> dict:
        return {**asdict(self), "click_share": self.click_share, f"hit_rate_at_{TOP_K}": self.hit_rate}


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _day_end(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() + DAY_S


def evaluate(events: Iterable[feedback.Event], now: float) -> dict[tuple[str, str], Figures]:
    """(list_version, day) -> figures of the served lists first shown that day, from events in stream order."""
    shown: dict[tuple[int, str], dict[int, float]] = {}        # (user, version) -> anime -> first impression
    clicks: dict[tuple[int, str], list[tuple[int, float]]] = {}
    ratings: dict[int, list[tuple[int, int, float]]] = {}
    for e in events:
        if e.kind == "impression" and e.list_version:
            shown.setdefault((e.user_id, e.list_version), {}).setdefault(e.anime_id, e.ts)
        elif e.kind == "click" and e.list_version:
            clicks.setdefault((e.user_id, e.list_version), []).append((e.anime_id, e.ts))
        elif e.kind == "rating":
            ratings.setdefault(e.user_id, []).append((e.anime_id, e.rating, e.ts))
    out: dict[tuple[str, str], Figures] = {}
    for (user, version), anime in shown.items():
        day = day_of(min(anime.values()))
        figures = out.setdefault((version, day), Figures(final=now >= _day_end(day) + WINDOW_S))
        figures.lists += 1
        figures.clicked += any(a in anime and ts >= anime[a] for a, ts in clicks.get((user, version), ()))
        top = dict(list(anime.items())[:TOP_K])
        figures.hits += any(a in top and r >= LIKED and top[a] <= ts <= top[a] + WINDOW_S
                            for a, r, ts in ratings.get(user, ()))
    return out


def stored(client) -> dict[tuple[str, str], Figures]:
    """The figures kept in Redis (``refresh``)."""
    out = {}
    for field, value in client.hgetall(keys.ONLINE_DAILY).items():
        version, _, day = (field.decode() if isinstance(field, bytes) else field).rpartition("|")
        out[(version, day)] = Figures(**json.loads(value))
    return out


def figures(client, now: float | None = None) -> dict[tuple[str, str], Figures]:
    """Stored figures, with every day that is not final yet recomputed from the stream (read-only): a day not
    final has all its events still in the stream (``feedback.STREAM_KEEP_S`` > ``WINDOW_S`` + a day)."""
    now = time.time() if now is None else now
    result = stored(client)
    computed = evaluate(feedback.read(client), now)
    for key in [k for k, f in result.items() if not f.final and k not in computed]:
        del result[key]           # all its events were deleted (`fuserank forget`): the stream keeps the rest
    for key, fresh in computed.items():
        if not (key in result and result[key].final):
            result[key] = fresh
    return result


def refresh(client, now: float | None = None) -> dict[tuple[str, str], Figures]:
    """``figures``, and store the days that are not final yet (final ones never change again)."""
    result = figures(client, now)
    kept = stored(client)
    changed = {f"{v}|{d}": json.dumps(asdict(f)) for (v, d), f in result.items()
               if (v, d) not in kept or not kept[(v, d)].final}
    if changed:
        client.hset(keys.ONLINE_DAILY, mapping=changed)
    gone = [f"{v}|{d}" for v, d in kept if (v, d) not in result]
    if gone:
        client.hdel(keys.ONLINE_DAILY, *gone)
    return result


def by_version(daily: dict[tuple[str, str], Figures], version: str | None = None) -> dict[str, dict]:
    """version -> {"total": figures over all days, "days": {day: figures}} (as dicts), days in order."""
    out: dict[str, dict] = {}
    for (v, day), f in sorted(daily.items()):
        if version is not None and v != version:
            continue
        entry = out.setdefault(v, {"total": Figures(final=True), "days": {}})
        entry["total"] = entry["total"].add(f)
        entry["days"][day] = f
    return {v: {"total": e["total"].as_dict(), "days": {d: f.as_dict() for d, f in e["days"].items()}}
            for v, e in out.items()}
