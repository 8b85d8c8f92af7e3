"""``select``, ``filter`` and ``order`` of the legacy ``crm.*.list`` methods (facts sheet §3.1).

Strict on purpose: field names are matched exactly as the docs spell them (upper case);
an unknown filter or order field is an error (the sheet marks lenient behaviour
UNVERIFIED; answering "everything" would hide a client bug); only the legacy operators
exist (``!%`` and friends belong to ``crm.item.list``); multifields take exact matches
only; LIKE does not work on reference-typed fields; an empty value in a numeric
comparison behaves like SQL's comparison with ``''`` — i.e. 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal

from adapters.bitrix24.emulator.fields import MULTIFIELDS, Field, field_kind, no_like

__all__ = ["BadRequest", "Condition", "parse_filter", "parse_order", "project", "sort_key"]

# Longest prefixes first, so ">=" is not read as ">" plus a field named "=…".
_OPERATOR = re.compile(r"^(>=|<=|!=|!@|=%|%=|>|<|@|=|!|%)?(.+)$")
_LIKE = frozenset({"%", "=%", "%="})


class BadRequest(Exception):
    """A legacy CRM business error: HTTP 400 with an empty ``error`` code."""


@dataclass(frozen=True)
class Condition:
    """One ``{"<op>FIELD": value}`` filter entry, compiled."""

    op: str
    field: str
    kind: str
    value: Any
    tz: tzinfo

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` satisfies this condition."""
        if self.kind == "multi":  # only "=" gets here (parse_filter refuses the rest)
            values = [e.get("VALUE") for e in row.get(self.field) or []]
            return any(v in _as_list(self.value) for v in values)
        actual = row.get(self.field)
        if self.op in ("@", "!@"):
            inside = any(_equal(self.kind, actual, v, self.tz) for v in _as_list(self.value))
            return inside if self.op == "@" else not inside
        if self.op in ("=", "!", "!="):
            equal = _equal(self.kind, actual, self.value, self.tz)
            return equal if self.op == "=" else not equal
        if self.op in _LIKE:
            return _like(self.op, actual, self.value)
        return _compare(self.op, self.kind, actual, self.value, self.tz)


def parse_filter(
    filter_: Mapping[str, Any], fields: Mapping[str, Field], tz: tzinfo,
    unknown: Literal["error", "ignore"] = "error",
) -> list[Condition]:
    """Compile a filter map against ``fields``; refusals are :class:`BadRequest`."""
    conditions = []
    for key, value in filter_.items():
        match = _OPERATOR.match(str(key))
        if not match:
            raise BadRequest(f"Invalid filter key {key!r}")
        op, name = match.group(1) or "=", match.group(2)
        if name.upper() == "LOGIC":
            raise BadRequest("Filter LOGIC is not supported by this method")
        field = fields.get(name)
        if field is None or not field.listable:
            if unknown == "ignore":
                continue
            raise BadRequest(f"Unknown filter field '{name}'")
        kind = field_kind(field)
        if op in _LIKE and no_like(field):
            raise BadRequest(f"LIKE is not supported for field '{name}'")
        if kind == "multi" and op != "=":
            raise BadRequest(f"Field '{name}' supports only an exact match")
        if kind == "date" and op not in _LIKE:
            _check_dates(name, value, tz)
        conditions.append(Condition(op, name, kind, value, tz))
    return conditions


def _check_dates(name: str, value: Any, tz: tzinfo) -> None:
    # A date the server cannot read must not quietly match nothing: an incremental pull
    # with a malformed watermark would then look like "no changes" and lose data.
    for item in _as_list(value):
        if _moment(item, tz) is None:
            raise BadRequest(f"Invalid date '{item}' in filter field '{name}'")


def parse_order(order: Mapping[str, Any], fields: Mapping[str, Field]) -> list[tuple[str, str]]:
    """``{FIELD: ASC|DESC}`` checked against ``fields`` (multifields cannot be sorted)."""
    result = []
    for name, direction in order.items():
        field = fields.get(str(name))
        if field is None or not field.listable or field_kind(field) == "multi":
            raise BadRequest(f"Unknown order field '{name}'")
        word = str(direction).strip().upper()
        if word not in ("ASC", "DESC"):
            raise BadRequest(f"Invalid order direction '{direction}' for field '{name}'")
        result.append((str(name), word))
    return result


def project(
    row: Mapping[str, Any], select: list[str], standard: Mapping[str, Field],
    user: Mapping[str, Field], empty_user: Literal["omit", "keep"] = "omit",
) -> dict[str, Any]:
    """The keys ``select`` asks for: ``*`` = standard fields, ``UF_*`` = user fields,
    multifields only when named (and omitted when empty); ``ID`` always."""
    wanted = set(select)
    out: dict[str, Any] = {"ID": row["ID"]}
    for key, field in standard.items():
        if "*" in wanted or key in wanted:
            # A standard field is always answered; an unset date is "" (§2.4).
            out[key] = row.get(key, "" if field_kind(field) == "date" else None)
    for key in user:
        value = row.get(key)
        if ("UF_*" in wanted or key in wanted) and (
                empty_user == "keep" or value not in (None, "", [])):
            out[key] = value
    for key in sorted(MULTIFIELDS & wanted):
        if row.get(key):
            out[key] = row[key]
    return out


def sort_key(field: str, kind: str) -> Any:
    """A key function ordering rows by ``field`` the way its type compares."""
    def key(row: Mapping[str, Any]) -> Any:
        value = row.get(field)
        if kind == "number":
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


def _equal(kind: str, actual: Any, expected: Any, tz: tzinfo) -> bool:
    if kind == "number":
        return actual not in (None, "") and _number(actual) == _number(expected)
    if kind == "date":
        a, b = _moment(actual, tz), _moment(expected, tz)
        return a is not None and a == b
    return str(actual if actual is not None else "") == str(expected)


def _compare(op: str, kind: str, actual: Any, expected: Any, tz: tzinfo) -> bool:
    if kind == "date":
        a, b = _moment(actual, tz), _moment(expected, tz)
        if a is None or b is None:
            return False
        left, right = a.timestamp(), b.timestamp()
    elif kind == "number":
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
    if op == "%":
        return wanted in text
    regex = "^" + ".*".join(re.escape(part) for part in wanted.split("%")) + "$"
    return re.match(regex, text, re.DOTALL) is not None
