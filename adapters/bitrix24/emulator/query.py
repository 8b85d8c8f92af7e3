"""``select``, ``filter`` and ``order`` of the legacy ``crm.*.list`` methods (facts sheet §3.1).

Strict on purpose: an unknown filter field is an error (the sheet marks lenient
behaviour UNVERIFIED; answering "everything" would hide a client bug), multifields
match exactly, LIKE does not work on status-typed fields, and an empty value in a
numeric comparison behaves like SQL's comparison with ``''`` — i.e. 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

__all__ = ["BadRequest", "Condition", "parse_filter", "project", "sort_key"]

MULTIFIELDS = frozenset({"PHONE", "EMAIL", "WEB", "IM", "LINK"})
STATUS_TYPED = frozenset({"STAGE_ID", "TYPE_ID", "SOURCE_ID", "HONORIFIC", "STATUS_ID",
                          "CURRENCY_ID", "COMPANY_TYPE"})
_DATE_FIELDS = frozenset({"BIRTHDATE", "CLOSEDATE", "BEGINDATE", "MOVED_TIME",
                          "LAST_ACTIVITY_TIME"})
_OPERATOR = re.compile(r"^(>=|<=|!=|!@|=%|%=|!%|>|<|@|=|!|%)?(.+)$")


class BadRequest(Exception):
    """A legacy CRM business error: HTTP 400 with an empty ``error`` code."""


_NUMERIC = frozenset({"ID", "OPPORTUNITY", "PROBABILITY", "TAX_VALUE", "CONTACT_ID",
                      "COMPANY_ID", "LEAD_ID", "QUOTE_ID", "CATEGORY_ID", "ASSIGNED_BY_ID",
                      "CREATED_BY_ID", "MODIFY_BY_ID", "MOVED_BY_ID", "LAST_ACTIVITY_BY"})


def is_numeric_field(name: str) -> bool:
    """IDs, links, money and counts compare as numbers (codes like STAGE_SEMANTIC_ID do not)."""
    return name in _NUMERIC


def is_date_field(name: str) -> bool:
    """DATE_* and the declared date fields compare as datetimes."""
    return name.startswith("DATE_") or name in _DATE_FIELDS


@dataclass(frozen=True)
class Condition:
    """One ``{"<op>FIELD": value}`` filter entry, compiled."""

    op: str
    field: str
    value: Any
    tz: tzinfo

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` satisfies this condition."""
        if self.field in MULTIFIELDS:
            values = [e.get("VALUE") for e in row.get(self.field) or []]
            hit = any(_as_list(self.value).__contains__(v) for v in values)
            return not hit if self.op in ("!", "!=", "!@") else hit
        actual = row.get(self.field)
        if self.op in ("@", "!@"):
            inside = any(_equal(self.field, actual, v, self.tz) for v in _as_list(self.value))
            return inside if self.op == "@" else not inside
        if self.op in ("=", "!", "!="):
            equal = _equal(self.field, actual, self.value, self.tz)
            return equal if self.op == "=" else not equal
        if self.op in ("%", "=%", "%=", "!%"):
            return _like(self.op, actual, self.value)
        return _compare(self.op, self.field, actual, self.value, self.tz)


def parse_filter(
    filter_: Mapping[str, Any], known: Iterable[str], tz: tzinfo
) -> list[Condition]:
    """Compile a filter map; unknown fields and LIKE on status fields are BadRequest."""
    known_set = set(known)
    conditions = []
    for key, value in filter_.items():
        match = _OPERATOR.match(str(key))
        if not match:
            raise BadRequest(f"Invalid filter key {key!r}")
        op, field = match.group(1) or "=", match.group(2).upper()
        if field == "LOGIC":
            raise BadRequest("Filter LOGIC is not supported by this method")
        if field not in known_set and not field.startswith("UF_"):
            raise BadRequest(f"Unknown filter field '{field}'")
        if op in ("%", "=%", "%=", "!%") and field in STATUS_TYPED:
            raise BadRequest(f"LIKE is not supported for field '{field}'")
        conditions.append(Condition(op, field, value, tz))
    return conditions


def project(row: Mapping[str, Any], select: list[str], standard: Iterable[str]) -> dict[str, Any]:
    """The keys ``select`` asks for: ``*`` = standard fields, ``UF_*`` = user fields,
    multifields only when named (and omitted when empty); ``ID`` always."""
    wanted = {s.upper() for s in select}
    out: dict[str, Any] = {"ID": row["ID"]}
    for key in standard:
        if key in row and ("*" in wanted or key in wanted):
            out[key] = row[key]
    for key, value in row.items():
        if key.startswith("UF_") and ("UF_*" in wanted or key in wanted):
            out[key] = value
    for key in MULTIFIELDS & wanted:
        if row.get(key):
            out[key] = row[key]
    return out


def sort_key(field: str) -> Any:
    """A key function ordering rows by ``field`` with the right type."""
    def key(row: Mapping[str, Any]) -> Any:
        value = row.get(field)
        if is_numeric_field(field):
            return _number(value) if value not in (None, "") else float("-inf")
        return "" if value is None else str(value)
    return key


# -- comparisons ----------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Mapping):
        return list(value.values())
    return [value]


def _number(value: Any) -> float:
    try:
        return float(str(value).strip() or 0)
    except ValueError:
        return 0.0


def _moment(value: Any, tz: tzinfo) -> datetime | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        try:
            parsed = datetime.strptime(text[:10], "%d.%m.%Y")
        except ValueError:
            return None
    # An offset-less filter value is read in the portal's zone (facts sheet §6.3).
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def _equal(field: str, actual: Any, expected: Any, tz: tzinfo) -> bool:
    if is_numeric_field(field):
        return actual not in (None, "") and _number(actual) == _number(expected)
    if is_date_field(field):
        a, b = _moment(actual, tz), _moment(expected, tz)
        return a is not None and a == b
    return str(actual if actual is not None else "") == str(expected)


def _compare(op: str, field: str, actual: Any, expected: Any, tz: tzinfo) -> bool:
    if is_date_field(field):
        a, b = _moment(actual, tz), _moment(expected, tz)
        if a is None or b is None:
            return False
        left, right = a.timestamp(), b.timestamp()
    elif is_numeric_field(field):
        if actual in (None, ""):
            return False
        left, right = _number(actual), _number(expected)
    else:
        left_s, right_s = str(actual or ""), str(expected)
        return {"<": left_s < right_s, "<=": left_s <= right_s, ">": left_s > right_s,
                ">=": left_s >= right_s}[op]
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def _like(op: str, actual: Any, pattern: Any) -> bool:
    text, wanted = str(actual or "").lower(), str(pattern).lower()
    if op in ("%", "!%"):
        hit = wanted in text
        return not hit if op == "!%" else hit
    regex = "^" + ".*".join(re.escape(part) for part in wanted.split("%")) + "$"
    return re.match(regex, text, re.DOTALL) is not None
