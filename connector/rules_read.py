"""Mirror rows straight into ``rules`` columns: the scale path of ``run_rules``.

A million contacts and five million deals never exist as Python objects: each scan
selects a few numbers per row (computed in SQL where SQLite can: UTC seconds, packed
status codes) and fills numpy arrays; the rare text a rule needs comes from a second
look at only the rows flagged for it.  A contact's phones and emails are decided by a
pattern on their JSON text, run in C over a whole batch, and only the rest are parsed.
Rows are read with plain ``db.execute`` cursors — sqlite-utils row dicts cost several
times more per row.  Column conventions are ``rules.columns``'.
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

from connector.errors import MirrorError
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
    "deal_id_bounds",
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
    """SQL for (UTC seconds of ``column``, 1 when it is not canonical else 0)."""
    # SQLite parses "YYYY-MM-DDTHH:MM:SS+HH:MM" (what the mapping writes) and applies the
    # offset in C.  Anything else — a fraction of a second, "Z", no offset — is flagged,
    # read as text and converted in Python, so the result always equals rules'
    # utc_micros.  Canonical means 25 characters with a sign at the 20th: one GLOB, ~10 %
    # cheaper per deal than length() and substr() (NULL, never a moment here, reads 0).
    return (f"coalesce(unixepoch({column}), {_BAD_SECONDS})",
            f"coalesce(not ({column} glob '{'?' * 19}[+-]{'?' * 5}'), 0)")


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


_ODD_MOMENT, _OTHER_CURRENCY, _ODD_AMOUNT = 1, 2, 4  # flag bits of the deal scan

# Every value that leaves SQLite as a Python object costs more than the SQL that made
# it, so the deal scan returns each column of a range of deals as one text of integers
# (group_concat), parsed by numpy in C.  The small codes (status, deleted, flags,
# category) travel packed in one integer, company ids only when companies are the
# customers.  An amount travels exactly as two integers, its whole part and its
# fraction × 2**62 (exact whenever |amount| < 2**53 and >= 2**-10 or 0: the fraction
# then has at most 52 bits, none below 2**-62); any other amount is flagged and read as
# it is.  The wanted UF_* values come from a second scan of only the deals that have
# custom fields, and the rare text a rule needs from a look at the flagged rows.
_STATUS_BITS, _DELETED_BIT, _FLAGS_SHIFT, _CATEGORY_SHIFT = 3, 4, 3, 6
_FRACTION_SCALE = float(2**62)
_SCAN_IDS = 250_000  # deal ids per scan query: a few MB of text per column


def _amount_sql() -> tuple[str, str, str]:
    """SQL for (whole part, fraction × 2**62, whether those two are not exact)."""
    amount = "coalesce(amount, 0.0)"
    whole = f"cast({amount} as integer)"
    # integer literals: SQLite turns them into exactly these powers of two
    scaled = f"(({amount} - {whole}) * {2**62})"
    odd = (f"(typeof({amount}) not in ('real', 'integer') or abs({amount}) >= {2**53} "
           f"or cast({scaled} as integer) != {scaled})")
    return whole, f"cast({scaled} as integer)", odd


def _packed_sql(config: RulesConfig) -> tuple[str, list[Any]]:
    """One integer: status + 1 (bits 0-1), deleted (bit 2), flags (3-5), category + 1."""
    cats = config.purchases.categories
    category = ("case category_id " + " ".join(f"when ? then {i}" for i in range(len(cats)))
                + " else -1 end") if cats else "-1"
    odd = _moment_sql(_MOMENT)[1]
    sql = ("(case status when 'open' then 1 when 'won' then 2 when 'lost' then 3 else 0 end)"
           f" + {_DELETED_BIT} * (deleted_at is not null)"
           f" + {1 << _FLAGS_SHIFT} * ({odd} * {_ODD_MOMENT}"
           f" + (coalesce(currency, '') not in ('', ?)) * {_OTHER_CURRENCY}"
           f" + {_amount_sql()[2]} * {_ODD_AMOUNT})"
           f" + {1 << _CATEGORY_SHIFT} * (({category}) + 1)")
    return sql, [config.purchases.currency, *cats]


def _deal_columns(config: RulesConfig) -> dict[str, str]:
    """The scan's columns: name -> an SQL expression that is never NULL."""
    whole, fraction, _ = _amount_sql()
    company = {"company": "coalesce(company_id, -1)"} if config.customer.kind == "company" else {}
    return {"id": "id", "contact": "coalesce(contact_id, -1)", **company, "whole": whole,
            "fraction": fraction, "seconds": _moment_sql(_MOMENT)[0],
            "packed": _packed_sql(config)[0]}


def _deal_sql(config: RulesConfig) -> tuple[str, list[Any]]:
    """The deal scan of ids in (?, ?]: the row count, then each column as one text."""
    columns = _deal_columns(config)
    inner = ", ".join(f"{sql} as {name}" for name, sql in columns.items())
    # group_concat skips NULLs: every column is coalesced, and the count checks it
    sql = (f"select count(*), {', '.join(f'group_concat({n})' for n in columns)} from "
           f"(select {inner} from deals where id > ? and id <= ? order by id)")
    return sql, _packed_sql(config)[1]


def _scan_deals(db: Database, config: RulesConfig, after: int, upto: int
                ) -> dict[str, IntArray]:
    """The deal scan's columns for ids in (after, upto], in id order."""
    sql, params = _deal_sql(config)
    names = list(_deal_columns(config))
    parts: list[list[IntArray]] = []
    for lo in range(after, upto, _SCAN_IDS):
        count, *texts = db.execute(sql, [*params, lo, min(lo + _SCAN_IDS, upto)]).fetchone()
        if count:
            parts.append([np.fromstring(t, dtype=np.int64, sep=",") for t in texts])
            if any(len(column) != count for column in parts[-1]):
                raise MirrorError("the deal scan returned columns of different lengths")
    if not parts:
        return {name: np.zeros(0, dtype=np.int64) for name in names}
    columns = {name: np.concatenate(column)
               for name, column in zip(names, zip(*parts, strict=True), strict=True)}
    ids = columns["id"]
    if not bool(np.all(ids[1:] > ids[:-1])):  # the order group_concat sees is SQLite's
        order = np.argsort(ids, kind="stable")
        columns = {name: column[order] for name, column in columns.items()}
    return columns


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
    after, upto = id_range or deal_id_bounds(mirror.db)
    scan = _scan_deals(mirror.db, config, after, upto)
    ids, packed = scan["id"], scan["packed"]
    flags = (packed >> _FLAGS_SHIFT) & 7
    odd = _texts_of(mirror.db, _MOMENT, ids[(flags & _ODD_MOMENT) != 0])
    currency_of = _texts_of(mirror.db, "currency", ids[(flags & _OTHER_CURRENCY) != 0])
    currency = Codes()
    currencies = np.full(len(ids), -1, dtype=np.int16)
    if currency_of:
        at = np.searchsorted(ids, list(currency_of))
        currencies[at] = currency.encode(list(currency_of.values()))
    company = (scan["company"] if config.customer.kind == "company"
               else np.full(len(ids), -1, dtype=np.int64))
    return DealColumns(
        id=ids, contact_id=scan["contact"], company_id=company,
        status=((packed & _STATUS_BITS) - 1).astype(np.int8),
        amount=_amounts(mirror.db, scan, (flags & _ODD_AMOUNT) != 0),
        currency=currencies, currencies=currency.names(),
        category=((packed >> _CATEGORY_SHIFT) - 1).astype(np.int32),
        categories=tuple(config.purchases.categories),
        moment=_moments(scan["seconds"], odd, ids),
        deleted=(packed & _DELETED_BIT) != 0,
        fields=_deal_fields(mirror.db, names, custom, id_range),
    )


def deal_id_bounds(db: Database) -> tuple[int, int]:
    """(one below the lowest deal id, the highest): the id range of every deal."""
    # two subqueries: SQLite reads min() or max() alone off the key, both together by a
    # scan of every row (about a second at five million deals)
    low, high = db.execute("select (select min(id) from deals), "
                           "(select max(id) from deals)").fetchone()
    return ((low or 0) - 1, high or 0)


def _amounts(db: Database, scan: dict[str, IntArray], odd: npt.NDArray[np.bool_]
             ) -> npt.NDArray[np.float64]:
    """The exact amounts: whole part + fraction (both exact in float64), and the odd
    ones (see ``_amount_sql``) as stored."""
    amount = scan["whole"].astype(np.float64) + scan["fraction"] * (1 / _FRACTION_SCALE)
    exact = _texts_of(db, "coalesce(amount, 0.0)", scan["id"][odd])
    if exact:
        at = np.searchsorted(scan["id"], list(exact))
        amount[at] = np.array(list(exact.values()), dtype=np.float64)
    return amount


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
