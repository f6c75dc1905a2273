import numpy as np
import pytest
import scipy.sparse as sp

from fuserank.artifacts import ModelArtifact
from fuserank.config import HybridSettings
from fuserank.scorer import HybridScorer, stage2_graph
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


def test_stage2_graph_divides_each_link_by_its_targets_indegree():
    idx = np.array([[1, 2], [2, 0], [1, 0]])
    sim = np.array([[0.9, 0.5], [0.8, -0.1], [0.6, 0.4]], np.float32)
    # in-degree over positive links: anime 0 <- 2; anime 1 <- 0, 2; anime 2 <- 0, 1 (1 -> 0 is clipped to 0)
    expected = [[0, 0.45, 0.25], [0, 0, 0.4], [0.4, 0.3, 0]]
    assert np.allclose(stage2_graph(idx, sim, True).toarray(), expected)
    assert np.allclose(stage2_graph(idx, sim, False).toarray(), [[0, 0.9, 0.5], [0, 0, 0.8], [0.4, 0.6, 0]])


def test_stage2_by_indegree_stops_a_hub_winning_over_a_liked_animes_own_neighbour():
    # anime A=0, B=1 (liked), C=2, D=3, hub H=4 (in four lists), S=5 (only in A's list, its best link)
    idx = np.array([[5, 4], [4, 2], [4, 3], [4, 2], [0, 1], [0, 1]])
    sim = np.array([[0.9, 0.8], [0.8, 0.3], [0.7, 0.2], [0.7, 0.2], [0.8, 0.8], [0.9, 0.1]], np.float32)
    liked = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0]], np.float32))
    raw = (liked @ stage2_graph(idx, sim, False)).toarray()[0]
    damped = (liked @ stage2_graph(idx, sim, True)).toarray()[0]
    assert raw.argmax() == 4 and raw[4] == pytest.approx(1.6)
    assert damped.argmax() == 5 and damped[4] == pytest.approx(0.4) and damped[2] == pytest.approx(0.15)


@pytest.mark.parametrize("k,flag", [(None, False), (None, True), (2, True), (1, False)])
def test_the_scorer_follows_the_settings_stage2_neighbours(model, k, flag):
    scorer = HybridScorer(model, HybridSettings(neighbours=5, stage2_neighbours=k, stage2_by_indegree=flag))
    links = np.diff(scorer.graph.indptr)
    assert links.max() == (k or 5)
    first = scorer.neighbour_idx[:, :k or 5]
    expected = stage2_graph(first, scorer.neighbour_sim[:, :k or 5], flag)
    assert (scorer.graph != expected).nnz == 0


def test_extra_exclusions_are_respected(model):
    scorer = HybridScorer(model, HybridSettings(top_n=5))
    first = scorer.score_users(np.array([0])).items[0]
    extra = sp.csr_matrix(([1], ([0], [first[0]])), shape=(1, model.n_anime))
    again = scorer.score_users(np.array([0]), exclude=extra).items[0]
    assert first[0] not in again.tolist()


# -- the fast paths against the dense reference ----------------------------------------------------------
def _reference_top_k(scores, k):
    """top_k_rows as it was first written: full partition, ties at the cut by cumulative count."""
    b, n = scores.shape
    k = min(k, n)
    neg = -scores
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
    better, tie = neg < kth, neg == kth
    need = k - better.sum(axis=1, keepdims=True)
    chosen = better | (tie & (np.cumsum(tie, axis=1) <= need))
    part = np.nonzero(chosen)[1].reshape(b, k)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def _reference_scores(scorer, users, include_adult=False):
    """The hybrid with dense users x anime matrices for every term (the formula the scorer must reproduce)."""
    from fuserank.scorer import _minmax, _rows_csr
    s, m = scorer.settings, scorer.model
    queries, liked, on_list = m.user_emb[users], scorer.liked[users], m.lists[users]
    b, rows = len(users), np.arange(len(users))
    candidates = np.ones((b, m.n_anime), dtype=bool)
    coo = on_list.tocoo()
    candidates[coo.row, coo.col] = False
    if not include_adult:
        candidates[:, m.adult_mask] = False
    user_sims = queries @ m.user_emb.T
    user_sims[rows, users] = -np.inf
    nbr, nbr_sim = _reference_top_k(user_sims, s.similar_users)
    votes = _rows_csr(rows, nbr, np.clip(nbr_sim, 0, None).astype(np.float32), (b, m.n_users))
    stage1 = _minmax((votes @ scorer.liked).toarray(), candidates)
    picks, pick_scores = _reference_top_k(stage1, s.stage1_seeds)
    seeds = _rows_csr(rows, picks, pick_scores, (b, m.n_anime))
    if s.expand_own_likes:
        seeds = seeds + liked
    stage2 = _minmax((seeds @ scorer.graph).toarray(), candidates)
    combined = s.weight_stage1 * stage1 + s.weight_stage2 * stage2
    if s.weight_model > 0:
        combined += s.weight_model * _minmax(queries @ m.anime_emb.T, candidates)
    total = s.weight_stage1 + s.weight_stage2 + s.weight_model
    combined = np.round(combined / (total or 1.0), 6)
    combined[~candidates] = -np.inf
    return combined


def test_top_k_rows_equals_the_reference_with_ties_and_padding():
    rng = np.random.default_rng(0)
    for trial in range(300):
        b, n = int(rng.integers(1, 12)), int(rng.integers(1, 50))
        x = (rng.integers(0, 4, (b, n)) if trial % 2 else rng.random((b, n))).astype(np.float32)
        x[rng.random((b, n)) < 0.2] = -np.inf
        k = int(rng.integers(1, n + 1))
        idx, val = top_k_rows(x, k)
        ref_idx, ref_val = _reference_top_k(x, k)
        assert idx.tolist() == ref_idx.tolist() and np.array_equal(val, ref_val)


@pytest.mark.parametrize("settings", [
    HybridSettings(), HybridSettings(top_n=10, neighbours=5), HybridSettings(weight_model=0, top_n=20),
    HybridSettings(stage1_seeds=3, expand_own_likes=False, weight_model=0.3, similar_users=7),
    HybridSettings(stage2_neighbours=None, stage2_by_indegree=False, weight_stage2=0.5),
    HybridSettings(weight_stage1=1, weight_stage2=0.5, weight_model=0.2, like_threshold=5, neighbours=3),
])
def test_scores_and_lists_equal_the_dense_reference(tmp_path, settings):
    """Sparse stage terms, the u.v superset and the bitmaps give bit for bit the dense formula's scores and
    exactly its ranking (incl. ties broken to the lower index, adult titles, padding)."""
    for seed, (n_users, n_anime) in enumerate([(60, 40), (150, 220)]):
        model = ModelArtifact.load(random_artifact(tmp_path / f"m{seed}", n_users=n_users, n_anime=n_anime, dim=6,
                                                   seed=seed, adult=(3, 7)))
        scorer = HybridScorer(model, settings)
        users = np.arange(model.n_users)
        for include_adult in (False, True):
            ref = _reference_scores(scorer, users, include_adult)
            got = scorer.combined_scores(model.user_emb, scorer.liked, model.lists, users, include_adult)
            assert np.array_equal(ref, got)
            want_items, want_scores = _reference_top_k(ref, settings.top_n)
            ranked = scorer.score_users(users, include_adult=include_adult, explain=True)
            finite = np.isfinite(want_scores)
            assert ranked.items.tolist() == np.where(finite, want_items, -1).tolist()
            assert np.array_equal(ranked.scores, np.where(finite, want_scores, 0).astype(np.float32))


def test_ties_in_the_model_term_fall_back_to_the_dense_ranking(tmp_path, monkeypatch):
    """Identical anime embeddings tie exactly after rounding: the superset cannot be sure, the dense path decides."""
    dense_rows = []
    dense = HybridScorer._dense
    monkeypatch.setattr(HybridScorer, "_dense", lambda self, block, rows: dense_rows.append(len(rows))
                        or dense(self, block, rows))
    rng = np.random.default_rng(5)
    anime = np.repeat(rng.normal(size=(2, 4)), 30, axis=0)            # 60 anime, 2 distinct vectors
    lists = np.zeros((30, 60), np.int8)
    lists[np.arange(30), rng.integers(0, 60, 30)] = 9
    model = ModelArtifact.load(make_artifact(tmp_path / "m", rng.normal(size=(30, 4)), anime, lists))
    scorer = HybridScorer(model, HybridSettings(top_n=8, neighbours=4, similar_users=5))
    ref = _reference_scores(scorer, np.arange(30))
    want, _ = _reference_top_k(ref, 8)
    assert scorer.score_users(np.arange(30)).items.tolist() == want.tolist()
    assert dense_rows, "the tie made some rows take the dense path"


# -- the approximate similar-user search (large models) ---------------------------------------------------
def test_ivf_with_every_cell_probed_is_exact_search():
    from fuserank.similarity import IVFIndex, l2_normalise
    rng = np.random.default_rng(2)
    vectors = l2_normalise(rng.normal(size=(2000, 16)))
    index = IVFIndex(vectors, n_lists=16, n_probe=16)
    got, got_sim = index.search(vectors[:300], 10, np.arange(300))
    sims = vectors[:300] @ vectors.T
    sims[np.arange(300), np.arange(300)] = -np.inf
    want, want_sim = top_k_rows(sims, 10)
    assert got.tolist() == want.tolist() and np.allclose(got_sim, want_sim)


def test_ivf_recall_on_clustered_vectors_and_a_query_alone_equals_its_block():
    from fuserank.similarity import IVFIndex, l2_normalise
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 8))
    latent = centres[rng.integers(0, 40, 20000)] + 0.6 * rng.normal(size=(20000, 8))
    vectors = l2_normalise(latent @ rng.normal(size=(8, 32)) + 0.15 * rng.normal(size=(20000, 32)))
    index = IVFIndex(vectors)                                            # 256 cells, 32 probed
    sample = rng.choice(20000, 500, replace=False)
    got, _ = index.search(vectors[sample], 10, sample)
    sims = vectors[sample] @ vectors.T
    sims[np.arange(500), sample] = -np.inf
    want, _ = top_k_rows(sims, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist())])
    assert recall >= 0.95
    block = index.order[1000:1400]
    together, _ = index.search(vectors[block], 10, block)
    for i in (0, 150, 399):
        alone, _ = index.search(vectors[block[[i]]], 10, block[[i]])
        assert alone[0].tolist() == together[i].tolist()


def test_large_models_switch_to_the_ivf_index(model, monkeypatch):
    import fuserank.scorer as scorer_module
    assert HybridScorer(model, HybridSettings()).user_index is None             # 40 users: exact
    monkeypatch.setattr(scorer_module, "ANN_MIN_USERS", 10)
    scorer = HybridScorer(model, HybridSettings(top_n=10))
    assert scorer.user_index is not None
    order = scorer.user_order()
    assert sorted(order.tolist()) == list(range(model.n_users))
    exact = HybridScorer(model, HybridSettings(top_n=10), user_search="exact")
    # a tiny index probes every cell: the same lists as exact search
    assert scorer.user_index.n_probe == scorer.user_index.n_lists
    assert scorer.score_users(order).items.tolist() == exact.score_users(order).items.tolist()
    with pytest.raises(ValueError, match="user_search"):
        HybridScorer(model, HybridSettings(), user_search="fast")
