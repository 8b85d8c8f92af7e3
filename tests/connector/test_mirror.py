import json
import logging
import stat

import pytest
from sqlite_utils import Database

from connector.errors import MirrorError
from connector.mirror import Mirror, Reject, SyncState, custom_fields_of, migrations


def contact_row(i, **over):
    row = {"id": i, "name": f"C{i}", "phones": ["+7912"], "emails": [], "birthday": None,
           "responsible_id": 1, "created_at": "2024-01-01T00:00:00+03:00",
           "updated_at": "2024-01-02T00:00:00+03:00", "deleted_at": None, "raw": {"ID": str(i)}}
    row.update(over)
    return row


def test_file_is_created_private(tmp_path):
    path = tmp_path / "sub" / "m.db"
    Mirror.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_open_failure_is_a_mirror_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MirrorError, match="cannot open mirror"):
        Mirror.open(blocker / "m.db")


def test_migrations_are_idempotent(tmp_path):
    path = tmp_path / "m.db"
    Mirror.open(path).close()
    mirror = Mirror.open(path)
    assert set(mirror.db.table_names()) >= {"contacts", "deals", "companies", "sync_state",
                                            "sync_runs", "rejects"}


def test_write_page_upserts_rows_rejects_and_state_together():
    mirror = Mirror.memory()
    state = SyncState("contacts", pending_watermark="2024-05-01T10:00:00+03:00",
                      resume_after_id=2)
    mirror.write_page("contacts", [contact_row(1), contact_row(2)],
                      [Reject("contacts", "3", "bad", {"ID": "3"})], state, seen_at="t")
    assert mirror.count_live("contacts") == 2
    assert mirror.rejected_ids("contacts") == {3}
    assert mirror.get_state("contacts") == state
    row = next(mirror.rows("contacts"))
    assert row["phones"] == ["+7912"] and row["raw"] == {"ID": "1"}
    # a later clean version of the rejected record clears its reject
    mirror.write_page("contacts", [contact_row(3)], [], state, seen_at="t")
    assert mirror.rejected_ids("contacts") == set()


def test_failed_transaction_writes_nothing(monkeypatch):
    mirror = Mirror.memory()
    state = SyncState("contacts", resume_after_id=9)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mirror, "_put_state", boom)
    with pytest.raises(RuntimeError):
        mirror.write_page("contacts", [contact_row(1)], [], state, seen_at="t")
    assert mirror.count_live("contacts") == 0


def test_mark_deleted_keeps_row_and_reappearance_clears_it():
    mirror = Mirror.memory()
    state = SyncState("contacts")
    mirror.write_page("contacts", [contact_row(1), contact_row(2)], [], state, seen_at="t")
    assert mirror.mark_deleted("contacts", [2, 5], "2024-06-01T00:00:00+03:00", state) == 1
    assert mirror.live_ids("contacts") == {1}
    deleted = next(r for r in mirror.rows("contacts", include_deleted=True) if r["id"] == 2)
    assert deleted["deleted_at"] == "2024-06-01T00:00:00+03:00"
    mirror.write_page("contacts", [contact_row(2)], [], state, seen_at="t")
    assert mirror.live_ids("contacts") == {1, 2}


def test_counts_and_runs():
    mirror = Mirror.memory()
    from connector.mirror import RunCounts

    mirror.record_run("deals", "a", "b", "ok", RunCounts(fetched=5))
    mirror.record_run("deals", "c", "d", "ok", RunCounts(fetched=7))
    assert [r["fetched"] for r in mirror.last_runs()] == [7]
    assert mirror.counts()["deals"] == {"live": 0, "deleted": 0, "rejects": 0}


def test_raw_json_round_trips_unicode():
    mirror = Mirror.memory()
    mirror.write_page("contacts", [contact_row(1, raw={"NAME": "Пётр"})], [], SyncState("contacts"),
                      seen_at="t")
    stored = mirror.db.execute("select raw from contacts").fetchone()[0]
    assert json.loads(stored) == {"NAME": "Пётр"} and "Пётр" in stored


def test_a_folder_it_creates_is_private_too(tmp_path):
    Mirror.open(tmp_path / "new" / "m.db").close()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_journal_files_share_the_private_mode(tmp_path):
    mirror = Mirror.open(tmp_path / "m.db")
    mirror.db.execute("PRAGMA journal_mode=WAL")
    mirror.write_page("contacts", [contact_row(1)], [], SyncState("contacts"), seen_at="t")
    side = [p for p in tmp_path.iterdir() if p.name != "m.db"]
    assert side, "the WAL files exist while the connection is open"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in side)
    mirror.close()


def test_an_existing_mirror_readable_by_others_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="crm_retention.mirror")
    path = tmp_path / "m.db"
    Mirror.open(path).close()
    path.chmod(0o644)
    Mirror.open(path).close()
    assert "other users can read it" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, "the owner's choice is not overridden"


def test_count_known_counts_a_live_row_that_is_also_rejected_once():
    mirror = Mirror.memory()
    state = SyncState("contacts")
    mirror.write_page("contacts", [contact_row(1), contact_row(2)], [], state, seen_at="t")
    # 2 was mirrored, then came back broken; 3 was never mirrored
    mirror.write_page("contacts", [], [Reject("contacts", "2", "bad", {"ID": "2"}),
                                       Reject("contacts", "3", "bad", {"ID": "3"})],
                      state, seen_at="t")
    mirror.write_page("contacts", [], [Reject("contacts", "4", "note", {"ID": "4"},
                                              action="kept")], state, seen_at="t")
    assert mirror.count_known("contacts") == 3
    mirror.mark_deleted("contacts", [1], "2024-06-01T00:00:00+03:00", state)
    assert mirror.count_known("contacts") == 2


RAWS = [
    {"ID": "1", "UF_CRM_NPS": "3", "UF_CRM_REVIEW": "", "UF_CRM_TAGS": ["a", "b"],
     "UF_CRM_EMPTY": [], "UF_CRM_NULL": None, "UF_CRM_FLAG": False, "TITLE": "UF_CRM_X"},
    {"ID": "2", "TITLE": "no user fields"},
    {"ID": "3", "UF_CRM_REVIEW": "", "UF_CRM_NPS": None},
    {"ID": "4", "UF_CRM_ADDR": {"city": "Пермь"}, "UF_CRM_SUM": 10.5},
]


def test_custom_fields_keep_only_non_empty_user_fields():
    assert [custom_fields_of(r) for r in RAWS] == [
        {"UF_CRM_NPS": "3", "UF_CRM_TAGS": ["a", "b"], "UF_CRM_FLAG": False}, None, None,
        {"UF_CRM_ADDR": {"city": "Пермь"}, "UF_CRM_SUM": 10.5}]
    mirror = Mirror.memory()
    rows = [{"id": i + 1, "title": "t", "raw": raw} for i, raw in enumerate(RAWS)]
    mirror.write_page("companies", rows, [], SyncState("companies"), seen_at="t")
    stored = {r["id"]: r["custom_fields"] for r in mirror.rows("companies")}
    assert stored == {i + 1: custom_fields_of(raw) for i, raw in enumerate(RAWS)}


def test_migration_3_backfills_custom_fields_and_keeps_rules_results(tmp_path):
    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m003_custom_fields_and_clustered_results")
    for i, raw in enumerate(RAWS, start=1):
        db.execute("insert into deals (id, raw) values (?, ?)",
                   [i, json.dumps(raw, ensure_ascii=False)])
    db.execute("insert into points_ledger values ('earn:deal:1', 7, 'contact', 'earn', 1, "
               "30, '2025-01-01', 'Bronze', 'r')")
    db.execute("insert into customer_state (customer_id, customer_kind, purchases) "
               "values (7, 'contact', 1)")
    db.conn.commit()
    db.close()
    mirror = Mirror.open(path)
    stored = {r["id"]: r["custom_fields"] for r in mirror.rows("deals")}
    assert stored == {i: custom_fields_of(raw) for i, raw in enumerate(RAWS, start=1)}
    for table in ("customer_state", "points_ledger"):
        ddl = mirror.db.execute("select sql from sqlite_master where name = ?",
                                [table]).fetchone()[0]
        assert ddl.endswith("without rowid")
    assert mirror.db.execute("select customer_id, points from points_ledger").fetchall() == [
        (7, 30)]
    assert mirror.db.execute("select purchases from customer_state").fetchall() == [(1,)]


def test_migration_7_keys_the_ledger_by_kind_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m007_ledger_keyed_by_kind")
    db.execute("insert into points_ledger values ('earn:deal:9', 7, 'contact', 'earn', 9, "
               "30, '2025-01-01', 'Bronze', 'r', 123)")
    db.conn.commit()
    db.close()
    mirror = Mirror.open(path)
    ddl = mirror.db.execute("select sql from sqlite_master where name = 'points_ledger'"
                            ).fetchone()[0]
    assert "primary key (customer_kind, customer_id, entry_key)" in ddl
    assert ddl.endswith("without rowid")
    # company 7 may now hold the same key as contact 7
    mirror.db.execute("insert into points_ledger values ('earn:deal:9', 7, 'company', "
                      "'earn', 9, 30, '2025-01-01', 'Bronze', 'r', 123)")
    assert mirror.db.execute("select customer_kind, fingerprint from points_ledger "
                             "order by 1").fetchall() == [("company", 123), ("contact", 123)]
