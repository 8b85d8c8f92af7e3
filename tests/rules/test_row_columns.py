"""RowSequence.columns(): the bulk (field-by-field) view equals the rows, in every case."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal, RowSequence

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)
CONTACTS = [Contact(id=1, birthday=date(1990, 2, 10), phones=("+79161234567",)),
            Contact(id=2, emails=("a@b.ru",)), Contact(id=3), Contact(id=4)]
CONFIG = RulesConfig(loyalty=LoyaltyConfig(
    expiry_days=90, bonuses=(BonusRule(field="UF_CRM_REVIEW", entity="deal", points=200,
                                       reason="review left"),)))

specs = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 400), st.integers(0, 5000),
                           st.sampled_from(["", "", "25", "400"]), st.booleans(),
                           st.sampled_from(["keep", "keep", "lost", "deleted"])),
                 min_size=0, max_size=30)


def deal(n: int, contact: int, days_ago: int, amount: int, spent: str, review: bool) -> Deal:
    moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
    return Deal(id=n, contact_id=contact, company_id=None, title=None, amount=float(amount),
                currency="RUB", status="won", created_at=moment, closed_at=moment,
                fields={"UF_CRM_POINTS_SPENT": spent, "UF_CRM_REVIEW": "Y" if review else ""})


def transposed(rows: RowSequence[Any], lo: int, hi: int) -> dict[str, list[Any]]:
    picked = list(rows)[lo:hi]
    names = [f.name for f in fields(picked[0])] if picked else []
    return {name: [getattr(r, name) for r in picked] for name in names}


@settings(max_examples=60, deadline=None)
@given(specs, st.integers(0, 40), st.integers(0, 40))
def test_columns_equal_rows(spec: list[Any], a: int, b: int) -> None:
    deals = [deal(n, *s[:5]) for n, s in enumerate(spec, start=1)]
    first = compute(CONTACTS, deals, [], CONFIG, AS_OF - timedelta(days=30))
    changed = [replace(d, status="lost") if s[5] == "lost" else
               replace(d, deleted_at=AS_OF) if s[5] == "deleted" else d
               for d, s in zip(deals, spec, strict=True)]
    # a previous ledger with vanished deals: carried entries and reversals are extras
    result = compute(CONTACTS, changed, [], CONFIG, AS_OF, list(first.ledger))
    for rows in (result.states, result.ledger):
        assert isinstance(rows, RowSequence)
        lo, hi = min(a, b), max(a, b)
        assert rows.columns(lo, hi) == transposed(rows, lo, hi)
        assert rows.columns(0, len(rows)) == transposed(rows, 0, len(rows))
        # a stand-in for None (a store's NaN) replaces exactly the Nones
        absent = object()
        assert rows.columns(0, len(rows), absent) == {
            name: [absent if v is None else v for v in values]
            for name, values in transposed(rows, 0, len(rows)).items()}


def test_a_plain_row_sequence_transposes_its_rows() -> None:
    rows = RowSequence(3, lambda i: Contact(id=i, name=f"c{i}" if i else None))
    assert rows.columns(1, 3)["name"] == ["c1", "c2"] and rows.columns(2, 2) == {}
    assert rows.columns(0, 2, "-")["name"] == ["-", "c1"]
