"""Column contracts of the files the ingest stage reads and writes.

Inputs are matched on their header, case-insensitively and ignoring surrounding blanks and a
UTF-8 BOM, so the MyAnimeList 2016 and 2020 dumps are recognised without flags. Outputs are
fixed Arrow schemas that training, the batch job and the API read back.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

DATA_SCHEMA = "fuserank.data/1"

USER_COL, ANIME_COL, RATING_COL = "user_id", "anime_id", "rating"
RATING_COLUMNS = (USER_COL, ANIME_COL, RATING_COL)
ANIMELIST_MARKER = "watching_status"

RATING_MIN, RATING_MAX = -1, 10
"""Accepted raw ratings in every layout; values <= UNRATED_MAX mean "on the list, not rated"."""
UNRATED_MAX = 0

INT_PATTERN = r"^-?[0-9]{1,18}$"
"""An integer field once CSV quoting and surrounding blanks are removed (as pyarrow's int parser reads it)."""


@dataclass(frozen=True)
class RatingLayout:
    name: str
    columns: tuple[str, ...]
    ratings: str


RATING_LAYOUTS = {
    "rating_complete": RatingLayout(
        "rating_complete", RATING_COLUMNS, "2020 rating_complete.csv: 1-10"),
    "animelist": RatingLayout(
        "animelist", RATING_COLUMNS + (ANIMELIST_MARKER, "watched_episodes"),
        "2020 animelist.csv: 0 = on the list, not rated; 1-10"),
    "rating2016": RatingLayout(
        "rating2016", RATING_COLUMNS, "2016 rating.csv: -1 = watched, not rated; 1-10"),
}


def rating_layout_name(header: list[str], saw_minus_one: bool) -> str:
    """rating_complete and the 2016 rating.csv share a header; only the -1 marker tells them apart."""
    if ANIMELIST_MARKER in header:
        return "animelist"
    return "rating2016" if saw_minus_one else "rating_complete"


@dataclass(frozen=True)
class MetadataLayout:
    """Which header names carry anime id, name, genres and type in one metadata dump."""

    name: str
    anime_id: str
    title: str
    genres: str
    type: str

    @property
    def required(self) -> tuple[str, ...]:
        return (self.anime_id, self.title, self.genres, self.type)


METADATA_LAYOUTS = (
    MetadataLayout("anime2020", "mal_id", "name", "genres", "type"),
    MetadataLayout("anime2020_reduced", "anime_id", "name", "genres", "type"),
    MetadataLayout("anime2016", "anime_id", "name", "genre", "type"),
)

UNKNOWN_TYPE = "Unknown"
MISSING_VALUES = frozenset({"", "unknown", "nan", "null", "none"})


def placeholder_name(anime_id: int) -> str:
    """Name shown for rated anime the metadata does not know, so they stay recommendable."""
    return f"Anime {anime_id}"


def normalise_header(names) -> list[str]:
    return [str(n).replace("\ufeff", "").strip().lower() for n in names]


SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}
SPLIT_SCHEMA = pa.schema([
    ("user", pa.int32()), ("anime", pa.int32()), ("rating", pa.float32()), ("raw_rating", pa.int8()),
])
"""One rating per row: encoded user and anime, the rating scaled to 0-1 (the target) and raw 1-10."""
UNRATED_SCHEMA = pa.schema([("user", pa.int32()), ("anime", pa.int32())])
USERS_SCHEMA = pa.schema([("user", pa.int32()), ("user_id", pa.int64()), ("n_ratings", pa.int32())])
LOW_ACTIVITY_SCHEMA = pa.schema([("user_id", pa.int64()), ("anime", pa.int32()), ("raw_rating", pa.int8())])
"""Rows of users below the activity threshold, on anime the model knows (raw user id, encoded anime,
raw rating 1-10 or -1 = listed, unrated), sorted by user: the API folds these users in."""
ANIME_SCHEMA = pa.schema([
    ("anime", pa.int32()), ("anime_id", pa.int64()), ("name", pa.string()), ("genres", pa.string()),
    ("type", pa.string()), ("in_metadata", pa.bool_()),
])
OUTPUT_SCHEMAS = {**dict.fromkeys(SPLITS, SPLIT_SCHEMA), "unrated": UNRATED_SCHEMA, "users": USERS_SCHEMA,
                  "low_activity": LOW_ACTIVITY_SCHEMA, "anime": ANIME_SCHEMA}
"""The ingest output's tables by name, each written to ``parquet_file(name)`` beside ``MANIFEST``."""
FEEDBACK_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("user_id", pa.int64()), ("anime_id", pa.int64()),
    ("rating", pa.int8()), ("status", pa.string()), ("ts", pa.float64()),
])
"""The feedback entries (rating | status | delete, fuserank.feedback) merged into the splits, in stream order:
those carried over from the previous output plus those drained from the stream (``fuserank ingest --feedback``)."""
FEEDBACK_FILE = "feedback.parquet"
MANIFEST = "manifest.json"
"""The file that completes an ingest output and a model artifact alike (written last)."""


def parquet_file(table: str) -> str:
    """File name of one ingest output table; a KeyError for a name that is none."""
    if table not in OUTPUT_SCHEMAS:
        raise KeyError(f"{table!r} is not an ingest output table ({', '.join(OUTPUT_SCHEMAS)})")
    return f"{table}.parquet"
