"""The Python API the CLI and the scheduler call: build a CRM client from config, sync.

Kept apart from ``cli.py`` so everything the CLI does is available (and tested)
without click, and so the scheduler runs exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from adapters.bitrix24.client import Bitrix24Client
from adapters.bitrix24.source import Bitrix24Source, sources_for
from connector.config import Config
from connector.errors import ConfigError, ConnectorError
from connector.http import Pacer, PacerLimits, RetryPolicy, make_http_client
from connector.mirror import Mirror
from connector.sync import EntityReport, sync_entity
from rules.history import wanted_fields

__all__ = ["SyncSummary", "build_bitrix24_client", "build_sources", "run_sync"]

log = logging.getLogger("crm_retention.pipeline")

# Called with (entity, rows_in_this_page, expected_total_or_None) as pages land.
ProgressHook = Callable[[str, int, int | None], None]


@dataclass
class SyncSummary:
    """The result of one ``retention sync``: one report per entity."""

    reports: list[EntityReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every entity synced."""
        return all(r.status == "ok" for r in self.reports)

    def totals(self) -> dict[str, int]:
        """Counts summed over entities."""
        keys = ("fetched", "upserted", "deleted", "rejected", "requests", "limit_hits", "retries")
        return {k: sum(getattr(r.counts, k) for r in self.reports) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "ok": self.ok,
            "entities": [
                {"entity": r.entity, "status": r.status, "error": r.error,
                 "full_reconcile": r.full_reconcile,
                 **{k: v for k, v in vars(r.counts).items() if k != "extra"}}
                for r in self.reports
            ],
            "totals": self.totals(),
        }


def build_bitrix24_client(
    config: Config, *, http: httpx.Client | None = None, time_scale: float = 1.0
) -> Bitrix24Client:
    """A paced, retrying Bitrix24 client from ``config`` (``http`` injected in tests)."""
    crm = config.crm
    if crm.kind != "bitrix24" or crm.webhook_url is None:
        raise ConfigError([("crm.kind", "a Bitrix24 client needs kind = \"bitrix24\" and "
                                        "webhook_url")])
    limits = PacerLimits(
        bucket_size=crm.limits.bucket_size,
        drain_per_s=crm.limits.drain_per_s,
        operating_budget_s=crm.limits.operating_budget_s,
        operating_window_s=crm.limits.operating_window_s,
        safety_margin_s=crm.limits.safety_margin_s,
        allow_crossing=crm.limits.allow_crossing,
    )
    if time_scale != 1.0:
        limits = limits.scaled(time_scale)
    retry = RetryPolicy(max_attempts=crm.retry.max_attempts, max_delay_s=crm.retry.max_delay_s,
                        deadline_s=crm.retry.deadline_s)
    return Bitrix24Client(
        crm.webhook_url,
        http=http or make_http_client(timeout_s=crm.timeout_s),
        pacer=Pacer(limits),
        retry=retry,
    )


def build_sources(config: Config, client: Bitrix24Client) -> list[Bitrix24Source]:
    """The configured entities as sync sources, with the extra fields rules need."""
    deal_fields, record_fields = wanted_fields(config.rules)
    # The rules read some custom fields (feedback, redemptions, bonuses): pull them too.
    extra = {
        "contacts": (*config.crm.contact_fields, *sorted(record_fields)),
        "deals": (*config.crm.deal_fields, *sorted(deal_fields)),
        "companies": (*config.crm.company_fields, *sorted(record_fields)),
    }
    return sources_for(client, config.sync.entities, extra)


def run_sync(
    config: Config,
    mirror: Mirror,
    client: Bitrix24Client,
    *,
    entities: Sequence[str] | None = None,
    progress: ProgressHook | None = None,
) -> SyncSummary:
    """Sync every configured entity into ``mirror``; failures are reported, not raised."""
    summary = SyncSummary()
    for source in build_sources(config, client):
        if entities and source.entity not in entities:
            continue
        report = sync_entity(
            source, mirror,
            reconcile=config.sync.reconcile,
            full_reconcile_hours=config.sync.full_reconcile_hours,
            progress=_progress_hook(source, mirror, progress),
        )
        summary.reports.append(report)
    return summary


def _progress_hook(
    source: Bitrix24Source, mirror: Mirror, progress: ProgressHook | None
) -> Callable[[str, int], None] | None:
    """Forward page sizes to ``progress`` with the expected total of a first full pull.

    Only a first full pull is long enough to deserve an ETA, and only then is one
    counted page worth spending on it. It is counted at the first page, inside the
    entity's run, so the summary's request count includes it.
    """
    if progress is None:
        return None
    state = mirror.get_state(source.entity)
    fresh = state.watermark is None and not state.resume_after_id
    expected: list[int | None] = []

    def hook(entity: str, rows: int) -> None:
        if not expected:
            expected.append(_count_or_none(source) if fresh else None)
        progress(entity, rows, expected[0])

    return hook


def _count_or_none(source: Bitrix24Source) -> int | None:
    try:
        return source.count()
    except ConnectorError as exc:  # the pull itself will report a real failure
        log.debug("count for progress failed: %s", exc)
        return None
