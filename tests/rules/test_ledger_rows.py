"""rules.ledger_rows: entries built from columns, and their stable fingerprints."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rules.config import RulesConfig
from rules.engine import compute
from rules.ledger_rows import entry_fingerprint, fingerprints, key_identity, text_hash
from rules.models import Contact, Deal, LedgerEntry

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, tzinfo=MSK)


def won(i: int, who: int, days_ago: int, amount: float, **fields: str) -> Deal:
    moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
    return Deal(id=i, contact_id=who, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=moment, closed_at=moment,
                fields=fields)


CONFIG = RulesConfig.model_validate({"loyalty": {"expiry_days": 90, "bonuses": [
    {"field": "UF_CRM_REVIEW", "entity": "deal", "equals": "Y", "points": 50,
     "reason": "review"}]}})


def ledger() -> tuple[Any, list[LedgerEntry]]:
    deals = [won(k, 1 + k % 3, 400 - 7 * k, 900.0 + k,
                 UF_CRM_POINTS_SPENT="20" if k % 9 == 4 else "",
                 UF_CRM_REVIEW="Y" if k % 4 == 0 else "") for k in range(1, 50)]
    contacts = [Contact(id=1), Contact(id=2, birthday=date(1990, 1, 15)), Contact(id=3)]
    result = compute(contacts, deals, [], CONFIG, AS_OF)
    return result.ledger_view, list(result.ledger)


def test_vector_and_one_by_one_fingerprints_agree() -> None:
    view, entries = ledger()
    kinds = {e.kind for e in entries}
    assert {"earn", "expire", "bonus", "redeem"} <= kinds  # vector rows and extras both
    assert fingerprints(view).tolist() == [entry_fingerprint(e) for e in entries]


def test_every_field_changes_the_fingerprint() -> None:
    _, entries = ledger()
    entry = entries[0]
    changed = [replace(entry, customer_id=entry.customer_id + 1), replace(entry, kind="bonus"),
               replace(entry, deal_id=None), replace(entry, points=entry.points + 1),
               replace(entry, at=entry.at + timedelta(days=1)),
               replace(entry, tier_at_purchase="Gold"), replace(entry, reason="other"),
               replace(entry, entry_key=entry.entry_key + "x")]
    prints = {entry_fingerprint(e) for e in [entry, *changed]}
    assert len(prints) == len(changed) + 1


def test_the_fingerprint_function_is_pinned() -> None:
    # Stored fingerprints are compared across versions: changing the function silently
    # would make every stored row look changed.  Change this value only on purpose.
    entry = LedgerEntry(7, "earn", 12, 30, date(2025, 1, 2), "Bronze", "3% cashback (Bronze)",
                        "earn:deal:12")
    assert entry_fingerprint(entry) == PINNED
    assert text_hash("Bronze") == int.from_bytes(
        hashlib.blake2b(b"Bronze", digest_size=8).digest(), "little")


def test_key_identity_reads_only_canonical_keys() -> None:
    assert key_identity("earn:deal:12", "earn", 12) == (0, 12)
    assert key_identity("earn:deal:12", "earn", 13)[0] == 2  # the deal does not match
    assert key_identity("expire:earn:deal:7", "expire", None) == (1, 7)
    assert key_identity("expire:earn:deal:07", "expire", None)[0] == 2  # not canonical
    assert key_identity("bonus:UF_X:deal:5", "bonus", 5) == (2, text_hash("bonus:UF_X:deal:5"))


PINNED = -1582845743363061874
