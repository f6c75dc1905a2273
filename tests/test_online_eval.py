"""Online evaluation on a replayed log of impressions, clicks and ratings, with the figures worked out by hand:
the pure computation, its storage in Redis (which outlives the stream's trimming), `fuserank inspect online`,
the `/metrics` gauges and the `/admin` page."""
import base64
import json
from datetime import datetime, timezone

import pytest

from fuserank import feedback, keys
from fuserank.cli import main
from fuserank.evaluation import online
from fuserank.feedback import Event
from tests.factories import api_app, empty_db, random_artifact
from tests.test_metrics import samples, value

T = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
DAY = 86400


def imp(user, anime, ts, version):
    return Event("impression", user, anime, list_version=version, ts=T + ts)


def click(user, anime, ts, version):
    return Event("click", user, anime, list_version=version, ts=T + ts)


def rate(user, anime, rating, ts):
    return Event("rating", user, anime, rating=rating, ts=T + ts)


# In stream (= time) order. Day 1, version vA, three served lists:
#   user 1: anime 1-12 shown (positions 1-10 = anime 1-10); clicks anime 3 -> clicked; rates 11 (position 11)
#           a 9 and 2 a 7 -> no hit. Anime 13 shown on day 2 joins the same served list.
#   user 2: anime 1-5; clicks anime 9, never shown -> not clicked; rates 4 an 8 after 6 days -> hit.
#   user 3: anime 1-3; had rated 2 a 9 before being shown -> no hit; a click on anime 1 of vB, before vB was
#           shown -> counts for neither; rates 1 a 10 at day 8, more than 7 days after vA showed it -> no hit.
# Day 2, version vB, two served lists:
#   user 3: anime 1-2; clicks anime 1 -> clicked; the day-8 rating of 1 is 6d23h59m50s after vB showed it -> hit.
#   user 4: anime 5; nothing else.
# vA, 2026-11-01: 3 lists, 1 clicked, 1 hit. vB, 2026-11-02: 2 lists, 1 clicked, 1 hit.
LOG = ([imp(1, a, 100, "vA") for a in range(1, 13)] + [click(1, 3, 200, "vA"), rate(1, 11, 9, 300), rate(1, 2, 7, 310)]
       + [imp(2, a, 1000, "vA") for a in range(1, 6)] + [click(2, 9, 1100, "vA")]
       + [rate(3, 2, 9, 1900)] + [imp(3, a, 2000, "vA") for a in (1, 2, 3)] + [click(3, 1, 2100, "vB")]
       + [imp(1, 13, DAY + 5, "vA")] + [imp(3, a, DAY + 10, "vB") for a in (1, 2)] + [click(3, 1, DAY + 20, "vB")]
       + [imp(4, 5, DAY + 50, "vB")] + [rate(2, 4, 8, 1000 + 6 * DAY)] + [rate(3, 1, 10, 8 * DAY)])
EXPECTED = {("vA", "2026-11-01"): (3, 1, 1), ("vB", "2026-11-02"): (2, 1, 1)}


def _counts(daily):
    return {k: (f.lists, f.clicked, f.hits) for k, f in daily.items()}


def test_figures_worked_out_by_hand():
    daily = online.evaluate(LOG, now=T + 20 * DAY)
    assert _counts(daily) == EXPECTED
    assert daily[("vA", "2026-11-01")].click_share == pytest.approx(1 / 3)
    assert daily[("vB", "2026-11-02")].hit_rate == 0.5
    assert all(f.final for f in daily.values())
    assert not any(f.final for f in online.evaluate(LOG, now=T + 3 * DAY).values())


def test_a_day_before_its_window_closed_counts_only_what_is_known():
    assert _counts(online.evaluate(LOG[:-2], now=T + 2 * DAY)) == {("vA", "2026-11-01"): (3, 1, 0),
                                                                   ("vB", "2026-11-02"): (2, 1, 0)}


def test_stored_figures_outlive_the_trimmed_stream(redis_client):
    feedback.append(redis_client, LOG)
    online.refresh(redis_client, now=T + 20 * DAY)
    redis_client.xtrim(keys.FEEDBACK_EVENTS, maxlen=0, approximate=False)
    assert _counts(online.figures(redis_client, now=T + 20 * DAY)) == EXPECTED
    totals = online.by_version(online.stored(redis_client))
    assert totals["vA"]["total"]["hit_rate_at_10"] == pytest.approx(1 / 3)


def test_inspect_online(redis_client, redis_url, capsys):
    feedback.append(redis_client, LOG)
    assert main(["inspect", "online", "--redis-url", redis_url, "--version", "vB", "--json"]) in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert list(report["versions"]) == ["vB"]
    assert report["versions"]["vB"]["total"]["click_share"] == 0.5
    assert report["backlog"]["events"] == len(LOG)
    assert main(["inspect", "online", "--redis-url", redis_url]) in (0, None)
    text = capsys.readouterr().out
    assert "vA" in text and "0.3333" in text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_artifact(tmp_path_factory.mktemp("online") / "model")


@pytest.fixture
def stored_log(redis_url):
    url = empty_db(redis_url, 11)
    from fuserank.redis_client import connect
    with connect(url) as client:
        feedback.append(client, LOG)
        online.refresh(client, now=T + 20 * DAY)
        client.set(keys.ONLINE_LOCK, "held")          # no background refresh during the test
    return url


def test_metrics_show_the_backlog_and_the_online_figures(model_dir, stored_log):
    scraped = samples(api_app(model_dir, stored_log).test_client().get("/metrics").get_data(as_text=True))
    assert value(scraped, "fuserank_feedback_backlog_events") == len(LOG)
    assert 0 <= value(scraped, "fuserank_feedback_backlog_oldest_age_seconds") < 60    # by stream id: when stored
    assert value(scraped, "fuserank_online_click_share", list_version="vA") == pytest.approx(1 / 3)
    assert value(scraped, "fuserank_online_hit_rate_at_10", list_version="vB") == 0.5
    assert value(scraped, "fuserank_online_served_lists", list_version="vA") == 3


def _basic(password):
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}


def test_admin_page_needs_a_configured_key_and_basic_auth(model_dir, stored_log):
    assert api_app(model_dir, stored_log).test_client().get("/admin").status_code == 404
    client = api_app(model_dir, stored_log, api_key=("s3cret",)).test_client()
    denied = client.get("/admin")
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/admin", headers=_basic("wrong")).status_code == 401
    page = client.get("/admin", headers=_basic("s3cret"))
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and body.count("<svg") == 2 and "vA" in body and "vB" in body
    assert "<script" not in body and "http" not in body.split("<main>")[1].split("</main>")[0].replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
