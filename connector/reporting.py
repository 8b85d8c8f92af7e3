"""Glue between the mirror, the rules and the report: what ``retention report`` runs."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from connector.errors import ConfigError
from connector.mirror import Mirror
from connector.report import report_data
from connector.rules_io import run_rules
from connector.rules_read import load_deal_columns, load_record_columns
from rules.config import RulesConfig
from rules.engine import compute_columns
from rules.models import RulesResult

__all__ = ["NOT_STORED_NOTE", "build_report", "parse_as_of"]

NOT_STORED_NOTE = ("computed as of an explicit --as-of for this report only: customer_state "
                   "and points_ledger were not stored (run without --as-of to store)")


def parse_as_of(text: str | None, timezone: str) -> datetime | None:
    """``YYYY-MM-DD`` → the end of that day in the portal's zone (None: now).

    The end is the day's last microsecond, 23:59:59.999999: deal moments are exact to the
    microsecond and ``as_of`` is inclusive, so every deal of that day counts and nothing
    of the next one does (23:59:59 would drop a deal closed at 23:59:59.5).
    """
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ConfigError([("--as-of", f"{text!r} is not a date (use YYYY-MM-DD)")]) from None
    return datetime.combine(day, time.max, ZoneInfo(timezone))


def build_report(mirror: Mirror, config: RulesConfig, *, as_of: str | None = None,
                 top: int = 20) -> dict[str, Any]:
    """Recompute the rules over the mirror and shape the report data.

    Without ``as_of`` this is the regular run: as of now, stored (``run_rules``).  With an
    explicit ``as_of`` the rules are computed for the report only and nothing is stored:
    the stored ledger and states stay those of the latest regular run (see
    :func:`_compute_as_of`).  ``data["stored"]`` and a note say which it was.
    """
    moment = parse_as_of(as_of, config.timezone)
    if moment is None:
        result = run_rules(mirror, config, store=True)
    else:
        result = _compute_as_of(mirror, config, moment)
    data = report_data(result, as_of=moment or datetime.now(ZoneInfo(config.timezone)),
                       top_risk=top)
    data["stored"] = moment is None
    if moment is not None:
        data["notes"].insert(0, NOT_STORED_NOTE)
    _add_people(mirror, data, config.customer.kind)
    return data


def _compute_as_of(mirror: Mirror, config: RulesConfig, moment: datetime) -> RulesResult:
    # The stored ledger belongs to the latest run and holds entries dated after `moment`;
    # reconciling against it would date reversals before the earns they reverse and keep
    # bonuses from the future.  As of a chosen day the ledger is derived from the history
    # up to that day alone.  Storing the result would in turn leave the tables (and what
    # push sends to the CRM) behind the present, so it is never stored.
    return compute_columns(load_record_columns(mirror, "contacts", config),
                           load_deal_columns(mirror, config),
                           load_record_columns(mirror, "companies", config),
                           config, moment, ())


def _add_people(mirror: Mirror, data: dict[str, Any], kind: str) -> None:
    # Names and the responsible manager come from the mirror for the few listed rows only.
    ids = [row["customer_id"] for row in data["at_risk"]]
    if not ids:
        return
    table, name = ("contacts", "name") if kind == "contact" else ("companies", "title")
    marks = ",".join("?" * len(ids))
    found = {r[0]: (r[1], r[2]) for r in mirror.db.execute(
        f"select id, {name}, responsible_id from {table} where id in ({marks})", ids)}
    for row in data["at_risk"]:
        row["name"], row["manager_id"] = found.get(row["customer_id"], (None, None))
