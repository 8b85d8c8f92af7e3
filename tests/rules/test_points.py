"""rules.points.matching: which records' field values satisfy a condition."""

from __future__ import annotations

from typing import Any

from rules.config import FieldCondition
from rules.points import condition_matches, matching


def test_matching_keeps_the_mapping_order_and_judges_like_condition_matches() -> None:
    values: dict[int, Any] = {9: "Y", 2: "N", 5: " Y ", 7: ["Y"], 1: "Y", 3: None}
    cond = FieldCondition(field="UF_CRM_REVIEW", equals="Y")
    assert matching(cond, values) == [9, 5, 1]
    assert matching(cond, values) == [k for k, v in values.items() if condition_matches(cond, v)]


def test_equal_values_of_other_types_are_judged_apart() -> None:
    # True == 1 == 1.0 as dict keys, yet str() of them differs: a memo keyed by the value
    # alone would give all three the first one's verdict
    values: dict[int, Any] = {1: True, 2: 1, 3: 1.0, 4: "1"}
    assert matching(FieldCondition(field="UF_X", equals="1"), values) == [2, 4]
    assert matching(FieldCondition(field="UF_X", equals="True"), values) == [1]


def test_numeric_and_truthy_conditions() -> None:
    values: dict[int, Any] = {1: "6", 2: "7", 3: "6,0", 4: "x", 5: {"a": 1}}
    assert matching(FieldCondition(field="UF_NPS", max_value=6), values) == [1, 3]
    flags: dict[int, Any] = {1: "Y", 2: "нет", 3: 0, 4: "да", 5: []}
    assert matching(FieldCondition(field="UF_FLAG"), flags) == [1, 4]
