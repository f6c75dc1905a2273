"""The web page at / : server-rendered HTML through Flask's test client, then end to end in headless Chromium.

The browser test drives Debian's ``chromium`` through Selenium and ``chromedriver`` (``chromium-driver``)
against a real gunicorn server; it skips only when no Chromium binary exists (.ci/run installs one).
Screenshots go to ``$FUSERANK_ARTIFACTS_DIR/web`` (default ``runs/artifacts/web``).
"""
from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from fuserank import artifacts as art
from fuserank import keys
from fuserank.batch.pipeline import precompute
from tests.factories import api_app, empty_db, make_artifact, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
ANIME_CSV = ROOT / "data/sample/mal2020/anime_reduced.csv"
RATINGS_CSV = ROOT / "data/sample/mal2020/rating_complete_head100k.csv"
ARTIFACTS = Path(os.environ.get("FUSERANK_ARTIFACTS_DIR") or ROOT / "runs/artifacts") / "web"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """60 real anime names and genres from the bundled metadata, random geometry, 50 users."""
    with open(ANIME_CSV, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if "Hentai" not in r["Genres"]][:60]
    rng = np.random.default_rng(7)
    n_users, n_anime = 50, len(rows)
    lists = np.zeros((n_users, n_anime), np.int8)
    for u in range(n_users):
        picked = rng.choice(n_anime, size=8, replace=False)
        lists[u, picked] = rng.integers(5, 11, size=8)
    path = make_artifact(tmp_path_factory.mktemp("web") / "model", rng.normal(size=(n_users, 8)),
                         rng.normal(size=(n_anime, 8)), lists, genres=[r["Genres"] for r in rows],
                         names=[r["Name"] for r in rows])
    # make_artifact numbers anime 1000.. : keep that, remember which name each id has
    return path, {1000 + i: r["Name"] for i, r in enumerate(rows)}


@pytest.fixture(scope="module")
def web_redis(redis_url):
    return empty_db(redis_url, 11)


@pytest.fixture(scope="module")
def published(small_model, web_redis):
    return precompute(small_model[0], web_redis)


@pytest.fixture(scope="module")
def client(small_model, web_redis, published):
    return api_app(small_model[0], web_redis).test_client()


def text(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.get_data(as_text=True)))


def test_index_offers_a_user_form_and_a_search(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    body = r.get_data(as_text=True)
    assert 'name="user_id"' in body and 'action="/search"' in body
    assert 'name="viewport"' in body and "/static/style.css" in body
    assert client.get("/static/style.css").status_code == 200
    assert re.search(r"<title>([^<]*)</title>", body).group(1) == "FuseRank"
    page = client.get("/search?q=bebop").get_data(as_text=True)
    assert re.search(r"<title>([^<]*)</title>", page).group(1) == "Search: bebop · FuseRank"


def test_user_page_renders_the_services_answer_with_genres_and_type(client, small_model):
    uid = 100
    api = client.get(f"/v1/users/{uid}/recommendations?n=20").get_json()
    r = client.get(f"/recommendations?user_id={uid}")
    assert r.status_code == 200
    page = text(r)
    assert "precomputed answer" in page and api["source"] == "precomputed"
    names = re.findall(rf'<a class="title" href="/anime/(\d+)\?user_id={uid}">([^<]+)</a>', page)
    assert [int(a) for a, _ in names] == [i["anime_id"] for i in api["items"]]
    assert [n for _, n in names] == [i["name"] for i in api["items"]]
    first = api["items"][0]
    genres = small_model[1]  # the ids' names; genres come from the model's anime table
    assert first["name"] == genres[first["anime_id"]]
    assert '<span class="type">TV</span>' in page and '<span class="genre">' in page


def test_reasons_are_spelled_out(client, web_redis, published):
    """A stored list with reasons (as the precompute writes them) shows "Because you liked" / "similar users"."""
    r = redis.Redis.from_url(web_redis)
    key = keys.user(published["version"], 101)
    old = r.get(key)
    reasons = [{"because": [{"anime_id": 1000, "name": "Cowboy Bebop"}], "similar_users": 7},
               {"because": [], "similar_users": 1}, {"because": [{"anime_id": 1001, "name": "Trigun"}]}]
    r.set(key, keys.encode_list([1010, 1011, 1012], [0.9, 0.8, 0.7], ["A", "B", "C"], reasons))
    try:
        page = text(client.get("/recommendations?user_id=101&n=3"))
    finally:
        r.set(key, old)
    assert 'Because you liked <a href="/anime/1000">Cowboy Bebop</a> · 7 similar users rated it highly' in page
    assert "1 similar user rated it highly" in page
    assert 'Because you liked <a href="/anime/1001">Trigun</a></p>' in page


def test_unknown_user_gets_popular_and_bad_ids_an_html_error(client):
    assert "popular answer" in text(client.get("/recommendations?user_id=987654"))
    bad = client.get("/recommendations?user_id=abc")
    assert bad.status_code == 400 and bad.mimetype == "text/html" and "user_id" in text(bad)
    missing = client.get("/anime/424242")
    assert missing.status_code == 404 and "424242" in text(missing)


def test_search_is_a_substring_match_over_names(client, small_model):
    names = small_model[1]
    word = "bebop"
    expected = {a for a, n in names.items() if word in n.lower()}
    assert expected
    page = text(client.get(f"/search?q={word.upper()}"))
    found = {int(a) for a in re.findall(r'name="rate_(\d+)"', page)}
    assert found == expected
    assert "Results for “BEBOP”" in page
    popular = text(client.get("/search"))
    assert len(re.findall(r'name="rate_(\d+)"', popular)) == 20


def test_ratings_travel_with_the_search_and_post_to_recommendations(client, small_model):
    page = text(client.get("/search?q=bebop&rate_1000=9&rate_1002="))
    assert re.search(r'<select name="rate_1000"[^>]*>.*?<option value="9" selected>', page)
    assert "Your ratings (1)" in page and 'name="rate_1002"' not in page.split("Results for")[0]
    r = client.post("/new-user", data={"rate_1000": "9", "rate_1003": "8", "rate_1005": "", "rate_99999": "7"})
    assert r.status_code == 200
    page = text(r)
    assert "Recommendations for your 3 ratings" in page and "live answer" in page
    assert "Not in the model, ignored: 99999" in page
    ids = [int(a) for a in re.findall(r'<a class="title" href="/anime/(\d+)">', page)]
    assert len(ids) == 20 and not {1000, 1003} & set(ids)
    none = client.post("/new-user", data={"rate_1000": ""})
    assert none.status_code == 400 and "Rate at least one anime" in text(none)
    bad = client.post("/new-user", data={"rate_1000": "11"})
    assert bad.status_code == 400 and "rate_1000" in text(bad)


def test_the_new_user_form_is_rate_limited_per_address(small_model, web_redis, published):
    client = api_app(small_model[0], web_redis, rate_limit=2, rate_window_s=3600).test_client()
    addr = {"REMOTE_ADDR": "203.0.113.9"}
    for _ in range(2):
        assert client.post("/new-user", data={"rate_1000": "9"}, environ_base=addr).status_code == 200
    limited = client.post("/new-user", data={"rate_1000": "9"}, environ_base=addr)
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert int(limited.headers["Retry-After"]) > 0 and "retry in" in text(limited)


def test_similar_anime_page(client, small_model):
    page = text(client.get("/anime/1000"))
    assert small_model[1][1000] in page and "Similar anime" in page
    ids = [int(a) for a in re.findall(r'<a class="title" href="/anime/(\d+)">', page)]
    assert len(ids) == 20 and 1000 not in ids


def test_web_views_feed_the_request_metrics(client):
    client.get("/recommendations?user_id=100")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(r'fuserank_http_requests_total\{degraded="false",method="GET",route="/recommendations",'
                     r'source="precomputed",status="200"\} [1-9]', metrics)


# -- end to end in a real browser -------------------------------------------------------------------------
CHROMIUM = next((p for p in (os.environ.get("FUSERANK_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory):
    """The bundled 2020 sample (users with >= 20 ratings) as a model artifact with truncated-SVD embeddings.

    Real names, genres and types, and neighbours that make sense, in seconds and without TensorFlow:
    the page is what is under test here, not the training.
    """
    from fuserank.similarity import l2_normalise
    path = tmp_path_factory.mktemp("sample-svd") / "model"
    path.mkdir()
    anime = pd.read_csv(ANIME_CSV).rename(columns={"Name": "name", "Genres": "genres", "Type": "type"})
    ratings = pd.read_csv(RATINGS_CSV)
    ratings = ratings[ratings["anime_id"].isin(anime["anime_id"])].drop_duplicates(["user_id", "anime_id"], keep="last")
    active = ratings.groupby("user_id")["anime_id"].transform("size") >= 20
    ratings = ratings[active]
    user_ids, anime_ids = np.unique(ratings["user_id"]), np.unique(ratings["anime_id"])
    rows, cols = np.searchsorted(user_ids, ratings["user_id"]), np.searchsorted(anime_ids, ratings["anime_id"])
    lists = sp.csr_matrix((ratings["rating"].to_numpy(np.int8), (rows, cols)), shape=(len(user_ids), len(anime_ids)))
    liked = sp.csr_matrix(((ratings["rating"].to_numpy() >= 8) + 0.3, (rows, cols)), shape=lists.shape)
    u, s, vt = svds(liked.astype(np.float64), k=32, random_state=0)
    np.save(path / art.USER_EMB, l2_normalise((u * np.sqrt(s)).astype(np.float32)))
    np.save(path / art.ANIME_EMB, l2_normalise((vt.T * np.sqrt(s)).astype(np.float32)))
    pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids.astype(np.int64),
                  "n_ratings": np.diff(lists.indptr).astype(np.int32)}).to_parquet(path / art.USERS)
    meta = anime.set_index("anime_id").loc[anime_ids]
    pd.DataFrame({"anime": np.arange(len(anime_ids), dtype=np.int32), "anime_id": anime_ids.astype(np.int64),
                  "name": meta["name"].to_numpy(), "genres": meta["genres"].fillna("").to_numpy(),
                  "type": meta["type"].fillna("Unknown").to_numpy(), "in_metadata": True}).to_parquet(path / art.ANIME)
    art.save_user_lists(str(path / art.USER_LISTS), lists)
    version, hashes = art.content_version(str(path))
    (path / art.MANIFEST).write_text(json.dumps({"model_version": version, "files": hashes}))
    return str(path)


@pytest.fixture
def live_server(sample_model, redis_url):
    url = empty_db(redis_url, 12)
    precompute(sample_model, url)
    base, proc = start_server(sample_model, url)
    yield base
    stop_server(proc)


def _click_and_load(d, element, timeout: float = 20) -> None:
    """Click a link or submit button and wait until the next page replaced this one (a loaded machine is slow)."""
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    page = d.find_element("tag name", "html")
    element.click()
    WebDriverWait(d, timeout).until(EC.staleness_of(page))
    WebDriverWait(d, timeout).until(lambda drv: drv.execute_script("return document.readyState") == "complete")


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("FUSERANK_REQUIRE_BROWSER"):
            pytest.fail("FUSERANK_REQUIRE_BROWSER is set but there is no Chromium binary (apt-get install chromium)")
        pytest.skip("no Chromium binary (apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    driver_path = os.environ.get("FUSERANK_CHROMEDRIVER") or shutil.which("chromedriver")
    assert driver_path, "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_in_a_real_browser_load_search_rate_and_see_results(live_server, browser, sample_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from fuserank.artifacts import ModelArtifact
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    model = ModelArtifact.load(sample_model)
    uid = int(model.user_ids[0])
    d = browser

    # load, ask for a known user's recommendations
    d.get(live_server + "/")
    assert "FuseRank" in d.title
    d.find_element(By.ID, "user_id").send_keys(str(uid))
    _click_and_load(d, d.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    items = d.find_elements(By.CSS_SELECTOR, "ol.items li.item")
    assert len(items) == 20 and d.find_element(By.TAG_NAME, "h1").text == f"Recommendations for user {uid}"
    assert "precomputed answer" in d.find_element(By.ID, "source").text
    assert all(i.find_element(By.CSS_SELECTOR, "a.title").text for i in items)
    assert all(i.find_elements(By.CSS_SELECTOR, ".type") for i in items)
    with urllib.request.urlopen(f"{live_server}/v1/users/{uid}/recommendations?n=20", timeout=5) as r:
        explained = sum(1 for item in json.loads(r.read())["items"]
                        if (item.get("reasons") or {}).get("because") or (item.get("reasons") or {}).get("similar_users"))
    assert len(d.find_elements(By.CSS_SELECTOR, "ol.items li.item p.why")) == explained  # reasons, when stored
    d.save_screenshot(str(ARTIFACTS / "user.png"))

    # a title links to its similar anime
    first = items[0].find_element(By.CSS_SELECTOR, "a.title")
    name = first.text
    _click_and_load(d, first)
    assert d.find_element(By.TAG_NAME, "h1").text == name
    assert len(d.find_elements(By.CSS_SELECTOR, "ol.items li.item")) == 20

    # search by name, rate two, search again (the ratings stay), rate one more, recommend
    d.get(live_server + "/search")
    box = d.find_element(By.ID, "q")
    box.send_keys("cowboy")
    _click_and_load(d, d.find_element(By.ID, "search-button"))
    results = d.find_elements(By.CSS_SELECTOR, "#results li")
    assert results and all("cowboy" in r.text.lower() for r in results)
    rated_names = {r.find_element(By.CSS_SELECTOR, ".rate-name a").text for r in results[:2]}
    for r, rating in zip(results[:2], ("10", "9")):
        Select(r.find_element(By.TAG_NAME, "select")).select_by_value(rating)
    box = d.find_element(By.ID, "q")
    box.clear()
    box.send_keys("gintama")
    _click_and_load(d, d.find_element(By.ID, "keep-button"))
    assert len(d.find_elements(By.CSS_SELECTOR, "#rated li")) == 2
    more = d.find_elements(By.CSS_SELECTOR, "#results li")
    assert more and all("gintama" in r.text.lower() for r in more)
    Select(more[0].find_element(By.TAG_NAME, "select")).select_by_value("8")
    d.save_screenshot(str(ARTIFACTS / "search.png"))
    _click_and_load(d, d.find_element(By.ID, "recommend-button"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Recommendations for your 3 ratings"
    assert "live answer" in d.find_element(By.ID, "source").text
    recs = d.find_elements(By.CSS_SELECTOR, "ol.items li.item")
    assert len(recs) == 20
    assert not rated_names & {r.find_element(By.CSS_SELECTOR, "a.title").text for r in recs}
    d.save_screenshot(str(ARTIFACTS / "new_user.png"))

    # readable on a phone: no sideways scrolling at 390 CSS px
    d.set_window_size(390, 1400)
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"page is {width}px wide on a 390px screen"
    d.save_screenshot(str(ARTIFACTS / "new_user_phone.png"))
    for shot in ("user.png", "search.png", "new_user.png", "new_user_phone.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
