"""The staged store of a rules run: one child builds rows while the parent writes.

Turning millions of entries into SQLite rows is Python work that holds the GIL, so on a
file mirror one forked child (:mod:`connector.parallel`) writes rows into a private
staging file (mode 0600, journal off: scratch that a crash only loses) while the parent,
in the one transaction, writes into the mirror:

* with no stored ledger of this customer kind, the child stages the states, then ledger
  parts (``PART_ROWS`` entries each) taken from the end, while the parent writes parts
  taken from the start straight into the mirror (they need no copy), until the two
  meet (:mod:`connector.part_claims`: they finish together whatever the host's speed);
* otherwise the parent writes state parts taken from the start while the child compares
  the new ledger with the stored one (:mod:`connector.ledger_delta`), stages only what
  changed — or nothing, when most of it changed — and then helps with the states,
  staging parts taken from the end.  When most of the ledger changed it is rewritten in
  full, by parts as above.

Then the parent copies the staged rows in (delete stale rows, upsert the rest) and
appends the snapshot.  ``INSERT … SELECT`` from an attached stage copies records
without decoding them, and into an empty table (the states of a first run) without even
searching the b-tree: ~1.2 s for a million states, where writing them takes ~10 s.  That
is why the child, not the parent, stages the states of a full rewrite: the copy left to
do alone at the end is then the cheap one (a first run's store at a million customers:
see bench/RESULTS.md).  Two processes, not more: on two cores a third only added
contention (the first run's store: 33.7–36.2 s with two ledger children, 26.9–30.0 s
with one, at similar host speed).

The child forks only once the computation is over: forked mid-compute, it would keep
alive every page the parent frees afterwards (the stored ledger's entries above all),
which raised the peak by a quarter of a GB at a million customers.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector import ledger_digest
from connector.bulk_insert import insert_columns
from connector.errors import MirrorError
from connector.ledger_delta import LedgerDelta, ledger_delta
from connector.ledger_digest import DIGEST_INSERT, digest_parts
from connector.mirror import Mirror, table_sql
from connector.parallel import Forked, start_forked
from connector.part_claims import PartClaims
from connector.rules_rows import (
    NULL,
    append_snapshot,
    clear_kind,
    ledger_column_list,
    ledger_insert,
    state_columns,
    state_insert,
    write_ledger,
)
from connector.stored_ledger import StoredLedger
from rules.ledger_rows import LedgerRows
from rules.models import CustomerState, LedgerEntry, RulesResult

__all__ = ["DELTA_MAX_SHARE", "store_staged"]

log = logging.getLogger("crm_retention.rules")
IntArray = npt.NDArray[np.int64]

# Past this share of changed entries, rewriting the ledger beats upserting row by row.
DELTA_MAX_SHARE = 0.3
_CHUNK = 20_000
_STATE_PART = 1 << 16  # states per claimed part, when parent and child share them
_STALE_SQL = ("create table ledger_stale (customer_id integer not null, "
              "fingerprint integer not null)")


@dataclass(frozen=True)
class _Staged:
    """What a ledger child left in its stage: everything, or only what changed."""

    # full: parts of the ledger; delta: only what changed; rewrite: too much changed,
    # nothing staged; direct: the parent's own range, written straight into the mirror
    mode: Literal["full", "delta", "rewrite", "direct"]
    rows: int
    stale: int = 0
    seconds: float = 0.0  # the child's own time, against the parent's
    states: int = 0  # states it staged (all of them, or the parts it claimed)


def _ledger_ddl(db: Database) -> tuple[str, str]:
    """The ledger's tables as the mirror defines them, for a staging file."""
    return table_sql(db, "points_ledger"), table_sql(db, "points_ledger_digest")


def _states_ddl(db: Database) -> str:
    """``customer_state`` as the mirror defines it: a copy into it needs the same schema
    to skip decoding records."""
    return table_sql(db, "customer_state")


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


@dataclass(frozen=True)
class _States:
    """The states to store (all staged by a first run's child, or shared by parts with
    a delta child), stamped ``computed_at``."""

    states: Sequence[CustomerState]
    computed_at: str


def _part_range(part: int, count: int) -> tuple[int, int]:
    """The entries (lo, hi) of ledger part ``part`` (the digest's parts)."""
    size = ledger_digest.PART_ROWS
    return part * size, min((part + 1) * size, count)


def _stage_claimed(stage: Path, entries: _Entries, kind: str, claims: PartClaims,
                   states: _States | None = None) -> _Staged:
    """In a child: the states (if given), then ledger parts claimed from the end, each
    with its digest part, into ``stage``."""
    started, rows = time.perf_counter(), 0
    with _scratch(stage) as conn:
        if states is not None:
            for columns in state_columns(states.states, states.computed_at):
                insert_columns(conn, state_insert(), columns)
        while (part := claims.back()) is not None:
            lo, hi = _part_range(part, len(entries.ledger))
            write_ledger(conn, entries.ledger, entries.view, kind, lo, hi)
            rows += hi - lo
    return _Staged("full", rows, seconds=time.perf_counter() - started,
                   states=len(states.states) if states is not None else 0)


def _write_state_parts(conn: sqlite3.Connection, states: _States,
                       claim: Callable[[], int | None]) -> int:
    """State parts, as ``claim`` gives them out, into ``conn``; how many states."""
    written = 0
    while (part := claim()) is not None:
        lo, hi = part * _STATE_PART, min((part + 1) * _STATE_PART, len(states.states))
        for columns in state_columns(states.states, states.computed_at, lo, hi):
            insert_columns(conn, state_insert(), columns)
        written += hi - lo
    return written


def _stage_delta(stage: Path, mirror_path: Path, view: LedgerRows, kind: str,
                 stored: tuple[IntArray, IntArray] | None, states: _States,
                 state_claims: PartClaims) -> _Staged:
    """In a child: compare with the stored ledger and stage the changes — or, when most
    entries changed, stage nothing and say so (the ledger is then rewritten in full);
    then stage state parts claimed from the end."""
    started = time.perf_counter()
    reader = Database(sqlite3.connect(f"file:{mirror_path}?mode=ro", uri=True))
    try:
        delta = ledger_delta(view, reader, kind, stored)
    finally:
        reader.conn.close()
    rewrite = len(delta.upsert) + len(delta.stale) > DELTA_MAX_SHARE * max(len(view), 1)
    with _scratch(stage) as conn:
        if not rewrite:
            _write_delta(conn, view, kind, delta)
        staged_states = _write_state_parts(conn, states, state_claims.back)
    return _Staged("rewrite" if rewrite else "delta", len(delta.upsert), len(delta.stale),
                   seconds=time.perf_counter() - started, states=staged_states)


def _write_delta(conn: sqlite3.Connection, view: LedgerRows, kind: str,
                 delta: LedgerDelta) -> None:
    for lo in range(0, len(delta.upsert), _CHUNK):
        chunk = delta.upsert[lo:lo + _CHUNK]
        insert_columns(conn, ledger_insert(kind), ledger_column_list(
            view.columns_at(chunk, NULL), delta.fingerprints[chunk].tolist()))
    conn.executemany("insert into ledger_stale values (?, ?)", delta.stale)
    conn.executemany(DIGEST_INSERT, ((kind, part, rows, blob) for part, rows, blob
                                     in digest_parts(view, 0, len(view), delta.fingerprints)))


class _LedgerStage:
    """The points ledger's staging: its child, its file, and the parent's own share.

    ``start`` forks the child: with nothing stored, it stages the states and ledger
    parts from the end (``stages_states``); else it compares the ledger with the stored
    one, then stages state parts from the end while the parent writes those from the
    start (``write_parent_states``).  ``parent_parts`` gives the ledger parts the parent
    writes itself, claimed from the start (waiting, on a stored ledger, for the delta
    child's verdict); ``staged`` waits for the child; ``close`` stops it and removes the
    file.
    """

    SCHEMA = "ledger_stage"  # the file, once attached

    def __init__(self, mirror: Mirror, path: Path, kind: str,
                 stored: StoredLedger | None) -> None:
        self.mirror, self.path, self.kind, self.stored = mirror, path, kind, stored
        self.file = path.with_name(f"{path.name}-ledger-stage")
        self._entries: _Entries | None = None
        self._child: Forked[_Staged] | None = None
        self._delta = False  # the child stages only what changed
        self._verdict: _Staged | None = None  # the delta child's, once read
        self._attached = False
        self._states: _States | None = None  # staged by the first child, when set
        self._claims: PartClaims | None = None  # the ledger parts, once rewritten in full
        self._state_claims: PartClaims | None = None  # the state parts, beside a delta

    @property
    def entries(self) -> _Entries:
        """What is being staged (after ``start``)."""
        if self._entries is None:
            raise RuntimeError("the ledger stage was never started")
        return self._entries

    @property
    def stages_states(self) -> bool:
        """Whether the child stages the states (the parent then copies them in)."""
        return self._states is not None

    def start(self, ledger: Sequence[LedgerEntry], view: LedgerRows | None,
              states: _States) -> None:
        """Fork the child: writing the states and ledger parts from the end when nothing
        is stored; else comparing with the stored ledger, writing what changed and then
        state parts from the end.

        The file is created and attached to the mirror's connection now, before the
        child runs: attaching reads a file's schema, which a child's write lock would
        block, and SQLite cannot attach inside the store's transaction either.
        """
        if self._entries is not None:
            raise RuntimeError("the ledger stage was started already")
        self._entries = entries = _Entries(ledger, view)
        self._delta = view is not None and self._holds_rows()
        ddl = [*_ledger_ddl(self.mirror.db), _states_ddl(self.mirror.db),
               *([_STALE_SQL] if self._delta else [])]
        _create(self.file, *ddl)
        self.mirror.db.execute(f"attach database ? as {self.SCHEMA}", [str(self.file)])
        self._attached = True
        if view is None or not self._delta:
            self._states = states
            self._child = self._fork_rest(entries)
            return
        stored = self.stored
        known = (stored.customers, stored.fingerprints) if stored is not None else None
        # before the fork: both processes share the claims
        self._state_claims = PartClaims(-(-len(states.states) // _STATE_PART))
        self._child = start_forked(
            partial(_stage_delta, self.file, self.path, view, self.kind, known, states,
                    self._state_claims),
            "comparing and writing the points ledger")

    def write_parent_states(self, conn: sqlite3.Connection, states: _States) -> int:
        """Write the state parts the parent claims from the start, beside a delta child
        (none when the child stages every state); how many states."""
        if self._state_claims is None:
            return 0
        return _write_state_parts(conn, states, self._state_claims.front)

    def parent_parts(self) -> Iterator[tuple[int, int]] | None:
        """The entries (lo, hi) of each part the parent writes itself, claimed as it goes,
        when the ledger is rewritten in full; None when the child stages only what
        changed."""
        if self._delta and self._verdict is None:
            self._verdict = self._wait()
            if self._verdict.mode == "rewrite":  # it staged nothing: rewrite in full
                self._delta = False
                self._child = self._fork_rest(self.entries)
        if self._delta:
            return None
        claims, count = self._claims, len(self.entries.ledger)
        assert claims is not None  # made with the child that writes the rest
        return (_part_range(part, count) for part in iter(claims.front, None))

    def staged(self) -> _Staged:
        """What the stage holds, once the child is done (after ``parent_parts``, which
        reads the delta child's verdict)."""
        if not self._delta:
            done = self._wait()
            if self._verdict is None:
                return done
            # rewritten after a delta child's verdict: the states it staged are there too
            return replace(done, states=done.states + self._verdict.states)
        if self._verdict is None:
            raise RuntimeError("parent_parts comes first: it reads the verdict")
        return self._verdict

    def close(self) -> None:
        """Stop the child if it still runs, detach and delete the staging file;
        idempotent."""
        if self._child is not None:
            self._child.cancel()
        if self._attached:
            self.mirror.db.execute(f"detach database {self.SCHEMA}")
            self._attached = False
        for claims in (self._claims, self._state_claims):
            if claims is not None:
                claims.close()
        self._claims = self._state_claims = None
        _remove(self.file)

    def _wait(self) -> _Staged:
        if self._child is None:
            raise RuntimeError("the ledger stage was never started")
        return self._child.result()

    def _holds_rows(self) -> bool:
        if self.stored is not None:
            return len(self.stored.fingerprints) > 0
        return self.mirror.db.execute("select 1 from points_ledger where customer_kind = ? "
                                      "limit 1", [self.kind]).fetchone() is not None

    def _fork_rest(self, entries: _Entries) -> Forked[_Staged]:
        parts = -(-len(entries.ledger) // ledger_digest.PART_ROWS)
        self._claims = PartClaims(parts)  # before the fork: both processes share it
        return start_forked(partial(_stage_claimed, self.file, entries, self.kind,
                                    self._claims, self._states),
                            "writing the states and points ledger" if self.stages_states
                            else "writing the points ledger")


def _remove(stage: Path) -> None:
    for file in (stage, Path(f"{stage}-journal")):
        file.unlink(missing_ok=True)


def store_staged(mirror: Mirror, path: Path, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str, stored: StoredLedger | None = None) -> None:
    """Write beside a child that stages the rest, then copy it in: one transaction."""
    stage = _LedgerStage(mirror, path, kind, stored)
    states = _States(result.states, computed_at)
    try:
        stage.start(result.ledger, result.ledger_view, states)
        _apply(mirror, result, kind, states, as_of, stage)
    finally:
        stage.close()


def _apply(mirror: Mirror, result: RulesResult, kind: str, states: _States, as_of: datetime,
           stage: _LedgerStage) -> None:
    """The one transaction: the states (here, or copied from the child's stage) and the
    ledger.  The write lock is held from the first row to the commit."""
    db = mirror.db
    t0 = time.perf_counter()
    with db.atomic():
        clear_kind(db, "customer_state", kind)
        written = stage.write_parent_states(db.conn, states)
        t1 = time.perf_counter()
        staged = _apply_ledger(db, kind, stage, len(result.ledger))
        t2 = time.perf_counter()
        if written + sum(s.states for s in staged) != len(result.states):
            raise MirrorError(f"wrote {written + sum(s.states for s in staged):,} states of "
                              f"{len(result.states):,}; nothing was stored")
        append_snapshot(db, result, kind, as_of, states.computed_at)
    log.debug("stored: %s states here in %.1f s, ledger ready and copied in %.1f s more "
              "(%s), snapshot and commit %.1f s", f"{written:,}", t1 - t0, t2 - t1,
              ", ".join(f"{s.mode}: {s.rows:,} rows, {s.stale:,} stale, {s.states:,} states"
                        for s in staged), time.perf_counter() - t2)


def _apply_ledger(db: Database, kind: str, stage: _LedgerStage, expected: int
                  ) -> list[_Staged]:
    """The parent's own parts of a full rewrite, then the child's stage; the digest
    rewritten with them (it describes exactly the rows stored)."""
    db.execute("delete from points_ledger_digest where customer_kind = ?", [kind])
    parts = stage.parent_parts()
    staged: list[_Staged] = []
    if parts is not None:
        clear_kind(db, "points_ledger", kind)
        rows = 0
        for lo, hi in parts:  # beside the child, straight into the mirror: no copy
            write_ledger(db.conn, stage.entries.ledger, stage.entries.view, kind, lo, hi)
            rows += hi - lo
        staged.append(_Staged("direct", rows))
    waiting = time.perf_counter()
    done = stage.staged()
    copying = time.perf_counter()
    staged.append(done)
    # the child's states; into an emptied table (all of them, on a first run) SQLite
    # copies the records without searching the b-tree
    db.execute(f"insert into main.customer_state select * from {stage.SCHEMA}.customer_state")
    _apply_rows(db, kind, stage.SCHEMA, done, expected)
    db.execute(f"insert into main.points_ledger_digest select * from "
               f"{stage.SCHEMA}.points_ledger_digest")
    # which of parent and child is the long pole: what the parent's shares balance
    log.debug("ledger: waited %.1f s for the child (its stage took %.1f s), copied its %s "
              "stage in %.1f s", copying - waiting, done.seconds, done.mode,
              time.perf_counter() - copying)
    if parts is not None and sum(s.rows for s in staged) != expected:
        raise MirrorError(f"staged {sum(s.rows for s in staged):,} ledger rows of "
                          f"{expected:,}; nothing was stored")
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
