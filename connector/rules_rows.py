"""Rules results as SQLite rows, and the small SQL both store paths share.

Rows are built a chunk of columns at a time from the engine's ``RowSequence`` views, so a
million states or millions of ledger entries never exist as objects all at once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, fields
from datetime import date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.bulk_insert import insert_columns
from connector.ledger_digest import DIGEST_INSERT, digest_parts
from rules.ledger_rows import EXTRA, LedgerRows, entry_fingerprint, expiry_reason, fingerprints
from rules.models import CustomerState, LedgerEntry, Metrics, RowSequence, RulesResult

__all__ = [
    "KINDS",
    "NULL",
    "append_snapshot",
    "clear_kind",
    "ledger_column_list",
    "ledger_columns",
    "ledger_fingerprints",
    "ledger_insert",
    "state_columns",
    "state_insert",
    "vector_ledger_insert",
    "write_ledger",
]

KINDS = ("contact", "company")
_encode_text: Callable[[str], str] = json.encoder.encode_basestring
_BATCH = 20_000  # rows built per chunk: bounded memory, few executemany calls
_STATE_FIELDS = [f.name for f in fields(CustomerState)]
_LEDGER_FIELDS = ["entry_key", "customer_id", "kind", "deal_id", "points", "at",
                  "tier_at_purchase", "reason", "fingerprint"]
# What the rows carry for an absent value: SQLite has no NaN and stores it as NULL, and
# Python's sqlite3 binds a float in ~45 ns where it spends ~460 ns on None (it looks for
# an adapter first).  A million states and millions of ledger rows hold millions of them.
NULL = float("nan")


class _IsoOfOrdinal(dict[int, str]):
    """Proleptic ordinal → ISO date text, built on first use: a few thousand days among
    millions of rows, each text bound as the same str object (its UTF-8 kept inside)."""

    def __missing__(self, ordinal: int) -> str:
        text = self[ordinal] = date.fromordinal(ordinal).isoformat()
        return text


def _columns(rows: Sequence[Any], lo: int, hi: int) -> dict[str, list[Any]]:
    """Rows lo:hi field by field, NULL for None; the engine's RowSequence does it
    without objects."""
    if isinstance(rows, RowSequence):
        return rows.columns(lo, hi, NULL)
    picked = list(rows[lo:hi])
    return {f.name: [NULL if (v := getattr(r, f.name)) is None else v for r in picked]
            for f in fields(picked[0])}


def _memo(convert: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """Apply ``convert`` to a column, once per distinct value (dates, tier perks...)."""
    def apply(values: list[Any]) -> list[Any]:
        done: dict[Any, Any] = {}
        return [done[v] if v in done else done.setdefault(v, convert(v)) for v in values]
    return apply


def _iso_text(day: date | float) -> str | float:
    return day.isoformat() if isinstance(day, date) else NULL


def _json_text(values: tuple[str, ...]) -> str:
    """``json.dumps(values, ensure_ascii=False)`` for a tuple of texts, byte for byte.

    Run once per customer for the churn reasons; the C string encoder alone skips the
    encoder object ``json.dumps`` builds on every call (~3x faster).
    """
    return "[" + ", ".join(map(_encode_text, values)) + "]"


_iso_days = _memo(_iso_text)
_json_tuples = _memo(_json_text)


def state_columns(states: Sequence[CustomerState], computed_at: str, lo: int = 0,
                  hi: int | None = None) -> Iterator[list[list[Any]]]:
    """``customer_state`` columns of states lo:hi, in table order, a chunk at a time."""
    stop = len(states) if hi is None else hi
    for start in range(lo, stop, _BATCH):
        cols = _columns(states, start, min(start + _BATCH, stop))
        for name in ("first_purchase", "last_purchase"):
            cols[name] = _iso_days(cols[name])
        for name in ("channels", "perks"):
            cols[name] = _json_tuples(cols[name])
        cols["churn_reasons"] = list(map(_json_text, cols["churn_reasons"]))
        cols["computed_at"] = [computed_at] * len(cols["customer_id"])
        yield [cols[name] for name in (*_STATE_FIELDS, "computed_at")]


def state_insert() -> str:
    """The INSERT for ``state_columns``."""
    return f"insert into customer_state values ({', '.join('?' * (len(_STATE_FIELDS) + 1))})"


def ledger_column_list(cols: Mapping[str, list[Any]], fingerprints: list[int]
                       ) -> list[list[Any]]:
    """Ledger columns (``RowSequence.columns``) as ``points_ledger`` columns, kind left out."""
    values = {**cols, "at": _iso_days(cols["at"]), "fingerprint": fingerprints}
    return [values[name] for name in _LEDGER_FIELDS]


def ledger_fingerprints(entries: Sequence[LedgerEntry], view: LedgerRows | None, lo: int,
                        hi: int) -> list[int]:
    """The stored ``fingerprint`` of entries lo:hi (see ``rules.ledger_rows``)."""
    if view is not None:
        positions = np.arange(lo, hi, dtype=np.int64)
        return list(fingerprints(view, positions).tolist())
    return [entry_fingerprint(e) for e in entries[lo:hi]]


def ledger_columns(entries: Sequence[LedgerEntry], view: LedgerRows | None, kind: str,
                   lo: int = 0, hi: int | None = None,
                   prints: npt.NDArray[np.int64] | None = None
                   ) -> Iterator[tuple[str, list[list[Any]]]]:
    """``points_ledger`` INSERTs of ``kind`` customers' entries lo:hi and their columns,
    a chunk at a time.

    ``view`` is the columnar form the engine built ``entries`` from (None for plain
    entries); ``prints`` are the fingerprints of entries lo:hi when the caller has them.
    With a view, earns and expiries go as numbers through ``vector_ledger_insert`` and
    only the other entries as the texts they hold.
    """
    stop = len(entries) if hi is None else hi
    vector_sql = vector_ledger_insert(kind, view) if view is not None else None
    for start in range(lo, stop, _BATCH):
        end = min(start + _BATCH, stop)
        known = (prints[start - lo:end - lo] if prints is not None
                 else np.array(ledger_fingerprints(entries, view, start, end), dtype=np.int64))
        if view is None or vector_sql is None:
            yield ledger_insert(kind), ledger_column_list(_columns(entries, start, end),
                                                          known.tolist())
            continue
        at = np.arange(start, end, dtype=np.int64)
        vector = view.source[start:end] != EXTRA
        if vector.any():
            yield vector_sql, _vector_columns(view.numbers(at[vector]), known[vector].tolist())
        if not vector.all():
            yield ledger_insert(kind), ledger_column_list(view.columns_at(at[~vector], NULL),
                                                          known[~vector].tolist())


def _vector_columns(numbers: Mapping[str, npt.NDArray[np.int64]], prints: list[int]
                    ) -> list[list[Any]]:
    """``vector_ledger_insert``'s parameters, column by column."""
    # one code per row: 1 for an expiry, 2 × the reason index for an earn
    code = np.where(numbers["expiry"] == 1, 1, numbers["reason"] * 2)
    days = list(map(_IsoOfOrdinal().__getitem__, numbers["day"].tolist()))
    return [code.tolist(), numbers["deal_id"].tolist(), numbers["customer_id"].tolist(),
            numbers["points"].tolist(), days, prints]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def vector_ledger_insert(kind: str, view: LedgerRows) -> str | None:
    """The INSERT that builds earn and expiry rows from ``LedgerRows.numbers``, or None
    when a tier name or reason cannot be an SQL literal (it holds a NUL).

    At millions of rows, building the key and reason texts in Python and binding them
    cost more than the insert itself; SQLite builds the key in C from the deal, and the
    tier names and reasons are literals chosen by a CASE on the row's code (see
    ``_vector_columns``).  The date goes as text from a memo of the few distinct days:
    ``date()`` of a Julian day cost ~0.3 µs more per row.  The parameters are numbered,
    so the code and the deal are bound once and read where needed: binding eleven per
    row instead took ~10 % longer.
    """
    expired = expiry_reason(view.expiry_days)
    if any("\x00" in text for text in (*view.tier_names, *view.reasons, expired)):
        return None
    tiers = " ".join(f"when {code * 2} then {_literal(view.tier_names[code >> 1])}"
                     for code in range(len(view.reasons)))
    reasons = " ".join(f"when {code * 2} then {_literal(text)}"
                       for code, text in enumerate(view.reasons))
    head = ledger_insert(kind).split(" values ")[0]
    return (f"{head} values ((case ?1 when 1 then 'expire:earn:deal:' else 'earn:deal:' end) "
            "|| ?2, ?3, case ?1 when 1 then 'expire' else 'earn' end, "
            "case ?1 when 1 then null else ?2 end, "
            f"?4, ?5, case ?1 {tiers} end, "
            f"case ?1 {reasons} else {_literal(expired)} end, ?6, '{kind}')")


def write_ledger(conn: sqlite3.Connection, entries: Sequence[LedgerEntry],
                 view: LedgerRows | None, kind: str, lo: int = 0, hi: int | None = None
                 ) -> None:
    """Ledger entries lo:hi as ``points_ledger`` rows, and (with a view) their digest
    parts, into ``conn``'s main database; each fingerprint is computed once, for both."""
    stop = len(entries) if hi is None else hi
    prints = None if view is None else fingerprints(view, np.arange(lo, stop, dtype=np.int64))
    for sql, columns in ledger_columns(entries, view, kind, lo, stop, prints):
        insert_columns(conn, sql, columns)
    if view is not None:
        conn.executemany(DIGEST_INSERT, ((kind, part, rows, blob) for part, rows, blob
                                         in digest_parts(view, lo, stop, prints)))


def ledger_insert(kind: str) -> str:
    """The INSERT for ``ledger_columns``, with the customer kind as a literal."""
    # The kind is one of two literals: binding it on each of millions of rows costs time.
    if kind not in KINDS:
        raise ValueError(f"customer kind must be one of {KINDS}, not {kind!r}")
    return (f"insert into points_ledger ({', '.join(_LEDGER_FIELDS)}, customer_kind) "
            f"values ({', '.join('?' * len(_LEDGER_FIELDS))}, '{kind}')")


def clear_kind(db: Database, table: str, kind: str) -> None:
    """Delete ``kind``'s rows; a table holding only that kind is emptied in one step."""
    other = db.execute(f"select 1 from {table} where customer_kind != ? limit 1",
                       [kind]).fetchone()
    if other is None:
        db.execute(f"delete from {table}")  # SQLite truncates instead of deleting row by row
    else:
        db.execute(f"delete from {table} where customer_kind = ?", [kind])


def append_snapshot(db: Database, result: RulesResult, kind: str, as_of: datetime,
                    computed_at: str) -> None:
    """One ``metric_snapshots`` row for this run."""
    m = result.metrics
    db.execute(
        "insert into metric_snapshots (computed_at, as_of, customer_kind, period_start, "
        "period_end, metrics, notes) values (?, ?, ?, ?, ?, ?, ?)",
        [computed_at, as_of.isoformat(), kind, m.period_start.isoformat(),
         m.period_end.isoformat(), _metrics_json(m),
         json.dumps(result.notes, ensure_ascii=False)])


def _metrics_json(metrics: Metrics) -> str:
    return json.dumps(asdict(metrics), ensure_ascii=False, default=str)
