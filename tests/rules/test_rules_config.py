"""RulesConfig: the documented example parses, defaults match it, typos are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from rules.config import RulesConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "rules-config.example.toml"


def test_example_documents_the_defaults() -> None:
    table = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["rules"]
    parsed = RulesConfig.model_validate(table)
    assert len(parsed.loyalty.bonuses) == 2  # the only non-default: example bonuses
    without_examples = parsed.model_copy(update={"loyalty": parsed.loyalty.model_copy(
        update={"bonuses": ()})})
    default = RulesConfig()
    assert without_examples.model_dump(exclude={"churn": {"ignored_field"},
                                                "loyalty": {"redeem_field"}}) == \
        default.model_dump(exclude={"churn": {"ignored_field"}, "loyalty": {"redeem_field"}})


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
])
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RulesConfig.model_validate(bad)


def test_config_is_frozen() -> None:
    config = RulesConfig()
    with pytest.raises(ValidationError):
        config.timezone = "UTC"  # type: ignore[misc]
