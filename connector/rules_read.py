"""Mirror rows straight into ``rules`` columns: the scale path of ``run_rules``.

A million contacts and five million deals never exist as Python objects: each scan
selects a few numbers per row (computed in SQL where SQLite can: UTC seconds, packed
status codes) and fills numpy arrays; the rare text a rule needs comes from a second
look at only the rows flagged for it.  A contact's phones and emails are decided by a
pattern on their JSON text, run in C over a whole batch, and only the rest are parsed.  Rows are
read with plain ``db.execute`` cursors — sqlite-utils row dicts cost several times more
per row.  Column conventions are ``rules.columns``'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from itertools import compress
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.mirror import Mirror
from rules.columns import (
    Codes,
    DealColumns,
    FieldValues,
    IntArray,
    RecordColumns,
    is_plausible_email,
    is_plausible_phone,
    utc_micros,
    wanted_fields,
)
from rules.config import RulesConfig

__all__ = [
    "MirrorReader",
    "batched_rows",
    "load_columns",
    "load_deal_columns",
    "load_record_columns",
    "mirror_moment",
]

_BATCH = 20_000  # rows per fetchmany: bounded memory, few round trips


class MirrorReader(Protocol):
    """What the loaders need: a mirror, or a read-only connection in a child process."""

    @property
    def db(self) -> Database:
        """The sqlite-utils database to read from."""


def mirror_moment(text: str | None) -> datetime | None:
    """An aware datetime from the mirror's ISO text (naive text is read as UTC)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def batched_rows(db: Database, sql: str) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql``, fetched ``_BATCH`` at a time."""
    cursor = db.execute(sql)
    while batch := cursor.fetchmany(_BATCH):
        yield from batch


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
        moment = mirror_moment(text)
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
    """(id, name, value, whether the value is final) of the ``custom`` fields the deals
    hold; a value that is not a JSON string or integer comes as JSON text.

    One json_each over each deal's custom fields: a path expression per wanted field
    parsed the JSON once per field, and a JSON array of them cost a json.loads per deal.
    """
    wanted = ", ".join("?" * len(custom))
    return ("select d.id, j.key, case when j.type in ('text', 'integer') then j.value "
            "else d.custom_fields -> j.fullkey end, j.type in ('text', 'integer') "
            "from deals d, json_each(d.custom_fields) j where d.custom_fields is not null "
            f"and j.key in ({wanted}) and j.type != 'null'"
            f"{' and d.id > ? and d.id <= ?' if bounded else ''}")


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
    sql = _deal_values_sql(custom, bounded=id_range is not None)
    for record, name, value, final in db.execute(sql, [*custom, *(id_range or ())]):
        if not final:
            value = json.loads(value)
        if value is not None and value != "":
            fields[name][record] = value
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


def _texts(array: str | None) -> list[str]:
    # "[]" is by far the most common value: no need to parse it.
    return json.loads(array) if array and array != "[]" else []


# The mapping writes a list of one as '["text"]'.  For that shape these patterns decide
# the common plausible phones and emails on the JSON text itself, in C through map().
# They are sufficient conditions: with no quote or backslash inside, the text is the
# value, and what they accept is what rules.columns accepts (the same noise characters,
# the same character classes).  Anything else goes through the Python check.
_NOISE = r"[\s()\-.]*"  # rules.columns._PHONE_NOISE, any number of them
_ONE_RU_PHONE = re.compile(rf'\["{_NOISE}(?:\+{_NOISE}7|8)(?:{_NOISE}\d){{10}}{_NOISE}"\]\Z')
_ONE_EMAIL = re.compile(r'\["[^@\s"\\]+@[^@\s"\\]+\.[^@\s."\\]{2,}"\]\Z')


def _plausible(lists: Sequence[str], fast: re.Pattern[str] | None,
               check: Callable[[str], bool]) -> npt.NDArray[np.bool_]:
    """Per JSON list text: does it hold a value ``check`` accepts?"""
    count = len(lists)
    found = (np.fromiter(map(bool, map(fast.match, lists)), dtype=np.bool_, count=count)
             if fast is not None else np.zeros(count, dtype=np.bool_))
    listed = np.fromiter(map("[]".__ne__, lists), dtype=np.bool_, count=count)
    for i in np.flatnonzero(listed & ~found).tolist():
        found[i] = any(check(value) for value in _texts(lists[i]) if value)
    return found


def _record_sql(table: str) -> str:
    """(id, deleted, phones, emails, birth month, birth day) of every contact or company;
    phones and emails as JSON list texts."""
    if table == "contacts":
        return ("select id, deleted_at is not null, coalesce(phones, '[]'), "
                "coalesce(emails, '[]'), "
                "coalesce(cast(strftime('%m', birthday) as integer), 0), "
                "coalesce(cast(strftime('%d', birthday) as integer), 0) from contacts")
    # a company's channels come from its deals' contacts
    return "select id, deleted_at is not null, '[]', '[]', 0, 0 from companies"


def _record_batch(rows: list[tuple[Any, ...]], region: str) -> list[npt.NDArray[Any]]:
    ids, deleted, phones, emails, month, day = zip(*rows, strict=True)
    return [np.array(ids, dtype=np.int64), np.array(deleted, dtype=np.bool_),
            _plausible(phones, _ONE_RU_PHONE if region == "RU" else None,
                       partial(is_plausible_phone, region=region)),
            _plausible(emails, _ONE_EMAIL, is_plausible_email),
            np.array(month, dtype=np.int64), np.array(day, dtype=np.int64)]


def load_record_columns(mirror: MirrorReader, table: str, config: RulesConfig) -> RecordColumns:
    """Contacts or companies (deleted included) as ``rules`` columns."""
    region = config.customer.phone_region
    cursor = mirror.db.execute(_record_sql(table))
    batches = [_record_batch(rows, region)
               for rows in iter(lambda: cursor.fetchmany(_BATCH), [])]
    fields = _load_fields(mirror.db, table, wanted_fields(config)[1])
    if not batches:
        return replace(RecordColumns.empty(), fields=fields)
    ids, deleted, phone, email, month, day = (
        np.concatenate(column) for column in zip(*batches, strict=True))
    return RecordColumns(ids=ids, deleted=deleted, has_phone=phone, has_email=email,
                         birth_month=month, birth_day=day, fields=fields)


def load_columns(mirror: Mirror, config: RulesConfig
                 ) -> tuple[RecordColumns, DealColumns, RecordColumns]:
    """Contacts, deals and companies as columns: what ``run_rules`` feeds the engine."""
    return (load_record_columns(mirror, "contacts", config), load_deal_columns(mirror, config),
            load_record_columns(mirror, "companies", config))
