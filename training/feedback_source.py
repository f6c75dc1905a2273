"""The feedback store as an ingest source (`fuserank ingest --feedback URL`).

What users wrote through the API is newer than any dump, so its rows are handed to the ingest after the files'
and win on duplicated (user, anime) pairs like a later file row does: a rating is a rating, a status entry is
a listed-unrated row (animelist rating 0), a deletion is a marker row (``DELETED``) that removes the pair once
duplicates are resolved. Impressions and clicks are counted, never merged.

The stream is trimmed once a published version holds its events (fuserank.feedback.trim_published), so the
entries a previous ingest drained are carried over from its output's ``feedback.parquet`` and only newer
events are read from the stream: (the carried ``feedback_until``, ``until``]. A stream trimmed past what is
carried (the previous output lost) is an error, never a silent loss of ratings.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fuserank import feedback
from fuserank.errors import FuseRankError
from fuserank.schemas import ingest as S

DELETED = 14          # raw rating of a deletion marker (packed rating + 1 = 15, the ingest's RATING_MASK)
LISTED = 0            # raw rating of a status entry: on the list, not rated (animelist layout)


@dataclass
class FeedbackRows:
    """Rows for the ingest's sink (in stream order), the table written beside the splits, and the manifest's
    account of them."""

    user: np.ndarray
    anime: np.ndarray
    rating: np.ndarray
    table: pa.Table
    until: str
    added: int
    counts: dict

    def manifest(self) -> dict:
        return {"feedback_until": self.until, "feedback_added": self.added, "feedback": self.counts}


def _carried(previous_dir: str | None, suppressed: frozenset) -> tuple[pa.Table, str]:
    """The previous output's feedback entries (forgotten users left out) and the id they reach."""
    empty = S.FEEDBACK_SCHEMA.empty_table()
    if not previous_dir:
        return empty, feedback.NONE
    manifest_path = os.path.join(previous_dir, S.MANIFEST)
    table_path = os.path.join(previous_dir, S.FEEDBACK_FILE)
    if not (os.path.isfile(manifest_path) and os.path.isfile(table_path)):
        return empty, feedback.NONE
    with open(manifest_path) as fh:
        until = json.load(fh).get("feedback_until", feedback.NONE)
    table = pq.read_table(table_path, schema=S.FEEDBACK_SCHEMA)
    if suppressed and len(table):
        keep = ~np.isin(table.column("user_id").to_numpy(), np.fromiter(suppressed, np.int64))
        table = table.filter(pa.array(keep))
    return table, until


def drain(client, previous_dir: str | None = None, until: str | None = None,
          suppressed: frozenset = frozenset()) -> FeedbackRows:
    """Carried entries plus the stream's events up to ``until`` (default: its last id), forgotten users left out."""
    carried, since = _carried(previous_dir, suppressed)
    last, _ = feedback.head(client)
    until = until or last
    if feedback.id_key(until) > feedback.id_key(last):
        raise FuseRankError(f"--feedback-until {until}: the feedback stream's last id is {last}")
    if feedback.id_key(until) < feedback.id_key(since):
        raise FuseRankError(f"--feedback-until {until}: the carried feedback ({previous_dir}) already holds events "
                            f"up to {since}")
    trimmed = feedback.trimmed_below(client)
    if feedback.id_key(feedback.after(since)) < feedback.id_key(trimmed):
        raise FuseRankError(f"the feedback stream was trimmed below {trimmed}, but the carried feedback reaches only "
                            f"{since} ({previous_dir or 'no previous output'}): restore the last ingest output "
                            "(`dvc pull`) so that no acknowledged rating is lost")
    counts = dict.fromkeys(("drained_events", "ratings", "statuses", "deletes", "signals", "suppressed_events"), 0)
    new = []
    for event in feedback.read(client, "(" + since, until):
        counts["drained_events"] += 1
        if event.user_id in suppressed:
            counts["suppressed_events"] += 1
        elif event.kind in feedback.ENTRY_KINDS:
            counts[{"rating": "ratings", "status": "statuses", "delete": "deletes"}[event.kind]] += 1
            new.append(event)
        else:
            counts["signals"] += 1
    drained = pa.Table.from_pylist([{"id": e.id, "kind": e.kind, "user_id": e.user_id, "anime_id": e.anime_id,
                                     "rating": e.rating, "status": e.status, "ts": e.ts} for e in new],
                                   schema=S.FEEDBACK_SCHEMA)
    table = pa.concat_tables([carried, drained])
    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    rating = table.column("rating").to_numpy(zero_copy_only=False)
    raw = np.where(kind == "rating", np.nan_to_num(rating, nan=0), np.where(kind == "delete", DELETED, LISTED))
    counts.update(carried_events=len(carried), carried_from=since, entries=len(table))
    return FeedbackRows(table.column("user_id").to_numpy().astype(np.int64),
                        table.column("anime_id").to_numpy().astype(np.int64), raw.astype(np.int8), table, until,
                        feedback.added_until(client, until), counts)
