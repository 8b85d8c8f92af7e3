"""connector.bulk_insert: the grouped INSERT of columns stores exactly what one-row INSERTs
store."""

from __future__ import annotations

import sqlite3

import pytest

from connector import bulk_insert
from connector.bulk_insert import insert_columns

SQL = "insert into t (a, b, c) values (?, ?, 'k')"


def table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("create table t (a integer, b text, c text)")
    return conn


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200, 8_192 + 70])
def test_every_row_in_order_whatever_the_count(n: int) -> None:
    rows = [(i, f"row {i}" if i % 3 else None) for i in range(n)]
    conn = table()
    assert insert_columns(conn, SQL, [[a for a, _ in rows], [b for _, b in rows]]) == n
    assert conn.execute("select a, b, c from t order by rowid").fetchall() == \
        [(a, b, "k") for a, b in rows]


def test_the_parameter_limit_shrinks_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_insert, "_variable_limit", lambda: 5)  # 2 rows of 2 params
    seen: list[str] = []
    conn = table()
    conn.set_trace_callback(seen.append)
    insert_columns(conn, SQL, [[1, 2, 3], ["x", "y", "z"]])
    assert conn.execute("select count(*) from t").fetchone() == (3,)
    assert any(s.count("'k'") == 2 for s in seen) and not any(s.count("'k'") > 2 for s in seen)


def test_a_constraint_error_still_surfaces() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("create table t (a integer primary key, b text, c text)")
    with pytest.raises(sqlite3.IntegrityError):
        insert_columns(conn, SQL, [[1, 1], ["x", "again"]])


def test_only_one_row_inserts_are_accepted() -> None:
    with pytest.raises(ValueError, match="one-row INSERT"):
        insert_columns(table(), "update t set a = ?", [[1]])


def test_columns_must_match_the_statement_and_each_other() -> None:
    with pytest.raises(ValueError, match="1 columns for 2 parameters"):
        insert_columns(table(), SQL, [[1]])
    with pytest.raises(ValueError, match="different lengths"):
        insert_columns(table(), SQL, [[1, 2], ["x"]])


def test_a_question_mark_inside_a_literal_is_text() -> None:
    conn = table()
    sql = "insert into t (a, b, c) values (?, ?, 'why? it''s ?')"
    assert insert_columns(conn, sql, [[1, 2], ["x", "y"]]) == 2
    assert conn.execute("select a, b, c from t order by rowid").fetchall() == [
        (1, "x", "why? it's ?"), (2, "y", "why? it's ?")]


NUMBERED = "insert into t (a, b, c) values (?2, ?1 || '?1', ?1 || ?2)"


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_numbered_parameters_are_bound_once_and_read_where_used(n: int) -> None:
    conn = table()
    assert insert_columns(conn, NUMBERED, [[f"x{i}" for i in range(n)], list(range(n))]) == n
    assert conn.execute("select a, b, c from t order by rowid").fetchall() == [
        (i, f"x{i}?1", f"x{i}{i}") for i in range(n)]


def test_numbered_parameters_must_not_mix_with_plain_ones_or_skip_a_number() -> None:
    with pytest.raises(ValueError, match="mixed or missing"):
        insert_columns(table(), "insert into t (a, b) values (?1, ?)", [[1], [2]])
    with pytest.raises(ValueError, match="mixed or missing"):
        insert_columns(table(), "insert into t (a, b) values (?1, ?3)", [[1], [2], [3]])
