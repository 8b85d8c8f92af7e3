"""CRM records → columnar purchase history: one pass over deals, one sort, numpy from then on.

Everything downstream (segments, RFM, loyalty, churn, metrics) reads these arrays, so the
per-record Python work happens exactly once here.  Purchase *days* are calendar days in the
portal's time zone, stored as proleptic ordinals (``date.toordinal()``).
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.config import RulesConfig
from rules.models import Company, Contact, Deal

__all__ = [
    "Aggregates",
    "Customers",
    "FieldValues",
    "PurchaseHistory",
    "aggregate",
    "build_customers",
    "build_history",
    "is_plausible_email",
    "is_plausible_phone",
    "local_day",
    "wanted_fields",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
FieldValues = dict[str, dict[int, Any]]  # field name -> {record key -> non-empty value}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
_PHONE_NOISE = re.compile(r"[\s()\-.]")
_RU_PHONE = re.compile(r"^(?:\+7|8)\d{10}$")


def local_day(moment: datetime, zone: tzinfo) -> int:
    """The calendar day (ordinal) of an aware ``moment`` in the portal's ``zone``."""
    return moment.astimezone(zone).toordinal()


def is_plausible_email(address: str) -> bool:
    """A syntactic sanity check (one @, a dotted domain), not deliverability."""
    return bool(_EMAIL.match(address.strip()))


def is_plausible_phone(number: str, region: str) -> bool:
    """True when ``phonenumbers`` parses ``number`` (default ``region``) as a possible number."""
    # phonenumbers.parse costs ~10 µs; the common Russian shapes are decided by a regex
    # that agrees with it (10 national digits after +7 or the trunk prefix 8).
    if region == "RU" and _RU_PHONE.match(_PHONE_NOISE.sub("", number)):
        return True
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_possible_number(parsed))


@dataclass(frozen=True, slots=True)
class Customers:
    """The customer index: ids ascending; row i of every array belongs to ``ids[i]``."""

    kind: str
    ids: IntArray
    has_phone: BoolArray
    has_email: BoolArray
    birth_month: IntArray  # 0 = no birthday known
    birth_day: IntArray
    fields: FieldValues  # keyed by customer row

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, record_ids: IntArray) -> IntArray:
        """Row of each id, or -1 for ids that are not customers."""
        if len(self.ids) == 0:
            return np.full(len(record_ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, record_ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[pos] == record_ids, pos, -1).astype(np.int64)


@dataclass(frozen=True, slots=True)
class PurchaseHistory:
    """Counted purchases sorted by (customer row, day, deal id) plus the customer index.

    ``starts[i]:starts[i + 1]`` slices customer row i's purchases.
    """

    customers: Customers
    as_of_day: int
    cust: IntArray
    day: IntArray
    amount: FloatArray  # in the portal currency, rounded to kopecks
    amount_kop: IntArray
    deal_id: IntArray
    starts: IntArray
    deal_fields: FieldValues  # keyed by deal id
    notes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.deal_id)


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Per-customer purchase aggregates (row-aligned with ``Customers``)."""

    count: IntArray
    revenue: FloatArray
    first_day: IntArray  # -1 when no purchase
    last_day: IntArray
    visit_days: IntArray  # distinct purchase days
    median_gap: FloatArray  # NaN with fewer than two distinct days


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


def _collect_fields(store: FieldValues, key: int, values: Mapping[str, Any],
                    names: Iterable[str]) -> None:
    for name in names:
        value = values.get(name)
        if value is not None and value != "":
            store[name][key] = value


def _contact_channels(contact: Contact, region: str) -> tuple[bool, bool]:
    phone = any(is_plausible_phone(p, region) for p in contact.phones if p)
    email = any(is_plausible_email(e) for e in contact.emails if e)
    return phone, email


def _birthday_parts(birthday: date | None) -> tuple[int, int]:
    return (birthday.month, birthday.day) if birthday is not None else (0, 0)


def build_customers(contacts: Sequence[Contact], companies: Sequence[Company],
                    deals: Sequence[Deal], config: RulesConfig) -> Customers:
    """The live customers (contacts, or companies in B2B mode) with channels and fields."""
    _, record_fields = wanted_fields(config)
    region = config.customer.phone_region
    if config.customer.kind == "contact":
        rows = [(c.id, *_contact_channels(c, region), *_birthday_parts(c.birthday), c)
                for c in contacts if c.deleted_at is None]
        rows.sort(key=lambda r: r[0])
        return _customers_from_rows("contact", rows, record_fields)
    return _company_customers(contacts, companies, deals, config, record_fields)


def _customers_from_rows(kind: str, rows: list[tuple[Any, ...]],
                         record_fields: set[str]) -> Customers:
    fields: FieldValues = {name: {} for name in record_fields}
    if record_fields:
        for row_no, row in enumerate(rows):
            if row[5].fields:
                _collect_fields(fields, row_no, row[5].fields, record_fields)
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    return Customers(
        kind=kind,
        ids=np.array(cols[0], dtype=np.int64),
        has_phone=np.array(cols[1], dtype=np.bool_),
        has_email=np.array(cols[2], dtype=np.bool_),
        birth_month=np.array(cols[3], dtype=np.int64),
        birth_day=np.array(cols[4], dtype=np.int64),
        fields=fields,
    )


def _company_customers(contacts: Sequence[Contact], companies: Sequence[Company],
                       deals: Sequence[Deal], config: RulesConfig,
                       record_fields: set[str]) -> Customers:
    # A company has no phones of its own in the mirror: it is reachable through the
    # contacts that appear on its deals.
    region = config.customer.phone_region
    reach: dict[int, tuple[bool, bool]] = {}
    linked = {d.contact_id for d in deals if d.company_id is not None and d.contact_id}
    for c in contacts:
        if c.id in linked and c.deleted_at is None:
            reach[c.id] = _contact_channels(c, region)
    company_reach: dict[int, tuple[bool, bool]] = {}
    for d in deals:
        if d.company_id is None or d.contact_id not in reach or d.deleted_at is not None:
            continue
        phone, email = reach[d.contact_id]
        old = company_reach.get(d.company_id, (False, False))
        company_reach[d.company_id] = (old[0] or phone, old[1] or email)
    rows = [(c.id, *company_reach.get(c.id, (False, False)), 0, 0, c)
            for c in companies if c.deleted_at is None]
    rows.sort(key=lambda r: r[0])
    return _customers_from_rows("company", rows, record_fields)


@dataclass
class _DealScan:
    """Columns and exclusion counters filled by one pass over the deals."""

    # array.array keeps 8 raw bytes per value; a list of ints would hold 5M int objects
    # (~36 bytes each) per column at benchmark scale.
    owner: array[int]
    day: array[int]
    amount: array[float]
    deal_id: array[int]
    excluded: Counter[str]
    converted: Counter[str]
    fields: FieldValues


def _scan_deals(deals: Sequence[Deal], config: RulesConfig, as_of: datetime) -> _DealScan:
    purchases = config.purchases
    statuses = frozenset(purchases.statuses)
    categories = frozenset(purchases.categories)
    by_company = config.customer.kind == "company"
    home, rates, min_amount = purchases.currency, purchases.rates, purchases.min_amount
    zone = config.zone()
    deal_fields, _ = wanted_fields(config)
    scan = _DealScan(array("q"), array("q"), array("d"), array("q"), Counter(), Counter(),
                     {n: {} for n in deal_fields})
    owner_add, day_add = scan.owner.append, scan.day.append
    amount_add, id_add, excluded = scan.amount.append, scan.deal_id.append, scan.excluded
    for d in deals:
        if d.deleted_at is not None:
            excluded["deleted"] += 1
            continue
        if d.status not in statuses:
            continue
        owner = d.company_id if by_company else d.contact_id
        if owner is None:
            excluded["no_customer"] += 1
            continue
        if categories and d.category_id not in categories:
            excluded["category"] += 1
            continue
        amount = d.amount or 0.0
        currency = d.currency
        if currency and currency != home:
            rate = rates.get(currency)
            if rate is None:
                excluded[f"currency:{currency}"] += 1
                continue
            scan.converted[currency] += 1
            amount *= rate
        if amount < min_amount:
            excluded["min_amount"] += 1
            continue
        moment = d.closed_at or d.created_at
        if moment > as_of:
            excluded["after_as_of"] += 1
            continue
        owner_add(owner)
        day_add(moment.astimezone(zone).toordinal())
        amount_add(amount)
        id_add(d.id)
        if deal_fields and d.fields:
            _collect_fields(scan.fields, d.id, d.fields, deal_fields)
    return scan


def _scan_notes(scan: _DealScan, unknown_owner: int, config: RulesConfig) -> list[str]:
    notes = []
    kind = config.customer.kind
    labels = {
        "deleted": "deleted deals never count",
        "no_customer": f"counted-status deals without a {kind} ignored",
        "category": "deals outside the configured categories ignored",
        "min_amount": f"deals below min_amount {config.purchases.min_amount:g} ignored",
        "after_as_of": "deals closed after as_of ignored",
    }
    for reason, count in sorted(scan.excluded.items()):
        if reason.startswith("currency:"):
            code = reason.split(":", 1)[1]
            notes.append(f"{count} deals in {code} excluded (no rate to "
                         f"{config.purchases.currency} configured)")
        else:
            notes.append(f"{count} {labels[reason]}")
    for code, count in sorted(scan.converted.items()):
        notes.append(f"{count} deals converted from {code} at fixed rate "
                     f"{config.purchases.rates[code]:g}")
    if unknown_owner:
        notes.append(f"{unknown_owner} purchases of unknown or deleted {kind}s ignored")
    return notes


def build_history(customers: Customers, deals: Sequence[Deal], config: RulesConfig,
                  as_of: datetime) -> PurchaseHistory:
    """Counted purchases of ``customers`` up to ``as_of``, sorted once, as numpy columns."""
    scan = _scan_deals(deals, config, as_of)
    rows = customers.rows_of(np.frombuffer(scan.owner, dtype=np.int64))
    known = rows >= 0
    day = np.frombuffer(scan.day, dtype=np.int64)[known]
    deal_id = np.frombuffer(scan.deal_id, dtype=np.int64)[known]
    amount = np.frombuffer(scan.amount, dtype=np.float64)[known]
    amount_kop = np.rint(amount * 100).astype(np.int64)
    cust = rows[known]
    order = np.lexsort((deal_id, day, cust))
    cust, day, deal_id, amount_kop = cust[order], day[order], deal_id[order], amount_kop[order]
    starts = np.searchsorted(cust, np.arange(len(customers) + 1)).astype(np.int64)
    notes = _scan_notes(scan, int((~known).sum()), config)
    return PurchaseHistory(
        customers=customers, as_of_day=local_day(as_of, config.zone()), cust=cust, day=day,
        amount=amount_kop / 100.0, amount_kop=amount_kop, deal_id=deal_id, starts=starts,
        deal_fields=scan.fields, notes=tuple(notes),
    )


def aggregate(history: PurchaseHistory) -> Aggregates:
    """Per-customer count, revenue, first/last day, distinct days and median gap."""
    n = len(history.customers)
    cust, day = history.cust, history.day
    count = np.bincount(cust, minlength=n).astype(np.int64)
    revenue = np.bincount(cust, weights=history.amount_kop, minlength=n) / 100.0
    has = count > 0
    first_day = np.full(n, -1, dtype=np.int64)
    last_day = np.full(n, -1, dtype=np.int64)
    first_day[has] = day[history.starts[:-1][has]]
    last_day[has] = day[history.starts[1:][has] - 1]
    gap_cust, gaps = _visit_gaps(cust, day)
    visit_days = np.where(has, 1 + np.bincount(gap_cust, minlength=n), 0).astype(np.int64)
    return Aggregates(count=count, revenue=revenue, first_day=first_day, last_day=last_day,
                      visit_days=visit_days, median_gap=_group_median(gap_cust, gaps, n))


def _visit_gaps(cust: IntArray, day: IntArray) -> tuple[IntArray, IntArray]:
    """Gaps in days between consecutive *distinct* purchase days of the same customer."""
    # Two deals on one day are one visit: counting a zero gap would make a customer who
    # splits an order look like they buy daily.
    same = (cust[1:] == cust[:-1]) & (day[1:] != day[:-1])
    return cust[1:][same], (day[1:] - day[:-1])[same]


def _group_median(group: IntArray, values: IntArray, n: int) -> FloatArray:
    """Median of ``values`` per group row (NaN for empty groups); ``group`` is sorted."""
    result = np.full(n, np.nan)
    if len(values) == 0:
        return result
    order = np.lexsort((values, group))
    sorted_values = values[order].astype(np.float64)
    counts = np.bincount(group, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    low = starts[has] + (counts[has] - 1) // 2
    high = starts[has] + counts[has] // 2
    result[has] = (sorted_values[low] + sorted_values[high]) / 2.0
    return result
