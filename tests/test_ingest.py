"""Ingest stage on real files: small hand-made fixtures and the bundled MyAnimeList slices."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fuserank.errors import FuseRankError, InputError
from fuserank.schemas import ingest as S
from fuserank.training import readers
from fuserank.training.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "ingest"
SAMPLE = ROOT / "data" / "sample"
COMPLETE = FIX / "rating_complete.csv"
TABLES = ("train", "val", "test", "unrated", "users", "anime", "low_activity")


def load(out) -> dict[str, pd.DataFrame]:
    return {name: pq.read_table(Path(out) / f"{name}.parquet").to_pandas() for name in TABLES}


def ratings_with_ids(out) -> pd.DataFrame:
    """All kept ratings joined back to raw ids, with their split."""
    t = load(out)
    parts = [t[s].assign(split=s) for s in ("train", "val", "test")]
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.merge(t["users"][["user", "user_id"]], on="user").merge(t["anime"][["anime", "anime_id"]], on="anime")
    return rows


def write(tmp_path, name, lines, newline="\n", encoding=None) -> Path:
    path = tmp_path / name
    body = newline.join(lines) + newline
    path.write_bytes(body if isinstance(body, bytes) else body.encode(encoding or "utf-8"))
    return path


def complete_lines() -> list[str]:
    return COMPLETE.read_text().splitlines()


# ---------------------------------------------------------------- rating layouts

def test_rating_complete_fixture(tmp_path):
    m = ingest(str(COMPLETE), str(tmp_path / "out"), min_user_ratings=3)
    c = m["counts"]
    assert m["schema"] == "fuserank.data/1" and m["layout"] == "rating_complete"
    assert (c["rows_read"], c["duplicates_dropped"], c["users_seen"], c["users_kept"]) == (23, 1, 4, 3)
    assert (c["anime"], c["ratings_kept"], c["train"], c["val"], c["test"]) == (14, 20, 14, 3, 3)
    assert m["rating_scale"] == {"min": 1, "max": 10}
    t = load(tmp_path / "out")
    assert t["users"].to_dict("list") == {"user": [0, 1, 2], "user_id": [5, 10, 20], "n_ratings": [3, 12, 5]}
    assert t["anime"]["anime_id"].tolist() == list(range(1, 15))
    rows = ratings_with_ids(tmp_path / "out")
    dup = rows[(rows.user_id == 10) & (rows.anime_id == 3)]
    assert dup.raw_rating.tolist() == [9]
    assert np.isclose(dup.rating.iloc[0], 8 / 9)
    assert 99 not in rows.anime_id.values and 30 not in rows.user_id.values


@pytest.mark.parametrize("user_id", [7, 3_000_000_000])
def test_duplicates_keep_the_last_row_even_if_lower(tmp_path, user_id):
    """Small ids take the packed-sort path, huge ones the lexsort path; both keep file order."""
    rows = [(user_id, 1, 9), (user_id, 2, 4), (8, 1, 2), (user_id, 1, 3), (user_id, 2, 8), (user_id, 3, 5),
            (user_id, 2, 0), (8, 1, 6), (user_id, 4, 7), (user_id, 3, 10), (8, 2, 1), (8, 3, 1)]
    path = write(tmp_path, "dups.csv", ["user_id,anime_id,rating"] + [f"{u},{a},{r}" for u, a, r in rows])
    m = ingest(str(path), str(tmp_path / "out"), min_user_ratings=3)
    assert m["counts"]["duplicates_dropped"] == 5 and m["counts"]["rows_unrated"] == 1
    got = ratings_with_ids(tmp_path / "out")
    assert sorted(zip(got.user_id, got.anime_id, got.raw_rating)) == sorted(
        [(8, 1, 6), (8, 2, 1), (8, 3, 1), (user_id, 1, 3), (user_id, 3, 10), (user_id, 4, 7)])
    t = load(tmp_path / "out")
    assert t["unrated"].merge(t["users"], on="user").merge(t["anime"], on="anime")[
        ["user_id", "anime_id"]].values.tolist() == [[user_id, 2]]


@pytest.mark.parametrize("low_id", [5, 4_000_000_000])
def test_low_activity_rows_keep_raw_ids_and_only_the_models_anime(tmp_path, low_id):
    """Users below the threshold: their rows on kept anime (unrated as -1), duplicates resolved, raw ids."""
    rows = [(1, 1, 9), (1, 2, 8), (1, 3, 7), (2, 1, 6), (2, 2, 5), (2, 4, 4),
            (low_id, 1, 3), (low_id, 2, 0), (low_id, 99, 10), (low_id, 1, 8)]
    path = write(tmp_path, "low.csv", ["user_id,anime_id,rating,watching_status,watched_episodes"]
                 + [f"{u},{a},{r},2,1" for u, a, r in rows])
    m = ingest(str(path), str(tmp_path / "out"), min_user_ratings=3)
    t = load(tmp_path / "out")
    low = t["low_activity"].merge(t["anime"][["anime", "anime_id"]], on="anime")
    assert sorted(zip(low.user_id, low.anime_id, low.raw_rating)) == [(low_id, 1, 8), (low_id, 2, -1)]
    assert (m["counts"]["low_activity_users"], m["counts"]["low_activity_rows"]) == (1, 2)
    assert low_id not in set(t["users"].user_id)


def test_output_schemas_and_order(tmp_path):
    ingest(str(COMPLETE), str(tmp_path / "out"), min_user_ratings=3)
    for name in TABLES:
        table = pq.read_table(tmp_path / "out" / f"{name}.parquet")
        assert table.schema.remove_metadata() == S.OUTPUT_SCHEMAS[name], name
        df = table.to_pandas()
        keys = ["user", "anime"] if "user" in df and "anime" in df else [df.columns[0]]
        assert df[keys].equals(df[keys].sort_values(keys).reset_index(drop=True)), name
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_animelist_zero_ratings_go_to_unrated(tmp_path):
    m = ingest(str(FIX / "animelist.csv"), str(tmp_path / "out"), min_user_ratings=3)
    c = m["counts"]
    assert m["layout"] == "animelist"
    assert (c["rows_read"], c["rows_rated"], c["rows_unrated"], c["users_kept"], c["anime"]) == (11, 7, 4, 2, 5)
    assert (c["ratings_kept"], c["unrated_kept"]) == (6, 2)
    t = load(tmp_path / "out")
    ids = dict(zip(t["anime"].anime, t["anime"].anime_id))
    users = dict(zip(t["users"].user, t["users"].user_id))
    assert {(users[u], ids[a]) for u, a in zip(t["unrated"].user, t["unrated"].anime)} == {(1, 2), (2, 1)}
    rows = ratings_with_ids(tmp_path / "out")
    assert rows.raw_rating.min() >= 1 and 50 not in ids.values()
    low = t["low_activity"]
    assert set(low.user_id) == {3} and -1 in set(low.raw_rating) and set(low.anime) <= set(ids)


def test_rating2016_minus_one_goes_to_unrated(tmp_path):
    m = ingest(str(FIX / "rating2016.csv"), str(tmp_path / "out"), min_user_ratings=3)
    c = m["counts"]
    assert m["layout"] == "rating2016"
    assert (c["rows_unrated"], c["users_kept"], c["anime"], c["ratings_kept"], c["unrated_kept"]) == (3, 2, 6, 7, 2)
    t = load(tmp_path / "out")
    ids = dict(zip(t["anime"].anime, t["anime"].anime_id))
    assert sorted(ids[a] for a in t["unrated"].anime) == [20, 22]
    assert ratings_with_ids(tmp_path / "out").raw_rating.min() >= 1


def test_sample_2020_slice_matches_pandas(tmp_path):
    src = SAMPLE / "mal2020" / "rating_complete_head100k.csv"
    m = ingest(str(src), str(tmp_path / "out"), anime=str(SAMPLE / "mal2020" / "anime_reduced.csv"),
               min_user_ratings=20)
    raw = pd.read_csv(src)
    counts = raw.groupby("user_id").size()
    expected = raw[raw.user_id.isin(counts[counts >= 20].index)]
    got = ratings_with_ids(tmp_path / "out")
    assert m["counts"]["users_kept"] == (counts >= 20).sum() == got.user_id.nunique()
    assert m["counts"]["anime"] == expected.anime_id.nunique()
    assert sorted(zip(got.user_id, got.anime_id, got.raw_rating)) == sorted(
        zip(expected.user_id, expected.anime_id, expected.rating))
    assert m["anime_layout"] == "anime2020_reduced" and m["counts"]["anime_missing_metadata"] == 0
    _check_split_sizes(got)
    # users below the threshold: their rows on the model's anime, kept for the API's fold-in
    t = load(tmp_path / "out")
    low = t["low_activity"].merge(t["anime"][["anime", "anime_id"]], on="anime")
    below = raw[raw.user_id.isin(counts[counts < 20].index) & raw.anime_id.isin(expected.anime_id)]
    assert len(below) and sorted(zip(low.user_id, low.anime_id, low.raw_rating)) == sorted(
        zip(below.user_id, below.anime_id, below.rating))
    assert m["counts"]["low_activity_rows"] == len(below)
    assert m["counts"]["low_activity_users"] == below.user_id.nunique()


def test_sample_2016_slice_matches_pandas(tmp_path):
    src = SAMPLE / "mal2016" / "rating_tail.csv"
    m = ingest(str(src), str(tmp_path / "out"), anime=str(SAMPLE / "mal2016" / "anime.csv"), min_user_ratings=20)
    raw = pd.read_csv(src)
    rated = raw[raw.rating >= 1]
    n = rated.groupby("user_id").size()
    keep = n[n >= 20].index
    kept = rated[rated.user_id.isin(keep)]
    assert m["layout"] == "rating2016" and m["anime_layout"] == "anime2016"
    assert m["counts"]["ratings_kept"] == len(kept)
    unrated = raw[(raw.rating == -1) & raw.user_id.isin(keep) & raw.anime_id.isin(kept.anime_id)]
    t = load(tmp_path / "out")
    got = t["unrated"].merge(t["users"], on="user").merge(t["anime"], on="anime")
    assert sorted(zip(got.user_id, got.anime_id)) == sorted(zip(unrated.user_id, unrated.anime_id))
    assert m["counts"]["rows_unrated"] == (raw.rating == -1).sum()
    _check_split_sizes(ratings_with_ids(tmp_path / "out"))


def _check_split_sizes(rows: pd.DataFrame):
    sizes = rows.groupby(["user", "split"]).size().unstack(fill_value=0)
    n = sizes.sum(axis=1)
    want = np.where(n >= 3, np.maximum(1, np.floor(n * 0.1)), 0)
    assert (sizes["test"].values == want).all() and (sizes["val"].values == want).all()
    assert (sizes["train"] >= 1).all()


def test_no_user_in_test_or_val_without_train(tmp_path):
    ingest(str(SAMPLE / "mal2016" / "rating_tail.csv"), str(tmp_path / "out"), min_user_ratings=1)
    rows = ratings_with_ids(tmp_path / "out")
    train_users = set(rows[rows.split == "train"].user)
    assert set(rows[rows.split != "train"].user) <= train_users
    small = rows.groupby("user").filter(lambda g: len(g) < 3)
    assert len(small) and (small.split == "train").all()


def test_split_and_hash_are_deterministic(tmp_path):
    src = str(SAMPLE / "mal2016" / "rating_tail.csv")
    a = ingest(src, str(tmp_path / "a"), min_user_ratings=20, seed=7)
    b = ingest(src, str(tmp_path / "b"), min_user_ratings=20, seed=7)
    c = ingest(src, str(tmp_path / "c"), min_user_ratings=20, seed=8)
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]
    assert a["counts"] == c["counts"]
    ta, tb, tc = load(tmp_path / "a"), load(tmp_path / "b"), load(tmp_path / "c")
    assert all(ta[n].equals(tb[n]) for n in TABLES)
    assert not ta["test"].equals(tc["test"])
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["content_hash"] == a["content_hash"]


def test_crlf_bom_blank_lines_and_no_final_newline(tmp_path):
    lines = complete_lines()
    lines[0] = "\ufeffUser_ID, Anime_ID ,RATING"
    lines.insert(6, "")
    path = tmp_path / "messy.csv"
    path.write_bytes("\r\n".join(lines).encode())
    clean = ingest(str(COMPLETE), str(tmp_path / "clean"), min_user_ratings=3)
    messy = ingest(str(path), str(tmp_path / "messy"), min_user_ratings=3)
    assert messy["content_hash"] == clean["content_hash"]


def test_progress_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fuserank.ingest")
    ingest(str(COMPLETE), str(tmp_path / "out"), min_user_ratings=3, chunk_rows=5)
    messages = [r.getMessage() for r in caplog.records if r.name == "fuserank.ingest"]
    assert any("rows read" in msg for msg in messages)
    assert any("kept 3 users" in msg for msg in messages)


def test_small_blocks_and_chunks_give_the_same_arrays(tmp_path):
    src = SAMPLE / "mal2020" / "rating_complete_head100k.csv"
    whole = readers.read_ratings(str(src))
    small = readers.read_ratings(str(src), chunk_rows=1000, block_bytes=4096)
    for col in ("user", "anime", "rating"):
        assert np.array_equal(getattr(whole, col), getattr(small, col))
    assert whole.user.dtype == np.int32 and whole.rating.dtype == np.int8


@pytest.mark.parametrize("streams", [2, 3, 7])
def test_parallel_byte_ranges_read_the_same_rows(tmp_path, monkeypatch, streams):
    """Big local files are parsed by several threads over line-aligned byte ranges, joined in file order."""
    monkeypatch.setattr(readers, "PARALLEL_MIN_BYTES", 0)
    src = SAMPLE / "mal2020" / "rating_complete_head100k.csv"
    ranges = readers._byte_ranges(src, open(src, "rb"), streams)
    assert len(ranges) == streams and ranges[-1][1] == src.stat().st_size
    one = readers.read_ratings(str(src), block_bytes=65536)
    monkeypatch.setattr(readers, "usable_cpus", lambda: streams)
    several = readers.read_ratings(str(src), block_bytes=65536)
    for col in ("user", "anime", "rating"):
        assert np.array_equal(getattr(one, col), getattr(several, col))
    lines = src.read_text().splitlines()
    lines[-3] = "5,6,77"
    bad = write(tmp_path, "bad.csv", lines)
    with pytest.raises(InputError) as info:
        readers.read_ratings(str(bad), block_bytes=65536)
    assert info.value.line == len(lines) - 2 and info.value.field == "rating"
    lenient = ingest(str(bad), str(tmp_path / "lenient"), min_user_ratings=20, lenient=True, suppressed=[0, 3])
    assert lenient["counts"]["skipped_rows"] == 1 and lenient["counts"]["suppressed_users"] == 2
    whole = ingest(str(src), str(tmp_path / "a"), min_user_ratings=20, suppressed=[0, 3])
    assert whole["counts"]["suppressed_rows"] == lenient["counts"]["suppressed_rows"] > 0
    monkeypatch.setattr(readers, "PARALLEL_MIN_BYTES", 1 << 40)
    single = ingest(str(src), str(tmp_path / "b"), min_user_ratings=20, suppressed=[0, 3])
    assert single["content_hash"] == whole["content_hash"] and single["counts"] == whole["counts"]


# ---------------------------------------------------------------- malformed input

BAD_ROWS = [
    ("10,x,9", "anime_id", "not an integer"),
    ("10,4,9.5", "rating", "not an integer"),
    ("10,4", "rating", "found 2 fields"),
    ("10,4,9,1", "extra field 4", "found 4 fields"),
    ("10,4,11", "rating", "out of range"),
    ("10,4,-2", "rating", "out of range"),
    ("10,4,200", "rating", "out of range"),
    ("10,4,", "rating", "missing value"),
    ("-10,4,9", "user_id", "negative id"),
    ('10,"4,9', None, "malformed CSV"),
]


@pytest.mark.parametrize("bad, field, message", BAD_ROWS)
def test_malformed_row_names_file_line_and_field(tmp_path, bad, field, message):
    lines = complete_lines()
    lines[4] = bad
    path = write(tmp_path, "bad.csv", lines)
    with pytest.raises(InputError) as info:
        ingest(str(path), str(tmp_path / "out"), min_user_ratings=3)
    text = str(info.value)
    assert str(path) in text and "line 5" in text and message in text
    assert info.value.line == 5 and info.value.expected
    if field:
        assert field in text and field in info.value.field
    assert not (tmp_path / "out").exists()


def test_non_utf8_bytes_name_the_line(tmp_path):
    lines = [line.encode() for line in complete_lines()]
    lines[7] = b"10,\xff\xfe,9"
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=r"line 8, field 'anime_id'.*UTF-8"):
        ingest(str(path), str(tmp_path / "out"), min_user_ratings=3)


def test_bad_line_after_many_blocks(tmp_path):
    lines = ["user_id,anime_id,rating"] + [f"{u},{a},{1 + (u + a) % 10}" for u in range(300) for a in range(100)]
    lines[25_001] = "7,7,x"
    path = write(tmp_path, "big.csv", lines)
    with pytest.raises(InputError) as info:
        readers.read_ratings(str(path), block_bytes=8192)
    assert info.value.line == 25_002 and info.value.field == "rating"


@pytest.mark.parametrize("header, missing", [("user_id,anime,rating", "anime_id"), ("user_id,anime_id", "rating"),
                                             ("uid,anime_id,rating", "user_id")])
def test_missing_column_is_named(tmp_path, header, missing):
    path = write(tmp_path, "cols.csv", [header, "1,2,3"])
    with pytest.raises(InputError) as info:
        ingest(str(path), str(tmp_path / "out"))
    assert info.value.line == 1 and info.value.field == missing and missing in str(info.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="line 1"):
        ingest(str(empty), str(tmp_path / "out"))
    with pytest.raises(InputError, match="not found"):
        ingest(str(tmp_path / "nope.csv"), str(tmp_path / "out"))


def test_no_user_reaches_minimum(tmp_path):
    with pytest.raises(FuseRankError, match="min_user_ratings"):
        ingest(str(COMPLETE), str(tmp_path / "out"), min_user_ratings=400)


# ---------------------------------------------------------------- lenient mode

DIRTY = [(3, "10,x,9", "anime_id"), (8, "10,4,11", "rating"), (9, "1,2", None), (12, '10,"4,9', "anime_id"),
         (15, "10,4,", "rating"), (20, "-3,1,5", "user_id")]


def _dirty_file(tmp_path, newline="\n") -> tuple[Path, list[int]]:
    lines = complete_lines()
    for at, bad, _ in DIRTY:
        lines.insert(at - 1, bad)
    lines.insert(17, "")
    nl = newline.encode()
    data = newline.join(lines).encode().replace(nl + b"1,2" + nl, nl + b"1,\xff2" + nl, 1)
    path = tmp_path / "dirty.csv"
    path.write_bytes(data + newline.encode())
    expected_lines = [at if at < 18 else at + 1 for at, _, _ in DIRTY]
    return path, expected_lines


def test_lenient_skips_and_reports_bad_rows(tmp_path):
    path, bad_lines = _dirty_file(tmp_path)
    clean = ingest(str(COMPLETE), str(tmp_path / "clean"), min_user_ratings=3)
    with pytest.raises(InputError):
        ingest(str(path), str(tmp_path / "strict"), min_user_ratings=3)
    m = ingest(str(path), str(tmp_path / "dirty"), min_user_ratings=3, lenient=True)
    assert m["content_hash"] == clean["content_hash"]
    assert m["counts"]["skipped_rows"] == len(DIRTY) and m["counts"]["rows_read"] == clean["counts"]["rows_read"]
    assert m["skipped"]["first_lines"] == bad_lines
    fields = [e["field"] for e in m["skipped"]["examples"]]
    assert fields[:2] == ["anime_id", "rating"] and fields[2] is None
    assert m["skipped"]["examples"][2]["reason"] == "not valid UTF-8"
    for example in m["skipped"]["examples"]:
        assert example["file"] == str(path)


def test_lenient_across_many_small_blocks_with_crlf(tmp_path):
    lines = ["user_id,anime_id,rating"] + [f"{u},{a},{1 + (u * a) % 10}" for u in range(60) for a in range(50)]
    bad = {101: "1,1", 777: "2,x,3", 1500: "3,3,99", 2999: "\u00e9,1,1"}
    for at, text in bad.items():
        lines[at - 1] = text
    path = tmp_path / "many.csv"
    path.write_bytes("\r\n".join(lines).encode())
    skipped = readers.SkipReport()
    got = readers.read_ratings(str(path), lenient=True, block_bytes=997, skipped=skipped)
    keep = [i for i in range(1, len(lines)) if i + 1 not in bad]
    want = np.array([[int(x) for x in lines[i].split(",")] for i in keep])
    assert skipped.rows == len(bad) and [e["line"] for e in skipped.examples] == sorted(bad)
    assert np.array_equal(np.column_stack([got.user, got.anime, got.rating]), want)


def test_lenient_clean_file_equals_strict(tmp_path):
    a = ingest(str(COMPLETE), str(tmp_path / "a"), min_user_ratings=3)
    b = ingest(str(COMPLETE), str(tmp_path / "b"), min_user_ratings=3, lenient=True)
    assert a["content_hash"] == b["content_hash"] and b["counts"]["skipped_rows"] == 0


# ---------------------------------------------------------------- anime metadata

@pytest.mark.parametrize("name, layout", [("anime_full2020.csv", "anime2020"),
                                          ("anime_reduced.csv", "anime2020_reduced"),
                                          ("anime2016.csv", "anime2016")])
def test_metadata_layouts_normalise_the_same(tmp_path, name, layout):
    m = ingest(str(COMPLETE), str(tmp_path / "out"), anime=str(FIX / name), min_user_ratings=3)
    assert m["anime_layout"] == layout
    anime = load(tmp_path / "out")["anime"].set_index("anime_id")
    assert anime.loc[1, "name"] == "Cowboy Bebop" and anime.loc[1, "type"] == "TV"
    assert anime.loc[1, "genres"] == "Action, Adventure, Comedy, Drama, Sci-Fi, Space"
    assert anime.loc[12].to_dict() | {"anime": 0} == {
        "anime": 0, "name": 'Untitled "Project", Part 2', "genres": "", "type": "Unknown", "in_metadata": True}
    assert 500 not in anime.index


def test_anime_missing_from_metadata_are_kept_and_counted(tmp_path):
    m = ingest(str(COMPLETE), str(tmp_path / "out"), anime=str(FIX / "anime_reduced.csv"), min_user_ratings=3)
    assert m["counts"]["anime"] == 14
    assert m["counts"]["anime_missing_metadata"] == 2 and m["counts"]["ratings_missing_metadata"] == 3
    anime = load(tmp_path / "out")["anime"].set_index("anime_id")
    assert anime.loc[13].to_dict() == {"anime": 12, "name": "Anime 13", "genres": "", "type": "Unknown",
                                       "in_metadata": False}
    assert anime["in_metadata"].sum() == 12


def test_sample_metadata_files_read_fully():
    full = readers.read_metadata(str(SAMPLE / "mal2020" / "anime_reduced.csv"))
    old = readers.read_metadata(str(SAMPLE / "mal2016" / "anime.csv"))
    assert (len(full.anime_id), full.layout) == (17_562, "anime2020_reduced")
    assert (len(old.anime_id), old.layout) == (12_294, "anime2016")
    assert np.all(np.diff(full.anime_id) > 0)


@pytest.mark.parametrize("edit, line, field, message", [
    (lambda ls: [ls[0].replace("Genres", "Tags")] + ls[1:], 1, "genres", "missing required column"),
    (lambda ls: ls[:3] + ["x" + ls[3]] + ls[4:], 4, "anime_id", "not a valid id"),
    (lambda ls: ls + [ls[2]], 15, "anime_id", "duplicate anime id 2 (first on line 3)"),
    (lambda ls: ls[:5] + ["7,Short"] + ls[6:], 6, None, "found 2 fields"),
])
def test_metadata_errors(tmp_path, edit, line, field, message):
    path = write(tmp_path, "meta.csv", edit((FIX / "anime_reduced.csv").read_text().splitlines()))
    with pytest.raises(InputError) as info:
        ingest(str(COMPLETE), str(tmp_path / "out"), anime=str(path), min_user_ratings=3)
    assert (info.value.line, info.value.field) == (line, field) and message in str(info.value)
    if line > 1:
        m = ingest(str(COMPLETE), str(tmp_path / "out"), anime=str(path), min_user_ratings=3, lenient=True)
        assert m["counts"]["skipped_rows"] == 1 and m["skipped"]["first_lines"] == [line]


# ---------------------------------------------------------------- output directory safety

def test_failed_ingest_keeps_existing_output(tmp_path):
    out = tmp_path / "data"
    good = ingest(str(COMPLETE), str(out), min_user_ratings=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines = complete_lines()
    lines[10] = "10,4,11"
    bad = write(tmp_path, "bad.csv", lines)
    with pytest.raises(InputError):
        ingest(str(bad), str(out), min_user_ratings=3)
    with pytest.raises(FuseRankError):
        ingest(str(COMPLETE), str(out), min_user_ratings=50)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "data"]
    again = ingest(str(FIX / "rating2016.csv"), str(out), min_user_ratings=3)
    assert again["content_hash"] != good["content_hash"]
    assert json.loads((out / "manifest.json").read_text())["layout"] == "rating2016"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "data"]


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FuseRankError, match="refusing"):
        ingest(str(COMPLETE), str(foreign), min_user_ratings=3)
    assert (foreign / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- full-scale machinery on small data

def test_slices_chunks_and_row_groups_do_not_change_the_output(tmp_path, monkeypatch):
    """Tiny user slices, file-order chunks and row groups give the same tables, hash and row groups."""
    from fuserank.training import ingest as ingest_module
    src = str(SAMPLE / "mal2020" / "rating_complete_head100k.csv")
    whole = ingest(src, str(tmp_path / "whole"), min_user_ratings=20, seed=3)
    monkeypatch.setattr(ingest_module, "SLICE_ROWS", 257)
    monkeypatch.setattr(ingest_module, "PACKED_CHUNK_ROWS", 1000)
    monkeypatch.setattr(ingest_module, "ROW_GROUP_ROWS", 4096)
    sliced = ingest(src, str(tmp_path / "sliced"), min_user_ratings=20, seed=3)
    assert sliced["content_hash"] == whole["content_hash"]
    a, b = load(tmp_path / "whole"), load(tmp_path / "sliced")
    assert all(a[n].equals(b[n]) for n in TABLES)
    train = pq.ParquetFile(tmp_path / "sliced" / "train.parquet").metadata
    assert train.num_row_groups == -(-whole["counts"]["train"] // 4096)
    assert {train.row_group(i).num_rows for i in range(train.num_row_groups - 1)} == {4096}


def test_shuffled_rows_with_duplicates_across_chunks(tmp_path, monkeypatch):
    """Row order does not matter except between duplicates: the file's last row wins, wherever it is."""
    from fuserank.training import ingest as ingest_module
    rng = np.random.default_rng(5)
    users, anime = rng.integers(0, 40, 3000), rng.integers(1, 60, 3000)
    ratings = rng.integers(0, 11, 3000)
    lines = [f"{u},{a},{r}" for u, a, r in zip(users, anime, ratings)]
    grouped = write(tmp_path, "grouped.csv", ["user_id,anime_id,rating"] + lines)
    shuffled = write(tmp_path, "shuffled.csv", ["user_id,anime_id,rating"] + [lines[i] for i in rng.permutation(3000)])
    monkeypatch.setattr(ingest_module, "PACKED_CHUNK_ROWS", 128)
    monkeypatch.setattr(ingest_module, "SLICE_ROWS", 100)
    for path in (grouped, shuffled):
        m = ingest(str(path), str(tmp_path / path.stem), min_user_ratings=5)
        raw = pd.read_csv(path)
        last = raw.drop_duplicates(["user_id", "anime_id"], keep="last")
        assert m["counts"]["duplicates_dropped"] == len(raw) - len(last) > 100
        rated = last[last.rating >= 1]
        n = rated.groupby("user_id").size()
        want = rated[rated.user_id.isin(n[n >= 5].index)]
        got = ratings_with_ids(tmp_path / path.stem)
        assert sorted(zip(got.user_id, got.anime_id, got.raw_rating)) == sorted(
            zip(want.user_id, want.anime_id, want.rating))


# ---------------------------------------------------------------- suppression (fuserank forget)

def _without_user(tmp_path, src: Path, user_id: int) -> Path:
    lines = src.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[0] != str(user_id)]
    return write(tmp_path, f"without_{user_id}.csv", kept)


def _raw_ids_everywhere(out) -> set[int]:
    t = load(out)
    users = dict(zip(t["users"].user, t["users"].user_id))
    return ({users[u] for name in ("train", "val", "test", "unrated") for u in t[name].user} | set(users.values())
            | set(t["low_activity"].user_id))


def test_forgotten_user_is_absent_from_every_output(tmp_path, redis_client, redis_url):
    """`fuserank forget` then `fuserank ingest --redis-url`: the user's rows never reach any output."""
    from fuserank.cli import main
    from fuserank.privacy import forget
    src = SAMPLE / "mal2020" / "rating_complete_head100k.csv"
    raw = pd.read_csv(src)
    victim = int(raw.groupby("user_id").size().idxmax())
    forget(redis_client, victim)
    forget(redis_client, 987_654_321)  # forgotten, but not in this file
    assert main(["ingest", "--ratings", str(src), "--out", str(tmp_path / "out"), "--min-user-ratings", "20",
                 "--redis-url", redis_url]) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert victim not in _raw_ids_everywhere(tmp_path / "out")
    assert m["counts"]["suppressed_users"] == 1
    assert m["counts"]["suppressed_rows"] == int((raw.user_id == victim).sum())
    assert m["suppression"] == {"sources": ["redis"], "ids_listed": 2}  # counts only, never the ids
    # the same data as an ingest of a file that never held the user
    clean = ingest(str(_without_user(tmp_path, src, victim)), str(tmp_path / "clean"), min_user_ratings=20)
    assert clean["content_hash"] == m["content_hash"]


def test_redis_url_defaults_to_the_environment(tmp_path, redis_client, redis_url, monkeypatch):
    from fuserank.cli import main
    redis_client.sadd("fuserank:suppressed", 10)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["ingest", "--ratings", str(COMPLETE), "--out", str(tmp_path / "out"), "--min-user-ratings", "3"]) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["counts"]["suppressed_users"] == 1 and 10 not in _raw_ids_everywhere(tmp_path / "out")
    assert m["counts"]["users_kept"] == 2


def test_unreachable_redis_fails_instead_of_ingesting_everyone(tmp_path):
    from fuserank.redis_server import free_port
    from fuserank.training.ingest import load_suppressed
    with pytest.raises(FuseRankError, match="suppression list"):
        load_suppressed(redis_url=f"redis://127.0.0.1:{free_port()}/0")


@pytest.mark.parametrize("user_id", [10, 3_000_000_000])
def test_suppressed_file_and_lenient_reread(tmp_path, user_id):
    """Ids from a file; the lenient re-read starts the suppression counts afresh; huge ids too."""
    from fuserank.training.ingest import load_suppressed
    lines = complete_lines()
    lines = [lines[0]] + [f"{user_id},{line[3:]}" if line.startswith("10,") else line for line in lines[1:]]
    src = write(tmp_path, "ratings.csv", lines)
    dirty = write(tmp_path, "dirty.csv", lines[:5] + ["1,x,3"] + lines[5:])
    ids_file = write(tmp_path, "forgotten.txt", ["# forgotten users", f"{user_id}", "", "424242  # not in the file"])
    ids, sources = load_suppressed(path=str(ids_file))
    assert ids == {user_id, 424242} and sources == ["file"]
    m = ingest(str(dirty), str(tmp_path / "out"), min_user_ratings=3, lenient=True, suppressed=ids)
    n_rows = sum(line.startswith(f"{user_id},") for line in lines)
    c = m["counts"]
    assert (c["suppressed_users"], c["suppressed_rows"], c["skipped_rows"]) == (1, n_rows, 1)
    assert user_id not in _raw_ids_everywhere(tmp_path / "out")
    clean = ingest(str(_without_user(tmp_path, src, user_id)), str(tmp_path / "clean"), min_user_ratings=3)
    assert clean["content_hash"] == m["content_hash"]
    bad = write(tmp_path, "bad_ids.txt", ["12", "abc"])
    with pytest.raises(InputError) as info:
        load_suppressed(path=str(bad))
    assert info.value.line == 2


@pytest.mark.parametrize("kind", ["random", "grouped", "constant"])
def test_parallel_sort_equals_numpy_sort(monkeypatch, kind):
    from fuserank.training import ingest as ingest_module
    monkeypatch.setattr(ingest_module, "PARALLEL_SORT_MIN", 0)
    monkeypatch.setattr(readers, "usable_cpus", lambda: 3)
    rng = np.random.default_rng(2)
    keys = {"random": rng.integers(0, 2**62, 100_001), "grouped": np.sort(rng.integers(0, 50, 100_001)) << 36 |
            rng.integers(0, 2**20, 100_001), "constant": np.full(100_001, 7)}[kind].astype(np.int64)
    want = np.sort(keys)
    ingest_module._sort_in_place(keys)
    assert np.array_equal(keys, want)
