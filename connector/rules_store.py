"""Writing a rules run into the mirror: ``customer_state``, ``points_ledger``, a snapshot.

One transaction replaces the configured customer kind's states and ledger and appends a
``metric_snapshots`` row, so a reader sees the previous run or this one, never a mix.
Rows of the other customer kind stay: switching ``rules.customer.kind`` back and forth
keeps each kind's ledger, so reversals are still found when it is next used.

A big result on a file mirror goes through the staged store (:mod:`connector.rules_stage`:
both cores, and only the ledger rows that changed); an in-memory mirror, a small result
or a machine without ``fork`` is written here, in one process, in full.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from connector.bulk_insert import insert_columns
from connector.mirror import Mirror
from connector.parallel import can_fork
from connector.rules_rows import (
    KINDS,
    append_snapshot,
    clear_kind,
    state_columns,
    state_insert,
    write_ledger,
)
from connector.rules_stage import store_staged
from connector.stored_ledger import StoredLedger
from rules.models import RulesResult

__all__ = ["PARALLEL_MIN_LEDGER_ROWS", "mirror_file", "store_result"]

# Below this many ledger rows child processes and staging files cost more than they save.
PARALLEL_MIN_LEDGER_ROWS = 200_000


def mirror_file(mirror: Mirror) -> Path | None:
    """The file behind the mirror's main database, or None for an in-memory one."""
    for _, name, file in mirror.db.execute("pragma database_list").fetchall():
        if name == "main":
            return Path(file) if file else None
    return None


def store_result(mirror: Mirror, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str, stored: StoredLedger | None = None) -> None:
    """Replace ``kind``'s states and ledger with ``result``, append a snapshot — atomically.

    ``stored`` is the ledger this run started from, when the caller read it already.
    """
    if kind not in KINDS:
        raise ValueError(f"customer kind must be one of {KINDS}, not {kind!r}")
    path = mirror_file(mirror)
    if path is not None and can_fork() and len(result.ledger) >= PARALLEL_MIN_LEDGER_ROWS:
        store_staged(mirror, path, result, kind, as_of, computed_at, stored)
        return
    db = mirror.db
    with db.atomic():
        clear_kind(db, "customer_state", kind)
        for columns in state_columns(result.states, computed_at):
            insert_columns(db.conn, state_insert(), columns)
        clear_kind(db, "points_ledger", kind)
        db.execute("delete from points_ledger_digest where customer_kind = ?", [kind])
        write_ledger(db.conn, result.ledger, result.ledger_view, kind)
        append_snapshot(db, result, kind, as_of, computed_at)
