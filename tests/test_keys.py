"""The stored list format: sliceable without a parse, and lossless through decode."""
import json

import pytest

from fuserank import keys

NAMES = ['Cowboy "Bebop"', "Tonari no Totoro", "Shingeki no Kyojin: 進撃の巨人"]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10])
def test_a_slice_is_the_first_n_items_as_valid_json(n):
    raw = keys.encode_list([1, 20, 300], [0.91234, 0.5, 0.1], NAMES, [{"because": [5]}, None, {"similar_users": 3}])
    items = json.loads(keys.slice_list(raw, n))
    assert [i["anime_id"] for i in items] == [1, 20, 300][:n]
    assert [i["name"] for i in items] == NAMES[:n]
    if n >= 2:
        assert "reasons" in items[0] and "reasons" not in items[1]
    assert keys.list_length(raw) == 3


def test_decode_round_trips_ids_scores_names_and_reasons():
    raw = keys.encode_list([7, 8], [0.123456, 0.0], ["a", "b"], [{"because": [{"anime_id": 1, "name": "x"}]}, None])
    assert keys.decode_items(raw) == [(7, 0.1235), (8, 0.0)]
    assert keys.decode_list(raw)[0]["reasons"] == {"because": [{"anime_id": 1, "name": "x"}]}


def test_an_empty_list_slices_to_an_empty_array():
    raw = keys.encode_list([], [], [])
    assert keys.list_length(raw) == 0 and keys.slice_list(raw, 5) == b"[]" and keys.decode_list(raw) == []
