"""rules.lookup: the fast forms give exactly the general forms' answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import points
from rules.lookup import index_in, sort_order

ids = st.lists(st.integers(-5, 3_000), unique=True, max_size=60)
sparse_ids = st.lists(st.integers(0, 2**50), unique=True, min_size=1, max_size=60)
queries = st.lists(st.integers(-10, 3_010), max_size=80)


def _expected(values: list[int], wanted: list[int]) -> list[int]:
    where = {v: i for i, v in enumerate(values)}
    return [where.get(q, -1) for q in wanted]


@settings(max_examples=200, deadline=None)
@given(ids, queries)
def test_index_in_finds_each_id_or_minus_one(values: list[int], wanted: list[int]) -> None:
    got = index_in(np.array(values, dtype=np.int64), np.array(wanted, dtype=np.int64))
    assert got.tolist() == _expected(values, wanted)
    ascending = sorted(values)
    got = index_in(np.array(ascending, dtype=np.int64), np.array(wanted, dtype=np.int64),
                   ascending=True)
    assert got.tolist() == _expected(ascending, wanted)


@settings(max_examples=100, deadline=None)
@given(sparse_ids, st.data())
def test_index_in_sparse_ids_take_the_search_path(values: list[int], data: st.DataObject
                                                  ) -> None:
    wanted = data.draw(st.lists(st.sampled_from(values) | st.integers(0, 2**50)))
    got = index_in(np.array(values, dtype=np.int64), np.array(wanted, dtype=np.int64))
    assert got.tolist() == _expected(values, wanted)


def test_index_in_empty_sides() -> None:
    assert index_in(np.zeros(0, dtype=np.int64), np.array([1, 2])).tolist() == [-1, -1]
    assert index_in(np.array([1, 2]), np.zeros(0, dtype=np.int64)).tolist() == []


keys = st.integers(1, 40).flatmap(lambda n: st.lists(
    st.lists(st.integers(-3, 50), min_size=n, max_size=n), min_size=1, max_size=4))


@settings(max_examples=200, deadline=None)
@given(keys)
def test_sort_order_is_lexsort_ties_included(columns: list[list[int]]) -> None:
    arrays = [np.array(c, dtype=np.int64) for c in columns]
    assert sort_order(*arrays).tolist() == np.lexsort(arrays).tolist()


def test_sort_order_falls_back_when_keys_do_not_fit() -> None:
    wide = np.array([2**40, 0, 2**40, 5], dtype=np.int64)
    other = np.array([2**30, 1, 0, 1], dtype=np.int64)
    assert sort_order(other, wide).tolist() == np.lexsort((other, wide)).tolist()


@pytest.mark.parametrize("window", [0, 3, 7])
@pytest.mark.parametrize("leap_rule", ["feb28", "mar1"])
def test_birthday_table_matches_the_date_conversion(window: int, leap_rule: str) -> None:
    rng = np.random.default_rng(5)
    day = rng.integers(690_000, 740_000, 20_000)  # 1890..2027, leap centuries included
    month = rng.integers(0, 13, 20_000)
    dom = np.where(month > 0, rng.integers(1, 32, 20_000), 0)
    has = month > 0
    years = points._years_direct(day)
    expected = np.zeros(len(day), dtype=np.bool_)
    for shift in (-1, 0, 1) if window else (0,):
        birthday = points._birthday_ordinal(years + shift, np.where(has, month, 1),
                                            np.where(has, dom, 1), leap_rule)
        expected |= np.abs(day - birthday) <= window
    got = points.birthday_mask(day, month, dom, window, leap_rule)
    assert (got == (expected & has)).all()
