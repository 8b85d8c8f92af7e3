import pytest

from adapters.bitrix24.pagination import (
    KeysetStep,
    PagingError,
    as_php_map,
    encode_php_query,
    plan_keyset_batch,
    read_keyset_batch,
)


def page(start, n):
    return [{"ID": str(i)} for i in range(start, start + n)]


def test_php_query_encoding_nests_and_encodes_operators():
    query = encode_php_query({"filter": {">ID": 5, "@STAGE_ID": ["WON", "LOSE"]},
                              "order": {"ID": "ASC"}, "select": ["ID", "PHONE"], "start": -1})
    assert query == ("filter%5B%3EID%5D=5&filter%5B%40STAGE_ID%5D%5B0%5D=WON&"
                     "filter%5B%40STAGE_ID%5D%5B1%5D=LOSE&order%5BID%5D=ASC&"
                     "select%5B0%5D=ID&select%5B1%5D=PHONE&start=-1")


def test_keyset_plan_chains_pages_with_non_numeric_keys():
    plan = plan_keyset_batch("crm.deal.list", select=["ID"], filter={">=DATE_MODIFY": "x"},
                             after_id=100, pages=3)
    assert list(plan) == ["p0", "p1", "p2"]
    assert "filter%5B%3EID%5D=100" in plan["p0"]
    assert "filter%5B%3EID%5D=$result[p0][49][ID]" in plan["p1"]
    assert "filter%5B%3EID%5D=$result[p1][49][ID]" in plan["p2"]
    assert all("start=-1" in c and "order%5BID%5D=ASC" in c for c in plan.values())
    with pytest.raises(ValueError):
        plan_keyset_batch("crm.deal.list", select=["ID"], filter={}, after_id=0, pages=51)


def test_read_stops_at_the_first_short_page_and_discards_the_rest():
    results = {"p0": page(1, 50), "p1": page(51, 20), "p2": page(1, 50)}  # p2: '' restart
    step = read_keyset_batch(results, {}, ["p0", "p1", "p2"], 0)
    assert step == KeysetStep(page(1, 50) + page(51, 20), 70, True)


def test_full_batch_is_not_done():
    results = {"p0": page(1, 50), "p1": page(51, 50)}
    step = read_keyset_batch(results, {}, ["p0", "p1"], 0)
    assert not step.done and step.last_id == 100 and len(step.rows) == 100


def test_an_error_keeps_the_rows_before_it():
    results = {"p0": page(1, 50)}
    errors = {"p1": {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}}
    step = read_keyset_batch(results, errors, ["p0", "p1", "p2"], 0)
    assert step.rows == page(1, 50) and step.last_id == 50 and not step.done
    assert step.error == errors["p1"]


def test_ids_going_backwards_are_detected():
    with pytest.raises(PagingError, match="backwards"):
        read_keyset_batch({"p0": page(10, 50)}, {}, ["p0"], 20)


def test_php_maps_normalise():
    assert as_php_map([]) == {}
    assert as_php_map([{"a": 1}, {"b": 2}]) == {"0": {"a": 1}, "1": {"b": 2}}
    assert as_php_map({"x": 1}) == {"x": 1}
