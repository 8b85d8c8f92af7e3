"""``RulesConfig``: every rule's knob, with retention-practice defaults (the ``[rules]`` table).

Frozen and ``extra="forbid"`` so a typo in the TOML is an error, not a silently ignored
setting.  docs/rules-config.example.toml documents every key.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_RF_SEGMENTS",
    "BonusRule",
    "ChurnConfig",
    "CustomerConfig",
    "FieldCondition",
    "LifecycleConfig",
    "LoyaltyConfig",
    "MetricsConfig",
    "ModelConfig",
    "PurchasesConfig",
    "RfmConfig",
    "RulesConfig",
    "TierConfig",
    "ValueConfig",
    "currency_code",
]

Entity = Literal["contact", "deal", "company"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _field_or_none(name: str | None) -> str | None:
    """An optional CRM field name: "" (what a TOML file can write) means none, i.e. off."""
    if name is None:
        return None
    return name.strip() or None


class CustomerConfig(_Section):
    """Who the customer is and how to reach them."""

    kind: Literal["contact", "company"] = "contact"
    phone_region: str = "RU"


def currency_code(name: str) -> str:
    """A currency code as compared everywhere: trimmed, upper case ("rub " → "RUB")."""
    return name.strip().upper()


class PurchasesConfig(_Section):
    """Which deals count as purchases."""

    statuses: tuple[Literal["open", "won", "lost"], ...] = ("won",)
    categories: tuple[str, ...] = ()
    min_amount: float = 0.0
    currency: str = "RUB"
    rates: dict[str, float] = Field(default_factory=dict)

    @field_validator("currency")
    @classmethod
    def _normalised_currency(cls, code: str) -> str:
        return currency_code(code)

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        bad = [code for code, rate in rates.items() if not 0 < rate < math.inf]  # NaN too
        if bad:
            raise ValueError(f"rates must be finite and > 0: {', '.join(bad)}")
        normalised = {currency_code(code): rate for code, rate in rates.items()}
        if len(normalised) != len(rates):
            raise ValueError("rates name a currency twice (codes are case-insensitive)")
        return normalised


class LifecycleConfig(_Section):
    """Lifecycle thresholds in whole days since the last (or first) purchase.

    Cadence mode: ``cadence_min_purchases`` counts distinct purchase *days*.
    """

    new_days: int = Field(30, ge=0)
    sleeping_days: int = Field(60, ge=1)
    lost_days: int = Field(100, ge=1)
    cadence: bool = False
    cadence_min_purchases: int = Field(3, ge=2)
    sleeping_gaps: float = Field(2.0, gt=0)
    lost_gaps: float = Field(4.0, gt=0)
    cadence_min_days: int = Field(7, ge=1)
    cadence_min_lost_days: int = Field(14, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleConfig:
        if self.lost_days <= self.sleeping_days:
            raise ValueError("lost_days must be greater than sleeping_days")
        if self.lost_gaps <= self.sleeping_gaps:
            raise ValueError("lost_gaps must be greater than sleeping_gaps")
        if self.cadence_min_lost_days <= self.cadence_min_days:
            raise ValueError("cadence_min_lost_days must be greater than cadence_min_days")
        return self


class ValueConfig(_Section):
    """VIP / middle / base by revenue over a trailing window."""

    window_days: int = Field(365, ge=1)
    mode: Literal["top_share", "thresholds"] = "top_share"
    vip_share: float = Field(0.2, ge=0, le=1)
    middle_share: float = Field(0.3, ge=0, le=1)
    vip_min: float = Field(100_000.0, ge=0)
    middle_min: float = Field(20_000.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> ValueConfig:
        if self.vip_share + self.middle_share > 1:
            raise ValueError("vip_share + middle_share must not exceed 1")
        if self.vip_min < self.middle_min:
            raise ValueError("vip_min must be >= middle_min")
        return self


DEFAULT_RF_SEGMENTS: dict[str, str] = {
    # key = R score then F score; the widely used RFM segment map, with "lost" split off
    # from hibernating for the least recent, least frequent corner.
    "11": "lost", "12": "lost", "21": "hibernating", "22": "hibernating",
    "13": "at risk", "14": "at risk", "23": "at risk", "24": "at risk",
    "15": "can't lose them", "25": "can't lose them",
    "31": "about to sleep", "32": "about to sleep", "33": "need attention",
    "34": "loyal", "35": "loyal", "44": "loyal", "45": "loyal",
    "41": "promising", "51": "new customers",
    "42": "potential loyalists", "43": "potential loyalists",
    "52": "potential loyalists", "53": "potential loyalists",
    "54": "champions", "55": "champions",
}


class RfmConfig(_Section):
    """RFM scoring: quintiles over buyers, named groups by the R/F cell."""

    window_days: int = Field(0, ge=0)
    segments: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RF_SEGMENTS))

    @field_validator("segments")
    @classmethod
    def _all_cells(cls, segments: dict[str, str]) -> dict[str, str]:
        cells = {f"{r}{f}" for r in range(1, 6) for f in range(1, 6)}
        missing = sorted(cells - segments.keys())
        extra = sorted(segments.keys() - cells)
        if missing or extra:
            raise ValueError(f"segments must name all 25 R/F cells; missing {missing}, "
                             f"unknown {extra}")
        return segments


class TierConfig(_Section):
    """One loyalty tier, entered once ``min_purchases`` purchases are behind the customer."""

    name: str
    min_purchases: int = Field(ge=0)
    cashback_percent: Decimal = Field(ge=0, le=100, decimal_places=2)
    perks: tuple[str, ...] = ()


class FieldCondition(_Section):
    """A test on a CRM field: ``equals`` a value, ``max_value`` (numeric <=), or truthy."""

    field: str
    entity: Entity = "deal"
    equals: str | None = None
    max_value: float | None = None


class BonusRule(FieldCondition):
    """Points granted once per record whose field satisfies the condition."""

    points: int = Field(gt=0)
    reason: str


def _default_tiers() -> tuple[TierConfig, ...]:
    return (
        TierConfig(name="Bronze", min_purchases=0, cashback_percent=Decimal(3)),
        TierConfig(name="Silver", min_purchases=11, cashback_percent=Decimal(5),
                   perks=("free delivery",)),
        TierConfig(name="Gold", min_purchases=26, cashback_percent=Decimal(7),
                   perks=("priority support", "gifts")),
    )


class LoyaltyConfig(_Section):
    """Points ledger: tiers, birthday multiplier, bonuses, redemption and expiry."""

    tiers: tuple[TierConfig, ...] = Field(default_factory=_default_tiers)
    birthday_multiplier: int = Field(2, ge=1)
    birthday_window_days: int = Field(0, ge=0, le=180)
    leap_day_birthday: Literal["feb28", "mar1"] = "feb28"
    bonuses: tuple[BonusRule, ...] = ()
    expiry_days: int = Field(0, ge=0)
    redeem_field: str | None = "UF_CRM_POINTS_SPENT"

    @field_validator("redeem_field")
    @classmethod
    def _empty_is_off(cls, name: str | None) -> str | None:
        return _field_or_none(name)

    @field_validator("tiers")
    @classmethod
    def _tiers_ordered(cls, tiers: tuple[TierConfig, ...]) -> tuple[TierConfig, ...]:
        if not tiers or tiers[0].min_purchases != 0:
            raise ValueError("the first tier must start at min_purchases = 0")
        thresholds = [t.min_purchases for t in tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tiers must have strictly increasing min_purchases")
        return tiers


class ChurnConfig(_Section):
    """Weighted, explainable churn signals (each 0..1; score = weighted mean)."""

    weight_overdue: float = Field(0.4, ge=0)
    weight_frequency: float = Field(0.2, ge=0)
    weight_check: float = Field(0.15, ge=0)
    weight_feedback: float = Field(0.15, ge=0)
    weight_ignored: float = Field(0.1, ge=0)
    default_cadence_days: int = Field(30, ge=1)
    overdue_full_ratio: float = Field(3.0, gt=1)
    frequency_window_days: int = Field(90, ge=1)
    check_recent_purchases: int = Field(3, ge=1)
    check_drop_full: float = Field(0.5, gt=0, le=1)
    negative_feedback: tuple[FieldCondition, ...] = (
        FieldCondition(field="UF_CRM_NPS", entity="deal", max_value=6),
    )
    ignored_field: str | None = None
    ignored_entity: Entity = "contact"
    ignored_full: float = Field(3.0, gt=0)
    max_reasons: int = Field(3, ge=0)

    @field_validator("ignored_field")
    @classmethod
    def _empty_is_off(cls, name: str | None) -> str | None:
        return _field_or_none(name)

    @model_validator(mode="after")
    def _some_weight(self) -> ChurnConfig:
        if self.total_weight() <= 0:
            raise ValueError("at least one churn weight must be > 0")
        return self

    def total_weight(self) -> float:
        """Sum of all signal weights (the score's denominator)."""
        return (self.weight_overdue + self.weight_frequency + self.weight_check
                + self.weight_feedback + self.weight_ignored)


class ModelConfig(_Section):
    """BG/NBD + Gamma-Gamma settings and when to fall back to rule signals."""

    enabled: bool = True
    min_customers: int = Field(30, ge=2)
    min_repeat_customers: int = Field(20, ge=2)
    horizon_days: int = Field(90, ge=1)
    clv_horizon_days: int = Field(365, ge=1)
    discount_rate: float = Field(0.0, ge=0)
    churn_weight: float = Field(0.5, ge=0, le=1)
    fit_sample: int = Field(100_000, ge=0)


class MetricsConfig(_Section):
    """Metric period and activity definitions."""

    active_days: int = Field(365, ge=1)
    period_months: int = Field(1, ge=1, le=12)
    cohort_months: int = Field(12, ge=1, le=120)


class RulesConfig(_Section):
    """The whole ``[rules]`` table."""

    timezone: str = "Europe/Moscow"
    customer: CustomerConfig = Field(default_factory=CustomerConfig)
    purchases: PurchasesConfig = Field(default_factory=PurchasesConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    value: ValueConfig = Field(default_factory=ValueConfig)
    rfm: RfmConfig = Field(default_factory=RfmConfig)
    loyalty: LoyaltyConfig = Field(default_factory=LoyaltyConfig)
    churn: ChurnConfig = Field(default_factory=ChurnConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    def zone(self) -> ZoneInfo:
        """The portal's time zone, in which purchase *days* are counted."""
        return ZoneInfo(self.timezone)
