"""Columnar CRM records → purchase history: vectorised filters, one sort, numpy throughout.

The inputs are ``rules.columns`` (built from record objects by ``compute()`` or straight
from the mirror by ``connector.rules_io``); everything downstream (segments, RFM, loyalty,
churn, metrics) reads the arrays built here.  Purchase *days* are calendar days in the
portal's time zone, stored as proleptic ordinals (``date.toordinal()``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

import numpy as np
import numpy.typing as npt

from rules.columns import (
    STATUSES,
    BoolArray,
    DealColumns,
    FieldValues,
    IntArray,
    RecordColumns,
    is_plausible_email,
    is_plausible_phone,
    local_days,
    utc_micros,
    wanted_fields,
)
from rules.config import RulesConfig, currency_code
from rules.lookup import index_in, sort_order

__all__ = [
    "MAX_AMOUNT",
    "Aggregates",
    "BoolArray",
    "Customers",
    "FieldValues",
    "FloatArray",
    "IntArray",
    "PurchaseHistory",
    "aggregate",
    "build_customers",
    "build_history",
    "is_plausible_email",
    "is_plausible_phone",
    "local_day",
    "wanted_fields",
]

FloatArray = npt.NDArray[np.float64]

# The largest deal amount (in the portal currency, after conversion) that counts.  No real
# deal comes near a trillion roubles, so a bigger figure is a typo or a test value; and up
# to it every later step stays exact: 1e14 kopecks is far inside float64's exact integers
# (2**53 ≈ 9.0e15) and inside int64 once multiplied by a cashback rate in basis points.
MAX_AMOUNT = 1e12


def local_day(moment: datetime, zone: tzinfo) -> int:
    """The calendar day (ordinal) of an aware ``moment`` in the portal's ``zone``."""
    return moment.astimezone(zone).toordinal()


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
        return index_in(self.ids, record_ids, ascending=True)


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


def _by_id(ids: IntArray, fields: FieldValues, rows_of: IntArray) -> FieldValues:
    """Re-key field values from record id to customer row (records that are customers)."""
    row_of = dict(zip(ids.tolist(), rows_of.tolist(), strict=True))
    out: FieldValues = {}
    for name, values in fields.items():
        rows = ((row_of.get(key, -1), value) for key, value in values.items())
        out[name] = {row: value for row, value in rows if row >= 0}
    return out


def _live_customers(kind: str, records: RecordColumns, has_phone: BoolArray,
                    has_email: BoolArray) -> Customers:
    live = np.flatnonzero(~records.deleted)
    order = live[np.argsort(records.ids[live], kind="stable")]
    ids = records.ids[order]
    row_of = np.arange(len(ids), dtype=np.int64)
    used = {name: values for name, values in records.fields.items()}
    return Customers(
        kind=kind, ids=ids, has_phone=has_phone[order], has_email=has_email[order],
        birth_month=records.birth_month[order].astype(np.int64),
        birth_day=records.birth_day[order].astype(np.int64),
        fields=_by_id(ids, used, row_of) if used else {},
    )


def build_customers(contacts: RecordColumns, companies: RecordColumns, deals: DealColumns,
                    config: RulesConfig) -> Customers:
    """The live customers (contacts, or companies in B2B mode) with channels and fields."""
    if config.customer.kind == "contact":
        return _live_customers("contact", contacts, contacts.has_phone, contacts.has_email)
    phone, email = _company_reach(contacts, companies, deals)
    no_birthday = RecordColumns(companies.ids, companies.deleted, phone, email,
                                np.zeros(len(companies), dtype=np.int64),
                                np.zeros(len(companies), dtype=np.int64), companies.fields)
    return _live_customers("company", no_birthday, phone, email)


def _company_reach(contacts: RecordColumns, companies: RecordColumns,
                   deals: DealColumns) -> tuple[BoolArray, BoolArray]:
    # A company has no phones of its own in the mirror: it is reachable through the live
    # contacts on its live deals.  Only linked deals are indexed, so no live contact (or
    # no company) simply leaves every company unreachable.
    live = np.flatnonzero(~contacts.deleted)
    order = live[np.argsort(contacts.ids[live], kind="stable")]
    contact_row = _rows_in(contacts.ids[order], deals.contact_id)
    company_row = _rows_in(companies.ids, deals.company_id)
    linked = (~deals.deleted) & (contact_row >= 0) & (company_row >= 0) & (deals.company_id >= 0)
    via = order[contact_row[linked]]  # the linked contact of each linked deal
    phone = np.zeros(len(companies), dtype=np.bool_)
    email = np.zeros(len(companies), dtype=np.bool_)
    phone[company_row[linked][contacts.has_phone[via]]] = True
    email[company_row[linked][contacts.has_email[via]]] = True
    return phone, email


def _rows_in(ids: IntArray, wanted: IntArray) -> IntArray:
    """Position of each ``wanted`` id in ``ids`` (any order), -1 when absent."""
    return index_in(ids, wanted)


@dataclass
class _DealScan:
    """What survives the purchase filters, and why the rest did not."""

    keep: BoolArray
    amount: FloatArray
    excluded: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, mask: BoolArray) -> None:
        """Exclude the kept deals in ``mask``, counting them under ``reason``."""
        hit = self.keep & mask
        count = int(hit.sum())
        if count:
            self.excluded[reason] += count
            self.keep &= ~hit


def _codes_of(names: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    return [code for code, name in enumerate(names) if name in wanted]


def _scan_currencies(scan: _DealScan, deals: DealColumns, config: RulesConfig) -> None:
    # CRMs store codes as typed ("rub", " RUB"); the config is normalised the same way.
    purchases = config.purchases
    for code, name in enumerate(deals.currencies):
        normalised = currency_code(name)
        if normalised in (purchases.currency, ""):
            continue
        mask = deals.currency == code
        rate = purchases.rates.get(normalised)
        if rate is None:
            scan.drop(f"currency:{normalised}", mask)
            continue
        converting = scan.keep & mask
        if converting.any():
            scan.converted[normalised] += int(converting.sum())
            scan.amount[converting] *= rate


def _scan_amounts(scan: _DealScan) -> None:
    # Before any rounding or cast: NaN or inf would become -9.2e18 kopecks, and a huge
    # figure would overflow the int64 point arithmetic into negative points.
    scan.drop("not_finite", ~np.isfinite(scan.amount))
    with np.errstate(invalid="ignore"):  # NaN compares False: already dropped above
        scan.drop("too_large", np.abs(scan.amount) > MAX_AMOUNT)


def _scan_deals(deals: DealColumns, config: RulesConfig, as_of: datetime) -> _DealScan:
    # The filters run in this order so every excluded deal is counted once, under the
    # first reason that applies (the notes promise as much).
    purchases = config.purchases
    scan = _DealScan(np.ones(len(deals), dtype=np.bool_), deals.amount.astype(np.float64))
    scan.drop("deleted", deals.deleted)
    scan.keep &= np.isin(deals.status, [STATUSES.index(s) for s in purchases.statuses])
    owner = deals.company_id if config.customer.kind == "company" else deals.contact_id
    scan.drop("no_customer", owner < 0)
    if purchases.categories:
        known = _codes_of(deals.categories, purchases.categories)
        scan.drop("category", ~np.isin(deals.category, known))
    _scan_currencies(scan, deals, config)
    _scan_amounts(scan)
    scan.drop("min_amount", scan.amount < purchases.min_amount)
    scan.drop("after_as_of", deals.moment > utc_micros(as_of))
    return scan


def _kept_fields(deals: DealColumns, keep: BoolArray) -> FieldValues:
    kept_ids = deals.id[keep]
    out: FieldValues = {}
    for name, values in deals.fields.items():
        keys = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
        inside = np.isin(keys, kept_ids).tolist()
        out[name] = {k: v for (k, v), ok in zip(values.items(), inside, strict=True) if ok}
    return out


_PLURAL = {"contact": "contacts", "company": "companies"}


def _scan_notes(scan: _DealScan, unknown_owner: int, config: RulesConfig) -> list[str]:
    notes = []
    kind = config.customer.kind
    labels = {
        "deleted": "deleted deals never count",
        "no_customer": f"counted-status deals without a {kind} ignored",
        "category": "deals outside the configured categories ignored",
        "not_finite": "deals with a non-finite amount (NaN or infinity) ignored",
        "too_large": f"deals with an implausible amount (beyond ±{MAX_AMOUNT:g}) ignored",
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
        notes.append(f"{unknown_owner} purchases of unknown or deleted {_PLURAL[kind]} ignored")
    return notes


def build_history(customers: Customers, deals: DealColumns, config: RulesConfig,
                  as_of: datetime) -> PurchaseHistory:
    """Counted purchases of ``customers`` up to ``as_of``, sorted once, as numpy columns."""
    scan = _scan_deals(deals, config, as_of)
    kept = np.flatnonzero(scan.keep)
    owners = deals.company_id if config.customer.kind == "company" else deals.contact_id
    rows = customers.rows_of(owners[kept])
    known = rows >= 0
    chosen = kept[known]
    day = local_days(deals.moment[chosen], config.zone())
    amount_kop = np.rint(scan.amount[chosen] * 100).astype(np.int64)
    deal_id, cust = deals.id[chosen], rows[known]
    order = sort_order(deal_id, day, cust)
    cust, day, deal_id, amount_kop = cust[order], day[order], deal_id[order], amount_kop[order]
    starts = np.searchsorted(cust, np.arange(len(customers) + 1)).astype(np.int64)
    notes = _scan_notes(scan, int((~known).sum()), config)
    return PurchaseHistory(
        customers=customers, as_of_day=local_day(as_of, config.zone()), cust=cust, day=day,
        amount=amount_kop / 100.0, amount_kop=amount_kop, deal_id=deal_id, starts=starts,
        deal_fields=_kept_fields(deals, scan.keep), notes=tuple(notes),
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
