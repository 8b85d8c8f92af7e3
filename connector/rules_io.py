"""Between the mirror and ``rules``: read CRM rows in, write decisions back (docs/mirror.md).

``load_inputs`` turns mirror rows into the plain ``rules.models`` records (deleted rows
included: a deleted won deal must reverse the points it earned).  ``run_rules`` is the
full recompute: it reads the previous ledger, runs ``rules.engine.compute`` and stores
states, ledger and a metrics snapshot in one transaction.  Rows are read with plain
``db.execute`` cursors — sqlite-utils row dicts cost several times more per row, which
matters at millions of deals.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from itertools import compress
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.mirror import Mirror
from connector.parallel import can_fork, start_forked
from connector.rules_store import mirror_file, store_result
from rules.columns import (
    Codes,
    DealColumns,
    FieldValues,
    PreviousLedger,
    RecordColumns,
    reachability,
    utc_micros,
    wanted_fields,
)
from rules.config import RulesConfig
from rules.engine import compute_columns
from rules.models import (
    Company,
    Contact,
    Deal,
    DealStatus,
    LedgerEntry,
    LedgerKind,
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

_BATCH = 20_000  # rows per fetchmany: bounded memory, few round trips


class MirrorReader(Protocol):
    """What the loaders need: a mirror, or a read-only connection in a child process."""

    @property
    def db(self) -> Database:
        """The sqlite-utils database to read from."""


def _moment(text: str | None) -> datetime | None:
    """An aware datetime from the mirror's ISO text (naive text is read as UTC)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def _strings(text: str | None) -> tuple[str, ...]:
    values = json.loads(text) if text else []
    return tuple(str(v) for v in values if v)


def _custom_fields(text: str | None) -> dict[str, Any]:
    """A record's ``custom_fields`` column (its non-empty UF_* values): what rules may read."""
    return dict(json.loads(text)) if text else {}


def _rows(db: Database, sql: str) -> Iterator[tuple[Any, ...]]:
    cursor = db.execute(sql)
    while batch := cursor.fetchmany(_BATCH):
        yield from batch


def load_contacts(mirror: Mirror) -> list[Contact]:
    """Every mirrored contact, deleted ones included, ordered by id."""
    sql = ("select id, name, phones, emails, birthday, responsible_id, created_at, "
           "deleted_at, custom_fields from contacts order by id")
    return [Contact(id=r[0], name=r[1], phones=_strings(r[2]), emails=_strings(r[3]),
                    birthday=_day(r[4]), responsible_id=r[5], created_at=_moment(r[6]),
                    deleted_at=_moment(r[7]), fields=_custom_fields(r[8]))
            for r in _rows(mirror.db, sql)]


def load_companies(mirror: Mirror) -> list[Company]:
    """Every mirrored company, deleted ones included, ordered by id."""
    sql = ("select id, title, responsible_id, created_at, deleted_at, custom_fields from companies "
           "order by id")
    return [Company(id=r[0], title=r[1], responsible_id=r[2], created_at=_moment(r[3]),
                    deleted_at=_moment(r[4]), fields=_custom_fields(r[5]))
            for r in _rows(mirror.db, sql)]


def _deal(r: tuple[Any, ...]) -> Deal:
    created = _moment(r[7])
    if created is None:  # the mapping rejects such deals; a hand-edited mirror might not
        raise ValueError(f"deal {r[0]} has no created_at")
    return Deal(id=r[0], contact_id=r[1], company_id=r[2], title=r[3], amount=r[4],
                currency=r[5], status=cast(DealStatus, r[6]), created_at=created,
                closed_at=_moment(r[8]), updated_at=_moment(r[9]), deleted_at=_moment(r[10]),
                category_id=r[11], fields=_custom_fields(r[12]))


def load_deals(mirror: Mirror) -> list[Deal]:
    """Every mirrored deal, deleted ones included, ordered by id."""
    sql = ("select id, contact_id, company_id, title, amount, currency, status, created_at, "
           "closed_at, updated_at, deleted_at, category_id, custom_fields from deals order by id")
    return [_deal(r) for r in _rows(mirror.db, sql)]


def load_inputs(mirror: Mirror) -> tuple[list[Contact], list[Deal], list[Company]]:
    """Contacts, deals and companies of the mirror as ``rules`` records (deleted included)."""
    return load_contacts(mirror), load_deals(mirror), load_companies(mirror)


def load_previous_ledger(mirror: Mirror, kind: str) -> list[LedgerEntry]:
    """The stored ledger of ``kind`` customers (another kind's ids would mean other people)."""
    sql = (f"select {_LEDGER_COLUMNS} from points_ledger where customer_kind = ? "
           "order by rowid")
    return [_entry(r) for r in mirror.db.execute(sql, [kind]).fetchall()]


# -- columnar reading (the scale path) ---------------------------------------------------

_MOMENT = "coalesce(closed_at, created_at)"
_BAD_SECONDS = -(2**62)  # unixepoch() could not parse the text


def _moment_sql(column: str) -> tuple[str, str]:
    """SQL for (UTC seconds of ``column``, the text itself when it is not canonical)."""
    # SQLite parses "YYYY-MM-DDTHH:MM:SS+HH:MM" (what the mapping writes) and applies the
    # offset in C.  Anything else — a fraction of a second, "Z", no offset — comes back as
    # text and is converted in Python, so the result always equals rules' utc_micros.
    return (f"coalesce(unixepoch({column}), {_BAD_SECONDS})",
            f"case when length({column}) != 25 or substr({column}, 20, 1) not in ('+', '-') "
            f"then {column} end")


def _custom_sql(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(UF_* names, SQL giving each one's JSON text, NULL when the record has none)."""
    custom = sorted(n for n in names if n.startswith("UF_"))  # what custom_fields holds
    # custom_fields is NULL for most records and small otherwise: nothing to parse there.
    return custom, [f"custom_fields -> '$.\"{name}\"'" for name in custom]


def _add_fields(fields: FieldValues, names: list[str], ids: Sequence[int],
                columns: Sequence[Sequence[str | None]]) -> None:
    for name, texts in zip(names, columns, strict=True):
        found = fields[name]
        # compress() drops the NULLs (almost every row) in C, before any Python runs
        for record, text in compress(zip(ids, texts, strict=True), texts):
            value = json.loads(cast(str, text))
            if value is not None and value != "":
                found[record] = value


def _load_fields(db: Database, table: str, names: Iterable[str]) -> FieldValues:
    """Wanted custom-field values by record id, read from ``custom_fields`` inside SQLite."""
    custom, select = _custom_sql(names)
    fields: FieldValues = {name: {} for name in names}
    if custom:
        cursor = db.execute(f"select id, {', '.join(select)} from {table}")
        while batch := cursor.fetchmany(_BATCH):
            values = list(zip(*batch, strict=True))
            _add_fields(fields, custom, values[0], values[1:])
    return fields


class _Column:
    """A numpy column read in batches: one small array per batch, joined once."""

    def __init__(self, dtype: type[np.generic]) -> None:
        self.dtype = dtype
        self.parts: list[npt.NDArray[Any]] = []

    def add(self, values: Sequence[Any]) -> None:
        self.parts.append(np.array(values, dtype=self.dtype))

    def done(self) -> npt.NDArray[Any]:
        joined = np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)
        self.parts.clear()  # free the batches before the next column is joined
        return joined


def _moments(seconds: npt.NDArray[np.int64], odd: list[tuple[int, str]]
             ) -> npt.NDArray[np.int64]:
    micros = seconds * 1_000_000
    for index, text in odd:
        moment = _moment(text)
        if moment is None:  # cannot happen: coalesce(closed_at, created_at) is never empty
            raise ValueError("a deal without created_at in the mirror")
        micros[index] = utc_micros(moment)
    bad = np.flatnonzero(seconds == _BAD_SECONDS)
    if len(bad) and not set(bad.tolist()) <= {i for i, _ in odd}:
        raise ValueError("the mirror holds a deal timestamp that is not ISO 8601")
    return micros


def _deal_sql(config: RulesConfig, custom: list[str]) -> tuple[str, list[Any]]:
    """The one deal scan: numbers only, strings only where a rule can tell them apart."""
    # Every text value costs a Python object per row.  The portal currency means the same
    # as no currency, and categories matter only when configured, so both come back as
    # NULL unless they can change a decision.
    cats = config.purchases.categories
    category = (f"case when category_id in ({', '.join('?' * len(cats))}) then category_id end"
                if cats else "null")
    company = "coalesce(company_id, -1)" if config.customer.kind == "company" else "-1"
    seconds, odd = _moment_sql(_MOMENT)
    sql = (f"select id, coalesce(contact_id, -1), {company}, case status when 'open' then 0 "
           "when 'won' then 1 when 'lost' then 2 else -1 end, coalesce(amount, 0.0), "
           f"nullif(currency, ?), {category}, {seconds}, {odd}, deleted_at is not null"
           f"{''.join(', ' + s for s in _custom_sql(custom)[1])} from deals")
    return sql, [config.purchases.currency, *cats]


def load_deal_columns(mirror: MirrorReader, config: RulesConfig) -> DealColumns:
    """Every deal (deleted ones included) as ``rules`` columns, without Deal objects.

    In contact mode ``company_id`` is not read (-1): only company mode uses it.
    """
    custom, _ = _custom_sql(wanted_fields(config)[0])
    fields: FieldValues = {name: {} for name in wanted_fields(config)[0]}
    types = (np.int64, np.int64, np.int64, np.int8, np.float64, None, None, np.int64, None,
             np.bool_)
    columns = {i: _Column(t) for i, t in enumerate(types) if t is not None}
    currency, category = Codes(), Codes()
    currencies, categories = _Column(np.int16), _Column(np.int32)
    odd: list[tuple[int, str]] = []
    seen = 0
    cursor = mirror.db.execute(*_deal_sql(config, custom))
    while batch := cursor.fetchmany(_BATCH):
        values = list(zip(*batch, strict=True))
        for i, column in columns.items():
            column.add(values[i])
        currencies.add(currency.encode(values[5]))
        categories.add(category.encode(values[6]))
        if values[8].count(None) != len(batch):  # rare: only non-canonical timestamps
            odd.extend((seen + i, t) for i, t in enumerate(values[8]) if t is not None)
        _add_fields(fields, custom, values[0], values[10:])
        seen += len(batch)
    return DealColumns(
        id=columns[0].done(), contact_id=columns[1].done(), company_id=columns[2].done(),
        status=columns[3].done(), amount=columns[4].done(), currency=currencies.done(),
        currencies=currency.names(), category=categories.done(),
        categories=category.names(), moment=_moments(columns[7].done(), odd),
        deleted=columns[9].done(), fields=fields,
    )


def _channels(phones: str | None, emails: str | None, region: str) -> tuple[bool, bool]:
    # "[]" is by far the most common value: no need to parse it.
    return reachability(json.loads(phones) if phones and phones != "[]" else (),
                        json.loads(emails) if emails and emails != "[]" else (), region)


def load_record_columns(mirror: MirrorReader, table: str, config: RulesConfig) -> RecordColumns:
    """Contacts or companies (deleted included) as ``rules`` columns."""
    if table == "contacts":
        sql = ("select id, deleted_at is not null, phones, emails, "
               "coalesce(cast(strftime('%m', birthday) as integer), 0), "
               "coalesce(cast(strftime('%d', birthday) as integer), 0) from contacts")
    else:  # a company's channels come from its deals' contacts
        sql = "select id, deleted_at is not null, null, null, 0, 0 from companies"
    region = config.customer.phone_region
    ids, deleted, phone, email, month, day = [], [], [], [], [], []
    for row in _rows(mirror.db, sql):
        ids.append(row[0])
        deleted.append(row[1])
        reach = _channels(row[2], row[3], region)
        phone.append(reach[0])
        email.append(reach[1])
        month.append(row[4])
        day.append(row[5])
    _, record_fields = wanted_fields(config)
    return RecordColumns(
        ids=np.array(ids, dtype=np.int64), deleted=np.array(deleted, dtype=np.bool_),
        has_phone=np.array(phone, dtype=np.bool_), has_email=np.array(email, dtype=np.bool_),
        birth_month=np.array(month, dtype=np.int64), birth_day=np.array(day, dtype=np.int64),
        fields=_load_fields(mirror.db, table, record_fields),
    )


def load_columns(mirror: Mirror, config: RulesConfig
                 ) -> tuple[RecordColumns, DealColumns, RecordColumns]:
    """Contacts, deals and companies as columns: what ``run_rules`` feeds the engine."""
    return (load_record_columns(mirror, "contacts", config), load_deal_columns(mirror, config),
            load_record_columns(mirror, "companies", config))


_LEDGER_COLUMNS = "customer_id, kind, deal_id, points, at, tier_at_purchase, reason, entry_key"


def _entry(r: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(r[0], cast(LedgerKind, r[1]), r[2], r[3], date.fromisoformat(r[4]),
                       r[5], r[6] or "", r[7])


class _StoredEarns:
    """Fetches stored earn entries by position, for the few the engine carries over."""

    def __init__(self, mirror: Mirror, customers: npt.NDArray[np.int64],
                 deals: npt.NDArray[np.int64]) -> None:
        self.mirror = mirror
        self.customers = customers
        self.deals = deals

    def __call__(self, positions: npt.NDArray[np.int64]) -> list[LedgerEntry]:
        # The primary key (customer_id, entry_key) finds each one; earn keys are
        # "earn:deal:<id>" by construction in rules.loyalty.
        sql = (f"select {_LEDGER_COLUMNS} from points_ledger where customer_id = ? "
               "and entry_key = ?")
        wanted = zip(self.customers[positions].tolist(), self.deals[positions].tolist(),
                     strict=True)
        return [_entry(self.mirror.db.execute(sql, [c, f"earn:deal:{d}"]).fetchone())
                for c, d in wanted]


@dataclass(frozen=True)
class _PreviousColumns:
    """The stored ledger as plain data (picklable: it may come from a child process)."""

    customers: npt.NDArray[np.int64]
    deals: npt.NDArray[np.int64]
    points: npt.NDArray[np.int64]
    others: list[LedgerEntry]

    def ledger(self, mirror: Mirror) -> PreviousLedger:
        """As the engine reads it; earns that vanished are fetched from ``mirror``."""
        return PreviousLedger(earn_customer=self.customers, earn_deal=self.deals,
                              earn_points=self.points,
                              earn_entries=_StoredEarns(mirror, self.customers, self.deals),
                              others=self.others)


def _previous_columns(mirror: MirrorReader, kind: str) -> _PreviousColumns:
    sql = ("select customer_id, coalesce(deal_id, -1), points from points_ledger "
           "where customer_kind = ? and kind = 'earn'")
    cursor = mirror.db.execute(sql, [kind])
    earns = np.fromiter(cursor, dtype=[("customer", "i8"), ("deal", "i8"), ("points", "i8")])
    others = mirror.db.execute(
        f"select {_LEDGER_COLUMNS} from points_ledger where customer_kind = ? "
        "and kind in ('bonus', 'redeem', 'reversal')", [kind]).fetchall()
    return _PreviousColumns(earns["customer"].copy(), earns["deal"].copy(),
                            earns["points"].copy(), [_entry(r) for r in others])


def load_previous_columns(mirror: Mirror, kind: str) -> PreviousLedger:
    """The stored ledger of ``kind`` customers, earns as columns (fetched in full on demand)."""
    return _previous_columns(mirror, kind).ledger(mirror)


@dataclass(frozen=True)
class _Reader:
    """A read-only connection shaped like a mirror, for the loaders."""

    db: Database


def _read_side(path: Path, config: RulesConfig, kind: str
               ) -> tuple[RecordColumns, RecordColumns, _PreviousColumns]:
    """Contacts, companies and the previous ledger, read through a connection of its own."""
    reader = _Reader(Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True)))
    try:
        return (load_record_columns(reader, "contacts", config),
                load_record_columns(reader, "companies", config),
                _previous_columns(reader, kind))
    finally:
        reader.db.conn.close()


def _load_all(mirror: Mirror, config: RulesConfig, kind: str) -> list[Any]:
    """[contacts, deals, companies, previous ledger]; on a file mirror the biggest read,
    the deal scan, runs here while a forked child reads the rest (each read is GIL-bound
    Python work, so threads could not overlap them)."""
    path = mirror_file(mirror)
    side = (start_forked(partial(_read_side, path, config, kind),
                         "reading contacts and the previous ledger")
            if path is not None and can_fork() else None)
    deals = load_deal_columns(mirror, config)
    if side is not None:
        contacts, companies, previous = side.result()
    else:
        contacts = load_record_columns(mirror, "contacts", config)
        companies = load_record_columns(mirror, "companies", config)
        previous = _previous_columns(mirror, kind)
    return [contacts, deals, companies, previous.ledger(mirror)]


def run_rules(mirror: Mirror, config: RulesConfig, *, as_of: datetime | None = None,
              store: bool = True) -> RulesResult:
    """Recompute everything from the mirror; with ``store``, persist it in one transaction.

    ``as_of`` defaults to now (UTC) and must be timezone-aware.  Recomputing with the same
    mirror and ``as_of`` leaves ``customer_state`` and ``points_ledger`` unchanged.
    """
    now = datetime.now(UTC)
    as_of = as_of or now
    kind = config.customer.kind
    inputs = _load_all(mirror, config, kind)
    previous = inputs.pop()
    # Popped straight into the call, so compute_columns holds the only references to the
    # raw columns and can free them once its purchase history is built.
    result = compute_columns(inputs.pop(0), inputs.pop(0), inputs.pop(0), config, as_of,
                             previous)
    if store:
        store_result(mirror, result, kind, as_of, now.isoformat(timespec="seconds"))
    return result
