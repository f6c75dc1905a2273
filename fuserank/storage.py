"""Open local files and ``gs://bucket/key`` objects the same way, as streams.

The ratings files are up to ~0.8 GB, so GCS objects are read through the client's ranged
``BlobReader`` rather than downloaded whole. ``STORAGE_EMULATOR_HOST`` (honoured by the client
itself) points everything at a local emulator; there we also use anonymous credentials so tests
and the demo never look for real ones.
"""
from __future__ import annotations

import functools
import os
import shutil
from typing import BinaryIO

from fuserank.config import Environment, environment

GCS_SCHEME = "gs://"
GCS_CHUNK_BYTES = 8 << 20
EMULATOR_ENV = Environment.VARIABLES["gcs_emulator"]
EMULATOR_PROJECT = "fuserank-emulator"


def is_gcs(path) -> bool:
    """True for ``gs://`` URIs, so callers can tell remote inputs from local paths."""
    return str(path).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b.csv`` -> ``("bucket", "a/b.csv")``; rejects URIs without an object key."""
    bucket, _, key = str(uri)[len(GCS_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri}: expected gs://bucket/object")
    return bucket, key


def open_binary(path, chunk_size: int = GCS_CHUNK_BYTES) -> BinaryIO:
    """Open a local path or a ``gs://`` object for streaming binary reads.

    Raises FileNotFoundError for a missing file or object, before any data is read.
    """
    if not is_gcs(path):
        return open(os.fspath(path), "rb")
    bucket_name, key = split_gcs(path)
    blob = _client().bucket(bucket_name).get_blob(key)
    if blob is None:
        raise FileNotFoundError(f"{path}: no such object")
    return blob.open("rb", chunk_size=chunk_size)


def upload(local: str, uri: str) -> None:
    """Copy a local file to a local path (replaced atomically) or a ``gs://`` object."""
    if is_gcs(uri):
        bucket_name, key = split_gcs(uri)
        _client().bucket(bucket_name).blob(key).upload_from_filename(local)
        return
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    tmp = f"{uri}.tmp-{os.getpid()}"
    shutil.copyfile(local, tmp)
    os.replace(tmp, uri)


def download(path, local: str) -> bool:
    """Copy a local path or a ``gs://`` object to ``local``; False when there is none."""
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    try:
        src = open_binary(path)
    except FileNotFoundError:
        return False
    with src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return True


def endpoint() -> str:
    """Where GCS requests go: the emulator's address when one is set, else Google's."""
    return environment().gcs_emulator or "storage.googleapis.com"


def _client():
    """One client per emulator setting; it is thread-safe and costly to build."""
    return _make_client(environment().gcs_emulator)


@functools.lru_cache(maxsize=4)
def _make_client(emulator_host: str | None):
    from google.cloud import storage

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        project = environment().gcp_project or EMULATOR_PROJECT
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()
