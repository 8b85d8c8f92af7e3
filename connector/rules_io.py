"""Between the mirror and ``rules``: read CRM rows in, write decisions back (docs/mirror.md).

``load_inputs`` turns mirror rows into the plain ``rules.models`` records (deleted rows
included: a deleted won deal must reverse the points it earned).  ``run_rules`` is the
full recompute: it reads the mirror as columns (:mod:`connector.rules_read`, on both
cores), runs ``rules.engine.compute_columns`` and stores states, ledger and a metrics
snapshot in one transaction.  Rows are read with plain ``db.execute`` cursors —
sqlite-utils row dicts cost several times more per row, which matters at millions of
deals.
"""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlite_utils import Database

from connector.heap import map_large_blocks
from connector.mirror import Mirror
from connector.parallel import can_fork, start_forked
from connector.rules_read import (
    batched_rows,
    deal_id_bounds,
    load_columns,
    load_deal_columns,
    load_record_columns,
    mirror_moment,
)
from connector.rules_store import mirror_file, store_result
from connector.stored_ledger import (
    StoredLedger,
    load_previous_columns,
    load_previous_ledger,
    read_stored,
)
from rules.columns import DealColumns, RecordColumns, concat_deal_columns
from rules.config import RulesConfig
from rules.engine import Pending, RunBeside, compute_columns, in_a_thread
from rules.models import (
    Company,
    Contact,
    Deal,
    DealStatus,
    RulesResult,
)

__all__ = [
    "load_columns",
    "load_deal_columns",
    "load_inputs",
    "load_previous_columns",
    "load_previous_ledger",
    "load_record_columns",
    "run_rules",
]

log = logging.getLogger("crm_retention.rules")
W = TypeVar("W")

def _day(text: str | None) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def _strings(text: str | None) -> tuple[str, ...]:
    values = json.loads(text) if text else []
    return tuple(str(v) for v in values if v)


def _custom_fields(text: str | None) -> dict[str, Any]:
    """A record's ``custom_fields`` column (its non-empty UF_* values): what rules may read."""
    return dict(json.loads(text)) if text else {}


def load_contacts(mirror: Mirror) -> list[Contact]:
    """Every mirrored contact, deleted ones included, ordered by id."""
    sql = ("select id, name, phones, emails, birthday, responsible_id, created_at, "
           "deleted_at, custom_fields from contacts order by id")
    return [Contact(id=r[0], name=r[1], phones=_strings(r[2]), emails=_strings(r[3]),
                    birthday=_day(r[4]), responsible_id=r[5], created_at=mirror_moment(r[6]),
                    deleted_at=mirror_moment(r[7]), fields=_custom_fields(r[8]))
            for r in batched_rows(mirror.db, sql)]


def load_companies(mirror: Mirror) -> list[Company]:
    """Every mirrored company, deleted ones included, ordered by id."""
    sql = ("select id, title, responsible_id, created_at, deleted_at, custom_fields from companies "
           "order by id")
    return [Company(id=r[0], title=r[1], responsible_id=r[2], created_at=mirror_moment(r[3]),
                    deleted_at=mirror_moment(r[4]), fields=_custom_fields(r[5]))
            for r in batched_rows(mirror.db, sql)]


def _deal(r: tuple[Any, ...]) -> Deal:
    created = mirror_moment(r[7])
    if created is None:  # the mapping rejects such deals; a hand-edited mirror might not
        raise ValueError(f"deal {r[0]} has no created_at")
    return Deal(id=r[0], contact_id=r[1], company_id=r[2], title=r[3], amount=r[4],
                currency=r[5], status=cast(DealStatus, r[6]), created_at=created,
                closed_at=mirror_moment(r[8]), updated_at=mirror_moment(r[9]),
                deleted_at=mirror_moment(r[10]),
                category_id=r[11], fields=_custom_fields(r[12]))


def load_deals(mirror: Mirror) -> list[Deal]:
    """Every mirrored deal, deleted ones included, ordered by id."""
    sql = ("select id, contact_id, company_id, title, amount, currency, status, created_at, "
           "closed_at, updated_at, deleted_at, category_id, custom_fields from deals order by id")
    return [_deal(r) for r in batched_rows(mirror.db, sql)]


def load_inputs(mirror: Mirror) -> tuple[list[Contact], list[Deal], list[Company]]:
    """Contacts, deals and companies of the mirror as ``rules`` records (deleted included)."""
    return load_contacts(mirror), load_deals(mirror), load_companies(mirror)


@dataclass(frozen=True)
class _Reader:
    """A read-only connection shaped like a mirror, for the loaders."""

    db: Database


def _read_records(path: Path, config: RulesConfig) -> tuple[RecordColumns, RecordColumns]:
    """Contacts and companies, read through a connection of its own (in a child)."""
    reader = _Reader(_read_only(path))
    try:
        return (load_record_columns(reader, "contacts", config),
                load_record_columns(reader, "companies", config))
    finally:
        reader.db.conn.close()


def _read_deals(path: Path, config: RulesConfig, id_range: tuple[int, int]) -> DealColumns:
    """Deals with ids in (after, up to], read through a connection of its own (in a child)."""
    reader = _Reader(_read_only(path))
    try:
        return load_deal_columns(reader, config, id_range)
    finally:
        reader.db.conn.close()


def _read_ledger(path: Path, kind: str) -> StoredLedger:
    """The stored ledger, read through a connection of its own (in a child)."""
    reader = _Reader(_read_only(path))
    try:
        return read_stored(reader, kind)
    finally:
        reader.db.conn.close()


def _read_only(path: Path) -> Database:
    return Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True))


@dataclass(frozen=True)
class _Inputs:
    """Everything a recompute reads from the mirror."""

    contacts: RecordColumns
    deals: DealColumns
    companies: RecordColumns
    stored: StoredLedger


def _load_all(mirror: Mirror, config: RulesConfig, kind: str) -> _Inputs:
    """Every input of a recompute.  On a file mirror the biggest read, the deal scan, runs
    here while two forked children read the records and the stored ledger (each read is
    GIL-bound Python work, so threads could not overlap them)."""
    path = mirror_file(mirror)
    if path is None or not can_fork():
        contacts = load_record_columns(mirror, "contacts", config)
        companies = load_record_columns(mirror, "companies", config)
        return _Inputs(contacts, load_deal_columns(mirror, config), companies,
                       read_stored(mirror, kind))
    started = time.perf_counter()
    records = start_forked(partial(_read_records, path, config), "reading contacts")
    ledger = start_forked(partial(_read_ledger, path, kind), "reading the stored ledger")
    after, upto = deal_id_bounds(mirror.db)
    middle = (after + 1 + upto) // 2  # ids are dense enough: about half the rows
    upper = start_forked(partial(_read_deals, path, config, (middle, upto)), "reading deals")
    deals = load_deal_columns(mirror, config, (after, middle))
    scanned = time.perf_counter()
    deals = concat_deal_columns(deals, upper.result())
    contacts, companies = records.result()
    read = time.perf_counter()
    stored = ledger.result()
    log.debug("deals scanned in %.1f s; the rest ready %.1f s later", read - started,
              time.perf_counter() - scanned)
    return _Inputs(contacts, deals, companies, stored)


def _beside_ledger() -> RunBeside:
    """Run the model fit and the other numpy work in a forked child where fork works
    (else in a thread) while the parent builds the ledger.

    In a thread that work shares the interpreter lock with the ledger build, and both
    slow down; a child process has its own, and the columns come back pickled.
    """
    if not can_fork():
        return in_a_thread

    def forked(work: Callable[[], W]) -> Pending[W]:
        # read early: the work ends seconds before the ledger build, at its memory peak
        return start_forked(work, "computing the churn model and segments",
                            read_early=True)

    return forked


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk run; reference counting still frees.

    A recompute builds millions of short-lived tuples and lists beside a million
    long-lived ones; each generation-2 pass walks them all, which measured at over half
    the time of building the ``customer_state`` rows.  The code here makes no reference
    cycles worth collecting mid-run; whatever it made is collected once at the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_rules(mirror: Mirror, config: RulesConfig, *, as_of: datetime | None = None,
              store: bool = True) -> RulesResult:
    """Recompute everything from the mirror; with ``store``, persist it in one transaction.

    ``as_of`` defaults to now (UTC) and must be timezone-aware.  Recomputing with the same
    mirror and ``as_of`` leaves ``customer_state`` and ``points_ledger`` unchanged.
    """
    now = datetime.now(UTC)
    as_of = as_of or now
    kind = config.customer.kind
    started = time.perf_counter()
    with _cyclic_gc_paused():
        inputs = _load_all(mirror, config, kind)
        read = time.perf_counter()
        # the computation frees and remakes large arrays by the hundred: unmapped when
        # freed, they stop piling up in the heap (not before: the scan slowed down)
        map_large_blocks()
        stored = inputs.stored
        # Handed over by a list emptied on the way, so compute_columns holds the only
        # references to the raw columns and can free them once its purchase history is
        # built (~0.3 GB at a million customers).
        columns: list[Any] = [inputs.contacts, inputs.deals, inputs.companies]
        del inputs
        result = compute_columns(columns.pop(0), columns.pop(0), columns.pop(0), config,
                                 as_of, stored.previous(mirror), beside=_beside_ledger())
        computed = time.perf_counter()
        # The store needs only the stored rows' keys: free the earns and entries before
        # the store's children fork, when memory peaks.
        stored = stored.keys_only()
        if store:
            store_result(mirror, result, kind, as_of, now.isoformat(timespec="seconds"),
                         stored=stored)
    log.info("rules: %d customers, %d ledger entries; read %.1f s, compute %.1f s, "
             "store %.1f s", len(result.states), len(result.ledger), read - started,
             computed - read, time.perf_counter() - computed)
    return result
