from urllib.parse import parse_qsl

import pytest

from adapters.bitrix24.pagination import (
    MAX_BATCH,
    KeysetStep,
    PagingError,
    as_php_map,
    encode_php_query,
    id_params,
    plan_id_batch,
    plan_keyset_batch,
    read_id_batch,
    read_keyset_batch,
    read_keyset_page,
)
from connector.errors import FatalCrmError


def page(start, n):
    return [{"ID": str(i), "TITLE": f"deal {i}"} for i in range(start, start + n)]


def batch(results, errors=None):
    """A batch envelope's inner ``result`` as PHP sends it (empty maps as [])."""
    return {"result": results or [], "result_error": errors or [], "result_total": [],
            "result_next": [], "result_time": []}


# -- encode_php_query ----------------------------------------------------------------------


def test_php_query_encoding_nests_and_encodes_operators():
    query = encode_php_query({"filter": {">ID": 5, "@STAGE_ID": ["WON", "LOSE"]},
                              "order": {"ID": "ASC"}, "select": ["ID", "PHONE"], "start": -1})
    assert query == ("filter%5B%3EID%5D=5&filter%5B%40STAGE_ID%5D%5B0%5D=WON&"
                     "filter%5B%40STAGE_ID%5D%5B1%5D=LOSE&order%5BID%5D=ASC&"
                     "select%5B0%5D=ID&select%5B1%5D=PHONE&start=-1")


def test_php_query_round_trips_deep_values_and_scalars():
    params = {"fields": {"PHONE": [{"VALUE": "+7 (900) 1&2", "VALUE_TYPE": "WORK"}]},
              "flag": True, "off": False, "none": None, "date": "2024-01-01T00:00:00+03:00"}
    decoded = dict(parse_qsl(encode_php_query(params), keep_blank_values=True))
    assert decoded == {
        "fields[PHONE][0][VALUE]": "+7 (900) 1&2", "fields[PHONE][0][VALUE_TYPE]": "WORK",
        "flag": "Y", "off": "N", "none": "", "date": "2024-01-01T00:00:00+03:00",
    }


def test_result_references_are_left_verbatim_for_the_server():
    query = encode_php_query({"filter": {">ID": "$result[p0][49][ID]"}})
    assert query == "filter%5B%3EID%5D=$result[p0][49][ID]"


# -- plan_keyset_batch ---------------------------------------------------------------------


def test_keyset_plan_chains_pages_with_non_numeric_keys():
    plan = plan_keyset_batch("crm.deal.list", select=["ID"], filter={">=DATE_MODIFY": "x"},
                             after_id=100, pages=3)
    assert list(plan) == ["p0", "p1", "p2"]
    assert all(not key.isdigit() for key in plan)
    assert "filter%5B%3EID%5D=100" in plan["p0"]
    assert "filter%5B%3EID%5D=$result[p0][49][ID]" in plan["p1"]
    assert "filter%5B%3EID%5D=$result[p1][49][ID]" in plan["p2"]
    for command in plan.values():
        method, _, query = command.partition("?")
        fields = dict(parse_qsl(query))
        assert method == "crm.deal.list"
        assert fields["start"] == "-1" and fields["order[ID]"] == "ASC"
        assert fields["filter[>=DATE_MODIFY]"] == "x" and fields["select[0]"] == "ID"


def test_keyset_plan_defaults_to_a_full_batch_and_refuses_more():
    plan = plan_keyset_batch("crm.contact.list", select=["ID"], filter={}, after_id=0,
                             key_prefix="c")
    assert len(plan) == MAX_BATCH == 50 and list(plan)[-1] == "c49"
    for pages in (0, 51):
        with pytest.raises(ValueError):
            plan_keyset_batch("crm.deal.list", select=["ID"], filter={}, after_id=0,
                              pages=pages)


@pytest.mark.parametrize("prefix", ["", "7", "a]b", "p q"])
def test_keyset_plan_refuses_keys_php_would_collapse_or_break(prefix):
    with pytest.raises(ValueError):
        plan_keyset_batch("crm.deal.list", select=["ID"], filter={}, after_id=0,
                          key_prefix=prefix)


# -- read_keyset_batch ---------------------------------------------------------------------


def test_read_stops_at_the_first_short_page_and_discards_the_rest():
    # p2 ran with an unresolvable $result reference: whatever it returned is not trusted
    results = {"p0": page(1, 50), "p1": page(51, 20), "p2": page(1, 50), "p3": page(71, 50)}
    step = read_keyset_batch(batch(results), ["p0", "p1", "p2", "p3"], 0)
    assert step == KeysetStep(page(1, 50) + page(51, 20), 70, True)


def test_an_empty_first_page_ends_the_walk():
    step = read_keyset_batch(batch({"p0": [], "p1": page(1, 50)}), ["p0", "p1"], 50)
    assert step == KeysetStep([], 50, True)


def test_full_batch_is_not_done_and_pages_come_in_key_order():
    results = {"p1": page(51, 50), "p0": page(1, 50)}  # JSON object order is not key order
    step = read_keyset_batch(batch(results), ["p0", "p1"], 0)
    assert not step.done and step.last_id == 100
    assert [int(r["ID"]) for r in step.rows] == list(range(1, 101))


def test_an_error_keeps_the_rows_before_it():
    errors = {"p1": {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}}
    step = read_keyset_batch(batch({"p0": page(1, 50)}, errors), ["p0", "p1", "p2"], 0)
    assert step.rows == page(1, 50) and step.last_id == 50 and not step.done
    assert step.error == errors["p1"]


def test_an_error_on_the_first_page_makes_no_progress():
    errors = {"p0": {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "x"}}
    step = read_keyset_batch(batch({}, errors), ["p0", "p1"], 7)
    assert step.rows == [] and step.last_id == 7 and not step.done and step.error == errors["p0"]


def test_a_list_collapsed_result_error_is_read_by_index():
    # PHP turned {"0": …} into a list: the reader still finds "0"'s error.
    inner = {"result": {"p": page(1, 50)}, "result_error": [{"error": "", "error_description":
                                                              "Access denied."}]}
    step = read_keyset_batch(inner, ["p", "0"], 0)
    assert len(step.rows) == 50 and step.error == {"error": "", "error_description":
                                                   "Access denied."}


def test_a_command_with_neither_result_nor_error_is_an_error_not_the_end():
    step = read_keyset_batch(batch({"p0": page(1, 50)}), ["p0", "p1"], 0)
    assert not step.done and step.last_id == 50 and step.error is not None


def test_ids_going_backwards_are_detected():
    with pytest.raises(PagingError, match="backwards"):
        read_keyset_batch(batch({"p0": page(10, 50)}), ["p0"], 20)


def test_a_page_repeating_the_previous_one_is_a_loop():
    # e.g. a server that substitutes "" for $result[p0][49][ID] and restarts from the top
    results = {"p0": page(1, 50), "p1": page(1, 50)}
    with pytest.raises(PagingError, match="backwards") as info:
        read_keyset_batch(batch(results), ["p0", "p1"], 0)
    assert isinstance(info.value, FatalCrmError), "a sync reports it instead of crashing"


@pytest.mark.parametrize("bad", [{"items": page(1, 3)}, "oops", [["1"]], [{"TITLE": "no id"}]])
def test_malformed_pages_raise_instead_of_ending_the_walk_quietly(bad):
    with pytest.raises(PagingError):
        read_keyset_batch(batch({"p0": bad}), ["p0"], 0)


def test_a_single_page_read():
    assert read_keyset_page(page(1, 50), 0) == KeysetStep(page(1, 50), 50, False)
    assert read_keyset_page([], 9) == KeysetStep([], 9, True)
    with pytest.raises(PagingError):
        read_keyset_page(page(1, 5), 3)


def test_php_maps_normalise():
    assert as_php_map([]) == {}
    assert as_php_map([{"a": 1}, {"b": 2}]) == {"0": {"a": 1}, "1": {"b": 2}}
    assert as_php_map({"x": 1, 2: "y"}) == {"x": 1, "2": "y"}
    assert as_php_map(None) == {}


# -- records by ID -------------------------------------------------------------------------


def test_id_batch_plan_has_one_unchained_in_page_per_chunk():
    plan = plan_id_batch("crm.deal.list", select=["ID", "TITLE"], id_chunks=[[3, 5], [80]])
    assert list(plan) == ["i0", "i1"]
    fields = parse_qsl(plan["i0"].partition("?")[2])
    assert ("filter[@ID][0]", "3") in fields and ("filter[@ID][1]", "5") in fields
    assert ("start", "-1") in fields and ("order[ID]", "ASC") in fields
    assert "$result" not in plan["i1"] and "filter%5B%40ID%5D%5B0%5D=80" in plan["i1"]


@pytest.mark.parametrize("ids", [[], list(range(51))])
def test_an_id_page_holds_one_to_fifty_ids(ids):
    with pytest.raises(ValueError):
        id_params(["ID"], ids)


def test_id_batch_read_concatenates_pages_or_reports_the_first_error():
    results = {"i0": page(1, 2), "i1": page(9, 1)}
    assert read_id_batch(batch(results), ["i0", "i1"]) == (page(1, 2) + page(9, 1), None)
    denied = {"error": "", "error_description": "Access denied."}
    rows, error = read_id_batch(batch({"i0": page(1, 2)}, {"i1": denied}), ["i0", "i1"])
    assert rows == [] and error == denied, "no half batch: the caller re-reads all of it"
    rows, error = read_id_batch(batch({"i0": page(1, 2)}), ["i0", "i1"])
    assert rows == [] and error is not None, "a command with no answer is not an empty page"
