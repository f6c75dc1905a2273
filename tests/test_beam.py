"""The precompute as Beam transforms (TestPipeline + assert_that) and end to end into a real Redis."""
import numpy as np
import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from fuserank import keys
from fuserank.artifacts import ModelArtifact
from fuserank.batch.pipeline import AnimeNeighbours, ScoreUsers, blocks, precompute
from fuserank.config import HybridSettings
from fuserank.publish import current_version, read_meta
from fuserank.scorer import HybridScorer
from tests.factories import random_artifact, reasons_of

SETTINGS = HybridSettings(top_n=10, neighbours=5)


@pytest.fixture
def small_model(tmp_path):
    return random_artifact(tmp_path / "m", n_users=37, n_anime=25, adult=(2,))


def expected_user_lists(model_dir, version, settings=SETTINGS):
    """What the job must store, built the slow way: the scorer alone and keys.encode_list with its reasons."""
    model = ModelArtifact.load(model_dir)
    scorer = HybridScorer(model, settings)
    ranked = scorer.score_users(np.arange(model.n_users), explain=True)
    out = []
    for u in range(model.n_users):
        items, scores = ranked.row(u)
        names = model.anime["name"].to_numpy(object)[items]
        out.append((keys.user(version, model.user_ids[u]),
                    keys.encode_list(model.anime_ids[items], scores, names, reasons=reasons_of(model, ranked, u))))
    return out


def test_score_users_transform_matches_the_scorer(small_model):
    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(blocks(37, 8)) | ScoreUsers(small_model, SETTINGS, "v1")
        assert_that(out | beam.Map(len), equal_to([8, 8, 8, 8, 5]), label="one list of pairs per block")
        assert_that(out | beam.FlatMap(lambda pairs: pairs), equal_to(expected_user_lists(small_model, "v1")))


def test_anime_neighbours_transform_leaves_out_adult_titles(small_model):
    model = ModelArtifact.load(small_model)
    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(blocks(25, 10)) | AnimeNeighbours(small_model, SETTINGS, "v1")
        ids = out | beam.FlatMap(lambda pairs: [[a for a, _ in keys.decode_items(v)] for _, v in pairs])
        assert_that(ids | beam.combiners.Count.Globally(), equal_to([25]), label="one list per anime")
        adult_id = int(model.anime_ids[2])
        assert_that(ids | beam.Filter(lambda xs: adult_id in xs), equal_to([]), label="no adult neighbours")


def test_precompute_writes_every_list_then_publishes(small_model, redis_client, redis_url):
    result = precompute(small_model, redis_url, SETTINGS)
    version = result["version"]
    assert current_version(redis_client) == version
    assert version.startswith(ModelArtifact.load(small_model).version)
    for key, value in expected_user_lists(small_model, version):
        assert redis_client.get(key) == value
    meta = read_meta(redis_client, version)
    assert meta["state"] == "complete" and meta["written"] == {"users": 37, "anime": 25}
    assert redis_client.dbsize() == 37 + 25 + 3  # lists + meta, current, versions: nothing else
    # rerunning (a retried job) rewrites the same keys with the same values
    precompute(small_model, redis_url, SETTINGS)
    assert redis_client.dbsize() == 37 + 25 + 3
    for key, value in expected_user_lists(small_model, version)[:5]:
        assert redis_client.get(key) == value


def test_other_settings_get_another_version_and_keep_previous(small_model, redis_client, redis_url):
    first = precompute(small_model, redis_url, SETTINGS)["version"]
    second = precompute(small_model, redis_url, SETTINGS.with_overrides(top_n=5))["version"]
    assert first != second
    assert current_version(redis_client) == second
    assert redis_client.get(keys.PREVIOUS).decode() == first
    assert redis_client.exists(keys.user(first, 100))


def test_precompute_on_the_trained_sample_model(trained_model, redis_client, redis_url):
    model_dir, manifest = trained_model
    result = precompute(model_dir, redis_url, HybridSettings())
    assert result["users"] == manifest["n_users"]
    model = ModelArtifact.load(model_dir)
    uid = int(model.user_ids[0])
    items = keys.decode_items(redis_client.get(keys.user(result["version"], uid)))
    assert len(items) == 50
    on_list = set(model.anime_ids[model.lists[0].indices].tolist())
    assert not on_list & {a for a, _ in items}


def test_large_model_path_scores_cell_by_cell_and_writes_every_user_once(small_model, redis_client, redis_url,
                                                                          monkeypatch):
    """Above ANN_MIN_USERS the job scores users in the IVF index's cell order (explicit user blocks); with
    every cell probed (a tiny index) that is exact search, so the lists equal the exact scorer's."""
    import fuserank.batch.pipeline as pipeline
    import fuserank.scorer as scorer_module
    monkeypatch.setattr(scorer_module, "ANN_MIN_USERS", 10)
    pipeline.load_scorer.cache_clear()
    pipeline.load_encoder.cache_clear()
    try:
        scorer = pipeline.load_scorer(small_model, SETTINGS)
        assert scorer.user_index is not None and scorer.user_index.n_probe == scorer.user_index.n_lists
        order = scorer.user_order()
        assert sorted(order.tolist()) == list(range(37)) and order.tolist() != list(range(37))
        result = precompute(small_model, redis_url, SETTINGS, block_size=5)
    finally:
        pipeline.load_scorer.cache_clear()
        pipeline.load_encoder.cache_clear()
    monkeypatch.setattr(scorer_module, "ANN_MIN_USERS", 10 ** 9)
    assert redis_client.dbsize() == 37 + 25 + 3
    for key, value in expected_user_lists(small_model, result["version"]):
        assert redis_client.get(key) == value


def test_stored_user_lists_carry_reasons(small_model, redis_client, redis_url):
    version = precompute(small_model, redis_url, SETTINGS)["version"]
    model = ModelArtifact.load(small_model)
    for u in range(model.n_users):
        items = keys.decode_list(redis_client.get(keys.user(version, model.user_ids[u])))
        assert items and all(set(it["reasons"]) == {"because", "similar_users"} for it in items)
        assert all(len(it["reasons"]["because"]) <= 2 for it in items)
    anime = keys.decode_list(redis_client.get(keys.anime(version, model.anime_ids[0])))
    assert anime and all("reasons" not in it for it in anime)
