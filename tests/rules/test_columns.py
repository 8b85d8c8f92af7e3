"""rules.columns: exact local days, codes, and the columnar previous ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rules.columns import (
    PreviousLedger,
    deal_columns,
    local_days,
    utc_micros,
)
from rules.config import RulesConfig
from rules.models import Deal, LedgerEntry

BERLIN = ZoneInfo("Europe/Berlin")  # DST: offsets change inside some UTC days


@pytest.mark.parametrize("spread_days", [40, 200_000])  # dense table / sparse np.unique
def test_local_days_equal_astimezone_around_dst_changes(spread_days: int) -> None:
    rng = np.random.default_rng(1)
    start = utc_micros(datetime(2024, 3, 30, tzinfo=UTC))
    micros = start + rng.integers(0, spread_days * 86_400_000_000, 5_000)
    # the exact minutes around the spring change: 01:00 UTC on 31 March 2024
    change = utc_micros(datetime(2024, 3, 31, 1, tzinfo=UTC))
    micros = np.concatenate([micros, change + np.arange(-3, 4) * 60_000_000]).astype(np.int64)
    expected = [(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(m)))
                .astimezone(BERLIN).toordinal() for m in micros]
    assert local_days(micros, BERLIN).tolist() == expected


def test_local_days_of_nothing() -> None:
    assert local_days(np.zeros(0, dtype=np.int64), BERLIN).tolist() == []


def test_utc_micros_is_exact() -> None:
    moment = datetime(2025, 1, 1, 3, 0, 0, 1, tzinfo=ZoneInfo("Europe/Moscow"))
    assert utc_micros(moment) == 1_735_689_600_000_001


def test_deal_columns_code_strings_and_mark_missing_values() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    deals = [Deal(1, 5, None, None, None, "USD", "won", at, category_id="2"),
             Deal(2, None, 7, None, 10.0, "", "lost", at, closed_at=at + timedelta(1)),
             Deal(3, 5, None, None, 1.0, "USD", "open", at, deleted_at=at)]
    cols = deal_columns(deals, RulesConfig())
    assert cols.contact_id.tolist() == [5, -1, 5] and cols.company_id.tolist() == [-1, 7, -1]
    assert cols.amount.tolist() == [0.0, 10.0, 1.0]
    assert [cols.currencies[c] if c >= 0 else None for c in cols.currency] == ["USD", None,
                                                                               "USD"]
    assert cols.category.tolist() == [0, -1, -1] and cols.categories == ("2",)
    assert cols.status.tolist() == [1, 2, 0] and cols.deleted.tolist() == [False, False, True]
    assert cols.moment[1] - cols.moment[0] == 86_400_000_000  # closed_at wins


def test_previous_ledger_keeps_earns_as_columns() -> None:
    day = date(2025, 1, 1)
    entries = [LedgerEntry(1, "earn", 10, 30, day, "Bronze", "3%", "earn:deal:10"),
               LedgerEntry(1, "expire", None, -30, day, None, "x", "expire:earn:deal:10"),
               LedgerEntry(2, "bonus", None, 200, day, None, "r", "bonus:F:contact:2"),
               LedgerEntry(2, "earn", 11, 60, day, "Bronze", "3%", "earn:deal:11")]
    prev = PreviousLedger.of(entries)
    assert prev.earn_customer.tolist() == [1, 2] and prev.earn_deal.tolist() == [10, 11]
    assert list(prev.earn_entries(np.array([1]))) == [entries[3]]
    assert list(prev.others) == [entries[2]]  # expiries are re-derived, never read
    assert PreviousLedger.of(prev) is prev


def test_deal_parts_concatenate_with_their_currency_codes_remapped() -> None:
    from datetime import UTC, datetime

    from rules.columns import concat_deal_columns, deal_columns
    from rules.config import RulesConfig
    from rules.models import Deal

    def deal(i: int, currency: str) -> Deal:
        at = datetime(2025, 1, i, tzinfo=UTC)
        return Deal(id=i, contact_id=1, company_id=None, title=None, amount=1.0,
                    currency=currency, status="won", created_at=at, closed_at=at,
                    fields={"UF_CRM_POINTS_SPENT": str(i)})

    config = RulesConfig()
    first = deal_columns([deal(1, "USD"), deal(2, "RUB")], config)
    second = deal_columns([deal(3, "EUR"), deal(4, "USD"), deal(5, "")], config)
    both = concat_deal_columns(first, second)
    whole = deal_columns([deal(1, "USD"), deal(2, "RUB"), deal(3, "EUR"), deal(4, "USD"),
                          deal(5, "")], config)
    assert [both.currencies[c] if c >= 0 else None for c in both.currency.tolist()] == \
        [whole.currencies[c] if c >= 0 else None for c in whole.currency.tolist()]
    assert both.id.tolist() == [1, 2, 3, 4, 5]
    assert both.fields["UF_CRM_POINTS_SPENT"] == {i: str(i) for i in range(1, 6)}
