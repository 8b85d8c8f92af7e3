"""Between the mirror and ``rules``: read CRM rows in, write decisions back (docs/mirror.md).

``load_inputs`` turns mirror rows into the plain ``rules.models`` records (deleted rows
included: a deleted won deal must reverse the points it earned).  ``run_rules`` is the
full recompute: it reads the previous ledger, runs ``rules.engine.compute`` and stores
states, ledger and a metrics snapshot in one transaction.  Rows are read with plain
``db.execute`` cursors — sqlite-utils row dicts cost several times more per row, which
matters at millions of deals.
"""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
from connector.stored_ledger import (
    StoredLedger,
    load_previous_columns,
    load_previous_ledger,
    read_stored,
)
from rules.churn import ModelFit
from rules.columns import (
    Codes,
    DealColumns,
    FieldValues,
    IntArray,
    RecordColumns,
    concat_deal_columns,
    reachability,
    utc_micros,
    wanted_fields,
)
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


def _moments(seconds: npt.NDArray[np.int64], odd: dict[int, str], ids: IntArray
             ) -> npt.NDArray[np.int64]:
    """UTC microseconds: SQLite's whole seconds, and exact values for the odd texts."""
    micros = seconds * 1_000_000
    for index, text in zip(np.searchsorted(ids, list(odd)).tolist(), odd.values(),
                           strict=True):
        moment = _moment(text)
        if moment is None:  # cannot happen: coalesce(closed_at, created_at) is never empty
            raise ValueError("a deal without created_at in the mirror")
        micros[index] = utc_micros(moment)
    bad = np.flatnonzero(seconds == _BAD_SECONDS)
    if len(bad) and not set(ids[bad].tolist()) <= odd.keys():
        raise ValueError("the mirror holds a deal timestamp that is not ISO 8601")
    return micros


_ODD_MOMENT, _OTHER_CURRENCY = 1, 2  # flag bits of the deal scan

# One structured row of numbers per deal, as few columns as possible: every column of
# every row becomes a Python object on the way out of SQLite, which cost twice the SQL
# itself.  So the small codes (status, deleted, flags, category) travel packed in one
# integer and company ids only when companies are the customers.  The wanted UF_*
# values come from a second scan of only the deals that have custom fields (an object
# column on every row cost more than that scan), and the rare text a rule needs from a
# look at the flagged rows.
_STATUS_BITS, _DELETED_BIT, _FLAGS_SHIFT, _CATEGORY_SHIFT = 3, 4, 3, 5


def _deal_row(config: RulesConfig) -> np.dtype[Any]:
    company = [("company", "i8")] if config.customer.kind == "company" else []
    return np.dtype([("id", "i8"), ("contact", "i8"), *company, ("amount", "f8"),
                     ("seconds", "i8"), ("packed", "i8")])


def _packed_sql(config: RulesConfig) -> tuple[str, list[Any]]:
    """One integer: status + 1 (bits 0-1), deleted (bit 2), flags (3-4), category + 1."""
    cats = config.purchases.categories
    category = ("case category_id " + " ".join(f"when ? then {i}" for i in range(len(cats)))
                + " else -1 end") if cats else "-1"
    odd = _moment_sql(_MOMENT)[1]
    sql = ("(case status when 'open' then 1 when 'won' then 2 when 'lost' then 3 else 0 end)"
           f" + {_DELETED_BIT} * (deleted_at is not null)"
           f" + {1 << _FLAGS_SHIFT} * (({odd} is not null) * {_ODD_MOMENT}"
           f" + (coalesce(currency, '') not in ('', ?)) * {_OTHER_CURRENCY})"
           f" + {1 << _CATEGORY_SHIFT} * (({category}) + 1)")
    return sql, [config.purchases.currency, *cats]


def _deal_sql(config: RulesConfig, bounded: bool = False) -> tuple[str, list[Any]]:
    """The deal scan, shaped like ``_deal_row`` (``bounded``: ids in (?, ?])."""
    company = ", coalesce(company_id, -1)" if config.customer.kind == "company" else ""
    packed, params = _packed_sql(config)
    sql = (f"select id, coalesce(contact_id, -1){company}, coalesce(amount, 0.0), "
           f"{_moment_sql(_MOMENT)[0]}, {packed} from deals "
           f"{'where id > ? and id <= ? ' if bounded else ''}order by id")
    return sql, params


def _deal_values_sql(custom: list[str], bounded: bool) -> str:
    """(id, JSON array of the ``custom`` values) of the deals holding any of them."""
    values = _custom_sql(custom)[1]
    nulls = "[" + ",".join(["null"] * len(values)) + "]"
    return (f"select id, nullif(json_array({', '.join(values)}), '{nulls}') from deals "
            f"where custom_fields is not null{' and id > ? and id <= ?' if bounded else ''}")


def _texts_of(db: Database, expression: str, ids: IntArray) -> dict[int, str]:
    """``expression`` for the deals ``ids`` (few: flagged rows only), by id."""
    found: dict[int, str] = {}
    for lo in range(0, len(ids), 500):
        chunk = ids[lo:lo + 500].tolist()
        sql = f"select id, {expression} from deals where id in ({', '.join('?' * len(chunk))})"
        found.update(db.execute(sql, chunk).fetchall())
    return found


def _deal_fields(db: Database, names: set[str], custom: list[str],
                 id_range: tuple[int, int] | None) -> FieldValues:
    """The wanted UF_* values by deal id (of the deals in ``id_range``, if given)."""
    fields: FieldValues = {name: {} for name in names}
    if not custom:
        return fields
    found = [fields[name] for name in custom]
    sql = _deal_values_sql(custom, bounded=id_range is not None)
    for record, text in db.execute(sql, list(id_range or ())):
        if text is None:  # custom fields, but none of the wanted ones
            continue
        for into, value in zip(found, json.loads(text), strict=True):
            if value is not None and value != "":
                into[record] = value
    return fields


def load_deal_columns(mirror: MirrorReader, config: RulesConfig,
                      id_range: tuple[int, int] | None = None) -> DealColumns:
    """Every deal (deleted ones included) as ``rules`` columns, without Deal objects.

    ``id_range`` = (after, up to) limits the scan to those ids.  In contact mode
    ``company_id`` is not read (-1): only company mode uses it.
    """
    names = wanted_fields(config)[0]
    custom, _ = _custom_sql(names)
    row = _deal_row(config)
    sql, params = _deal_sql(config, bounded=id_range is not None)
    cursor = mirror.db.execute(sql, [*params, *(id_range or ())])
    parts = [np.array(batch, dtype=row) for batch in iter(lambda: cursor.fetchmany(_BATCH), [])]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=row)
    del parts
    ids = rows["id"].copy()
    packed = rows["packed"]
    flags = (packed >> _FLAGS_SHIFT) & 3
    odd = _texts_of(mirror.db, _MOMENT, ids[(flags & _ODD_MOMENT) != 0])
    currency_of = _texts_of(mirror.db, "currency", ids[(flags & _OTHER_CURRENCY) != 0])
    currency = Codes()
    currencies = np.full(len(ids), -1, dtype=np.int16)
    if currency_of:
        at = np.searchsorted(ids, list(currency_of))
        currencies[at] = currency.encode(list(currency_of.values()))
    company = (rows["company"].copy() if config.customer.kind == "company"
               else np.full(len(ids), -1, dtype=np.int64))
    return DealColumns(
        id=ids, contact_id=rows["contact"].copy(), company_id=company,
        status=((packed & _STATUS_BITS) - 1).astype(np.int8), amount=rows["amount"].copy(),
        currency=currencies, currencies=currency.names(),
        category=((packed >> _CATEGORY_SHIFT) - 1).astype(np.int32),
        categories=tuple(config.purchases.categories),
        moment=_moments(rows["seconds"].copy(), odd, ids),
        deleted=(packed & _DELETED_BIT) != 0,
        fields=_deal_fields(mirror.db, names, custom, id_range),
    )


def _channels(phones: str | int | None, emails: str | None, region: str
              ) -> tuple[bool, bool]:
    """(has a phone, has an email): ``phones`` may come decided (0/1) by ``_record_sql``."""
    if isinstance(phones, int):  # decided in SQL
        return bool(phones), reachability((), _texts(emails), region)[1]
    return reachability(_texts(phones), _texts(emails), region)


def _texts(array: str | None) -> list[str]:
    # "[]" is by far the most common value: no need to parse it.
    return json.loads(array) if array and array != "[]" else []


# rules.columns.is_plausible_phone's Russian fast path, in SQL: with the characters its
# noise pattern strips removed, "+7" or "8" and ten ASCII digits.  It is only ever a
# sufficient condition (whatever else Python strips, such a value has none of it), so a
# contact it does not decide goes through the Python check as before.
_DIGITS10 = "[0-9]" * 10
_STRIPPED = "value"
for _noise in (" ", "(", ")", "-", "."):
    _STRIPPED = f"replace({_STRIPPED}, '{_noise}', '')"
_RU_PHONE_SQL = (f"exists (select 1 from json_each(contacts.phones) where {_STRIPPED} "
                 f"glob '+7{_DIGITS10}' or {_STRIPPED} glob '8{_DIGITS10}')")


def _record_sql(table: str, region: str = "") -> str:
    """(id, deleted, phones, emails, birth month, birth day) of every contact or company.

    For Russian numbers, a contact with a phone in a common shape comes back as 1 in the
    phones column, decided inside SQLite; every other value as the JSON text it is.
    """
    if table == "contacts":
        phones = (f"case when phones not in ('[]', '') and {_RU_PHONE_SQL} then 1 "
                  "else phones end" if region == "RU" else "phones")
        return (f"select id, deleted_at is not null, {phones}, emails, "
                "coalesce(cast(strftime('%m', birthday) as integer), 0), "
                "coalesce(cast(strftime('%d', birthday) as integer), 0) from contacts")
    # a company's channels come from its deals' contacts
    return "select id, deleted_at is not null, null, null, 0, 0 from companies"


def load_record_columns(mirror: MirrorReader, table: str, config: RulesConfig) -> RecordColumns:
    """Contacts or companies (deleted included) as ``rules`` columns."""
    region = config.customer.phone_region
    sql = _record_sql(table, region)
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
    low, high = mirror.db.execute("select min(id), max(id) from deals").fetchone()
    middle = ((low or 0) + (high or 0)) // 2  # ids are dense enough: about half the rows
    upper = start_forked(partial(_read_deals, path, config, (middle, high or 0)),
                         "reading deals")
    deals = load_deal_columns(mirror, config, ((low or 0) - 1, middle))
    scanned = time.perf_counter()
    deals = concat_deal_columns(deals, upper.result())
    contacts, companies = records.result()
    read = time.perf_counter()
    stored = ledger.result()
    log.debug("deals scanned in %.1f s; the rest ready %.1f s later", read - started,
              time.perf_counter() - scanned)
    return _Inputs(contacts, deals, companies, stored)


def _fit_beside() -> RunBeside:
    """Fit the churn model in a forked child where fork works (else in a thread).

    In a thread the fit shares the interpreter lock with the ledger build, and both slow
    down; a child process has its own, and the fitted columns come back pickled.
    """
    if not can_fork():
        return in_a_thread

    def forked(fit: Callable[[], ModelFit]) -> Pending[ModelFit]:
        # read early: the fit ends seconds before the ledger build, at its memory peak
        return start_forked(fit, "fitting the churn model", read_early=True)

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
        stored = inputs.stored
        # Handed over by a list emptied on the way, so compute_columns holds the only
        # references to the raw columns and can free them once its purchase history is
        # built (~0.3 GB at a million customers).
        columns: list[Any] = [inputs.contacts, inputs.deals, inputs.companies]
        del inputs
        result = compute_columns(columns.pop(0), columns.pop(0), columns.pop(0), config,
                                 as_of, stored.previous(mirror), beside=_fit_beside())
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
