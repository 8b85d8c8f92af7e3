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
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any, cast

from connector.mirror import Mirror
from rules.config import RulesConfig
from rules.engine import compute
from rules.models import (
    Company,
    Contact,
    CustomerState,
    Deal,
    DealStatus,
    LedgerEntry,
    LedgerKind,
    Metrics,
    RulesResult,
)

__all__ = ["load_inputs", "load_previous_ledger", "run_rules", "store_result"]

_BATCH = 20_000  # rows per executemany / fetchmany: bounded memory, few round trips


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


def _custom_fields(raw: str | None) -> dict[str, Any]:
    """The raw record's custom fields (``UF_*``): the only raw keys a rule may read."""
    # Most records carry no custom field at all; skipping json.loads for them is the
    # single biggest saving when reading millions of rows.
    if not raw or "UF_" not in raw:
        return {}
    record = json.loads(raw)
    return {k: v for k, v in record.items() if k.startswith("UF_")}


def _rows(mirror: Mirror, sql: str) -> Iterator[tuple[Any, ...]]:
    cursor = mirror.db.execute(sql)
    while batch := cursor.fetchmany(_BATCH):
        yield from batch


def load_contacts(mirror: Mirror) -> list[Contact]:
    """Every mirrored contact, deleted ones included, ordered by id."""
    sql = ("select id, name, phones, emails, birthday, responsible_id, created_at, "
           "deleted_at, raw from contacts order by id")
    return [Contact(id=r[0], name=r[1], phones=_strings(r[2]), emails=_strings(r[3]),
                    birthday=_day(r[4]), responsible_id=r[5], created_at=_moment(r[6]),
                    deleted_at=_moment(r[7]), fields=_custom_fields(r[8]))
            for r in _rows(mirror, sql)]


def load_companies(mirror: Mirror) -> list[Company]:
    """Every mirrored company, deleted ones included, ordered by id."""
    sql = ("select id, title, responsible_id, created_at, deleted_at, raw from companies "
           "order by id")
    return [Company(id=r[0], title=r[1], responsible_id=r[2], created_at=_moment(r[3]),
                    deleted_at=_moment(r[4]), fields=_custom_fields(r[5]))
            for r in _rows(mirror, sql)]


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
           "closed_at, updated_at, deleted_at, category_id, raw from deals order by id")
    return [_deal(r) for r in _rows(mirror, sql)]


def load_inputs(mirror: Mirror) -> tuple[list[Contact], list[Deal], list[Company]]:
    """Contacts, deals and companies of the mirror as ``rules`` records (deleted included)."""
    return load_contacts(mirror), load_deals(mirror), load_companies(mirror)


def load_previous_ledger(mirror: Mirror, kind: str) -> list[LedgerEntry]:
    """The stored ledger of ``kind`` customers (another kind's ids would mean other people)."""
    sql = ("select customer_id, kind, deal_id, points, at, tier_at_purchase, reason, "
           "entry_key from points_ledger where customer_kind = ? order by rowid")
    cursor = mirror.db.execute(sql, [kind])
    return [LedgerEntry(r[0], cast(LedgerKind, r[1]), r[2], r[3], date.fromisoformat(r[4]),
                        r[5], r[6] or "", r[7])
            for r in cursor.fetchall()]


# -- writing ----------------------------------------------------------------------------

def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _state_row(s: CustomerState, computed_at: str) -> tuple[Any, ...]:
    return (s.customer_id, s.customer_kind, s.lifecycle, s.value_segment, s.rfm_r, s.rfm_f,
            s.rfm_m, s.rfm_group, json.dumps(s.channels), s.purchases, s.revenue,
            _iso(s.first_purchase), _iso(s.last_purchase), s.median_gap_days, s.tier,
            json.dumps(s.perks, ensure_ascii=False), s.points_balance,
            s.purchases_to_next_tier, s.churn_score,
            json.dumps(s.churn_reasons, ensure_ascii=False), s.p_alive,
            s.expected_purchases, s.predicted_clv, s.model_used, computed_at)


def _ledger_row(e: LedgerEntry, kind: str) -> tuple[Any, ...]:
    return (e.entry_key, e.customer_id, kind, e.kind, e.deal_id, e.points, e.at.isoformat(),
            e.tier_at_purchase, e.reason)


def _insert_many(mirror: Mirror, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    # executemany consumes the generator lazily, so a million rows are never in memory.
    mirror.db.conn.executemany(sql, rows)


def _metrics_json(metrics: Metrics) -> str:
    return json.dumps(asdict(metrics), ensure_ascii=False, default=str)


def store_result(mirror: Mirror, result: RulesResult, kind: str, as_of: datetime,
                 computed_at: str) -> None:
    """Replace states and ledger with ``result`` and append a metrics snapshot — atomically."""
    state_marks = ",".join("?" * 25)
    with mirror.db.atomic():
        mirror.db.execute("delete from customer_state")
        _insert_many(mirror, f"insert into customer_state values ({state_marks})",
                     (_state_row(s, computed_at) for s in result.states))
        # The ledger is derived (reversals included): the table is exactly this run's.
        mirror.db.execute("delete from points_ledger")
        _insert_many(mirror, "insert into points_ledger (entry_key, customer_id, "
                     "customer_kind, kind, deal_id, points, at, tier_at_purchase, reason) "
                     "values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (_ledger_row(e, kind) for e in result.ledger))
        m = result.metrics
        mirror.db.execute(
            "insert into metric_snapshots (computed_at, as_of, customer_kind, period_start, "
            "period_end, metrics, notes) values (?, ?, ?, ?, ?, ?, ?)",
            [computed_at, as_of.isoformat(), kind, m.period_start.isoformat(),
             m.period_end.isoformat(), _metrics_json(m),
             json.dumps(result.notes, ensure_ascii=False)])


def run_rules(mirror: Mirror, config: RulesConfig, *, as_of: datetime | None = None,
              store: bool = True) -> RulesResult:
    """Recompute everything from the mirror; with ``store``, persist it in one transaction.

    ``as_of`` defaults to now (UTC) and must be timezone-aware.  Recomputing with the same
    mirror and ``as_of`` leaves ``customer_state`` and ``points_ledger`` unchanged.
    """
    now = datetime.now(UTC)
    as_of = as_of or now
    kind = config.customer.kind
    previous = load_previous_ledger(mirror, kind)
    contacts, deals, companies = load_inputs(mirror)
    result = compute(contacts, deals, companies, config, as_of, previous_ledger=previous)
    if store:
        store_result(mirror, result, kind, as_of, now.isoformat(timespec="seconds"))
    return result

