"""The feedback store's contract on a real Redis: events round-trip through the stream in order, entry
events are indexed per user with the later one winning, and bad events are refused before anything is stored."""
import pytest

from fuserank import feedback, keys
from fuserank.feedback import Event


def test_events_round_trip_through_the_stream_in_order(redis_client):
    written = [Event("rating", 5, 20, rating=9), Event("status", 5, 21, status="plan_to_watch"),
               Event("impression", 5, 22, list_version="v1"), Event("delete", 5, 20)]
    ids = feedback.append(redis_client, written, now=lambda: 1700000000.5)
    back = list(feedback.read(redis_client, page=2))
    assert [e.id for e in back] == ids and len(set(ids)) == 4
    assert [(e.kind, e.user_id, e.anime_id, e.rating, e.status, e.list_version) for e in back] == \
        [(e.kind, e.user_id, e.anime_id, e.rating, e.status, e.list_version) for e in written]
    assert all(e.ts == 1700000000.5 for e in back)
    assert list(feedback.read(redis_client, start="(" + ids[1])) == back[2:]


def test_the_user_index_holds_each_anime_s_latest_entry_and_no_signals(redis_client):
    feedback.append(redis_client, [Event("rating", 7, 1, rating=4), Event("rating", 7, 1, rating=10),
                                   Event("click", 7, 2, list_version="v"), Event("status", 7, 3, status="dropped")])
    state = feedback.user_entries(redis_client, 7)
    assert set(state) == {1, 3}
    assert (state[1]["kind"], state[1]["rating"]) == ("rating", 10)
    assert state[3]["status"] == "dropped"
    feedback.append(redis_client, [Event("delete", 7, 1)])
    assert feedback.user_entries(redis_client, 7)[1]["kind"] == "delete"


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="rating", rating=11), "rating"), (dict(kind="rating", rating=0), "rating"),
    (dict(kind="status", status="loved"), "status"), (dict(kind="like"), "kind")])
def test_a_bad_event_names_its_field_and_stores_nothing(redis_client, kwargs, field):
    with pytest.raises(ValueError, match=field):
        feedback.append(redis_client, [Event(user_id=1, anime_id=2, **kwargs)])
    assert redis_client.xlen(keys.FEEDBACK_EVENTS) == 0
