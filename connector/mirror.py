"""The local SQLite mirror: exactly what the CRM holds, plus what we noticed about it.

Tables (schema in ``docs/mirror.md``)::

    contacts    one row per CRM contact; deleted ones stay with deleted_at set
    deals       one row per CRM deal (status 'open' | 'won' | 'lost')
    companies   one row per CRM company
    sync_state  one row per entity: watermark, resume cursor, last runs
    sync_runs   one row per entity per sync run: the counts a summary shows
    rejects     records that could not be mirrored (or were kept with a field dropped)

Every page of rows is written in one transaction together with the sync-state row
that covers it, so a crash between pages leaves a mirror that a re-run completes.
The database file is created with mode 0600: it holds other people's customers.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from connector.errors import MirrorError

__all__ = [
    "ENTITY_TABLES",
    "RULES_SCAN_INDEXES",
    "Mirror",
    "Reject",
    "SyncState",
    "custom_fields_of",
    "table_sql",
]

ENTITY_TABLES = ("contacts", "deals", "companies")

log = logging.getLogger("crm_retention.mirror")

migrations = Migrations("crm_retention.mirror")


def table_sql(db: Database, table: str) -> str:
    """The CREATE TABLE statement of ``table``, as SQLite keeps it."""
    return str(db.execute("select sql from sqlite_master where type = 'table' and name = ?",
                          [table]).fetchone()[0])


@migrations()
def m001_entities(db: Database) -> None:
    """Create the pinned entity tables, sync state, runs and rejects."""
    common = {"created_at": str, "updated_at": str, "deleted_at": str, "raw": str}
    db.table("contacts").create(
        {"id": int, "name": str, "phones": str, "emails": str, "birthday": str,
         "responsible_id": int, **common},
        pk="id",
    )
    db.table("deals").create(
        {"id": int, "contact_id": int, "company_id": int, "title": str, "amount": float,
         "currency": str, "status": str, "stage_id": str, "category_id": str,
         "responsible_id": int, "created_at": str, "closed_at": str, "updated_at": str,
         "deleted_at": str, "raw": str},
        pk="id",
    )
    db.table("companies").create(
        {"id": int, "title": str, "responsible_id": int, **common},
        pk="id",
    )
    db.table("deals").create_index(["contact_id"])
    db.table("deals").create_index(["company_id"])
    db.table("sync_state").create(
        {"entity": str, "watermark": str, "pending_watermark": str, "resume_after_id": int,
         "last_started_at": str, "last_finished_at": str, "last_full_reconcile_at": str,
         "last_status": str, "last_error": str},
        pk="entity",
    )
    db.table("sync_runs").create(
        {"id": int, "entity": str, "started_at": str, "finished_at": str, "status": str,
         "fetched": int, "upserted": int, "deleted": int, "rejected": int, "requests": int,
         "limit_hits": int, "retries": int, "error": str},
        pk="id",
    )
    db.table("rejects").create(
        {"entity": str, "id": str, "reason": str, "action": str, "raw": str, "seen_at": str},
        pk=("entity", "id"),
    )


@migrations()
def m002_rules(db: Database) -> None:
    """Create the tables ``connector.rules_io`` writes: states, the ledger, metric history."""
    db.execute(
        "create table customer_state (customer_id integer not null, customer_kind text "
        "not null, lifecycle text, value_segment text, rfm_r integer, rfm_f integer, "
        "rfm_m integer, rfm_group text, channels text, purchases integer, revenue real, "
        "first_purchase text, last_purchase text, median_gap_days real, tier text, "
        "perks text, points_balance integer, purchases_to_next_tier integer, "
        "churn_score real, churn_reasons text, p_alive real, expected_purchases real, "
        "predicted_clv real, model_used text, computed_at text, "
        "primary key (customer_id, customer_kind))"
    )
    # (customer_id, entry_key) rather than entry_key alone: when a deal moves to another
    # customer the old owner's earn is carried (and reversed) under the same key.
    db.execute(
        "create table points_ledger (entry_key text not null, customer_id integer not null, "
        "customer_kind text not null, kind text not null, deal_id integer, "
        "points integer not null, at text not null, tier_at_purchase text, reason text, "
        "primary key (customer_id, entry_key))"
    )
    db.execute(
        "create table metric_snapshots (id integer primary key, computed_at text not null, "
        "as_of text not null, customer_kind text not null, period_start text not null, "
        "period_end text not null, metrics text not null, notes text not null)"
    )


# UF_* values a record holds, as a JSON object without the empty ones (NULL when none).
_CUSTOM_FIELDS_SQL = (
    "nullif((select json_group_object(key, case when type in ('array', 'object') "
    "then json(value) else value end) from json_each({table}.raw) "
    "where key glob 'UF_*' and type != 'null' and not (type = 'text' and value = '') "
    "and not (type = 'array' and json_array_length(value) = 0)), '{{}}')"
)


@migrations()
def m003_custom_fields_and_clustered_results(db: Database) -> None:
    """Give entity rows a ``custom_fields`` column; store rules results by primary key.

    The rules read a handful of UF_* values from every record; pulling them out of the
    whole ``raw`` JSON cost more than the rest of the deal scan.  ``customer_state`` and
    ``points_ledger`` are rewritten in bulk on every recompute: as WITHOUT ROWID tables
    each row is written once, in its primary key's b-tree, instead of a table plus an
    index.
    """
    for table in ENTITY_TABLES:
        db.execute(f"alter table [{table}] add column custom_fields text")
        db.execute(f"update [{table}] set custom_fields = "
                   f"{_CUSTOM_FIELDS_SQL.format(table=table)} where instr(raw, '\"UF_') > 0")
    for table, key in (("customer_state", "customer_id, customer_kind"),
                       ("points_ledger", "customer_id, entry_key")):
        ddl = table_sql(db, table)
        # sqlite_master keeps the DDL as written, bar an upper-cased "CREATE TABLE"
        db.execute(re.sub(rf"^create table {table}\b", f"create table {table}_clustered", ddl,
                          flags=re.IGNORECASE) + " without rowid")
        db.execute(f"insert into {table}_clustered select * from {table} order by {key}")
        db.execute(f"drop table {table}")
        db.execute(f"alter table {table}_clustered rename to {table}")


# Everything the rules read from deals and contacts (connector/rules_read.py): a full scan
# of one of these narrow indexes reads a fraction of the pages of its table, whose rows
# are mostly ``raw`` JSON.  tests/connector/test_rules_io.py checks the scans use them.
RULES_SCAN_INDEXES = {
    "deals_rules_scan": ("deals", ("id", "contact_id", "company_id", "status", "amount",
                                   "currency", "category_id", "closed_at", "created_at",
                                   "deleted_at", "custom_fields")),
    "contacts_rules_scan": ("contacts", ("id", "deleted_at", "phones", "emails",
                                         "birthday", "custom_fields")),
}


@migrations()
def m004_rules_scan_indexes(db: Database) -> None:
    """Covering indexes for the rules' full scans of deals and contacts."""
    for name, (table, columns) in RULES_SCAN_INDEXES.items():
        db.execute(f"create index if not exists {name} on [{table}] ({', '.join(columns)})")


@migrations()
def m005_ledger_fingerprint(db: Database) -> None:
    """``points_ledger.fingerprint``: a hash of each row's content (rules/ledger_rows.py).

    A recompute compares fingerprints to rewrite only the entries that changed.  Rows of
    earlier versions have none and are rewritten by the next recompute.
    """
    db.execute("alter table points_ledger add column fingerprint integer")


@migrations()
def m006_ledger_digest(db: Database) -> None:
    """``points_ledger_digest``: the ledger's keys and fingerprints as BLOBs (see
    connector/ledger_digest.py), written with the rows so a recompute need not scan them."""
    db.execute("create table points_ledger_digest (customer_kind text not null, "
               "part integer not null, entries integer not null, data blob not null, "
               "primary key (customer_kind, part))")


@migrations()
def m007_ledger_keyed_by_kind(db: Database) -> None:
    """``points_ledger`` keyed by (customer_kind, customer_id, entry_key).

    Contact 7 and company 7 are different customers that may both earn on deal 9 (a
    deal has a contact and a company); keyed without the kind, storing the company
    ledger beside the contact one broke the primary key.  The kind leads the key, so
    each kind's ledger is also one contiguous range of the b-tree.
    """
    ddl = table_sql(db, "points_ledger")
    keyed = re.sub(r"primary key \(customer_id, entry_key\)",
                   "primary key (customer_kind, customer_id, entry_key)", ddl,
                   flags=re.IGNORECASE)
    if keyed == ddl:
        raise MirrorError("points_ledger has an unexpected schema; it was not migrated")
    db.execute(re.sub(r"^create table \"?points_ledger\"?", "create table points_ledger_keyed",
                      keyed, flags=re.IGNORECASE))
    db.execute("insert into points_ledger_keyed select * from points_ledger "
               "order by customer_kind, customer_id, entry_key")
    db.execute("drop table points_ledger")
    db.execute("alter table points_ledger_keyed rename to points_ledger")


@dataclass(frozen=True)
class SyncState:
    """Where one entity's sync stands. Pure data: ``connector.sync`` advances it."""

    entity: str
    watermark: str | None = None  # server time of the last complete run (inclusive bound)
    pending_watermark: str | None = None  # server time at the start of an unfinished run
    resume_after_id: int = 0  # last ID written by the unfinished run
    last_started_at: str | None = None
    last_finished_at: str | None = None
    last_full_reconcile_at: str | None = None
    last_status: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Reject:
    """A record the mirror could not take as it is."""

    entity: str
    id: str
    reason: str
    raw: Mapping[str, Any]
    action: str = "rejected"  # 'rejected' (not mirrored) | 'kept' (mirrored, a field dropped)


@dataclass
class RunCounts:
    """What one entity's sync did; becomes a ``sync_runs`` row."""

    fetched: int = 0
    upserted: int = 0
    deleted: int = 0
    rejected: int = 0
    requests: int = 0
    limit_hits: int = 0
    retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Mirror:
    """The SQLite mirror. Build it with :meth:`open` (file) or :meth:`memory` (tests)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        migrations.apply(db)

    @classmethod
    def open(cls, path: str | Path) -> Mirror:
        """Open (creating with mode 0600 if needed) and migrate the mirror at ``path``."""
        path = Path(path)
        try:
            # A folder we create is private too: the name of the file already says whose
            # CRM it mirrors. SQLite gives -journal/-wal/-shm files the database's mode.
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            _warn_if_shared(path)
            return cls(Database(path))
        except (OSError, Exception) as exc:
            if isinstance(exc, MirrorError):
                raise
            raise MirrorError(f"cannot open mirror {path}: {exc}") from None

    @classmethod
    def memory(cls) -> Mirror:
        """An in-memory mirror (tests, dry runs)."""
        return cls(Database(memory=True))

    # -- sync state ---------------------------------------------------------------------
    def get_state(self, entity: str) -> SyncState:
        """The stored sync state of ``entity`` (a fresh one if it never synced)."""
        table = self.db.table("sync_state")
        rows = list(table.rows_where("entity = ?", [entity]))
        if not rows:
            return SyncState(entity=entity)
        row = rows[0]
        row["resume_after_id"] = row.get("resume_after_id") or 0
        return SyncState(**row)

    def save_state(self, state: SyncState) -> None:
        """Store ``state`` on its own (run start, run end, reconciliation)."""
        with self.db.atomic():
            self._put_state(state)

    def _put_state(self, state: SyncState) -> None:
        self.db.table("sync_state").upsert(asdict(state), pk="entity")

    # -- writes -------------------------------------------------------------------------
    def write_page(
        self,
        entity: str,
        rows: Sequence[Mapping[str, Any]],
        rejects: Sequence[Reject],
        state: SyncState,
        seen_at: str,
    ) -> None:
        """Upsert a page of rows, record its rejects, and advance ``state`` — one transaction."""
        _check_entity(entity)
        with self.db.atomic():
            if rows:
                self.db.table(entity).upsert_all(
                    [_encode_row(row) for row in rows], pk="id", alter=False
                )
                self._clear_rejects(entity, [row["id"] for row in rows])
            self._put_rejects(rejects, seen_at)
            self._put_state(state)

    def mark_deleted(
        self, entity: str, ids: Iterable[int], deleted_at: str, state: SyncState
    ) -> int:
        """Set ``deleted_at`` on live rows in ``ids``; returns how many changed."""
        _check_entity(entity)
        id_list = sorted(set(ids))
        changed = 0
        with self.db.atomic():
            for chunk in _chunks(id_list, 500):
                marks = ",".join("?" * len(chunk))
                cursor = self.db.execute(
                    f"update [{entity}] set deleted_at = ? where deleted_at is null "
                    f"and id in ({marks})",
                    [deleted_at, *chunk],
                )
                changed += cursor.rowcount
                self._clear_rejects(entity, chunk)
            self._put_state(state)
        return changed

    def _put_rejects(self, rejects: Sequence[Reject], seen_at: str) -> None:
        if not rejects:
            return
        self.db.table("rejects").upsert_all(
            [
                {"entity": r.entity, "id": r.id, "reason": r.reason, "action": r.action,
                 "raw": json.dumps(r.raw, ensure_ascii=False, default=str), "seen_at": seen_at}
                for r in rejects
            ],
            pk=("entity", "id"),
        )

    def _clear_rejects(self, entity: str, ids: Sequence[int]) -> None:
        # Runs before this page's own rejects are written: a record that now maps
        # cleanly (or is gone) drops its old note, a still-bad one gets a fresh one.
        for chunk in _chunks([str(i) for i in ids], 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                f"delete from rejects where entity = ? and id in ({marks})", [entity, *chunk]
            )

    def record_run(
        self, entity: str, started_at: str, finished_at: str, status: str, counts: RunCounts,
        error: str | None = None,
    ) -> None:
        """Append one ``sync_runs`` row (what ``retention status`` and reports read)."""
        row = {k: v for k, v in asdict(counts).items() if k != "extra"}
        self.db.table("sync_runs").insert(
            {"entity": entity, "started_at": started_at, "finished_at": finished_at,
             "status": status, "error": error, **row}
        )

    # -- reads --------------------------------------------------------------------------
    def live_ids(self, entity: str) -> set[int]:
        """IDs of rows not marked deleted."""
        _check_entity(entity)
        sql = f"select id from [{entity}] where deleted_at is null"
        return {row[0] for row in self.db.execute(sql).fetchall()}

    def count_live(self, entity: str) -> int:
        """Number of rows not marked deleted."""
        _check_entity(entity)
        sql = f"select count(*) from [{entity}] where deleted_at is null"
        return int(self.db.execute(sql).fetchone()[0])

    def count_known(self, entity: str) -> int:
        """Live rows plus rejected records, each ID once: what the CRM should count.

        A record mirrored once and rejected later is both a live row and a reject;
        counting it twice would make every run's count check fail and walk all IDs.
        """
        _check_entity(entity)
        sql = (f"select count(*) from (select id from [{entity}] where deleted_at is null "
               "union select cast(id as integer) from rejects where entity = ? "
               "and action = 'rejected' and id != '' and id not glob '*[^0-9]*')")
        return int(self.db.execute(sql, [entity]).fetchone()[0])

    def rejected_ids(self, entity: str) -> set[int]:
        """IDs whose latest version was rejected (an earlier one may still be a live row)."""
        sql = "select id from rejects where entity = ? and action = 'rejected'"
        ids = set()
        for (value,) in self.db.execute(sql, [entity]).fetchall():
            if str(value).isdigit():
                ids.add(int(value))
        return ids

    def rows(self, entity: str, *, include_deleted: bool = False) -> Iterator[dict[str, Any]]:
        """Rows of ``entity`` ordered by id, JSON columns decoded."""
        _check_entity(entity)
        where = None if include_deleted else "deleted_at is null"
        for row in self.db.table(entity).rows_where(where, order_by="id"):
            yield _decode_row(row)

    def counts(self) -> dict[str, dict[str, int]]:
        """Live / deleted counts per entity and rejects per entity."""
        result: dict[str, dict[str, int]] = {}
        for entity in ENTITY_TABLES:
            live = self.count_live(entity)
            total = self.db.table(entity).count
            rejected = self.db.execute(
                "select count(*) from rejects where entity = ?", [entity]
            ).fetchone()[0]
            result[entity] = {"live": live, "deleted": total - live, "rejects": int(rejected)}
        return result

    def last_runs(self) -> list[dict[str, Any]]:
        """The latest ``sync_runs`` row of each entity."""
        sql = (
            "select * from sync_runs where id in "
            "(select max(id) from sync_runs group by entity) order by entity"
        )
        cursor = self.db.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def rejects(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent rejects, newest first."""
        return list(self.db.table("rejects").rows_where(order_by="seen_at desc", limit=limit))

    def close(self) -> None:
        """Close the underlying connection."""
        self.db.close()


_JSON_COLUMNS = ("phones", "emails", "raw", "custom_fields")


def custom_fields_of(raw: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """The record's UF_* (user field) values without the empty ones; None when there are none.

    Written beside ``raw`` so readers (the rules) need not parse every record's JSON.
    """
    if isinstance(raw, str):
        raw = json.loads(raw) if '"UF_' in raw else None
    if not isinstance(raw, Mapping):
        return None
    found = {key: value for key, value in raw.items()
             if key.startswith("UF_") and value is not None and value != "" and value != []}
    return found or None


def _encode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    encoded = dict(row)
    if "raw" in encoded and "custom_fields" not in encoded:
        encoded["custom_fields"] = custom_fields_of(encoded["raw"])
    for column in _JSON_COLUMNS:
        if column in encoded and not isinstance(encoded[column], str | None):
            encoded[column] = json.dumps(encoded[column], ensure_ascii=False)
    return encoded


def _decode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    decoded = dict(row)
    for column in _JSON_COLUMNS:
        if isinstance(decoded.get(column), str):
            decoded[column] = json.loads(decoded[column])
    return decoded


def _warn_if_shared(path: Path) -> None:
    # An existing file keeps the mode its owner chose, but nobody should learn of a
    # mirror readable by others only when it leaks.
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("mirror %s has mode %o: other users can read it (chmod 600 %s)",
                    path, mode, path)


def _check_entity(entity: str) -> None:
    if entity not in ENTITY_TABLES:
        raise ValueError(f"unknown entity {entity!r}; expected one of {ENTITY_TABLES}")


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
