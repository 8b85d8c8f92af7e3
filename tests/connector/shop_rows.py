"""Mirror rows for the rules I/O tests: contacts, deals, companies, a shop of buyers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connector.mirror import Mirror, SyncState

AS_OF = datetime(2025, 3, 1, 12, tzinfo=UTC)
LATER = datetime(2025, 3, 5, 12, tzinfo=UTC)


def contact(i: int, **over: Any) -> dict[str, Any]:
    row = {"id": i, "name": f"C{i}", "phones": [], "emails": [], "birthday": None,
           "responsible_id": 1, "created_at": "2024-01-01T10:00:00+03:00",
           "updated_at": "2024-01-02T10:00:00+03:00", "deleted_at": None,
           "raw": {"ID": str(i), "NAME": f"C{i}"}}
    row.update(over)
    return row


def deal(i: int, contact_id: int | None, closed: str, amount: float = 1000.0,
         status: str = "won", company_id: int | None = None, **raw: Any) -> dict[str, Any]:
    return {"id": i, "contact_id": contact_id, "company_id": company_id, "title": f"D{i}",
            "amount": amount, "currency": "RUB", "status": status, "stage_id": "WON",
            "category_id": "0", "responsible_id": 1, "created_at": closed,
            "closed_at": None if status == "open" else closed, "updated_at": closed,
            "deleted_at": None, "raw": {"ID": str(i), "OPPORTUNITY": str(amount), **raw}}


def company(i: int) -> dict[str, Any]:
    return {"id": i, "title": f"Co{i}", "responsible_id": 1,
            "created_at": "2024-01-01T10:00:00+03:00",
            "updated_at": "2024-01-01T10:00:00+03:00", "deleted_at": None,
            "raw": {"ID": str(i)}}


def write(mirror: Mirror, entity: str, rows: list[dict[str, Any]]) -> None:
    mirror.write_page(entity, rows, [], SyncState(entity), seen_at="t")


def many_buyers(mirror: Mirror, n: int = 300) -> Mirror:
    write(mirror, "contacts", [contact(i, birthday="1990-02-10" if i % 7 == 0 else None)
                               for i in range(1, n + 1)])
    write(mirror, "deals", [
        deal(1000 + k, 1 + k % n, f"2025-0{1 + k % 2}-{10 + k % 18:02d}T12:00:00+03:00",
             100.0 + k, status="lost" if k % 11 == 0 else "won",
             UF_CRM_POINTS_SPENT="5" if k % 13 == 0 else "")
        for k in range(4 * n)])
    return mirror
