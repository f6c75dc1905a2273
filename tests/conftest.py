"""Shared fixtures: a real redis-server, and the bundled 2020 sample ingested and trained once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import Verbosity, settings

from fuserank.config import environ
from fuserank.redis_client import connect
from fuserank.redis_server import LocalRedis

# Randomised tests are reproducible: pytest.ini selects "ci" (derandomize: the same examples on every run,
# so a red CI is red again on a rerun). `pytest --hypothesis-profile=explore` draws fresh examples;
# `--hypothesis-profile=explore --hypothesis-seed=N` draws those of seed N again.
settings.register_profile("ci", derandomize=True, database=None, print_blob=False)
settings.register_profile("explore", derandomize=False, database=None, print_blob=False, verbosity=Verbosity.normal)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_2020 = ROOT / "data/sample/mal2020/rating_complete_head100k.csv"
ANIME_2020 = ROOT / "data/sample/mal2020/anime_reduced.csv"
SAMPLE_2016 = ROOT / "data/sample/mal2016/rating_tail.csv"
ANIME_2016 = ROOT / "data/sample/mal2016/anime.csv"


@pytest.fixture(scope="session")
def redis_url():
    """$FUSERANK_TEST_REDIS_URL (the server .ci/run starts) or a redis-server started for this test run.
    Under pytest-xdist (``-n 2``) each worker starts its own: tests flush and number databases freely."""
    url = environ().get("FUSERANK_TEST_REDIS_URL")
    if url and not environ().get("PYTEST_XDIST_WORKER"):
        yield url
        return
    with LocalRedis() as server:
        yield server.url


@pytest.fixture
def gcs_emulator(monkeypatch):
    """A real in-memory gcp-storage-emulator on 127.0.0.1 with bucket ``fuserank-models``, set as the GCS endpoint."""
    gcp_server = pytest.importorskip("gcp_storage_emulator.server")
    from fuserank import storage
    from fuserank.redis_server import free_port
    port = free_port()
    server = gcp_server.create_server("127.0.0.1", port, in_memory=True, default_bucket="fuserank-models")
    server.start()
    monkeypatch.setenv(storage.EMULATOR_ENV, f"http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def redis_client(redis_url):
    client = connect(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def cluster():
    """A Redis Cluster on loopback (tests/cluster.py: 3 primaries, 1 replica each), one per test module."""
    from tests.cluster import LocalCluster
    with LocalCluster() as c:
        yield c


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    from fuserank.training.ingest import ingest
    out = tmp_path_factory.mktemp("sample") / "data"
    ingest(str(SAMPLE_2020), str(out), anime=str(ANIME_2020), min_user_ratings=20)
    return str(out)


@pytest.fixture(scope="session", params=[pytest.param("seed", marks=pytest.mark.slow)])
def trained_model(sample_data, tmp_path_factory):
    """The rating-regression model trained on the 2020 sample (20 epochs max, early stopping), exported.
    Its one parameter is marked slow, so every test that uses it is in the slow lane."""
    from fuserank.training.train import train
    out = tmp_path_factory.mktemp("model") / "model"
    manifest = train(sample_data, str(out), epochs=20, seed=0, objective="rating")
    return str(out), manifest


@pytest.fixture(scope="session", params=["small", pytest.param("served", marks=pytest.mark.slow)])
def ranking_model(request, sample_data, tmp_path_factory):
    """A ranking-objective model on the 2020 sample. ``served``: `fuserank train`'s default (the model knobs
    at their defaults to keep it short; the hybrid's still chosen on the validation split), slow.
    ``small``: RANKING's knobs without the search, 32 dimensions, 6 epochs: the same kind of geometry in
    seconds, for the fast lane."""
    from fuserank.training.knobs import SearchSpace
    from fuserank.training.train import train
    out = tmp_path_factory.mktemp(f"ranking-{request.param}") / "model"
    if request.param == "served":
        options = dict(space=SearchSpace(temperature=(), low_weight=(), positive_weight=()))
    else:
        options = dict(search=False, embedding_dim=32, epochs=6)
    manifest = train(sample_data, str(out), seed=0, **options)
    return str(out), manifest
