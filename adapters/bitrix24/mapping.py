"""Bitrix24 records (wire format: numeric strings, ``""`` for empty dates) → mirror rows.

Every function here is pure. A record that cannot be mirrored raises
:class:`~connector.errors.RecordError` naming the record and the field; the sync
stores it in ``rejects`` and keeps going. A record whose *optional* field is bad
(a malformed birthday) is kept with that field empty and a note, because dropping a
customer over a typo loses more than it protects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from connector.errors import RecordError

__all__ = [
    "COMPANY_SELECT",
    "CONTACT_SELECT",
    "DEAL_SELECT",
    "STATUS_BY_SEMANTIC",
    "map_company",
    "map_contact",
    "map_deal",
    "optional_field_notes",
]

# Exactly the fields the mapping reads (a test holds them to it): every extra column
# costs server time against the per-method budget. Rules and admins add their own.
CONTACT_SELECT = (
    "ID", "NAME", "SECOND_NAME", "LAST_NAME", "BIRTHDATE", "PHONE", "EMAIL",
    "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY",
)
DEAL_SELECT = (
    "ID", "TITLE", "CONTACT_ID", "COMPANY_ID", "OPPORTUNITY", "CURRENCY_ID", "STAGE_ID",
    "STAGE_SEMANTIC_ID", "CATEGORY_ID", "CLOSEDATE", "MOVED_TIME",
    "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY",
)
COMPANY_SELECT = ("ID", "TITLE", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY")

# STAGE_SEMANTIC_ID follows the group of the deal's current stage (facts sheet §6.2).
STATUS_BY_SEMANTIC = {"P": "open", "S": "won", "F": "lost"}


def map_contact(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A ``crm.contact.list`` row → a ``contacts`` row."""
    record_id = _record_id(raw, "contact")
    return {
        "id": record_id,
        "name": _full_name(raw),
        "phones": _multifield_values(raw.get("PHONE")),
        "emails": _multifield_values(raw.get("EMAIL")),
        "birthday": _calendar_date_or_none(raw.get("BIRTHDATE")),
        "responsible_id": _optional_int(raw, "ASSIGNED_BY_ID", "contact", record_id),
        "created_at": _timestamp(raw, "DATE_CREATE", "contact", record_id),
        "updated_at": _timestamp(raw, "DATE_MODIFY", "contact", record_id),
        "deleted_at": None,
        "raw": dict(raw),
    }


def map_deal(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A ``crm.deal.list`` row → a ``deals`` row."""
    record_id = _record_id(raw, "deal")
    status = _deal_status(raw, record_id)
    return {
        "id": record_id,
        "contact_id": _optional_link(raw, "CONTACT_ID", record_id),
        "company_id": _optional_link(raw, "COMPANY_ID", record_id),
        "title": _text(raw, "TITLE", "deal", record_id),
        "amount": _amount(raw, record_id),
        "currency": _text(raw, "CURRENCY_ID", "deal", record_id) or None,
        "status": status,
        "stage_id": _text(raw, "STAGE_ID", "deal", record_id),
        "category_id": _none_if_empty(_text(raw, "CATEGORY_ID", "deal", record_id)),
        "responsible_id": _optional_int(raw, "ASSIGNED_BY_ID", "deal", record_id),
        "created_at": _timestamp(raw, "DATE_CREATE", "deal", record_id),
        "closed_at": _closed_at(raw, status, record_id),
        "updated_at": _timestamp(raw, "DATE_MODIFY", "deal", record_id),
        "deleted_at": None,
        "raw": dict(raw),
    }


def map_company(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A ``crm.company.list`` row → a ``companies`` row."""
    record_id = _record_id(raw, "company")
    return {
        "id": record_id,
        "title": _text(raw, "TITLE", "company", record_id),
        "responsible_id": _optional_int(raw, "ASSIGNED_BY_ID", "company", record_id),
        "created_at": _timestamp(raw, "DATE_CREATE", "company", record_id),
        "updated_at": _timestamp(raw, "DATE_MODIFY", "company", record_id),
        "deleted_at": None,
        "raw": dict(raw),
    }


def optional_field_notes(entity: str, raw: Mapping[str, Any]) -> list[str]:
    """Problems with optional fields that were dropped rather than rejecting the record."""
    if entity != "contacts":
        return []
    value = raw.get("BIRTHDATE")
    if value and _calendar_date_or_none(value) is None:
        return [f"BIRTHDATE {str(value)[:40]!r} is not a date; kept the contact without it"]
    return []


# -- field parsers ---------------------------------------------------------------------


def _record_id(raw: Mapping[str, Any], entity: str) -> int:
    value = raw.get("ID")
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise RecordError(f"{entity} has no usable ID ({value!r})", record_id=value) from None


def _timestamp(raw: Mapping[str, Any], key: str, entity: str, record_id: int) -> str:
    value = raw.get(key)
    if not value:
        raise RecordError(f"{entity} {record_id}: {key} is empty", record_id=record_id)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise RecordError(
            f"{entity} {record_id}: {key} {str(value)[:40]!r} is not an ISO 8601 datetime",
            record_id=record_id,
        ) from None
    if parsed.tzinfo is None:
        raise RecordError(f"{entity} {record_id}: {key} has no UTC offset", record_id=record_id)
    return parsed.isoformat()


def _calendar_date_or_none(value: Any) -> str | None:
    # The CRM shows the calendar date; the datetime it sends is that date at portal
    # midnight. Taking the date part keeps it — converting to UTC first would shift it.
    if not value:
        return None
    text = str(value)[:10]
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def _amount(raw: Mapping[str, Any], record_id: int) -> float:
    value = raw.get("OPPORTUNITY")
    if value is None or value == "":
        raise RecordError(f"deal {record_id}: OPPORTUNITY is empty", record_id=record_id)
    try:
        amount = float(str(value))
    except ValueError:
        raise RecordError(
            f"deal {record_id}: OPPORTUNITY {str(value)[:40]!r} is not a number",
            record_id=record_id,
        ) from None
    if amount != amount or amount in (float("inf"), float("-inf")):
        raise RecordError(f"deal {record_id}: OPPORTUNITY is not finite", record_id=record_id)
    return amount


def _deal_status(raw: Mapping[str, Any], record_id: int) -> str:
    semantic = raw.get("STAGE_SEMANTIC_ID")
    status = STATUS_BY_SEMANTIC.get(str(semantic))
    if status is None:
        raise RecordError(
            f"deal {record_id}: unknown stage {raw.get('STAGE_ID')!r} "
            f"(STAGE_SEMANTIC_ID {semantic!r}, expected P, S or F)",
            record_id=record_id,
        )
    return status


def _closed_at(raw: Mapping[str, Any], status: str, record_id: int) -> str | None:
    # CLOSEDATE is the close date for a closed deal; MOVED_TIME (the last stage change,
    # i.e. the move into the final stage) stands in when CLOSEDATE is empty.
    if status == "open":
        return None
    for key in ("CLOSEDATE", "MOVED_TIME"):
        if raw.get(key):
            return _timestamp(raw, key, "deal", record_id)
    raise RecordError(
        f"deal {record_id}: closed ({status}) but CLOSEDATE and MOVED_TIME are empty",
        record_id=record_id,
    )


def _optional_int(raw: Mapping[str, Any], key: str, entity: str, record_id: int) -> int | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        raise RecordError(
            f"{entity} {record_id}: {key} {str(value)[:40]!r} is not an integer",
            record_id=record_id,
        ) from None


def _optional_link(raw: Mapping[str, Any], key: str, record_id: int) -> int | None:
    # Bitrix sends "0" or null for "no contact/company".
    value = _optional_int(raw, key, "deal", record_id)
    return value or None


def _text(raw: Mapping[str, Any], key: str, entity: str, record_id: int) -> str | None:
    # A list or map in a text column would fail the whole page's write, not one record.
    value = raw.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        raise RecordError(f"{entity} {record_id}: {key} is not text ({type(value).__name__})",
                          record_id=record_id)
    return str(value)


def _full_name(raw: Mapping[str, Any]) -> str | None:
    parts = [str(raw[k]).strip() for k in ("NAME", "SECOND_NAME", "LAST_NAME") if raw.get(k)]
    return " ".join(p for p in parts if p) or None


def _multifield_values(entries: Any) -> list[str]:
    # The key is omitted when the contact has no values; entries carry VALUE strings.
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        return []
    values = []
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("VALUE"):
            values.append(str(entry["VALUE"]).strip())
    return values


def _none_if_empty(value: Any) -> Any:
    return None if value in ("", None) else value
