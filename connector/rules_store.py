"""Writing a rules run into the mirror: ``customer_state``, ``points_ledger``, a snapshot.

One transaction replaces the configured customer kind's states and ledger and appends a
``metric_snapshots`` row, so a reader sees the previous run or this one, never a mix.

At a million customers the ledger is millions of rows, and turning them into SQLite
rows is Python work that holds the GIL.  On a file mirror it is therefore done by a
forked child (:mod:`connector.parallel`) into a private staging file while the parent
writes the states; the parent then copies the staged ledger in with one
``INSERT … SELECT`` (SQLite's transfer optimisation copies records without decoding
them) inside the same transaction.  An in-memory mirror, or a machine without ``fork``,
writes both tables itself, in order.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, fields
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from connector.errors import MirrorError
from connector.mirror import Mirror
from connector.parallel import can_fork, start_forked
from rules.models import CustomerState, LedgerEntry, Metrics, RowSequence, RulesResult

__all__ = ["mirror_file", "store_result"]

log = logging.getLogger("crm_retention.rules")

_BATCH = 20_000  # rows built per chunk: bounded memory, few executemany calls
# Below this many ledger rows a child process costs more than it saves.
PARALLEL_MIN_LEDGER_ROWS = 200_000
_KINDS = ("contact", "company")

_STATE_FIELDS = [f.name for f in fields(CustomerState)]
_LEDGER_FIELDS = ["entry_key", "customer_id", "kind", "deal_id", "points", "at",
                  "tier_at_purchase", "reason"]


def mirror_file(mirror: Mirror) -> Path | None:
    """The file behind the mirror's main database, or None for an in-memory one."""
    for _, name, file in mirror.db.execute("pragma database_list").fetchall():
        if name == "main":
            return Path(file) if file else None
    return None


# -- rows ----------------------------------------------------------------------------------


def _columns(rows: Sequence[Any], lo: int, hi: int) -> dict[str, list[Any]]:
    """Rows lo:hi field by field; the engine's RowSequence does it without objects."""
    if isinstance(rows, RowSequence):
        return rows.columns(lo, hi)
    picked = list(rows[lo:hi])
    return {f.name: [getattr(r, f.name) for r in picked] for f in fields(picked[0])}


def _memo(convert: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """Apply ``convert`` to a column, once per distinct value (dates, tier perks...)."""
    def apply(values: list[Any]) -> list[Any]:
        done: dict[Any, Any] = {}
        return [done[v] if v in done else done.setdefault(v, convert(v)) for v in values]
    return apply


def _iso_text(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _json_text(values: tuple[str, ...]) -> str:
    return json.dumps(values, ensure_ascii=False)


_iso_days = _memo(_iso_text)
_json_tuples = _memo(_json_text)


def _state_rows(states: Sequence[CustomerState], computed_at: str
                ) -> Iterator[tuple[Any, ...]]:
    """``customer_state`` rows, built a chunk of columns at a time."""
    for lo in range(0, len(states), _BATCH):
        cols = _columns(states, lo, lo + _BATCH)
        for name in ("first_purchase", "last_purchase"):
            cols[name] = _iso_days(cols[name])
        for name in ("channels", "perks"):
            cols[name] = _json_tuples(cols[name])
        cols["churn_reasons"] = [_json_text(r) if r else "[]" for r in cols["churn_reasons"]]
        cols["computed_at"] = [computed_at] * len(cols["customer_id"])
        yield from zip(*(cols[name] for name in (*_STATE_FIELDS, "computed_at")), strict=True)


def _ledger_rows(ledger: Sequence[LedgerEntry]) -> Iterator[tuple[Any, ...]]:
    """``points_ledger`` rows (without the customer kind), a chunk of columns at a time."""
    for lo in range(0, len(ledger), _BATCH):
        cols = _columns(ledger, lo, lo + _BATCH)
        cols["at"] = _iso_days(cols["at"])
        yield from zip(*(cols[name] for name in _LEDGER_FIELDS), strict=True)


def _ledger_insert(kind: str, schema: str = "main") -> str:
    # The kind is one of two literals (checked by the caller): binding it on every one of
    # millions of rows would only cost time.
    return (f"insert into {schema}.points_ledger ({', '.join(_LEDGER_FIELDS)}, customer_kind) "
            f"values ({', '.join('?' * len(_LEDGER_FIELDS))}, '{kind}')")


# -- the transaction -----------------------------------------------------------------------


def _clear(db: Database, table: str, kind: str) -> None:
    """Delete ``kind``'s rows; a table holding only that kind is emptied in one step."""
    other = db.execute(f"select 1 from {table} where customer_kind != ? limit 1",
                       [kind]).fetchone()
    if other is None:
        db.execute(f"delete from {table}")  # SQLite truncates instead of deleting row by row
    else:
        db.execute(f"delete from {table} where customer_kind = ?", [kind])


def _write_states(db: Database, states: Sequence[CustomerState], kind: str,
                  computed_at: str) -> None:
    _clear(db, "customer_state", kind)
    marks = ", ".join("?" * (len(_STATE_FIELDS) + 1))
    db.conn.executemany(f"insert into customer_state values ({marks})",
                        _state_rows(states, computed_at))


def _append_snapshot(db: Database, result: RulesResult, kind: str, as_of: datetime,
                     computed_at: str) -> None:
    m = result.metrics
    db.execute(
        "insert into metric_snapshots (computed_at, as_of, customer_kind, period_start, "
        "period_end, metrics, notes) values (?, ?, ?, ?, ?, ?, ?)",
        [computed_at, as_of.isoformat(), kind, m.period_start.isoformat(),
         m.period_end.isoformat(), _metrics_json(m), json.dumps(result.notes,
                                                                ensure_ascii=False)])


def _metrics_json(metrics: Metrics) -> str:
    return json.dumps(asdict(metrics), ensure_ascii=False, default=str)


def store_result(mirror: Mirror, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str) -> None:
    """Replace ``kind``'s states and ledger with ``result``, append a snapshot — atomically.

    Rows of the other customer kind stay: switching ``rules.customer.kind`` back and forth
    keeps each kind's ledger, so reversals are still found when it is next used.
    """
    if kind not in _KINDS:
        raise ValueError(f"customer kind must be one of {_KINDS}, not {kind!r}")
    path = mirror_file(mirror)
    if path is not None and can_fork() and len(result.ledger) >= PARALLEL_MIN_LEDGER_ROWS:
        _store_with_staged_ledger(mirror, path, result, kind, as_of, computed_at)
        return
    db = mirror.db
    with db.atomic():
        _write_states(db, result.states, kind, computed_at)
        _clear(db, "points_ledger", kind)
        db.conn.executemany(_ledger_insert(kind), _ledger_rows(result.ledger))
        _append_snapshot(db, result, kind, as_of, computed_at)


# -- the staged ledger ---------------------------------------------------------------------


def _stage_path(path: Path) -> Path:
    return path.with_name(path.name + "-ledger-stage")


def _create_stage(stage: Path, ledger_sql: str) -> None:
    """A fresh, private staging file with the exact ``points_ledger`` schema."""
    for leftover in (stage, Path(f"{stage}-journal")):
        leftover.unlink(missing_ok=True)  # a crashed run's scratch: nothing to keep
    os.close(os.open(stage, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    with sqlite3.connect(stage) as conn:
        conn.execute(ledger_sql)
    conn.close()


def _write_stage(stage: Path, ledger: Sequence[LedgerEntry], kind: str) -> int:
    """In the child: every ledger row into the staging file; returns the row count."""
    conn = sqlite3.connect(stage, isolation_level=None)
    try:
        # Scratch data: a crash only loses the staging file, which the next run replaces.
        conn.execute("pragma journal_mode = off")
        conn.execute("pragma synchronous = off")
        conn.execute("begin")
        started = time.perf_counter()
        conn.executemany(_ledger_insert(kind), _ledger_rows(ledger))
        conn.execute("commit")
        log.debug("ledger staged in %.1f s (forked child)", time.perf_counter() - started)
        return int(conn.execute("select count(*) from points_ledger").fetchone()[0])
    finally:
        conn.close()


def _store_with_staged_ledger(mirror: Mirror, path: Path, result: RulesResult, kind: str,
                              as_of: datetime, computed_at: str) -> None:
    db = mirror.db
    stage = _stage_path(path)
    ledger_sql = db.execute("select sql from sqlite_master where type = 'table' and "
                            "name = 'points_ledger'").fetchone()[0]
    _create_stage(stage, ledger_sql)
    child = start_forked(partial(_write_stage, stage, result.ledger, kind),
                         "writing the points ledger")
    try:
        db.execute("attach database ? as stage", [str(stage)])  # not allowed inside a txn
        try:
            with db.atomic():
                started = time.perf_counter()
                _write_states(db, result.states, kind, computed_at)
                states = time.perf_counter()
                staged = child.result()
                waited = time.perf_counter()
                _clear(db, "points_ledger", kind)
                db.execute("insert into main.points_ledger select * from stage.points_ledger")
                log.debug("states %.1f s, then waited %.1f s for the ledger, copied it in "
                          "%.1f s", states - started, waited - states,
                          time.perf_counter() - waited)
                if staged != len(result.ledger):
                    raise MirrorError(f"staged {staged:,} ledger rows of "
                                      f"{len(result.ledger):,}; nothing was stored")
                _append_snapshot(db, result, kind, as_of, computed_at)
        finally:
            db.execute("detach database stage")
    finally:
        child.cancel()
        for scratch in (stage, Path(f"{stage}-journal")):
            scratch.unlink(missing_ok=True)
