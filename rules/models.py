"""Plain data in and out of the rules engine: CRM records, per-customer decisions, the ledger.

Inputs are frozen slotted dataclasses so callers (the mirror reader, tests, the benchmark)
build them cheaply.  Outputs for a million customers would cost gigabytes as eager Python
objects, so the engine returns :class:`RowSequence` views: columnar arrays inside, a plain
``Sequence`` of frozen dataclasses outside, each row built only when it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Literal, TypeVar, overload

__all__ = [
    "Channel",
    "CohortRow",
    "ColumnChunk",
    "Company",
    "Contact",
    "CustomerKind",
    "CustomerState",
    "Deal",
    "DealStatus",
    "LedgerEntry",
    "LedgerKind",
    "Lifecycle",
    "Metrics",
    "ModelUsed",
    "RowSequence",
    "RulesResult",
    "ValueSegment",
]

DealStatus = Literal["open", "won", "lost"]
CustomerKind = Literal["contact", "company"]
Lifecycle = Literal["prospect", "new", "active", "sleeping", "lost"]
ValueSegment = Literal["vip", "middle", "base"]
Channel = Literal["phone", "email", "none"]
ModelUsed = Literal["bgnbd", "signals"]
LedgerKind = Literal["earn", "bonus", "redeem", "expire", "reversal"]

_EMPTY: Mapping[str, Any] = {}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Contact:
    """A person in the CRM."""

    id: int
    name: str | None = None
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    birthday: date | None = None
    responsible_id: int | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    fields: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Company:
    """An organisation in the CRM (the customer in B2B mode)."""

    id: int
    title: str | None = None
    responsible_id: int | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    fields: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Deal:
    """A deal; a won one is a purchase.  Datetimes are timezone-aware."""

    id: int
    contact_id: int | None
    company_id: int | None
    title: str | None
    amount: float | None
    currency: str | None
    status: DealStatus
    created_at: datetime
    closed_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None
    category_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class CustomerState:
    """Everything the rules decided about one customer as of the run's ``as_of``."""

    customer_id: int
    customer_kind: CustomerKind
    lifecycle: Lifecycle
    value_segment: ValueSegment
    rfm_r: int | None
    rfm_f: int | None
    rfm_m: int | None
    rfm_group: str | None
    channels: tuple[Channel, ...]
    purchases: int
    revenue: float
    first_purchase: date | None
    last_purchase: date | None
    median_gap_days: float | None
    tier: str
    perks: tuple[str, ...]
    points_balance: int
    purchases_to_next_tier: int | None
    churn_score: float
    churn_reasons: tuple[str, ...]
    p_alive: float | None
    expected_purchases: float | None
    predicted_clv: float | None
    model_used: ModelUsed


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One movement of loyalty points; the balance is the sum of a customer's entries.

    ``entry_key`` is deterministic ("earn:deal:123", "reversal:earn:deal:123", ...), so a
    recomputation produces the same keys and a store can upsert by it.
    """

    customer_id: int
    kind: LedgerKind
    deal_id: int | None
    points: int
    at: date
    tier_at_purchase: str | None
    reason: str
    entry_key: str


@dataclass(frozen=True, slots=True)
class CohortRow:
    """One acquisition cohort: customers whose first purchase fell in ``cohort`` (YYYY-MM)."""

    cohort: str
    size: int
    retention: tuple[float, ...]  # [k] = share of the cohort buying in month cohort + k


@dataclass(frozen=True, slots=True)
class Metrics:
    """Retention metrics for the period [period_start, period_end) plus an as-of snapshot."""

    period_start: date
    period_end: date
    customers_at_start: int
    customers_at_end: int
    new_customers: int
    first_time_customers: int
    reactivated_customers: int
    retained_customers: int
    crr_percent: float | None
    churn_rate_percent: float | None
    repeat_purchase_percent: float | None
    purchase_frequency: float | None
    average_order_value: float | None
    period_revenue: float
    period_purchases: int
    historical_clv: float | None
    predicted_clv: float | None
    cohorts: tuple[CohortRow, ...]
    lifecycle_distribution: Mapping[str, int]
    value_distribution: Mapping[str, int]
    rfm_distribution: Mapping[str, int]
    tier_distribution: Mapping[str, int]
    points_liability: int


ColumnChunk = dict[str, list[Any]]  # dataclass field name -> that field of each row


def _present(value: Any, missing: Any) -> Any:
    return missing if value is None else value


class RowSequence(Sequence[T]):
    """A read-only sequence whose rows are built on access from columnar data.

    ``columns(start, stop)`` gives the same rows field by field — what a bulk writer
    wants — and, when the engine supplies ``make_columns``, without building a single
    dataclass: at millions of rows that is several times faster.  ``make_columns(start,
    stop, missing)`` puts ``missing`` wherever a row's field is None.
    """

    __slots__ = ("_length", "_make_columns", "_make_row")

    def __init__(self, length: int, make_row: Callable[[int], T],
                 make_columns: Callable[[int, int, Any], ColumnChunk] | None = None) -> None:
        self._length = length
        self._make_row = make_row
        self._make_columns = make_columns

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._make_row(i) for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._make_row(index)

    def __iter__(self) -> Iterator[T]:
        make_row = self._make_row
        return (make_row(i) for i in range(self._length))

    def __repr__(self) -> str:
        return f"RowSequence(len={self._length})"

    def columns(self, start: int, stop: int, missing: Any = None) -> ColumnChunk:
        """Rows ``start:stop`` as {field name: [value per row]}, equal to the rows' fields.

        ``missing`` stands in for every None: a SQLite writer passes NaN, which SQLite
        stores as NULL and Python's sqlite3 binds about ten times faster than None.
        """
        start, stop, _ = slice(start, stop).indices(self._length)
        if self._make_columns is not None and stop > start:
            return self._make_columns(start, stop, missing)
        rows = self[start:stop]
        if not rows:
            return {}
        names = [f.name for f in fields(rows[0])]  # type: ignore[arg-type]
        return {name: [_present(getattr(row, name), missing) for row in rows]
                for name in names}


@dataclass(frozen=True, slots=True)
class RulesResult:
    """What one rules run produced: states, the full ledger, metrics and human notes.

    ``ledger_view`` is the columnar form ``ledger`` is read from (a
    ``rules.ledger_rows.LedgerRows``), when the engine built it: a store can compare it
    with what it holds without building every entry.
    """

    states: Sequence[CustomerState]
    ledger: Sequence[LedgerEntry]
    metrics: Metrics
    notes: tuple[str, ...]
    ledger_view: Any = None

    def state_of(self, customer_id: int) -> CustomerState:
        """The state of one customer (linear scan; index ``states`` yourself for bulk use)."""
        for state in self.states:
            if state.customer_id == customer_id:
                return state
        raise KeyError(customer_id)

    def ledger_of(self, customer_id: int) -> list[LedgerEntry]:
        """The ledger entries of one customer, in ledger order."""
        return [e for e in self.ledger if e.customer_id == customer_id]
