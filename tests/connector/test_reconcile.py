"""Sync and reconciliation against a small in-memory CRM (no emulator, no HTTP).

The fake answers like the contract in ``connector.sync.EntitySource`` says: a pull is
the inclusive ``DATE_MODIFY`` delta in ID order, 50 rows a page; counts, ID walks and
reads by ID see exactly the records it holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.bitrix24.mapping import map_deal
from connector.errors import FatalCrmError
from connector.mirror import Mirror
from connector.sync import SourceStats, sync_entity

CLOCK = "2024-05-01T10:00:00+03:00"
LATER = "2024-05-01T11:00:00+03:00"
SECRET = "abcsecret123xyz"


@dataclass(frozen=True)
class FakePage:
    rows: list[dict[str, Any]]
    server_time: str | None


def deal(record_id: int, modified: str = "2024-04-01T09:00:00+03:00", **over: Any) -> dict:
    return {"ID": str(record_id), "TITLE": f"deal {record_id}", "CONTACT_ID": "1",
            "COMPANY_ID": None, "OPPORTUNITY": "100.00", "CURRENCY_ID": "RUB",
            "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P", "CATEGORY_ID": "0",
            "DATE_CREATE": "2024-03-01T09:00:00+03:00", "DATE_MODIFY": modified, **over}


class FakeCrm:
    """Deals in wire format, and a record of which calls the sync made."""

    def __init__(self, n: int) -> None:
        self.records = {i: deal(i) for i in range(1, n + 1)}
        self.clock = CLOCK
        self.calls: list[str] = []
        self.fail_walk_after: int | None = None
        self.pull_error: Exception | None = None


class FakeSource:
    entity = "deals"

    def __init__(self, crm: FakeCrm) -> None:
        self.crm = crm

    def pull(self, since: str | None, after_id: int) -> Iterator[FakePage]:
        self.crm.calls.append("pull")
        if self.crm.pull_error is not None:
            raise self.crm.pull_error
        rows = [dict(r) for i, r in sorted(self.crm.records.items())
                if i > after_id and (since is None or r["DATE_MODIFY"] >= since)]
        for start in range(0, len(rows) + 1, 50):
            yield FakePage(rows[start:start + 50], self.crm.clock)

    def count(self) -> int:
        self.crm.calls.append("count")
        return len(self.crm.records)

    def iter_ids(self) -> Iterator[list[int]]:
        self.crm.calls.append("walk")
        ids = sorted(self.crm.records)
        for index, start in enumerate(range(0, len(ids), 50)):
            if self.crm.fail_walk_after is not None and index >= self.crm.fail_walk_after:
                raise FatalCrmError("crm.deal.list: Access denied.")
            yield ids[start:start + 50]

    def fetch_ids(self, ids: Sequence[int]) -> Iterator[FakePage]:
        self.crm.calls.append("fetch")
        yield FakePage([dict(self.crm.records[i]) for i in ids if i in self.crm.records],
                       self.crm.clock)

    def map_row(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return map_deal(raw)

    def notes_for(self, raw: Mapping[str, Any]) -> list[str]:
        return []

    def stats(self) -> SourceStats:
        return SourceStats(requests=len(self.crm.calls))


def synced(n: int = 120) -> tuple[FakeCrm, FakeSource, Mirror]:
    crm = FakeCrm(n)
    source, mirror = FakeSource(crm), Mirror.memory()
    assert sync_entity(source, mirror).status == "ok"
    crm.clock, crm.calls = LATER, []
    return crm, source, mirror


def test_a_record_rejected_after_it_was_mirrored_does_not_make_every_run_walk_all_ids():
    crm, source, mirror = synced()
    crm.records[7].update(OPPORTUNITY="not a number", DATE_MODIFY=LATER)
    first = sync_entity(source, mirror)
    assert first.counts.rejected == 1 and mirror.rejected_ids("deals") == {7}
    assert 7 in mirror.live_ids("deals"), "the last good version stays"
    crm.calls = []
    again = sync_entity(source, mirror)
    # the stale live row and its reject are one record: the count matches the CRM's
    assert not again.full_reconcile and "walk" not in crm.calls, crm.calls


def test_a_record_restored_with_its_old_date_modify_comes_back_live():
    crm, source, mirror = synced()
    restored = crm.records.pop(42)
    assert sync_entity(source, mirror).counts.deleted == 1
    assert 42 not in mirror.live_ids("deals")
    crm.records[42] = restored  # back from the recycle bin, DATE_MODIFY untouched
    report = sync_entity(source, mirror)
    assert report.status == "ok" and report.full_reconcile
    assert report.counts.upserted == 1 and report.counts.deleted == 0
    row = next(r for r in mirror.rows("deals") if r["id"] == 42)
    assert row["deleted_at"] is None
    state = mirror.get_state("deals")
    assert state.resume_after_id == 0 and state.pending_watermark is None, \
        "a re-read after the pull must not look like an unfinished run"
    assert state.watermark == LATER


def test_a_walk_that_fails_part_way_marks_nothing_deleted():
    crm, source, mirror = synced()
    del crm.records[3]
    crm.fail_walk_after = 1  # the first 50 IDs, then an error
    report = sync_entity(source, mirror)
    assert report.status == "failed"
    assert mirror.count_live("deals") == 120, "IDs after the failure were not seen, not gone"


def test_a_failure_message_is_redacted_before_it_is_stored():
    crm, source, mirror = synced()
    crm.pull_error = FatalCrmError(
        f"crm.deal.list: proxy said https://p.bitrix24.ru/rest/1/{SECRET}/crm.deal.list")
    report = sync_entity(source, mirror)
    assert report.status == "failed" and SECRET not in (report.error or "")
    stored = mirror.db.execute("select error from sync_runs order by id desc").fetchone()[0]
    assert "crm.deal.list" in stored and SECRET not in stored
    assert SECRET not in (mirror.get_state("deals").last_error or "")
