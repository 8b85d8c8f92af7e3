"""connector.int_codec: exact round trips, the smaller codec, refusal of damaged bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.int_codec import RUNS, decode_ints, encode_ints

int64s = st.integers(-(2**63), 2**63 - 1)
narrow = st.integers(-300, 70_000)


@settings(max_examples=300, deadline=None)
@given(st.lists(int64s | narrow, max_size=200), st.binary(max_size=5))
def test_round_trip_is_exact_and_reports_where_it_ended(values: list[int], prefix: bytes
                                                        ) -> None:
    blob = prefix + encode_ints(np.array(values, dtype=np.int64)) + b"tail"
    decoded, end = decode_ints(blob, len(prefix))
    assert decoded.dtype == np.int64 and decoded.tolist() == values
    assert blob[end:] == b"tail"


def test_runs_of_customer_ids_are_stored_as_runs_and_small() -> None:
    customers = np.repeat(np.arange(1, 100_001, dtype=np.int64), 6)  # 600,000 entries
    blob = encode_ints(customers)
    assert blob[8] == RUNS
    assert len(blob) < 100_000 * (4 + 1) + 100 < customers.nbytes // 9


def test_values_are_stored_at_their_narrowest_width() -> None:
    points = np.array([0, 35, -120, 30_000], dtype=np.int64)
    assert len(encode_ints(points)) == 24 + 4 * 2  # int16, plain: no runs to gain


@pytest.mark.parametrize("damage", [
    lambda b: b[:10],                       # cut inside the header
    lambda b: b[:-1],                       # cut inside the data
    lambda b: b[:8] + bytes([7]) + b[9:],   # unknown codec
    lambda b: b[:9] + bytes([3]) + b[10:],  # impossible width
])
def test_damaged_sections_are_refused(damage: object) -> None:
    blob = encode_ints(np.repeat(np.array([5, 9, 11], dtype=np.int64), 50))
    with pytest.raises(ValueError):
        decode_ints(damage(blob), 0)  # type: ignore[operator]


def test_run_counts_that_do_not_add_up_are_refused() -> None:
    blob = bytearray(encode_ints(np.repeat(np.array([5, 9], dtype=np.int64), 50)))
    blob[0] = 99  # claims 99 values; the runs hold 100
    with pytest.raises(ValueError):
        decode_ints(bytes(blob), 0)
