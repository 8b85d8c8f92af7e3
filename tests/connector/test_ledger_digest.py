"""points_ledger_digest: the ledger's numbers stored beside it, equal to a scan of the rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shop_rows import AS_OF, LATER, many_buyers

from connector import ledger_digest, rules_store
from connector.ledger_digest import read_digest
from connector.mirror import Mirror, SyncState
from connector.parallel import can_fork
from connector.rules_io import run_rules
from connector.stored_ledger import _scan_numbers, read_stored
from rules.config import RulesConfig


def same(digest: Any, scan: Any) -> None:
    # the same rows; both in ascending customer order (within one customer the digest
    # follows the ledger, the scan the primary key)
    for side in (digest, scan):
        assert np.all(np.diff(side.customers) >= 0)
    assert sorted(zip(digest.customers.tolist(), digest.fingerprints.tolist(), strict=True)) \
        == sorted(zip(scan.customers.tolist(), scan.fingerprints.tolist(), strict=True))
    earns = sorted(zip(digest.earn_customers.tolist(), digest.earn_deals.tolist(),
                       digest.earn_points.tolist(), strict=True))
    assert earns == sorted(zip(scan.earn_customers.tolist(), scan.earn_deals.tolist(),
                               scan.earn_points.tolist(), strict=True))
    assert len(earns) > 100 and np.all(scan.fingerprints != 0)


@pytest.mark.parametrize("staged", [False, True])
def test_the_digest_equals_a_scan_of_the_stored_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, staged: bool) -> None:
    if staged and not can_fork():
        pytest.skip("fork is not available here")
    monkeypatch.setattr(ledger_digest, "PART_ROWS", 256)  # several parts, split by halves
    if staged:
        monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    else:
        monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    parts = mirror.db.execute("select count(*) from points_ledger_digest").fetchone()[0]
    digest = read_digest(mirror.db, "contact")
    assert parts > 2 and digest is not None
    same(digest, _scan_numbers(mirror.db, "contact"))
    mirror.mark_deleted("deals", [1005, 1010], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    run_rules(mirror, RulesConfig(), as_of=LATER)  # a delta run writes a fresh digest
    digest = read_digest(mirror.db, "contact")
    assert digest is not None
    same(digest, _scan_numbers(mirror.db, "contact"))


def test_a_digest_written_in_parts_of_another_size_reads_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a mirror stored by a version with smaller parts, read by one with bigger ones
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    monkeypatch.setattr(ledger_digest, "PART_ROWS", 64)
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    monkeypatch.setattr(ledger_digest, "PART_ROWS", 1 << 20)
    parts = mirror.db.execute("select count(*) from points_ledger_digest").fetchone()[0]
    digest = read_digest(mirror.db, "contact")
    assert parts > 2 and digest is not None
    same(digest, _scan_numbers(mirror.db, "contact"))


def test_a_digest_that_does_not_fit_the_rows_is_ignored(tmp_path: Path) -> None:
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    assert read_digest(mirror.db, "contact") is not None
    mirror.db.execute("delete from points_ledger where entry_key = (select entry_key from "
                      "points_ledger limit 1)")
    assert read_digest(mirror.db, "contact") is None
    stored = read_stored(mirror, "contact")  # scanned instead
    assert len(stored.customers) == mirror.db.execute(
        "select count(*) from points_ledger").fetchone()[0]


def test_a_damaged_digest_is_ignored(tmp_path: Path) -> None:
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    mirror.db.execute("update points_ledger_digest set data = substr(data, 1, 40)")
    assert read_digest(mirror.db, "contact") is None
    mirror.db.execute("update points_ledger_digest set data = x'00'")
    assert read_digest(mirror.db, "contact") is None
