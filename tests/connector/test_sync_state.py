from datetime import UTC, datetime, timedelta

from connector.mirror import SyncState
from connector.sync import advance_cursor, begin_run, finish_run, reconcile_due

T1 = "2024-05-01T10:00:00+03:00"
T2 = "2024-05-01T11:00:00+03:00"


def test_first_page_sets_pending_watermark_from_server_clock():
    state = advance_cursor(begin_run(SyncState("deals"), "now"), 50, T1)
    assert state.pending_watermark == T1 and state.resume_after_id == 50
    state = advance_cursor(state, 2550, T2)
    assert state.pending_watermark == T1, "the run's start, not a later page, is the bound"


def test_interrupted_run_keeps_its_earlier_start_when_resumed():
    crashed = advance_cursor(SyncState("deals", watermark="old"), 100, T1)
    resumed = advance_cursor(begin_run(crashed, "later"), 150, T2)
    assert resumed.pending_watermark == T1 and resumed.resume_after_id == 150
    assert resumed.watermark == "old"


def test_finish_promotes_pending_and_resets_cursor():
    done = finish_run(advance_cursor(SyncState("deals"), 10, T1), "end", T2)
    assert done.watermark == T1 and done.pending_watermark is None and done.resume_after_id == 0
    assert done.last_status == "ok"


def test_cursor_never_moves_backwards():
    assert advance_cursor(SyncState("deals", resume_after_id=90), 10, T1).resume_after_id == 90


def test_reconcile_due():
    now = datetime(2024, 5, 2, tzinfo=UTC)
    never = SyncState("deals")
    recent = SyncState("deals", last_full_reconcile_at=(now - timedelta(hours=1)).isoformat())
    old = SyncState("deals", last_full_reconcile_at=(now - timedelta(hours=30)).isoformat())
    assert reconcile_due(never, "count", 24, now)
    assert not reconcile_due(recent, "count", 24, now)
    assert reconcile_due(old, "count", 24, now)
    assert reconcile_due(recent, "always", 24, now)
    assert not reconcile_due(old, "never", 24, now)
    assert not reconcile_due(old, "count", 0, now)
