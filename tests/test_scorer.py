import numpy as np
import pytest
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.scorer import HybridScorer
from fuserank.similarity import top_k_cosine, top_k_rows
from tests.factories import make_artifact, random_artifact


@pytest.fixture
def model(tmp_path):
    return ModelArtifact.load(random_artifact(tmp_path / "m", adult=(3, 7)))


def test_top_k_rows_orders_best_first_and_breaks_ties_by_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]])
    for _ in range(3):
        idx, val = top_k_rows(scores, 3)
        assert idx.tolist() == [[1, 4, 0]]
        assert val[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    wide = np.tile(np.array([0.2, 0.7, 0.7, 0.7, 0.7, 0.1]), (4, 1))
    assert top_k_rows(wide, 2)[0].tolist() == [[1, 2]] * 4


def test_top_k_cosine_excludes_self_and_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, _ = top_k_cosine(x, x, 5, exclude_self=True, block=7)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert idx.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :5].tolist()


def test_never_recommends_anything_on_the_users_list(model):
    ranked = HybridScorer(model, HybridSettings(top_n=30)).score_users(np.arange(model.n_users))
    for u in range(model.n_users):
        items, _ = ranked.row(u)
        on_list = set(model.lists[u].indices)
        assert on_list, "fixture users all have lists"
        assert not on_list & set(items.tolist())


def test_adult_titles_only_when_asked(model):
    scorer = HybridScorer(model, HybridSettings(top_n=30))
    default = scorer.score_users(np.arange(model.n_users))
    assert not set(default.items.ravel().tolist()) & {3, 7}
    with_adult = scorer.score_users(np.arange(model.n_users), include_adult=True)
    assert set(with_adult.items.ravel().tolist()) & {3, 7}


def test_a_block_scores_each_user_exactly_as_alone(model):
    scorer = HybridScorer(model, HybridSettings(top_n=10, weight_model=0.3))
    block = scorer.score_users(np.arange(model.n_users))
    for u in (0, 5, model.n_users - 1):
        alone = scorer.score_users(np.array([u]))
        assert alone.items[0].tolist() == block.items[u].tolist()
        assert alone.scores[0] == pytest.approx(block.scores[u], abs=1e-5)


def test_folded_in_vector_equals_the_model_user(model):
    scorer = HybridScorer(model, HybridSettings(top_n=10))
    u = 4
    direct = scorer.score_users(np.array([u]))
    folded = scorer.score_vectors(model.user_emb[[u]], scorer.liked[[u]], model.lists[[u]], np.array([u]))
    assert folded.items.tolist() == direct.items.tolist()


def test_stage1_recommends_what_the_similar_user_liked(tmp_path):
    # users 0 and 1 point the same way; user 2 is opposite. User 1 loved anime 2; user 2 loved anime 3.
    users = [[1, 0], [1, 0.05], [-1, 0]]
    anime = [[1, 0], [0, 1], [1, 1], [-1, 1]]
    lists = [[9, 0, 0, 0], [0, 0, 10, 0], [0, 0, 0, 10]]
    model = ModelArtifact.load(make_artifact(tmp_path / "m", users, anime, lists))
    s = HybridSettings(similar_users=1, weight_stage1=1, weight_stage2=0, neighbours=2, top_n=3)
    items, _ = HybridScorer(model, s).score_users(np.array([0])).row(0)
    assert items[0] == 2


def test_stage2_recommends_the_neighbour_of_a_liked_anime(tmp_path):
    users = [[1, 0], [0, 1]]
    anime = [[1, 0], [0.99, 0.1], [0, 1], [-1, 0.2]]
    lists = [[10, 0, 0, 0], [0, 0, 0, 0]]
    model = ModelArtifact.load(make_artifact(tmp_path / "m", users, anime, lists))
    s = HybridSettings(weight_stage1=0, weight_stage2=1, neighbours=1, top_n=3)
    items, _ = HybridScorer(model, s).score_users(np.array([0])).row(0)
    assert items[0] == 1


def test_extra_exclusions_are_respected(model):
    scorer = HybridScorer(model, HybridSettings(top_n=5))
    first = scorer.score_users(np.array([0])).items[0]
    extra = sp.csr_matrix(([1], ([0], [first[0]])), shape=(1, model.n_anime))
    again = scorer.score_users(np.array([0]), exclude=extra).items[0]
    assert first[0] not in again.tolist()
