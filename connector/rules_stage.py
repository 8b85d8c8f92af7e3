"""The staged store of a rules run: the ledger built on the second core, copied in at once.

Turning millions of entries into SQLite rows is Python work that holds the GIL, so on a
file mirror the ledger's rows are built by forked children (:mod:`connector.parallel`),
each writing into a private staging file (mode 0600, journal off: scratch that a crash
only loses):

* with no stored ledger of this customer kind, two children stage half the ledger each;
* otherwise one child compares the new ledger with the stored one
  (:mod:`connector.ledger_delta`) and stages only what changed — or nothing, when most
  of it changed, and two children then stage it in halves.

Meanwhile the parent opens the one transaction and replaces the states itself (building
state rows is its share of the work); then it copies the staged ledger in (delete stale
rows, upsert the rest) and appends the snapshot.  ``INSERT … SELECT`` from an attached
stage copies records without decoding them.

The children fork only once the computation is over: forked mid-compute, they would
keep alive every page the parent frees afterwards (the stored ledger's entries above
all), which cost 0.25 GB at a million customers.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.bulk_insert import insert_columns
from connector.errors import MirrorError
from connector.ledger_delta import ledger_delta
from connector.ledger_digest import DIGEST_INSERT, digest_parts, part_boundary
from connector.mirror import Mirror, table_sql
from connector.parallel import Forked, start_forked
from connector.rules_rows import (
    append_snapshot,
    clear_kind,
    ledger_column_list,
    ledger_columns,
    ledger_insert,
    state_columns,
    state_insert,
)
from connector.stored_ledger import StoredLedger
from rules.ledger_rows import LedgerRows, fingerprints
from rules.models import LedgerEntry, RulesResult

__all__ = ["DELTA_MAX_SHARE", "LedgerStage", "store_staged"]

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


@dataclass(frozen=True)
class _Entries:
    """The ledger to stage: its entries and, when the engine built them, their columns."""

    ledger: Sequence[LedgerEntry]
    view: LedgerRows | None


def _stage_range(stage: Path, entries: _Entries, kind: str, lo: int, hi: int) -> _Staged:
    """In a child: ledger entries lo:hi, and their digest parts, into ``stage``."""
    view = entries.view
    # one fingerprint per entry, for its row and for the digest
    prints = None if view is None else fingerprints(view, np.arange(lo, hi, dtype=np.int64))
    with _scratch(stage) as conn:
        for columns in ledger_columns(entries.ledger, view, lo, hi, prints):
            insert_columns(conn, ledger_insert(kind), columns)
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
            insert_columns(conn, ledger_insert(kind), ledger_column_list(
                view.columns_at(chunk), delta.fingerprints[chunk].tolist()))
        conn.executemany("insert into ledger_stale values (?, ?)", delta.stale)
        _stage_digest(conn, view, kind, 0, len(view), delta.fingerprints)
    return _Staged("delta", len(delta.upsert), len(delta.stale))


class LedgerStage:
    """The points ledger's staging: its children, their files, and what they staged.

    ``start`` forks the children, which work while the parent writes the states;
    ``staged`` waits for them; ``close`` stops them and removes the files.
    """

    def __init__(self, mirror: Mirror, path: Path, kind: str,
                 stored: StoredLedger | None) -> None:
        self.mirror, self.path, self.kind, self.stored = mirror, path, kind, stored
        self.files = [path.with_name(f"{path.name}-ledger-stage{i}") for i in (1, 2)]
        self.schemas = ["ledger_stage1", "ledger_stage2"]  # the files, once attached
        self._entries: _Entries | None = None
        self._children: list[Forked[_Staged]] = []
        self._attached: list[str] = []

    def start(self, ledger: Sequence[LedgerEntry], view: LedgerRows | None) -> None:
        """Fork the children: two writing halves when nothing is stored; else one
        comparing with the stored ledger and writing what changed.

        Both files are created and attached to the mirror's connection now, before any
        child runs: attaching reads a file's schema, which a child's write lock would
        block, and SQLite cannot attach inside the store's transaction either.
        """
        if self._entries is not None:
            raise RuntimeError("the ledger stage was started already")
        self._entries = entries = _Entries(ledger, view)
        ddl = _ledger_ddl(self.mirror.db)
        if view is None or not self._holds_rows():
            for file in self.files:
                _create(file, *ddl)
            self._attach()
            self._children = self._fork_halves(entries)
            return
        _create(self.files[0], *ddl, _STALE_SQL)
        _create(self.files[1], *ddl)  # used only if the delta says: rewrite in halves
        self._attach()
        stored = self.stored
        known = (stored.customers, stored.fingerprints) if stored is not None else None
        self._children = [start_forked(
            partial(_stage_delta, self.files[0], self.path, view, self.kind, known),
            "comparing and writing the points ledger")]

    def each_staged(self) -> Iterator[tuple[str, _Staged]]:
        """(attached schema, what it holds) of each stage once its child is done, in
        order — so the first can be copied in while the second is still written.  When
        the delta child found most entries changed, the halves written then instead."""
        if self._entries is None:
            raise RuntimeError("the ledger stage was never started")
        for schema, child in zip(self.schemas, list(self._children), strict=False):
            staged = child.result()
            if staged.mode != "rewrite":
                yield schema, staged
                continue
            # the delta child wrote nothing: its file and the spare one take the halves
            self._children = self._fork_halves(self._entries)
            for half_schema, half in zip(self.schemas, self._children, strict=True):
                yield half_schema, half.result()
            return

    def close(self) -> None:
        """Stop any child still running, detach and delete the staging files; idempotent."""
        for child in self._children:
            child.cancel()
        while self._attached:
            self.mirror.db.execute(f"detach database {self._attached.pop()}")
        _remove(self.files)

    def _attach(self) -> None:
        for name, file in zip(self.schemas, self.files, strict=True):
            self.mirror.db.execute("attach database ? as " + name, [str(file)])
            self._attached.append(name)

    def _holds_rows(self) -> bool:
        if self.stored is not None:
            return len(self.stored.fingerprints) > 0
        return self.mirror.db.execute("select 1 from points_ledger where customer_kind = ? "
                                      "limit 1", [self.kind]).fetchone() is not None

    def _fork_halves(self, entries: _Entries) -> list[Forked[_Staged]]:
        count = len(entries.ledger)
        half = min(part_boundary(count // 2), count)  # whole digest parts
        return [start_forked(partial(_stage_range, stage, entries, self.kind, lo, hi),
                             "writing the points ledger")
                for stage, (lo, hi) in zip(self.files, [(0, half), (half, count)],
                                           strict=True)]


def _remove(stages: list[Path]) -> None:
    for stage in stages:
        for file in (stage, Path(f"{stage}-journal")):
            file.unlink(missing_ok=True)


def store_staged(mirror: Mirror, path: Path, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str, stored: StoredLedger | None = None) -> None:
    """Write the states while children stage the ledger, then copy it in: one transaction."""
    stage = LedgerStage(mirror, path, kind, stored)
    try:
        stage.start(result.ledger, result.ledger_view)
        _apply(mirror, result, kind, as_of, computed_at, stage)
    finally:
        stage.close()


def _apply(mirror: Mirror, result: RulesResult, kind: str, as_of: datetime, computed_at: str,
           stage: LedgerStage) -> None:
    """The one transaction: states written here, beside the ledger children; then their
    stages copied in.  The write lock is held from the first state row to the commit."""
    db = mirror.db
    t0 = time.perf_counter()
    with db.atomic():
        clear_kind(db, "customer_state", kind)
        for columns in state_columns(result.states, computed_at):
            insert_columns(db.conn, state_insert(), columns)
        t1 = time.perf_counter()
        staged = _apply_ledger(db, kind, stage, len(result.ledger))
        t2 = time.perf_counter()
        append_snapshot(db, result, kind, as_of, computed_at)
    log.debug("stored: states %.1f s, ledger ready and copied in %.1f s more (%s), snapshot "
              "and commit %.1f s", t1 - t0, t2 - t1,
              ", ".join(f"{s.mode}: {s.rows:,} rows, {s.stale:,} stale" for s in staged),
              time.perf_counter() - t2)


def _apply_ledger(db: Database, kind: str, stage: LedgerStage, expected: int
                  ) -> list[_Staged]:
    """Copy each stage in as soon as it is complete; then the digest of them all."""
    staged: list[_Staged] = []
    schemas: list[str] = []
    for schema, done in stage.each_staged():
        if done.mode == "full" and not staged:
            clear_kind(db, "points_ledger", kind)
        staged.append(done)
        schemas.append(schema)
        _apply_rows(db, kind, schema, done, expected)
    if all(s.mode == "full" for s in staged) and sum(s.rows for s in staged) != expected:
        raise MirrorError(f"staged {sum(s.rows for s in staged):,} ledger rows of "
                          f"{expected:,}; nothing was stored")
    # the digest describes exactly the rows just stored (or, without one, nothing)
    db.execute("delete from points_ledger_digest where customer_kind = ?", [kind])
    for schema in schemas:
        db.execute(f"insert into main.points_ledger_digest select * from "
                   f"{schema}.points_ledger_digest")
    return staged


def _apply_rows(db: Database, kind: str, name: str, staged: _Staged, expected: int) -> None:
    if staged.mode == "full":
        db.execute(f"insert into main.points_ledger select * from {name}.points_ledger")
        return
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
