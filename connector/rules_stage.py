"""The staged store of a rules run: rows built on both cores, copied in by one transaction.

Turning millions of entries into SQLite rows is Python work that holds the GIL, so on a
file mirror it is spread over forked children (:mod:`connector.parallel`), each writing
into a private staging file (mode 0600, journal off: scratch that a crash only loses):

* the parent and one child stage half of ``customer_state`` each;
* with no stored ledger of this customer kind, two children stage half the ledger each;
* otherwise one child compares the new ledger with the stored one
  (:mod:`connector.ledger_delta`) and stages only what changed — or all of it when most
  of it did.

Nothing touches the mirror until every stage is complete; then one transaction replaces
the states, applies the ledger (delete stale rows, upsert the rest) and appends the
snapshot.  ``INSERT … SELECT`` from an attached stage copies records without decoding
them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.bulk_insert import insert_many
from connector.errors import MirrorError
from connector.ledger_delta import ledger_delta
from connector.ledger_digest import DIGEST_INSERT, digest_parts, part_boundary
from connector.mirror import Mirror, table_sql
from connector.parallel import Forked, start_forked
from connector.rules_rows import (
    append_snapshot,
    clear_kind,
    ledger_insert,
    ledger_rows,
    ledger_tuples,
    state_insert,
    state_rows,
)
from connector.stored_ledger import StoredLedger
from rules.ledger_rows import LedgerRows, fingerprints
from rules.models import RulesResult

__all__ = ["DELTA_MAX_SHARE", "store_staged"]

log = logging.getLogger("crm_retention.rules")
IntArray = npt.NDArray[np.int64]

# Past this share of changed entries, rewriting the ledger beats upserting row by row.
DELTA_MAX_SHARE = 0.3
_CHUNK = 20_000
_STALE_SQL = ("create table ledger_stale (customer_id integer not null, "
              "fingerprint integer not null)")


@dataclass(frozen=True)
class _Staged:
    """What a ledger child left in its stage: everything, or only what changed."""

    mode: Literal["full", "delta", "rewrite"]  # rewrite: too much changed, nothing staged
    rows: int
    stale: int = 0


def _ledger_ddl(db: Database) -> tuple[str, str]:
    """The ledger's tables as the mirror defines them, for a staging file."""
    return table_sql(db, "points_ledger"), table_sql(db, "points_ledger_digest")


def _create(stage: Path, *ddl: str) -> None:
    """A fresh, private staging file holding these tables."""
    for leftover in (stage, Path(f"{stage}-journal")):
        leftover.unlink(missing_ok=True)  # a crashed run's scratch: nothing to keep
    os.close(os.open(stage, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(stage)
    try:
        for statement in ddl:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


@contextmanager
def _scratch(stage: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(stage, isolation_level=None)
    try:
        conn.execute("pragma journal_mode = off")
        conn.execute("pragma synchronous = off")
        conn.execute("begin")
        yield conn
        conn.execute("commit")
    finally:
        conn.close()


def _stage_range(stage: Path, result: RulesResult, kind: str, lo: int, hi: int) -> _Staged:
    """In a child: ledger entries lo:hi, and their digest parts, into ``stage``."""
    view = result.ledger_view
    # one fingerprint per entry, for its row and for the digest
    prints = None if view is None else fingerprints(view, np.arange(lo, hi, dtype=np.int64))
    with _scratch(stage) as conn:
        insert_many(conn, ledger_insert(kind), ledger_rows(result, lo, hi, prints))
        if view is not None:
            _stage_digest(conn, view, kind, lo, hi, prints)
    return _Staged("full", hi - lo)


def _stage_digest(conn: sqlite3.Connection, view: LedgerRows, kind: str, lo: int, hi: int,
                  prints: IntArray | None = None) -> None:
    conn.executemany(DIGEST_INSERT, ((kind, part, rows, blob) for part, rows, blob
                                     in digest_parts(view, lo, hi, prints)))


def _stage_delta(stage: Path, mirror_path: Path, view: LedgerRows, kind: str,
                 stored: tuple[IntArray, IntArray] | None) -> _Staged:
    """In a child: compare with the stored ledger and stage the changes — or, when most
    entries changed, stage nothing and say so (two children then rewrite it faster)."""
    reader = Database(sqlite3.connect(f"file:{mirror_path}?mode=ro", uri=True))
    try:
        delta = ledger_delta(view, reader, kind, stored)
    finally:
        reader.conn.close()
    if len(delta.upsert) + len(delta.stale) > DELTA_MAX_SHARE * max(len(view), 1):
        return _Staged("rewrite", len(delta.upsert), len(delta.stale))
    with _scratch(stage) as conn:
        for lo in range(0, len(delta.upsert), _CHUNK):
            chunk = delta.upsert[lo:lo + _CHUNK]
            insert_many(conn, ledger_insert(kind), ledger_tuples(
                view.columns_at(chunk), delta.fingerprints[chunk].tolist()))
        conn.executemany("insert into ledger_stale values (?, ?)", delta.stale)
        _stage_digest(conn, view, kind, 0, len(view), delta.fingerprints)
    return _Staged("delta", len(delta.upsert), len(delta.stale))


def _start_halves(mirror: Mirror, result: RulesResult, kind: str,
                  stages: list[Path]) -> list[Forked[_Staged]]:
    ddl = _ledger_ddl(mirror.db)
    half = min(part_boundary(len(result.ledger) // 2), len(result.ledger))  # whole parts
    bounds = [(0, half), (half, len(result.ledger))]
    for stage in stages:
        _create(stage, *ddl)
    return [start_forked(partial(_stage_range, stage, result, kind, lo, hi),
                         "writing the points ledger")
            for stage, (lo, hi) in zip(stages, bounds, strict=True)]


def _start_ledger(mirror: Mirror, path: Path, result: RulesResult, kind: str,
                  stages: list[Path], stored: StoredLedger | None) -> list[Forked[_Staged]]:
    """Two children writing halves when nothing is stored; else one child comparing."""
    if stored is None:
        held = mirror.db.execute("select 1 from points_ledger where customer_kind = ? "
                                 "limit 1", [kind]).fetchone() is not None
    else:
        held = len(stored.fingerprints) > 0
    if not held or result.ledger_view is None:
        return _start_halves(mirror, result, kind, stages)
    _create(stages[0], *_ledger_ddl(mirror.db), _STALE_SQL)
    known = (stored.customers, stored.fingerprints) if stored is not None else None
    return [start_forked(partial(_stage_delta, stages[0], path, result.ledger_view, kind,
                                 known), "comparing and writing the points ledger")]


def _ledger_staged(mirror: Mirror, result: RulesResult, kind: str, stages: list[Path],
                   children: list[Forked[_Staged]]) -> list[_Staged]:
    staged = [child.result() for child in children]
    if [s.mode for s in staged] != ["rewrite"]:
        return staged
    children[:] = _start_halves(mirror, result, kind, stages)
    return [child.result() for child in children]


def _stage_states(stage: Path, result: RulesResult, computed_at: str, lo: int, hi: int
                  ) -> int:
    """States lo:hi into ``stage`` (the parent stages one half, a child the other)."""
    with _scratch(stage) as conn:
        insert_many(conn, state_insert(), state_rows(result.states, computed_at, lo, hi))
    return hi - lo


def store_staged(mirror: Mirror, path: Path, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str, stored: StoredLedger | None = None) -> None:
    """Stage states and ledger on both cores, then apply them in one transaction."""
    states_stages = [path.with_name(f"{path.name}-states-stage{i}") for i in (1, 2)]
    ledger_stages = [path.with_name(f"{path.name}-ledger-stage{i}") for i in (1, 2)]
    children: list[Forked[_Staged]] = []
    upper: Forked[int] | None = None
    try:
        started = time.perf_counter()
        children = _start_ledger(mirror, path, result, kind, ledger_stages, stored)
        for stage in states_stages:
            _create(stage, table_sql(mirror.db, "customer_state"))
        half = len(result.states) // 2
        upper = start_forked(partial(_stage_states, states_stages[1], result, computed_at,
                                     half, len(result.states)), "writing customer states")
        _stage_states(states_stages[0], result, computed_at, 0, half)
        upper.result()
        staged_states = time.perf_counter()
        staged = _ledger_staged(mirror, result, kind, ledger_stages, children)
        ready = time.perf_counter()
        _apply(mirror, result, kind, as_of, computed_at, states_stages,
               ledger_stages[: len(staged)], staged)
        log.debug("states staged %.1f s, ledger ready %.1f s later (%s), applied in %.1f s",
                  staged_states - started, ready - staged_states,
                  ", ".join(f"{s.mode}: {s.rows:,} rows, {s.stale:,} stale" for s in staged),
                  time.perf_counter() - ready)
    finally:
        for child in children:
            child.cancel()
        if upper is not None:
            upper.cancel()
        for stage in [*states_stages, *ledger_stages]:
            for file in (stage, Path(f"{stage}-journal")):
                file.unlink(missing_ok=True)


def _apply(mirror: Mirror, result: RulesResult, kind: str, as_of: datetime, computed_at: str,
           states_stages: list[Path], ledger_stages: list[Path], staged: list[_Staged]) -> None:
    db = mirror.db
    stages = [*states_stages, *ledger_stages]
    names = [f"stage{i}" for i in range(len(stages))]
    for name, stage in zip(names, stages, strict=True):
        db.execute("attach database ? as " + name, [str(stage)])  # not inside a txn
    try:
        t0 = time.perf_counter()
        with db.atomic():
            clear_kind(db, "customer_state", kind)
            for name in names[: len(states_stages)]:
                db.execute(f"insert into main.customer_state select * from "
                           f"{name}.customer_state")
            t1 = time.perf_counter()
            _apply_ledger(db, kind, names[len(states_stages):], staged, len(result.ledger))
            t2 = time.perf_counter()
            append_snapshot(db, result, kind, as_of, computed_at)
        log.debug("applied: states %.1f s, ledger and digest %.1f s, snapshot and commit "
                  "%.1f s", t1 - t0, t2 - t1, time.perf_counter() - t2)
    finally:
        for name in names:
            db.execute(f"detach database {name}")


def _apply_ledger(db: Database, kind: str, names: list[str], staged: list[_Staged],
                  expected: int) -> None:
    _apply_rows(db, kind, names, staged, expected)
    # the digest describes exactly the rows just stored (or, without one, nothing)
    db.execute("delete from points_ledger_digest where customer_kind = ?", [kind])
    for name in names:
        db.execute(f"insert into main.points_ledger_digest select * from "
                   f"{name}.points_ledger_digest")


def _apply_rows(db: Database, kind: str, names: list[str], staged: list[_Staged],
                expected: int) -> None:
    if all(s.mode == "full" for s in staged):
        if sum(s.rows for s in staged) != expected:
            raise MirrorError(f"staged {sum(s.rows for s in staged):,} ledger rows of "
                              f"{expected:,}; nothing was stored")
        clear_kind(db, "points_ledger", kind)
        for name in names:
            db.execute(f"insert into main.points_ledger select * from {name}.points_ledger")
        return
    (name,) = names
    stale = db.execute(f"select customer_id, fingerprint from {name}.ledger_stale").fetchall()
    # by the primary key's customer_id prefix: a few rows of one customer each time
    db.conn.executemany("delete from main.points_ledger where customer_kind = ? and "
                        "customer_id = ? and coalesce(fingerprint, 0) = ?",
                        [(kind, customer, fp) for customer, fp in stale])
    db.execute(f"insert or replace into main.points_ledger select * from {name}.points_ledger")
    held = db.execute("select count(*) from points_ledger where customer_kind = ?",
                      [kind]).fetchone()[0]
    if held != expected:  # the delta and the stored rows disagree: refuse, keep the old
        raise MirrorError(f"the ledger would hold {held:,} rows, not {expected:,}; "
                          "nothing was stored")
