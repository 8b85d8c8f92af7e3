"""Incremental pull of one CRM into the mirror, then a cheap check for deletions.

Per entity:

1. **Pull** rows modified at or after the watermark (inclusive: ``DATE_MODIFY`` has
   one-second resolution), ID ascending, upserting by ID. The run's new watermark is
   the *server's* clock at the run's first response, so nothing modified during the
   run is skipped next time. Each page is written in one transaction with a resume
   cursor; a crash and a re-run finish the same run rather than start over.
2. **Reconcile**: compare the CRM's live count with the mirror's; only when they
   differ (or a periodic full check is due) walk all IDs, mark the missing ones
   deleted, and re-read IDs the CRM has but the mirror does not hold as live (a
   record restored from the recycle bin keeps its old ``DATE_MODIFY``, so no delta
   would ever bring it back). An unchanged portal therefore costs two requests per
   entity.

The state transitions are pure functions (``begin_run``, ``advance_cursor``,
``finish_run``) tested on plain data; :func:`sync_entity` does the I/O around them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from connector.errors import ConnectorError, RecordError
from connector.http import redact
from connector.mirror import Mirror, Reject, RunCounts, SyncState
from connector.prefetch import one_ahead

__all__ = [
    "EntityReport",
    "EntitySource",
    "Page",
    "SourceStats",
    "advance_cursor",
    "begin_run",
    "finish_run",
    "reconcile_due",
    "sync_entity",
]

log = logging.getLogger("crm_retention.sync")


class Page(Protocol):
    """One HTTP response's worth of raw records, ID ascending."""

    @property
    def rows(self) -> list[dict[str, Any]]: ...

    @property
    def server_time(self) -> str | None: ...


@dataclass(frozen=True)
class SourceStats:
    """Request counters a source exposes so a run can report its own share."""

    requests: int = 0
    limit_hits: int = 0
    retries: int = 0


class EntitySource(Protocol):
    """What the sync needs from a CRM for one entity (see docs/architecture.md)."""

    entity: str

    def pull(self, since: str | None, after_id: int) -> Iterator[Page]:
        """Raw rows modified at/after ``since`` (all if None) with ID > ``after_id``."""
        ...

    def count(self) -> int:
        """How many live records the CRM holds."""
        ...

    def iter_ids(self) -> Iterator[list[int]]:
        """All live IDs, ascending, in chunks."""
        ...

    def fetch_ids(self, ids: Sequence[int]) -> Iterator[Page]:
        """Full raw records with these IDs; IDs no longer in the CRM are absent."""
        ...

    def map_row(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Raw record → mirror row; raises RecordError for an unusable record."""
        ...

    def notes_for(self, raw: Mapping[str, Any]) -> list[str]:
        """Optional-field problems to record while keeping the row."""
        ...

    def stats(self) -> SourceStats:
        """Cumulative request counters."""
        ...


@dataclass
class EntityReport:
    """What one entity's sync did."""

    entity: str
    counts: RunCounts
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    full_reconcile: bool = False


Progress = Callable[[str, int], None]


# -- pure state transitions ----------------------------------------------------------------


def begin_run(state: SyncState, started_at: str) -> SyncState:
    """Mark a run as started; an unfinished earlier run keeps its pending watermark."""
    return replace(state, last_started_at=started_at, last_status="running", last_error=None)


def advance_cursor(state: SyncState, last_id: int, server_time: str | None) -> SyncState:
    """After a page is written: remember its last ID and the run's server start time.

    The pending watermark is set once, from the first response of the run (or kept from
    an interrupted run, which started earlier and so is the safe lower bound).
    """
    pending = state.pending_watermark or server_time
    return replace(state, resume_after_id=max(state.resume_after_id, last_id),
                   pending_watermark=pending)


def finish_run(state: SyncState, finished_at: str, server_time: str | None) -> SyncState:
    """A complete pull: the pending watermark becomes the watermark, the cursor resets."""
    watermark = state.pending_watermark or server_time or state.watermark
    return replace(state, watermark=watermark, pending_watermark=None, resume_after_id=0,
                   last_finished_at=finished_at, last_status="ok")


def reconcile_due(state: SyncState, mode: str, every_hours: float, now: datetime) -> bool:
    """Whether a full ID walk is due regardless of counts."""
    if mode == "always":
        return True
    if mode == "never" or every_hours <= 0:
        return False
    if state.last_full_reconcile_at is None:
        return True
    last = datetime.fromisoformat(state.last_full_reconcile_at)
    return now - last >= timedelta(hours=every_hours)


# -- I/O ------------------------------------------------------------------------------------


def sync_entity(
    source: EntitySource,
    mirror: Mirror,
    *,
    reconcile: Literal["count", "always", "never"] = "count",
    full_reconcile_hours: float = 24.0,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> EntityReport:
    """Pull one entity into the mirror and reconcile deletions; never raises ConnectorError.

    A failure is recorded in ``sync_state``/``sync_runs`` and returned in the report; the
    rows written before it stay, and the next run resumes from the cursor.
    """
    entity = source.entity
    started_at = clock().isoformat()
    before = source.stats()
    counts = RunCounts()
    state = begin_run(mirror.get_state(entity), started_at)
    mirror.save_state(state)
    report = EntityReport(entity=entity, counts=counts)
    try:
        from_scratch = state.watermark is None
        state, server_time = _pull(source, mirror, state, counts, progress)
        state = finish_run(state, clock().isoformat(), server_time)
        if from_scratch:
            # A pull from scratch has just read every live ID: walking them again would
            # spend the method's time budget for nothing. Only the count check remains.
            state = replace(state, last_full_reconcile_at=started_at)
        mirror.save_state(state)
        if reconcile != "never":
            report.full_reconcile = _reconcile(
                source, mirror, state, counts, reconcile, full_reconcile_hours, clock,
                server_time,
            )
    except ConnectorError as exc:
        # Adapters redact their messages; this second pass keeps a credential that
        # slipped into one out of the mirror file, which outlives any log.
        report.status, report.error = "failed", redact(str(exc))
        mirror.save_state(replace(mirror.get_state(entity), last_status="failed",
                                  last_error=report.error[:500]))
        log.error("%s: sync failed: %s", entity, report.error)
    _add_request_counts(counts, before, source.stats())
    mirror.record_run(entity, started_at, clock().isoformat(), report.status, counts, report.error)
    return report


def _pull(
    source: EntitySource,
    mirror: Mirror,
    state: SyncState,
    counts: RunCounts,
    progress: Progress | None,
) -> tuple[SyncState, str | None]:
    server_time: str | None = None
    # the next page is requested while this one is stored (connector/prefetch.py)
    for page in one_ahead(source.pull(state.watermark, state.resume_after_id)):
        server_time = server_time or page.server_time
        last_id = max((_safe_id(r) for r in page.rows), default=state.resume_after_id)
        state = advance_cursor(state, last_id, page.server_time)
        _store_page(source, mirror, state, counts, page)
        if progress is not None:
            progress(source.entity, len(page.rows))
    return state, server_time


def _store_page(
    source: EntitySource, mirror: Mirror, state: SyncState, counts: RunCounts, page: Page
) -> None:
    """Map one page and write it with ``state`` in one transaction; count what happened."""
    rows, rejects = _map_page(source, page.rows)
    mirror.write_page(source.entity, rows, rejects, state, seen_at=_now_iso())
    counts.fetched += len(page.rows)
    counts.upserted += len(rows)
    counts.rejected += sum(1 for r in rejects if r.action == "rejected")


def _map_page(
    source: EntitySource, raws: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[Reject]]:
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for raw in raws:
        record_id = str(raw.get("ID", ""))
        try:
            rows.append(source.map_row(raw))
        except RecordError as exc:
            log.warning("%s %s rejected: %s", source.entity, record_id, exc)
            rejects.append(Reject(source.entity, record_id, str(exc), raw))
            continue
        for note in source.notes_for(raw):
            rejects.append(Reject(source.entity, record_id, note, raw, action="kept"))
    return rows, rejects


def _reconcile(
    source: EntitySource,
    mirror: Mirror,
    state: SyncState,
    counts: RunCounts,
    mode: str,
    every_hours: float,
    clock: Callable[[], datetime],
    server_time: str | None,
) -> bool:
    entity = source.entity
    full = reconcile_due(state, mode, every_hours, clock())
    if not full and source.count() == mirror.count_known(entity):
        return False
    server_ids: set[int] = set()
    for chunk in source.iter_ids():  # complete or raises: a partial walk marks nothing
        server_ids.update(chunk)
    known = mirror.live_ids(entity) | mirror.rejected_ids(entity)
    back = sorted(server_ids - known)
    if back:
        log.info("%s: %d in the CRM but not live in the mirror: re-reading", entity, len(back))
        for page in source.fetch_ids(back):
            # the run is finished: these pages leave the cursor and watermark alone
            _store_page(source, mirror, state, counts, page)
    gone = known - server_ids
    deleted_at = server_time or clock().isoformat()
    state = replace(state, last_full_reconcile_at=clock().isoformat())
    counts.deleted += mirror.mark_deleted(entity, gone, deleted_at, state)
    if gone:
        log.info("%s: %d deleted in the CRM", entity, len(gone))
    return True


def _add_request_counts(counts: RunCounts, before: SourceStats, after: SourceStats) -> None:
    counts.requests += after.requests - before.requests
    counts.limit_hits += after.limit_hits - before.limit_hits
    counts.retries += after.retries - before.retries


def _safe_id(raw: Mapping[str, Any]) -> int:
    try:
        return int(str(raw.get("ID")))
    except ValueError:
        return 0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
