"""Bitrix24 as a :class:`connector.sync.EntitySource`: what to list, select and map."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.bitrix24.client import Bitrix24Client, Page
from adapters.bitrix24.mapping import (
    COMPANY_SELECT,
    CONTACT_SELECT,
    DEAL_SELECT,
    map_company,
    map_contact,
    map_deal,
    optional_field_notes,
)
from connector.sync import SourceStats

__all__ = ["ENTITY_SPECS", "Bitrix24Source", "EntitySpec", "sources_for"]


@dataclass(frozen=True)
class EntitySpec:
    """How one mirror entity is read from Bitrix24."""

    method: str
    select: tuple[str, ...]
    mapper: Callable[[Mapping[str, Any]], dict[str, Any]]


ENTITY_SPECS: Mapping[str, EntitySpec] = {
    "contacts": EntitySpec("crm.contact.list", CONTACT_SELECT, map_contact),
    "deals": EntitySpec("crm.deal.list", DEAL_SELECT, map_deal),
    "companies": EntitySpec("crm.company.list", COMPANY_SELECT, map_company),
}


class Bitrix24Source:
    """One entity of a Bitrix24 portal, read through a shared :class:`Bitrix24Client`."""

    def __init__(
        self, client: Bitrix24Client, entity: str, extra_fields: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.entity = entity
        self.spec = ENTITY_SPECS[entity]
        # Only the fields the mirror needs plus what rules and the admin asked for:
        # every extra column costs server time against the per-method budget.
        self.select = tuple(dict.fromkeys((*self.spec.select, *extra_fields)))

    def pull(self, since: str | None, after_id: int) -> Iterator[Page]:
        """Rows modified at/after ``since`` (inclusive), ID ascending, resumable by ID."""
        filter_ = {">=DATE_MODIFY": since} if since else {}
        return self.client.list_keyset(
            self.spec.method, select=self.select, filter=filter_, after_id=after_id
        )

    def count(self) -> int:
        """Live records in the portal (one counted page)."""
        return self.client.count(self.spec.method)

    def iter_ids(self) -> Iterator[list[int]]:
        """All live IDs, ascending, 2,500 per request."""
        for page in self.client.list_keyset(self.spec.method, select=("ID",), filter={}):
            yield [int(row["ID"]) for row in page.rows]

    def fetch_ids(self, ids: Sequence[int]) -> Iterator[Page]:
        """The full records with these IDs (those gone since are absent), ≤ 500 a request."""
        return self.client.list_by_ids(self.spec.method, select=self.select, ids=ids)

    def map_row(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Raw record → mirror row (raises RecordError)."""
        return self.spec.mapper(raw)

    def notes_for(self, raw: Mapping[str, Any]) -> list[str]:
        """Optional fields dropped while keeping the record."""
        return optional_field_notes(self.entity, raw)

    def stats(self) -> SourceStats:
        """The shared client's counters (a run reports the difference)."""
        s = self.client.stats
        return SourceStats(requests=s.requests, limit_hits=s.http_503 + s.http_429,
                           retries=s.retries)


def sources_for(
    client: Bitrix24Client, entities: Sequence[str], extra_fields: Mapping[str, Sequence[str]]
) -> list[Bitrix24Source]:
    """One source per configured entity, in sync order."""
    return [Bitrix24Source(client, e, extra_fields.get(e, ())) for e in entities]
