"""Columnar inputs of the engine: what ``compute_columns`` reads instead of record objects.

At five million deals a ``Deal`` object costs ~300 bytes with its datetimes, a numpy
column a few bytes per value: a reader that can produce columns directly (the mirror,
from SQLite cursors) skips the objects altogether.  ``compute()`` converts its records
with the ``*_columns`` helpers here, so both entry points share one implementation.

Conventions: ids are int64 with -1 for "none"; strings that repeat (status, currency,
category) are small-integer codes into a tuple of names (-1 = none); moments are UTC
microseconds since the Unix epoch, exact to the microsecond.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.config import RulesConfig
from rules.models import Company, Contact, Deal, LedgerEntry

__all__ = [
    "STATUSES",
    "BoolArray",
    "Codes",
    "DealColumns",
    "FieldValues",
    "IntArray",
    "PreviousLedger",
    "RecordColumns",
    "collect_fields",
    "company_columns",
    "concat_deal_columns",
    "contact_columns",
    "deal_columns",
    "is_plausible_email",
    "is_plausible_phone",
    "local_days",
    "reachability",
    "utc_micros",
    "wanted_fields",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FieldValues = dict[str, dict[int, Any]]  # field name -> {record key -> non-empty value}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
_PHONE_NOISE = re.compile(r"[\s()\-.]")
_RU_PHONE = re.compile(r"^(?:\+7|8)\d{10}$")
STATUSES = ("open", "won", "lost")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MICRO = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000


def is_plausible_email(address: str) -> bool:
    """A syntactic sanity check (one @, a dotted domain), not deliverability."""
    return bool(_EMAIL.match(address.strip()))


def is_plausible_phone(number: str, region: str) -> bool:
    """True when ``phonenumbers`` parses ``number`` (default ``region``) as a possible number."""
    # phonenumbers.parse costs ~10 µs; the common Russian shapes are decided by a regex
    # that agrees with it (10 national digits after +7 or the trunk prefix 8).
    if region == "RU" and _RU_PHONE.match(_PHONE_NOISE.sub("", number)):
        return True
    return _possible_number(number, region)


@lru_cache(maxsize=1 << 14)
def _possible_number(number: str, region: str) -> bool:
    # Cached: what the regex leaves is mostly the same junk over and over ("-", "0",
    # "12-34": a CRM's placeholders), at ~70 µs a parse when it fails.
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_possible_number(parsed))


def wanted_fields(config: RulesConfig) -> tuple[set[str], set[str]]:
    """(deal fields, customer-record fields) any rule reads."""
    deal: set[str] = set()
    record: set[str] = set()
    conditions = [*config.loyalty.bonuses, *config.churn.negative_feedback]
    for cond in conditions:
        (deal if cond.entity == "deal" else record).add(cond.field)
    if config.loyalty.redeem_field:
        deal.add(config.loyalty.redeem_field)
    if config.churn.ignored_field:
        target = deal if config.churn.ignored_entity == "deal" else record
        target.add(config.churn.ignored_field)
    return deal, record


def utc_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware ``moment`` (exact integer)."""
    return (moment - EPOCH) // _MICRO


def local_days(micros: IntArray, zone: tzinfo) -> IntArray:
    """Calendar day (ordinal) in ``zone`` of each UTC microsecond timestamp.

    Offsets are looked up once per distinct UTC day; the rare day on which the zone's
    offset changes (DST, reforms) is resolved row by row, so the result always equals
    ``datetime.astimezone(zone).toordinal()``.
    """
    if len(micros) == 0:
        return np.zeros(0, dtype=np.int64)
    utc_day = micros // _US_PER_DAY
    days, inverse = _distinct(utc_day)
    start_off, end_off = (np.array([_offset_us(int(d) * _US_PER_DAY + shift, zone)
                                    for d in days.tolist()], dtype=np.int64)
                          for shift in (0, _US_PER_DAY - 1))
    local = (micros + start_off[inverse]) // _US_PER_DAY + EPOCH_ORDINAL
    changing = np.flatnonzero((start_off != end_off)[inverse])
    for i in changing.tolist():
        local[i] = (EPOCH + int(micros[i]) * _MICRO).astimezone(zone).toordinal()
    return local.astype(np.int64)


def _distinct(values: IntArray) -> tuple[IntArray, IntArray]:
    """(sorted distinct values, index of each value among them), like np.unique."""
    low, high = int(values.min()), int(values.max())
    if high - low > 4 * len(values) + 1_000_000:  # sparse: a table would not pay off
        distinct, inverse = np.unique(values, return_inverse=True)
        return distinct, inverse.astype(np.int64)
    # A few thousand distinct days among millions of rows: a lookup table is O(n), where
    # np.unique sorts everything.
    present = np.zeros(high - low + 1, dtype=np.bool_)
    present[values - low] = True
    distinct = np.flatnonzero(present)
    slot = np.cumsum(present, dtype=np.int64) - 1
    return distinct + low, slot[values - low]


def _offset_us(micros: int, zone: tzinfo) -> int:
    offset = (EPOCH + micros * _MICRO).astimezone(zone).utcoffset() or timedelta(0)
    return offset // _MICRO


def reachability(phones: Iterable[str], emails: Iterable[str], region: str
                 ) -> tuple[bool, bool]:
    """(has a plausible phone, has a plausible email) for one contact."""
    phone = any(is_plausible_phone(p, region) for p in phones if p)
    email = any(is_plausible_email(e) for e in emails if e)
    return phone, email


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """Contacts or companies as columns (deleted ones included, any order)."""

    ids: IntArray
    deleted: BoolArray
    has_phone: BoolArray
    has_email: BoolArray
    birth_month: IntArray  # 0 = no birthday known
    birth_day: IntArray
    fields: FieldValues = field(default_factory=dict)  # wanted fields, keyed by record id

    @classmethod
    def empty(cls) -> RecordColumns:
        """No records at all."""
        none = np.zeros(0, dtype=np.int64)
        flag = np.zeros(0, dtype=np.bool_)
        return cls(none, flag, flag, flag, none, none)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class DealColumns:
    """Deals as columns (deleted ones included, any order)."""

    id: IntArray
    contact_id: IntArray  # -1 = none
    company_id: IntArray  # -1 = none
    status: npt.NDArray[np.int8]  # index into STATUSES, -1 = anything else
    amount: npt.NDArray[np.float64]  # a missing amount is 0.0
    currency: npt.NDArray[np.int16]  # index into currencies, -1 = none (portal currency)
    currencies: tuple[str, ...]
    category: npt.NDArray[np.int32]  # index into categories, -1 = none
    categories: tuple[str, ...]
    moment: IntArray  # closed_at, else created_at, in UTC microseconds
    deleted: BoolArray
    fields: FieldValues = field(default_factory=dict)  # wanted fields, keyed by deal id

    def __len__(self) -> int:
        return len(self.id)


@dataclass(frozen=True, slots=True)
class PreviousLedger:
    """A stored ledger as the engine reads it: earns as columns, other entries as objects.

    Earns are the bulk (one per purchase) and only their (customer, deal) pair decides
    anything; the few whose purchase vanished are fetched in full with ``earn_entries``.
    Expiries are never read: they are always re-derived.
    """

    earn_customer: IntArray
    earn_deal: IntArray  # -1 = none
    earn_points: IntArray  # what each earn credited: a changed figure is a re-pricing
    earn_entries: Callable[[IntArray], Sequence[LedgerEntry]]  # entries at these positions
    others: Sequence[LedgerEntry]  # bonus, redeem and reversal entries

    @classmethod
    def of(cls, entries: Sequence[LedgerEntry] | PreviousLedger) -> PreviousLedger:
        """Wrap plain entries (an already columnar ledger is returned as is)."""
        if isinstance(entries, PreviousLedger):
            return entries
        earns = [e for e in entries if e.kind == "earn"]
        return cls(
            earn_customer=np.array([e.customer_id for e in earns], dtype=np.int64),
            earn_deal=np.array([-1 if e.deal_id is None else e.deal_id for e in earns],
                               dtype=np.int64),
            earn_points=np.array([e.points for e in earns], dtype=np.int64),
            earn_entries=lambda positions: [earns[i] for i in positions.tolist()],
            others=[e for e in entries if e.kind in ("bonus", "redeem", "reversal")],
        )


class Codes:
    """Assigns small-integer codes to repeated strings (None and "" → -1)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self._lookup: dict[str | None, int] = {None: -1, "": -1}

    def __call__(self, value: str | None) -> int:
        if not value:
            return -1
        code = self.index.get(value)
        if code is None:
            code = self.index[value] = self._lookup[value] = len(self.index)
        return code

    def encode(self, values: Sequence[str | None]) -> list[int]:
        """The code of every value; strings not seen before get the next codes."""
        lookup = self._lookup
        for value in set(values) - lookup.keys():  # set arithmetic runs in C
            self(value)
        return list(map(lookup.__getitem__, values))

    def names(self) -> tuple[str, ...]:
        """The coded strings, in code order."""
        return tuple(self.index)


def collect_fields(store: FieldValues, key: int, values: Mapping[str, Any]) -> None:
    """Copy the non-empty values of ``store``'s field names from ``values`` under ``key``."""
    for name, found in store.items():
        value = values.get(name)
        if value is not None and value != "":
            found[key] = value


def contact_columns(contacts: Sequence[Contact], config: RulesConfig) -> RecordColumns:
    """Contacts → columns: channels checked once here, birthdays split, wanted fields kept."""
    _, record_fields = wanted_fields(config)
    fields: FieldValues = {name: {} for name in record_fields}
    region = config.customer.phone_region
    reach = [reachability(c.phones, c.emails, region) for c in contacts]
    for c in contacts:
        if fields and c.fields:
            collect_fields(fields, c.id, c.fields)
    birthdays = [c.birthday for c in contacts]
    return RecordColumns(
        ids=np.array([c.id for c in contacts], dtype=np.int64),
        deleted=np.array([c.deleted_at is not None for c in contacts], dtype=np.bool_),
        has_phone=np.array([r[0] for r in reach], dtype=np.bool_),
        has_email=np.array([r[1] for r in reach], dtype=np.bool_),
        birth_month=np.array([b.month if b else 0 for b in birthdays], dtype=np.int64),
        birth_day=np.array([b.day if b else 0 for b in birthdays], dtype=np.int64),
        fields=fields,
    )


def company_columns(companies: Sequence[Company], config: RulesConfig) -> RecordColumns:
    """Companies → columns (channels come from their deals' contacts, not from here)."""
    _, record_fields = wanted_fields(config)
    fields: FieldValues = {name: {} for name in record_fields}
    for c in companies:
        if fields and c.fields:
            collect_fields(fields, c.id, c.fields)
    n = len(companies)
    no = np.zeros(n, dtype=np.bool_)
    return RecordColumns(
        ids=np.array([c.id for c in companies], dtype=np.int64),
        deleted=np.array([c.deleted_at is not None for c in companies], dtype=np.bool_),
        has_phone=no, has_email=no.copy(), birth_month=np.zeros(n, dtype=np.int64),
        birth_day=np.zeros(n, dtype=np.int64), fields=fields,
    )


def deal_columns(deals: Sequence[Deal], config: RulesConfig) -> DealColumns:
    """Deals → columns."""
    deal_fields, _ = wanted_fields(config)
    fields: FieldValues = {name: {} for name in deal_fields}
    currency, category = Codes(), Codes()
    status = {name: code for code, name in enumerate(STATUSES)}
    for d in deals:
        if fields and d.fields:
            collect_fields(fields, d.id, d.fields)
    return DealColumns(
        id=np.array([d.id for d in deals], dtype=np.int64),
        contact_id=np.array([-1 if d.contact_id is None else d.contact_id for d in deals],
                            dtype=np.int64),
        company_id=np.array([-1 if d.company_id is None else d.company_id for d in deals],
                            dtype=np.int64),
        status=np.array([status.get(d.status, -1) for d in deals], dtype=np.int8),
        amount=np.array([d.amount or 0.0 for d in deals], dtype=np.float64),
        currency=np.array([currency(d.currency) for d in deals], dtype=np.int16),
        currencies=currency.names(),
        category=np.array([category(d.category_id) for d in deals], dtype=np.int32),
        categories=category.names(),
        moment=np.array([utc_micros(d.closed_at or d.created_at) for d in deals],
                        dtype=np.int64),
        deleted=np.array([d.deleted_at is not None for d in deals], dtype=np.bool_),
        fields=fields,
    )


def concat_deal_columns(first: DealColumns, second: DealColumns) -> DealColumns:
    """The deals of ``first`` then ``second`` (read in parts), as one ``DealColumns``.

    Currency codes are per part; the second part's are mapped onto the first's names.
    """
    names = list(first.currencies)
    remap = np.array([*(_code_in(names, n) for n in second.currencies), -1], dtype=np.int16)
    if first.categories != second.categories:
        raise ValueError("deal parts read with different category settings")
    fields = {name: {**first.fields.get(name, {}), **second.fields.get(name, {})}
              for name in {*first.fields, *second.fields}}
    return DealColumns(
        id=np.concatenate((first.id, second.id)),
        contact_id=np.concatenate((first.contact_id, second.contact_id)),
        company_id=np.concatenate((first.company_id, second.company_id)),
        status=np.concatenate((first.status, second.status)),
        amount=np.concatenate((first.amount, second.amount)),
        currency=np.concatenate((first.currency, remap[second.currency])),
        currencies=tuple(names), category=np.concatenate((first.category, second.category)),
        categories=first.categories, moment=np.concatenate((first.moment, second.moment)),
        deleted=np.concatenate((first.deleted, second.deleted)), fields=fields,
    )


def _code_in(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)
