"""Seeded synthetic customers whose buying looks like real retail (BG/NBD-like).

Each contact buys as a Poisson process with its own Gamma-distributed rate while
"alive", and drops out after an exponentially distributed lifetime; given a count,
Poisson purchase times are uniform order statistics over the alive span, which lets
the whole portal be drawn with a few numpy calls. Amounts are log-normal around a
per-customer spend level (median ~5,000 RUB, heavy right tail). About 72 % of closed
deals are won; recent deals are often still open. Some deals belong to companies
(B2B), some contacts share a phone written differently (duplicates), and at
``dirty_rate`` records carry the dirty values real portals have.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from adapters.bitrix24.emulator.store import Portal

__all__ = ["DataConfig", "fill_portal"]

DAY = 86_400.0
FIRST = ["Анна", "Мария", "Елена", "Ольга", "Наталья", "Ирина", "Светлана", "Татьяна",
         "Александр", "Дмитрий", "Сергей", "Андрей", "Алексей", "Михаил", "Иван", "Николай"]
MIDDLE = ["Александровна", "Сергеевна", "Игоревна", "Петровна", "Андреевич", "Иванович",
          "Олегович", "Викторович"]
LAST = ["Иванова", "Смирнова", "Кузнецова", "Попова", "Васильева", "Петров", "Соколов",
        "Михайлов", "Новиков", "Федоров", "Морозов", "Волков", "Алексеев", "Лебедев"]
COMPANY = ["Ромашка", "Вектор", "Север", "Альфа", "Гранит", "Меридиан", "Старт", "Орион"]
FUNNELS = {
    "0": (["NEW", "PREPARATION", "EXECUTING"], "WON", "LOSE"),
    "1": (["C1:NEW", "C1:PREPARATION"], "C1:WON", "C1:LOSE"),
}
DIRTY_KINDS = ("amount", "date_create", "stage")


@dataclass(frozen=True)
class DataConfig:
    """What to generate. Deterministic for a seed and an ``as_of``."""

    seed: int = 1
    contacts: int = 2_000
    deals: int = 10_000
    companies: int | None = None  # default contacts // 20
    managers: int = 6
    years: float = 3.0  # history length before as_of
    as_of: datetime | None = None  # default: today 00:00 on the portal clock
    b2b_share: float = 0.15
    duplicate_rate: float = 0.02
    dirty_rate: float = 0.0
    currency: str = "RUB"
    tz_offset: str = "+03:00"


def fill_portal(portal: Portal, config: DataConfig) -> None:
    """Fill an empty portal with generated contacts, companies and deals."""
    rng = np.random.default_rng(config.seed)
    end = (config.as_of or portal.now()).timestamp()
    end = float(int(end // DAY) * DAY)
    start = end - config.years * 365 * DAY
    n_companies = config.companies if config.companies is not None else config.contacts // 20
    created = np.sort(rng.uniform(start, end - 20 * DAY, config.contacts))
    for row in _contacts(rng, config, created, portal):
        portal.put_raw("contact", row)
    company_created = np.sort(rng.uniform(start, end - 60 * DAY, n_companies))
    for index, moment in enumerate(company_created, start=1):
        portal.put_raw("company", _company(index, moment, rng, config, portal, end))
    for row in _deals(rng, config, created, n_companies, end, portal):
        portal.put_raw("deal", row)


# -- contacts -------------------------------------------------------------------------------


def _contacts(rng: np.random.Generator, config: DataConfig, created: np.ndarray,
              portal: Portal) -> list[dict[str, Any]]:
    n = len(created)
    phones = [f"+79{int(x):09d}" for x in rng.integers(0, 10**9, n)]
    has_phone = rng.random(n) < 0.85
    has_email = rng.random(n) < 0.6
    birthdays = _birthdays(rng, n)
    duplicates = _duplicate_of(rng, n, config.duplicate_rate)
    dirty = rng.random(n) < config.dirty_rate / 2
    rows = []
    for i in range(n):
        first, middle, last = _name(rng)
        row: dict[str, Any] = {
            "ID": str(i + 1), "NAME": first, "SECOND_NAME": middle, "LAST_NAME": last,
            "BIRTHDATE": "31.02.1990" if dirty[i] else _midnight(birthdays[i], portal),
            "ASSIGNED_BY_ID": str(int(rng.integers(1, config.managers + 1))),
            "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "COMPANY_ID": None,
            "TYPE_ID": "CLIENT", "SOURCE_ID": "WEB", "OPENED": "Y",
            "DATE_CREATE": _stamp(created[i], portal),
            "DATE_MODIFY": _stamp(created[i] + rng.uniform(0, 3 * DAY), portal),
            "UF_CRM_NPS": str(int(rng.integers(0, 11))) if rng.random() < 0.3 else "",
            "UF_CRM_REVIEW": "Y" if rng.random() < 0.1 else "N",
        }
        phone = phones[duplicates[i]] if duplicates[i] >= 0 else phones[i]
        if duplicates[i] >= 0:
            phone = f"8 ({phone[2:5]}) {phone[5:8]}-{phone[8:10]}-{phone[10:]}"
        _multifields(row, i, phone if has_phone[i] or duplicates[i] >= 0 else None,
                     f"client{i + 1}@example.ru" if has_email[i] else None)
        rows.append(row)
    for dup in np.flatnonzero(duplicates >= 0).tolist():
        # A duplicate is the same person entered again: same name, phone written differently.
        original = rows[int(duplicates[dup])]
        for key in ("NAME", "SECOND_NAME", "LAST_NAME"):
            rows[dup][key] = original[key]
    return rows


def _name(rng: np.random.Generator) -> tuple[str, str, str]:
    # The lists put female forms first; keep a person's three names of one gender.
    female = rng.random() < 0.55
    first = FIRST[int(rng.integers(0, 8))] if female else FIRST[int(rng.integers(8, 16))]
    middle = MIDDLE[int(rng.integers(0, 4))] if female else MIDDLE[int(rng.integers(4, 8))]
    last = LAST[int(rng.integers(0, 5))] if female else LAST[int(rng.integers(5, 14))]
    return first, middle, last


def _multifields(row: dict[str, Any], index: int, phone: str | None, email: str | None) -> None:
    row["HAS_PHONE"] = "Y" if phone else "N"
    row["HAS_EMAIL"] = "Y" if email else "N"
    if phone:
        row["PHONE"] = [{"ID": str(2 * index + 1), "VALUE_TYPE": "MOBILE", "VALUE": phone,
                         "TYPE_ID": "PHONE"}]
    if email:
        row["EMAIL"] = [{"ID": str(2 * index + 2), "VALUE_TYPE": "WORK", "VALUE": email,
                         "TYPE_ID": "EMAIL"}]


def _birthdays(rng: np.random.Generator, n: int) -> list[date | None]:
    base = date(1960, 1, 1).toordinal()
    days = rng.integers(0, 45 * 365, n)
    present = rng.random(n) < 0.7
    leap = rng.random(n) < 0.01  # a few born on 29 February
    result: list[date | None] = []
    for i in range(n):
        if not present[i]:
            result.append(None)
        elif leap[i]:
            result.append(date(1960 + 4 * int(days[i] % 11), 2, 29))
        else:
            result.append(date.fromordinal(base + int(days[i])))
    return result


def _duplicate_of(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    result = np.full(n, -1)
    if n > 1:
        chosen = np.flatnonzero(rng.random(n) < rate)
        chosen = chosen[chosen > 0]
        result[chosen] = rng.integers(0, chosen, len(chosen)) if len(chosen) else []
    return result


def _company(index: int, moment: float, rng: np.random.Generator, config: DataConfig,
             portal: Portal, end: float) -> dict[str, Any]:
    title = f"ООО «{COMPANY[index % len(COMPANY)]}-{index}»"
    return {"ID": str(index), "TITLE": title, "COMPANY_TYPE": "CUSTOMER", "OPENED": "Y",
            "ASSIGNED_BY_ID": str(int(rng.integers(1, config.managers + 1))),
            "DATE_CREATE": _stamp(moment, portal),
            "DATE_MODIFY": _stamp(min(moment + rng.uniform(0, 30 * DAY), end), portal)}


# -- deals ----------------------------------------------------------------------------------


def _purchase_times(rng: np.random.Generator, created: np.ndarray, end: float,
                    total: int) -> tuple[np.ndarray, np.ndarray]:
    """Owner index and time of ``total`` purchases, BG/NBD-like."""
    rate = rng.gamma(0.8, 1 / 60.0, len(created))  # purchases per day while alive
    lifetime = rng.exponential(rng.beta(2.0, 3.0, len(created)) * 900 * DAY)
    dropout = np.minimum(created + lifetime + 1.0, end)
    weights = rate * (dropout - created) / DAY + 1e-9
    counts = rng.multinomial(total, weights / weights.sum())
    owner = np.repeat(np.arange(len(created)), counts)
    times = created[owner] + rng.random(total) * (dropout[owner] - created[owner])
    return owner, times


def _deals(rng: np.random.Generator, config: DataConfig, created: np.ndarray,
           n_companies: int, end: float, portal: Portal) -> list[dict[str, Any]]:
    owner, times = _purchase_times(rng, created, end, config.deals)
    order = np.argsort(times, kind="stable")
    owner, times = owner[order], times[order]
    spend = rng.lognormal(np.log(5_000), 0.6, len(created))
    amounts = np.round(spend[owner] * rng.lognormal(0, 0.45, len(owner)), -1)
    b2b = (rng.random(len(owner)) < config.b2b_share) & (n_companies > 0)
    companies = rng.integers(1, max(n_companies, 1) + 1, len(owner))
    dirty = np.flatnonzero(rng.random(len(owner)) < config.dirty_rate)
    seen: set[tuple[str, int]] = set()
    rows = []
    for i in range(len(owner)):
        contact = int(owner[i]) + 1
        company = int(companies[i]) if b2b[i] else 0
        if company and rng.random() < 0.5:
            contact = 0
        row = _deal_row(i + 1, contact, company, float(times[i]), float(amounts[i]), end, rng,
                        config, portal)
        # A repeat deal of the same client: the contact, or the company when there is none.
        client = ("contact", contact) if contact else ("company", company)
        row["IS_RETURN_CUSTOMER"] = "Y" if client in seen else "N"
        seen.add(client)
        rows.append(row)
    for index in dirty:
        _make_dirty(rows[int(index)], DIRTY_KINDS[int(index) % len(DIRTY_KINDS)])
    return rows


def _deal_row(deal_id: int, contact: int, company: int, moment: float, amount: float,
              end: float, rng: np.random.Generator, config: DataConfig,
              portal: Portal) -> dict[str, Any]:
    category = "1" if rng.random() < 0.2 else "0"
    open_stages, won, lost = FUNNELS[category]
    close_at = moment + rng.exponential(3 * DAY)
    is_open = close_at >= end or (end - moment < 25 * DAY and rng.random() < 0.5)
    if is_open:
        stage, semantic = open_stages[int(rng.integers(len(open_stages)))], "P"
        moved = min(moment + rng.uniform(0, DAY), end - 1)
        close_date = _midnight(_to_date(moment + 7 * DAY, portal), portal)
    else:
        won_deal = rng.random() < 0.72
        stage, semantic = (won, "S") if won_deal else (lost, "F")
        moved = close_at
        close_date = _midnight(_to_date(close_at, portal), portal)
    modified = min(moved + (rng.uniform(0, 2 * DAY) if rng.random() < 0.1 else 0.0), end - 1)
    return {
        "ID": str(deal_id), "TITLE": f"Заказ №{deal_id}", "TYPE_ID": "SALE",
        "CATEGORY_ID": category, "STAGE_ID": stage, "STAGE_SEMANTIC_ID": semantic,
        "CLOSED": "N" if is_open else "Y", "OPPORTUNITY": f"{max(amount, 0.0):.2f}",
        "CURRENCY_ID": config.currency, "CONTACT_ID": str(contact) if contact else None,
        "COMPANY_ID": str(company), "ASSIGNED_BY_ID": str(int(rng.integers(1, config.managers
                                                                             + 1))),
        "BEGINDATE": _midnight(_to_date(moment, portal), portal), "CLOSEDATE": close_date,
        "DATE_CREATE": _stamp(moment, portal), "MOVED_TIME": _stamp(moved, portal),
        "DATE_MODIFY": _stamp(modified, portal), "OPENED": "Y", "PROBABILITY": None,
    }


def _make_dirty(row: dict[str, Any], kind: str) -> None:
    if kind == "amount":
        row["OPPORTUNITY"] = "12 000,50 руб"
    elif kind == "date_create":
        row["DATE_CREATE"] = ""
    else:
        row["STAGE_ID"], row["STAGE_SEMANTIC_ID"] = "C7:LEGACY", "X"


# -- formatting -------------------------------------------------------------------------------


def _stamp(moment: float, portal: Portal) -> str:
    return datetime.fromtimestamp(int(moment), UTC).astimezone(portal.tz).isoformat()


def _to_date(moment: float, portal: Portal) -> date:
    return datetime.fromtimestamp(int(moment), UTC).astimezone(portal.tz).date()


def _midnight(day: date | None, portal: Portal) -> str:
    # Date fields come back as that date at portal midnight (facts sheet §6.1).
    if day is None:
        return ""
    return datetime(day.year, day.month, day.day, tzinfo=portal.tz).isoformat()

