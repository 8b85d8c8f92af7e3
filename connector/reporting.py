"""Glue between the mirror, the rules and the report: what ``retention report`` runs."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from connector.errors import ConfigError
from connector.mirror import Mirror
from connector.report import report_data
from connector.rules_io import run_rules
from rules.config import RulesConfig

__all__ = ["build_report", "parse_as_of"]


def parse_as_of(text: str | None, timezone: str) -> datetime | None:
    """``YYYY-MM-DD`` → the end of that day in the portal's zone (None: now)."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ConfigError([("--as-of", f"{text!r} is not a date (use YYYY-MM-DD)")]) from None
    return datetime.combine(day, time(23, 59, 59), ZoneInfo(timezone))


def build_report(mirror: Mirror, config: RulesConfig, *, as_of: str | None = None,
                 top: int = 20) -> dict[str, Any]:
    """Recompute (and store) the rules over the mirror and shape the report data."""
    moment = parse_as_of(as_of, config.timezone)
    result = run_rules(mirror, config, as_of=moment, store=True)
    data = report_data(result, as_of=moment or datetime.now(ZoneInfo(config.timezone)),
                       top_risk=top)
    _add_people(mirror, data, config.customer.kind)
    return data


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
