"""The emulated portal's state: contacts, companies and deals in wire format.

Records are held exactly as the legacy ``crm.*.list`` methods return them (numeric
strings, ``Y``/``N`` flags, ``""`` for empty dates, multifields as entry lists), in
ID order so a ``>ID`` range is a bisect, not a scan.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from adapters.bitrix24.emulator.fields import ENTITY_FIELDS, Field, field_kind, user_fields

__all__ = ["ENTITIES", "Portal", "parse_offset"]

ENTITIES = ("contact", "company", "deal")


def parse_offset(text: str) -> timezone:
    """``"+03:00"`` → a fixed timezone."""
    sign = -1 if text.startswith("-") else 1
    hours, minutes = text.lstrip("+-").split(":")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))


class Table:
    """One entity's records, kept sorted by ID."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.next_id = 1

    def put(self, record_id: int, row: dict[str, Any]) -> None:
        """Insert or replace a record."""
        if record_id not in self.rows:
            bisect.insort(self.ids, record_id)
        self.rows[record_id] = row
        self.next_id = max(self.next_id, record_id + 1)

    def remove(self, record_id: int) -> None:
        """Drop a record (KeyError if absent)."""
        del self.rows[record_id]
        index = bisect.bisect_left(self.ids, record_id)
        del self.ids[index]

    def ids_after(self, after: int | None) -> Iterator[int]:
        """IDs greater than ``after`` (all when None), ascending."""
        start = 0 if after is None else bisect.bisect_right(self.ids, after)
        for index in range(start, len(self.ids)):
            yield self.ids[index]


class Portal:
    """A Bitrix24 portal's CRM data. Thread-safe for the loopback server."""

    def __init__(
        self, tz_offset: str = "+03:00", clock: Callable[[], float] | None = None
    ) -> None:
        import time

        self.tz = parse_offset(tz_offset)
        self.tz_offset = tz_offset
        self.clock = clock or time.time
        self.tables: dict[str, Table] = {entity: Table() for entity in ENTITIES}
        self.deletions: list[tuple[str, int, datetime]] = []
        self.deal_contacts: dict[int, list[int]] = {}
        # The portal's user fields per entity (what UF_* selects and a filter may name).
        self.user_fields: dict[str, dict[str, Field]] = {e: user_fields(e) for e in ENTITIES}
        self.lock = threading.RLock()

    @classmethod
    def generate(cls, config: Any) -> Portal:
        """A portal filled with seeded synthetic customers (see ``generator.DataConfig``)."""
        from adapters.bitrix24.emulator.generator import fill_portal

        portal = cls(tz_offset=config.tz_offset)
        fill_portal(portal, config)
        return portal

    def now(self) -> datetime:
        """The portal's clock: aware, portal offset, whole seconds."""
        return datetime.fromtimestamp(int(self.clock()), self.tz)

    def stamp(self, moment: datetime | None = None) -> str:
        """A datetime in the API's format (ISO 8601 with the portal offset)."""
        return (moment or self.now()).astimezone(self.tz).replace(microsecond=0).isoformat()

    def fields(self, entity: str) -> dict[str, Field]:
        """Every field of ``entity``: the standard ones and this portal's user fields."""
        return {**ENTITY_FIELDS[entity], **self.user_fields[entity]}

    def add_user_field(self, entity: str, name: str, type_id: str = "string") -> None:
        """Register a user field (``UF_CRM_…``), as ``crm.*.userfield.add`` would."""
        if not name.startswith("UF_CRM_"):
            raise ValueError(f"user field names start with UF_CRM_, not {name!r}")
        self.user_fields[entity][name] = Field(type_id)

    # -- mutation ---------------------------------------------------------------------------
    def add(self, entity: str, fields: Mapping[str, Any]) -> int:
        """Create a record; DATE_CREATE/DATE_MODIFY are now; missing fields get defaults."""
        with self.lock:
            table = self.tables[entity]
            record_id = table.next_id
            now = self.stamp()
            row = {**_defaults(entity), **_stringify(entity, fields), "ID": str(record_id),
                   "DATE_CREATE": now, "DATE_MODIFY": now}
            _derive_flags(row)
            if entity == "deal":
                row.setdefault("MOVED_TIME", now)
            table.put(record_id, row)
            self._link_contact(entity, record_id, row)
            return record_id

    def put_raw(self, entity: str, row: dict[str, Any]) -> None:
        """Insert a fully formed wire-format record (the generator's path)."""
        record_id = int(row["ID"])
        self.tables[entity].put(record_id, row)
        self._link_contact(entity, record_id, row)

    def update(
        self, entity: str, record_id: int, fields: Mapping[str, Any],
        modified_at: datetime | None = None,
    ) -> None:
        """Change fields and bump DATE_MODIFY (to ``modified_at`` when given)."""
        with self.lock:
            row = self.tables[entity].rows[record_id]
            row.update(_stringify(entity, fields))
            _derive_flags(row)
            row["DATE_MODIFY"] = self.stamp(modified_at)
            self._link_contact(entity, record_id, row)

    def delete(self, entity: str, record_id: int) -> None:
        """Remove a record; remembered in ``deletions``."""
        with self.lock:
            self.tables[entity].remove(record_id)
            self.deal_contacts.pop(record_id, None) if entity == "deal" else None
            self.deletions.append((entity, record_id, self.now()))

    def records(self, entity: str) -> dict[int, dict[str, Any]]:
        """Live records in wire format, keyed by ID (a shallow copy)."""
        with self.lock:
            return {i: dict(r) for i, r in self.tables[entity].rows.items()}

    def _link_contact(self, entity: str, record_id: int, row: Mapping[str, Any]) -> None:
        if entity == "deal":
            contact = row.get("CONTACT_ID")
            self.deal_contacts[record_id] = [int(contact)] if contact not in (None, "",
                                                                              "0") else []


def _stringify(entity: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    # Legacy methods store and return scalars as strings: money with two decimals
    # ("19999.90"), flags as Y/N, and an unset date as "" rather than null (§2.4).
    known = ENTITY_FIELDS[entity]
    result: dict[str, Any] = {}
    for key, value in fields.items():
        field = known.get(key)
        if field is not None and field_kind(field) == "date" and value is None:
            result[key] = ""
        elif isinstance(value, bool):
            result[key] = "Y" if value else "N"
        elif field is not None and field.type == "double" and isinstance(value, int | float):
            result[key] = f"{value:.2f}"
        elif isinstance(value, int | float):
            result[key] = str(value)
        else:
            result[key] = value
    return result


def _derive_flags(row: dict[str, Any]) -> None:
    # HAS_PHONE / HAS_EMAIL are read-only and follow the multifields (§6.1).
    for flag, multifield in (("HAS_PHONE", "PHONE"), ("HAS_EMAIL", "EMAIL")):
        if flag in row or multifield in row:
            row[flag] = "Y" if row.get(multifield) else "N"


def _defaults(entity: str) -> dict[str, Any]:
    common = {"ASSIGNED_BY_ID": "1", "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "OPENED": "Y"}
    if entity == "contact":
        return {**common, "NAME": None, "SECOND_NAME": None, "LAST_NAME": None,
                "BIRTHDATE": "", "COMPANY_ID": None, "TYPE_ID": "CLIENT",
                "SOURCE_ID": "CALL", "HAS_PHONE": "N", "HAS_EMAIL": "N"}
    if entity == "company":
        return {**common, "TITLE": "", "COMPANY_TYPE": "CUSTOMER"}
    return {**common, "TITLE": "", "CONTACT_ID": None, "COMPANY_ID": "0",
            "OPPORTUNITY": "0.00", "CURRENCY_ID": "RUB", "STAGE_ID": "NEW",
            "STAGE_SEMANTIC_ID": "P", "CATEGORY_ID": "0", "CLOSED": "N", "CLOSEDATE": "",
            "BEGINDATE": "", "IS_RETURN_CUSTOMER": "N", "PROBABILITY": None}
