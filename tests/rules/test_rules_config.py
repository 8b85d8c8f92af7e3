"""RulesConfig: the documented example parses, defaults match it, typos are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from rules.config import RulesConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "rules-config.example.toml"


def test_example_documents_the_defaults() -> None:
    # The file says "every value set below is the default": it must change nothing.
    table = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["rules"]
    assert RulesConfig.model_validate(table) == RulesConfig()


def test_the_commented_out_examples_are_valid_settings() -> None:
    # Lines "# ..." after "# Example (not a default):" up to the next uncommented line.
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# Example (not a default):") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.removeprefix("#").removeprefix(" "))
    bonuses = tomllib.loads("\n".join(block))["rules"]["loyalty"]["bonuses"]
    loyalty = RulesConfig.model_validate({"loyalty": {"bonuses": bonuses}}).loyalty
    assert [(b.field, b.entity, b.points) for b in loyalty.bonuses] == [
        ("UF_CRM_REVIEW", "deal", 200), ("UF_CRM_REFERRAL", "contact", 500)]


def test_empty_field_names_mean_off_and_currencies_are_normalised() -> None:
    config = RulesConfig.model_validate({
        "churn": {"ignored_field": ""}, "loyalty": {"redeem_field": ""},
        "purchases": {"currency": " rub", "rates": {"usd": 90.0}}})
    assert (config.churn.ignored_field, config.loyalty.redeem_field) == (None, None)
    assert (config.purchases.currency, config.purchases.rates) == ("RUB", {"USD": 90.0})
    with pytest.raises(ValidationError, match="twice"):
        RulesConfig.model_validate({"purchases": {"rates": {"usd": 90.0, "USD": 91.0}}})


def test_every_default_key_is_documented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in RulesConfig.model_fields:
        assert section in text
        sub = getattr(RulesConfig(), section)
        for key in getattr(type(sub), "model_fields", {}):
            documented = (f"{key} =" in text or f"[[rules.{section}.{key}]]" in text
                          or f"[rules.{section}.{key}]" in text)
            assert documented, (section, key)


@pytest.mark.parametrize("bad", [
    {"lifecycle": {"sleeping_dayz": 10}},
    {"lifecycle": {"sleeping_days": 100, "lost_days": 100}},
    {"loyalty": {"tiers": [{"name": "A", "min_purchases": 1, "cashback_percent": 3}]}},
    {"rfm": {"segments": {"55": "champions"}}},
    {"timezone": "Mars/Olympus"},
    {"value": {"vip_share": 0.8, "middle_share": 0.3}},
    {"purchases": {"rates": {"USD": float("inf")}}},
    {"purchases": {"rates": {"USD": float("nan")}}},
    {"lifecycle": {"cadence_min_days": 14, "cadence_min_lost_days": 14}},
])
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RulesConfig.model_validate(bad)


def test_config_is_frozen() -> None:
    config = RulesConfig()
    with pytest.raises(ValidationError):
        config.timezone = "UTC"  # type: ignore[misc]
