"""The API through Flask's test client, over a real Redis filled by the real precompute."""
import json
import re

import numpy as np
import pytest
import redis

from fuserank import keys
from fuserank.batch.pipeline import precompute
from fuserank.config import HybridSettings
from tests.factories import api_app, empty_db


@pytest.fixture(scope="module")
def api_redis_url(redis_url):
    return empty_db(redis_url, 2)


@pytest.fixture(scope="module")
def published(ranking_model, api_redis_url):
    model_dir, _ = ranking_model
    return precompute(model_dir, api_redis_url, HybridSettings())


@pytest.fixture(scope="module")
def client(ranking_model, api_redis_url, published):
    app = api_app(ranking_model[0], api_redis_url)
    return app.test_client()


@pytest.fixture(scope="module")
def model(client):
    return client.application.extensions["fuserank"].model


def test_precomputed_answer_has_the_contract_fields(client, model, published):
    uid = int(model.user_ids[0])
    r = client.get(f"/v1/users/{uid}/recommendations?n=10")
    assert r.status_code == 200
    body = r.get_json()
    assert body["user_id"] == uid and body["source"] == "precomputed"
    assert body["model_version"] == published["model_version"]
    assert len(body["items"]) == 10
    for item in body["items"]:
        assert {"anime_id", "name", "score"} <= set(item) <= {"anime_id", "name", "score", "reasons"}
        assert isinstance(item["name"], str) and item["name"]
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_live_path_gives_the_same_list_as_the_batch_job(client, model):
    for uid in model.user_ids[:5]:
        stored = client.get(f"/v1/users/{uid}/recommendations?n=20").get_json()
        live = client.get(f"/v1/users/{uid}/recommendations?n=20&source=live").get_json()
        assert stored["source"] == "precomputed" and live["source"] == "live"
        assert [i["anime_id"] for i in live["items"]] == [i["anime_id"] for i in stored["items"]]


def test_n_above_the_stored_length_is_computed_live(client, model):
    uid = int(model.user_ids[1])
    body = client.get(f"/v1/users/{uid}/recommendations?n=120").get_json()
    assert body["source"] == "live" and len(body["items"]) == 120
    assert len({i["anime_id"] for i in body["items"]}) == 120


def test_known_user_without_a_stored_list_is_answered_live(client, model, api_redis_url, published):
    uid = int(model.user_ids[2])
    r = redis.Redis.from_url(api_redis_url)
    key = keys.user(published["version"], uid)
    value = r.get(key)
    r.delete(key)
    try:
        body = client.get(f"/v1/users/{uid}/recommendations").get_json()
        assert body["source"] == "live" and len(body["items"]) == 10
    finally:
        r.set(key, value)


def test_unknown_user_gets_popular_titles(client, model):
    unknown = int(model.user_ids.max()) + 12345
    body = client.get(f"/v1/users/{unknown}/recommendations?n=5").get_json()
    assert body["source"] == "popular" and len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert all(0 < s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_recommendations_exclude_the_users_list(client, model):
    for u in range(3):
        uid = int(model.user_ids[u])
        seen = set(model.anime_ids[model.lists[u].indices].tolist())
        for source in ("", "&source=live"):
            body = client.get(f"/v1/users/{uid}/recommendations?n=50{source}").get_json()
            assert not seen & {i["anime_id"] for i in body["items"]}


def test_adult_titles_need_include_adult(client, model):
    adult_ids = set(model.anime_ids[model.adult_mask].tolist())
    assert adult_ids, "the sample has Hentai titles"
    for uid in model.user_ids[:20]:
        body = client.get(f"/v1/users/{uid}/recommendations?n=200").get_json()
        assert not adult_ids & {i["anime_id"] for i in body["items"]}
    popular = client.get("/v1/users/999999999/recommendations?n=200&include_adult=true").get_json()
    assert popular["source"] == "popular"


def test_similar_anime(client, model):
    aid = int(model.anime_ids[model.popularity[0]])
    body = client.get(f"/v1/anime/{aid}/similar?n=7").get_json()
    assert body["anime_id"] == aid and body["source"] == "precomputed" and len(body["items"]) == 7
    assert aid not in {i["anime_id"] for i in body["items"]}
    live = client.get(f"/v1/anime/{aid}/similar?n=7&include_adult=true").get_json()
    assert live["source"] == "live"


@pytest.mark.parametrize("url,status,parameter", [
    ("/v1/users/-1/recommendations", 400, "user_id"),
    ("/v1/users/abc/recommendations", 400, "user_id"),
    ("/v1/users/1.5/recommendations", 400, "user_id"),
    ("/v1/users/99999999999999999999999/recommendations", 400, "user_id"),
    ("/v1/users/%E2%9C%93/recommendations", 400, "user_id"),
    ("/v1/users/1/recommendations?n=0", 400, "n"),
    ("/v1/users/1/recommendations?n=201", 400, "n"),
    ("/v1/users/1/recommendations?n=1000000000", 400, "n"),
    ("/v1/users/1/recommendations?n=2.5", 400, "n"),
    ("/v1/users/1/recommendations?n=", 400, "n"),
    ("/v1/users/1/recommendations?source=cache", 400, "source"),
    ("/v1/users/1/recommendations?include_adult=maybe", 400, "include_adult"),
    ("/v1/anime/-5/similar", 400, "anime_id"),
    ("/v1/anime/1/similar?n=abc", 400, "n"),
])
def test_bad_parameters_are_400_json_naming_the_parameter(client, url, status, parameter):
    r = client.get(url)
    assert r.status_code == status
    assert r.is_json and r.get_json()["error"]["parameter"] == parameter
    assert parameter in r.get_json()["error"]["message"]


def test_unknown_anime_is_404_json(client):
    r = client.get("/v1/anime/987654321/similar")
    assert r.status_code == 404 and r.is_json and "987654321" in r.get_json()["error"]["message"]


def test_unknown_api_route_and_wrong_method_are_json(client):
    for path in ("/v1/nothing", "/v1", "/v1/users/1/x"):
        r = client.get(path)
        assert r.status_code == 404 and r.is_json, path
    r = client.delete("/v1/users/1/recommendations")      # GET and POST only
    assert r.status_code == 405 and r.is_json
    assert client.post("/metrics").is_json


def test_unknown_paths_outside_the_api_get_the_html_error_page(client):
    for path in ("/v2/nothing", "/nowhere", "/anime"):
        r = client.get(path)
        assert r.status_code == 404 and r.mimetype == "text/html", path
        assert "<title>Error 404 · FuseRank</title>" in r.get_data(as_text=True)
    r = client.post("/search")
    assert r.status_code == 405 and r.mimetype == "text/html" and "GET" in r.headers["Allow"]


def test_stored_and_live_answers_are_the_same_compact_json(client, model):
    uid = int(model.user_ids[0])
    stored = client.get(f"/v1/users/{uid}/recommendations?n=3")
    live = client.get(f"/v1/users/{uid}/recommendations?n=3&source=live")
    assert stored.get_json()["source"] == "precomputed" and live.get_json()["source"] == "live"
    for r in (stored, live, client.get("/v1/anime/1/similar?n=3&include_adult=true"),
              client.post("/v1/recommendations", json={"ratings": [{"anime_id": 1, "rating": 9}]})):
        text = r.get_data(as_text=True)
        assert r.status_code == 200 and '", "' not in text and '": ' not in text, text[:200]
        scores = re.findall(r'"score":(-?[0-9.e+-]+)', text)
        assert scores and all(re.fullmatch(r"-?[0-9]+\.[0-9]{4}", s) for s in scores), scores  # one item encoder


def test_similar_anime_names_the_anime_asked_about(client, model):
    a = int(model.popularity[0])
    aid, name = int(model.anime_ids[a]), str(model.anime["name"].iloc[a])
    for query in ("", "&include_adult=true"):
        body = client.get(f"/v1/anime/{aid}/similar?n=3{query}").get_json()
        assert (body["anime_id"], body["name"]) == (aid, name), query


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


def test_not_ready_without_a_published_version(ranking_model, redis_url):
    empty = empty_db(redis_url, 3)
    app = api_app(ranking_model[0], empty)
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.get_json()["ready"] is False
    uid = int(app.extensions["fuserank"].model.user_ids[0])
    assert app.test_client().get(f"/v1/users/{uid}/recommendations").get_json()["source"] == "live"


def _user_ratings(model, u):
    row = model.lists[u]
    rated = row.data > 0
    return [{"anime_id": int(model.anime_ids[a]), "rating": int(r)}
            for a, r in zip(row.indices[rated], row.data[rated])]


def test_new_user_is_folded_in_and_gets_the_hybrid(client, model):
    ratings = _user_ratings(model, 3)
    r = client.post("/v1/recommendations", json={"ratings": ratings + [{"anime_id": 987654321, "rating": 9}], "n": 15})
    assert r.status_code == 200
    body = r.get_json()
    assert body["source"] == "live" and body["user_id"] is None and len(body["items"]) == 15
    assert body["ignored_anime_ids"] == [987654321]
    assert not {x["anime_id"] for x in ratings} & {i["anime_id"] for i in body["items"]}


def test_fold_in_lands_near_the_user_who_gave_those_ratings(ranking_model):
    from fuserank.artifacts import ModelArtifact
    from fuserank.foldin import fold_in
    model = ModelArtifact.load(ranking_model[0])
    hits = 0
    for u in range(20):
        row = model.lists[u]
        rated = row.data > 0
        vector = fold_in(model.anime_emb, row.indices[rated], row.data[rated])
        sims = model.user_emb @ vector[0]
        hits += int(np.sum(sims > sims[u]) < model.n_users * 0.1)
    assert hits >= 15  # the user's own embedding is among the 10% closest for most users


def test_new_user_with_only_unknown_anime_gets_popular(client):
    body = client.post("/v1/recommendations", json={"ratings": [{"anime_id": 987654321, "rating": 7}]}).get_json()
    assert body["source"] == "popular" and body["ignored_anime_ids"] == [987654321] and len(body["items"]) == 10


@pytest.mark.parametrize("payload,parameter", [
    ({"ratings": []}, "ratings"),
    ({"ratings": "lots"}, "ratings"),
    ({"ratings": [{"anime_id": 1}]}, "ratings[0]"),
    ({"ratings": [{"anime_id": -1, "rating": 5}]}, "ratings[0].anime_id"),
    ({"ratings": [{"anime_id": 1, "rating": 11}]}, "ratings[0].rating"),
    ({"ratings": [{"anime_id": 1, "rating": 7.5}]}, "ratings[0].rating"),
    ({"ratings": [{"anime_id": 1, "rating": True}]}, "ratings[0].rating"),
    ({"ratings": [{"anime_id": 1, "rating": 7}], "n": 0}, "n"),
    ({"ratings": [{"anime_id": 1, "rating": 7}], "n": "5"}, "n"),
    ({"ratings": [{"anime_id": 1, "rating": 7}], "extra": 1}, "extra"),
    ({"ratings": [{"anime_id": i, "rating": 7} for i in range(1001)]}, "ratings"),
    ([1, 2], "body"),
])
def test_bad_new_user_bodies_are_400_naming_the_field(client, payload, parameter):
    r = client.post("/v1/recommendations", json=payload)
    assert r.status_code == 400 and r.get_json()["error"]["parameter"] == parameter


def test_too_many_ratings_says_how_many_were_sent(client):
    r = client.post("/v1/recommendations", json={"ratings": [{"anime_id": i, "rating": 7} for i in range(1001)]})
    assert r.status_code == 400 and "1001 were sent" in r.get_json()["error"]["message"]


def test_a_repeated_anime_is_400_naming_it(client, model):
    ids = [int(x) for x in model.anime_ids[:3]]
    ratings = [{"anime_id": ids[0], "rating": 9}, {"anime_id": ids[1], "rating": 3}, {"anime_id": ids[0], "rating": 2}]
    r = client.post("/v1/recommendations", json={"ratings": ratings})
    error = r.get_json()["error"]
    assert r.status_code == 400 and error["parameter"] == "ratings[2].anime_id"
    assert f"anime {ids[0]} is rated twice (ratings[0] and ratings[2])" in error["message"]


def test_malformed_and_oversized_bodies(client):
    r = client.post("/v1/recommendations", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["parameter"] == "body"
    r = client.post("/v1/recommendations", data="x" * (70 * 1024), content_type="application/json")
    assert r.status_code == 413 and r.is_json


# ------------------------------------------------------------------------------------------------
# Filters, explanations, low-activity users
# ------------------------------------------------------------------------------------------------
def _anime_rows(model, ids):
    enc = model.anime_index(ids)
    return model.anime.iloc[enc]


def test_exclude_filters_the_stored_list_when_it_still_holds_n(client, model):
    uid = int(model.user_ids[4])
    full = client.get(f"/v1/users/{uid}/recommendations?n=20").get_json()
    dropped = [i["anime_id"] for i in full["items"][:3]]
    body = client.get(f"/v1/users/{uid}/recommendations?n=10&exclude={','.join(map(str, dropped))},987654321"
                      ).get_json()
    assert body["source"] == "precomputed" and len(body["items"]) == 10
    assert [i["anime_id"] for i in body["items"]] == [i["anime_id"] for i in full["items"][3:13]]
    for query in ("", "&source=live", "&exclude=1"):
        plain = client.get(f"/v1/users/{uid}/recommendations?n=10&explain=false{query}").get_json()
        assert all(set(i) == {"anime_id", "name", "score"} for i in plain["items"])


def test_genre_and_type_filters(client, model):
    uid = int(model.user_ids[5])
    for query, column, value in (("genre=comedy", "genres", "Comedy"), ("type=Movie", "type", "Movie"),
                                 ("genre=Sci-Fi,Mecha&type=TV", "type", "TV")):
        for source in ("", "&source=live"):
            body = client.get(f"/v1/users/{uid}/recommendations?n=30&{query}{source}").get_json()
            assert body["source"] in ("precomputed", "live") and len(body["items"]) == 30, body
            rows = _anime_rows(model, [i["anime_id"] for i in body["items"]])
            assert all(value in str(v) for v in rows[column]), (query, rows[column].tolist())
            seen = set(model.anime_ids[model.lists[model.user_index(uid)[0]].indices].tolist())
            assert not seen & {i["anime_id"] for i in body["items"]}
    # a filter that leaves the 50-item stored list short is answered live, filtered the same way
    movies = client.get(f"/v1/users/{uid}/recommendations?n=60&type=movie").get_json()
    assert movies["source"] == "live" and set(_anime_rows(model, [i["anime_id"] for i in movies["items"]])["type"]) \
        == {"Movie"}
    similar = client.get(f"/v1/anime/{int(model.anime_ids[model.popularity[0]])}/similar?n=5&type=TV").get_json()
    assert set(_anime_rows(model, [i["anime_id"] for i in similar["items"]])["type"]) == {"TV"}


@pytest.mark.parametrize("query,parameter", [("genre=Cooking", "genre"), ("type=Podcast", "type"),
                                             ("genre=", "genre"), ("type=TV,,Movie", "type"),
                                             ("exclude=1,x", "exclude"), ("exclude=", "exclude"),
                                             ("exclude=-3", "exclude"), ("explain=perhaps", "explain")])
def test_bad_filters_are_400_naming_the_parameter(client, model, query, parameter):
    r = client.get(f"/v1/users/{int(model.user_ids[0])}/recommendations?{query}")
    assert r.status_code == 400 and r.get_json()["error"]["parameter"] == parameter
    if query == "genre=Cooking":
        assert "Action" in r.get_json()["error"]["message"]      # lists the valid values
    if query == "type=Podcast":
        assert "Movie" in r.get_json()["error"]["message"] and "TV" in r.get_json()["error"]["message"]


def test_filters_on_new_users(client, model):
    ratings = _user_ratings(model, 6)[:20]
    body = client.post("/v1/recommendations?type=TV&explain=false", json={"ratings": ratings, "n": 8}).get_json()
    assert body["source"] == "live" and len(body["items"]) == 8
    assert set(_anime_rows(model, [i["anime_id"] for i in body["items"]])["type"]) == {"TV"}
    assert all(set(i) == {"anime_id", "name", "score"} for i in body["items"])


def test_user_below_the_activity_threshold_is_folded_in_from_their_ratings(client, model):
    import pandas as pd
    from tests.conftest import SAMPLE_2020
    raw = pd.read_csv(SAMPLE_2020)
    counts = raw[raw.rating > 0].groupby("user_id").size()
    low = [int(u) for u in counts[counts < 20].index if model.user_index(u)[0] < 0]
    assert low, "the sample has users below the ingest's threshold"
    uid = max(low, key=lambda u: counts[u])
    own = set(raw[raw.user_id == uid].anime_id.tolist())
    body = client.get(f"/v1/users/{uid}/recommendations?n=15").get_json()
    assert body["source"] == "live" and len(body["items"]) == 15
    assert not own & {i["anime_id"] for i in body["items"]}
    assert body != client.get(f"/v1/users/{max(raw.user_id) + 1}/recommendations?n=15").get_json()
    known = raw[(raw.user_id == uid) & (model.anime_index(raw.anime_id.to_numpy()) >= 0)]
    posted = client.post("/v1/recommendations", json={"n": 15, "ratings": [
        {"anime_id": int(a), "rating": int(r)} for a, r in zip(known.anime_id, known.rating)]}).get_json()
    assert [i["anime_id"] for i in posted["items"]] == [i["anime_id"] for i in body["items"]]


def test_low_activity_users_come_from_the_artifact_not_the_raw_file(ranking_model, api_redis_url, published,
                                                                    tmp_path):
    """The ingest keeps below-threshold users' rows and the export ships them: the raw CSV can be gone."""
    import json
    import shutil
    from fuserank import artifacts as art
    from fuserank.api.registry import LowActivity
    from tests.conftest import SAMPLE_2020
    import pandas as pd
    copy = tmp_path / "model"
    shutil.copytree(ranking_model[0], copy)
    manifest = json.loads((copy / art.MANIFEST).read_text())
    manifest["data"]["source"]["ratings"] = str(tmp_path / "gone.csv")
    (copy / art.MANIFEST).write_text(json.dumps(manifest))
    app = api_app(str(copy), api_redis_url)
    model = app.extensions["fuserank"].model
    low = LowActivity.from_artifact(model)
    assert all(isinstance(a, np.memmap) for a in (low.user_ids, low.indptr, low.anime, low.ratings))
    raw = pd.read_csv(SAMPLE_2020)
    raw = raw[(model.user_index(raw.user_id.to_numpy()) < 0) & (model.anime_index(raw.anime_id.to_numpy()) >= 0)]
    assert low.user_ids.tolist() == sorted(raw.user_id.unique().tolist())
    uid = int(raw.user_id.value_counts().index[0])
    enc, ratings = low.get(uid)
    mine = raw[raw.user_id == uid]
    assert sorted(zip(model.anime_ids[enc].tolist(), ratings.tolist())) == sorted(zip(mine.anime_id, mine.rating))
    body = app.test_client().get(f"/v1/users/{uid}/recommendations?n=5").get_json()
    assert body["source"] == "live" and len(body["items"]) == 5


def test_routes_record_the_answer_source_for_metrics(ranking_model, api_redis_url, published):
    """Through Flask's dispatch (the hot route reports the source itself: tests/test_hotpath.py)."""
    import flask
    app = api_app(ranking_model[0], api_redis_url, hot_route=False)
    seen = []
    app.after_request(lambda r: seen.append((flask.g.get("answer_source"), flask.g.get("degraded"))) or r)
    c = app.test_client()
    uid = int(app.extensions["fuserank"].model.user_ids[0])
    c.get(f"/v1/users/{uid}/recommendations")
    c.get(f"/v1/users/{uid}/recommendations?source=live")
    c.get("/v1/users/999999999/recommendations")
    assert seen == [("precomputed", False), ("live", False), ("popular", False)]


def test_405_lists_the_allowed_methods(client):
    r = client.delete("/v1/recommendations")
    assert r.status_code == 405 and r.is_json and "POST" in r.headers["Allow"]
