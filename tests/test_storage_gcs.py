"""Ingest straight from gs:// against a real, in-memory gcp-storage-emulator."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fuserank import storage
from fuserank.errors import InputError
from fuserank.training.ingest import ingest

gcp_server = pytest.importorskip("gcp_storage_emulator.server")

ROOT = Path(__file__).resolve().parents[1]
RATINGS = ROOT / "data" / "sample" / "mal2020" / "rating_complete_head100k.csv"
ANIME = ROOT / "data" / "sample" / "mal2020" / "anime_reduced.csv"
BUCKET = "fuserank-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    port = _free_port()
    server = gcp_server.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(emulator, monkeypatch):
    monkeypatch.setenv(storage.EMULATOR_ENV, emulator)
    client = storage._client()
    bucket = client.bucket(BUCKET)
    bucket.blob("ratings.csv").upload_from_filename(str(RATINGS))
    bucket.blob("meta/anime.csv").upload_from_filename(str(ANIME))
    return bucket


def test_is_gcs_and_split():
    assert storage.is_gcs("gs://b/k.csv") and not storage.is_gcs("/data/gs://x")
    assert storage.split_gcs("gs://b/a/k.csv") == ("b", "a/k.csv")
    with pytest.raises(ValueError):
        storage.split_gcs("gs://bucket-only")


def test_open_binary_streams_the_object(bucket):
    with storage.open_binary(f"gs://{BUCKET}/ratings.csv", chunk_size=256 * 1024) as stream:
        head = stream.readline()
        rest = stream.read()
    assert head + rest == RATINGS.read_bytes()


def test_ingest_from_gcs_matches_local(bucket, tmp_path):
    remote = ingest(f"gs://{BUCKET}/ratings.csv", str(tmp_path / "gcs"), anime=f"gs://{BUCKET}/meta/anime.csv",
                    min_user_ratings=20)
    local = ingest(str(RATINGS), str(tmp_path / "local"), anime=str(ANIME), min_user_ratings=20)
    assert remote["content_hash"] == local["content_hash"]
    assert remote["counts"] == local["counts"] and remote["counts"]["users_kept"] > 0
    assert remote["source"]["ratings"] == f"gs://{BUCKET}/ratings.csv"
    for name in ("train", "val", "test", "users", "anime", "unrated"):
        parquet = f"{name}.parquet"
        assert (tmp_path / "gcs" / parquet).read_bytes() == (tmp_path / "local" / parquet).read_bytes()


def test_malformed_gcs_object_names_uri_and_line(bucket, tmp_path):
    lines = RATINGS.read_bytes().splitlines()
    lines[40] = b"0,12,eleven"
    bucket.blob("bad.csv").upload_from_string(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError) as info:
        ingest(f"gs://{BUCKET}/bad.csv", str(tmp_path / "out"), min_user_ratings=20)
    assert f"gs://{BUCKET}/bad.csv" in str(info.value) and info.value.line == 41 and info.value.field == "rating"


def test_missing_object_is_an_input_error(bucket, tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.open_binary(f"gs://{BUCKET}/nope.csv")
    with pytest.raises(InputError, match="not found"):
        ingest(f"gs://{BUCKET}/nope.csv", str(tmp_path / "out"))
