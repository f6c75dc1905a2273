"""Explanations: every recommended item says which of the user's liked anime it is similar to (stage 2)
and how many of the user's similar users rated it highly (stage 1), the same in Redis and live."""
import numpy as np
import pytest

from fuserank import keys
from fuserank.artifacts import ModelArtifact
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings, ServeSettings
from fuserank.scorer import COUNT_IN_PRODUCT_ROWS, HybridScorer
from tests.factories import make_artifact, random_artifact, reasons_of

# anime on a circle (degrees): Y at 10; X, Q, R around it, each with Y among its 2 nearest anime,
# X's link to Y strongest (4 degrees), then Q (5), then R (7); W, Z, V far away
ANGLES = {"X": 6, "Y": 10, "Q": 15, "R": 3, "W": 90, "Z": 190, "V": 260}
NAMES = {"X": "Cowboy Bebop", "Y": "Trigun", "Q": "Outlaw Star", "R": "Space Dandy", "W": "Clannad",
         "Z": "Mushishi", "V": "K-On!"}
ORDER = list(ANGLES)
A = {name: i for i, name in enumerate(ORDER)}
# users: u0 points at Y and liked X, Q, R (Z is on the list, rated low); u1 and u2 are u0's two most
# similar users; u1 liked Y and W, u2 liked Y but not W; u3 is opposite and loved Z
USER_ANGLES = [10, 11, 8.5, 190]
RATINGS = [{"X": 10, "Q": 9, "R": 8, "Z": 3}, {"Y": 9, "W": 9}, {"Y": 10, "W": 5}, {"Z": 10, "Y": 2}]
SETTINGS = HybridSettings(top_n=3, neighbours=2, similar_users=2, like_threshold=8)


def _unit(deg):
    return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]


@pytest.fixture
def hand_built(tmp_path):
    lists = np.zeros((len(USER_ANGLES), len(ORDER)), np.int8)
    for u, rated in enumerate(RATINGS):
        for name, rating in rated.items():
            lists[u, A[name]] = rating
    return make_artifact(tmp_path / "m", [_unit(d) for d in USER_ANGLES], [_unit(ANGLES[n]) for n in ORDER], lists,
                         names=[NAMES[n] for n in ORDER])


def _by_name(model, ranked, scorer, row=0):
    items, _ = ranked.row(row)
    reasons_ = reasons_of(model, ranked, row)
    return {ORDER[a]: why for a, why in zip(items.tolist(), reasons_)}


def test_reasons_are_known_by_construction(hand_built):
    model = ModelArtifact.load(hand_built)
    scorer = HybridScorer(model, SETTINGS)
    assert scorer.neighbour_idx[A["X"]].tolist() == [A["R"], A["Y"]]       # the geometry is as intended
    assert A["Y"] in scorer.neighbour_idx[A["Q"]] and A["Y"] in scorer.neighbour_idx[A["R"]]
    ranked = scorer.score_users(np.array([0]), explain=True)
    assert ORDER[ranked.items[0, 0]] == "Y"
    got = _by_name(model, ranked, scorer)
    assert set(got) == {"Y", "W", "V"}
    # Y: liked X and Q link to it (X strongest); R links too but only two are named
    assert got["Y"] == {"because": [{"anime_id": 1000 + A["X"], "name": "Cowboy Bebop"},
                                    {"anime_id": 1000 + A["Q"], "name": "Outlaw Star"}],
                        "similar_users": 2}
    # W: no liked anime has it as a neighbour; of the two similar users only u1 rated it highly
    assert got["W"] == {"because": [], "similar_users": 1}
    assert got["V"] == {"because": [], "similar_users": 0}


def test_not_explained_unless_asked(hand_built):
    scorer = HybridScorer(ModelArtifact.load(hand_built), SETTINGS)
    plain = scorer.score_users(np.array([0]))
    assert plain.because is None and reasons_of(scorer.model, plain, 0) is None
    explained = scorer.score_users(np.array([0]), explain=True)
    assert plain.items.tolist() == explained.items.tolist() and plain.scores.tolist() == explained.scores.tolist()


def test_folded_in_user_gets_reasons_from_the_ratings_given(hand_built):
    model = ModelArtifact.load(hand_built)
    scorer = HybridScorer(model, SETTINGS)
    u = 0
    folded = scorer.score_vectors(model.user_emb[[u]], scorer.liked[[u]], model.lists[[u]], None, explain=True)
    got = _by_name(model, folded, scorer)
    assert [b["name"] for b in got["Y"]["because"]] == ["Cowboy Bebop", "Outlaw Star"]


def test_precomputed_reasons_equal_live_reasons(hand_built, redis_client, redis_url):
    model = ModelArtifact.load(hand_built)
    version = precompute(hand_built, redis_url, SETTINGS)["version"]
    scorer = HybridScorer(model, SETTINGS)
    for u in range(model.n_users):
        stored = keys.decode_list(redis_client.get(keys.user(version, model.user_ids[u])))
        live = scorer.score_users(np.array([u]), explain=True)
        items, scores = live.row(0)
        assert [it["anime_id"] for it in stored] == model.anime_ids[items].tolist()
        assert [it["reasons"] for it in stored] == reasons_of(model, live, 0)
        # the stored bytes are keys.encode_list's, with these reasons
        assert redis_client.get(keys.user(version, model.user_ids[u])) == keys.encode_list(
            model.anime_ids[items], scores, model.anime["name"].to_numpy(object)[items], reasons=reasons_of(model, live, 0))
    stored = keys.decode_list(redis_client.get(keys.user(version, 100)))
    assert stored[0]["name"] == "Trigun" and stored[0]["reasons"]["because"][0]["name"] == "Cowboy Bebop"


def test_api_live_path_answers_the_stored_reasons(hand_built, redis_client, redis_url):
    service_module = pytest.importorskip("fuserank.api.service")
    precompute(hand_built, redis_url, SETTINGS)
    service = service_module.RecommendationService(ServeSettings(model=hand_built, redis_url=redis_url, hybrid=SETTINGS))
    stored = service.user_recommendations(100, 3)
    live = service.user_recommendations(100, 3, live=True)
    assert (stored.source, live.source) == ("precomputed", "live")
    assert stored.body("user_id", 100)["items"] == live.body("user_id", 100)["items"]
    assert live.body("user_id", 100)["items"][0]["reasons"]["because"][0]["name"] == "Cowboy Bebop"


def test_a_block_explains_each_user_as_alone(tmp_path):
    """Blocks of COUNT_IN_PRODUCT_ROWS+ users count similar users inside the stage-1 product; single users
    (the API) walk the similar users' lists: both give the same reasons."""
    model = ModelArtifact.load(random_artifact(tmp_path / "m", n_users=COUNT_IN_PRODUCT_ROWS + 40, n_anime=60,
                                               dim=4, seed=3))
    scorer = HybridScorer(model, HybridSettings(top_n=15, neighbours=6, similar_users=8, like_threshold=6))
    users = np.arange(model.n_users)
    block = scorer.score_users(users, explain=True)
    assert (block.similar_users > 0).any() and (block.because >= 0).any()
    for u in users:
        alone = scorer.score_users(np.array([u]), explain=True)
        assert alone.items[0].tolist() == block.items[u].tolist()
        assert reasons_of(model, alone, 0) == reasons_of(model, block, u)


def test_list_encoder_is_encode_list_byte_for_byte():
    rng = np.random.default_rng(0)
    ids = 1 + 3 * np.arange(300)
    names = np.array([f'Name "{i}" K\u014dkaku \\ {i}' for i in range(300)], dtype=object)
    encoder = keys.ListEncoder(ids, names)
    for _ in range(100):
        n = int(rng.integers(0, 40))
        items, scores = rng.integers(0, 300, n), rng.random(n).astype(np.float32)
        width = int(rng.integers(1, 4))
        because = np.sort(rng.integers(-1, 300, (n, width)), axis=1)[:, ::-1]     # -1 (none) last
        counts = rng.integers(0, 50, n)
        reasons = [{"because": [{"anime_id": int(ids[x]), "name": str(names[x])} for x in row if x >= 0],
                    "similar_users": int(c)} for row, c in zip(because, counts)]
        assert encoder.encode(items, scores, because, counts) == keys.encode_list(ids[items], scores, names[items],
                                                                                  reasons=reasons)
        assert encoder.encode(items, scores) == keys.encode_list(ids[items], scores, names[items])
