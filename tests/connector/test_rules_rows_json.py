"""The hand-joined JSON of churn reasons must equal json.dumps byte for byte."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from connector.rules_rows import _json_text


@given(st.lists(st.text(), max_size=4).map(tuple))
def test_reason_json_equals_json_dumps(texts: tuple[str, ...]) -> None:
    assert _json_text(texts) == json.dumps(texts, ensure_ascii=False)
