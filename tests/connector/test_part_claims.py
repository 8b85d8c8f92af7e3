"""PartClaims: two processes share out parts from both ends, each part exactly once."""

from __future__ import annotations

import os

import pytest

from connector.parallel import can_fork, start_forked
from connector.part_claims import PartClaims


def test_front_and_back_meet_and_every_part_is_claimed_once() -> None:
    claims = PartClaims(5)
    taken = [claims.front(), claims.back(), claims.front(), claims.back(), claims.front()]
    assert taken == [0, 4, 1, 3, 2]
    assert claims.front() is None and claims.back() is None
    claims.close()


def test_no_parts_means_nothing_to_claim() -> None:
    claims = PartClaims(0)
    assert claims.front() is None and claims.back() is None
    with pytest.raises(ValueError, match="negative"):
        PartClaims(-1)


def _claim_from_the_back(claims: PartClaims) -> list[int]:
    mine = []
    while (part := claims.back()) is not None:
        mine.append(part)
        os.sched_yield()  # let the parent claim in between
    return mine


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
def test_a_forked_child_and_its_parent_share_the_claims() -> None:
    claims = PartClaims(2000)
    child = start_forked(lambda: _claim_from_the_back(claims), "claiming parts")
    parent = []
    while (part := claims.front()) is not None:
        parent.append(part)
    theirs = child.result()
    assert sorted(parent + theirs) == list(range(2000))  # none twice, none lost
    assert parent == sorted(parent) and theirs == sorted(theirs, reverse=True)
    if parent and theirs:
        assert max(parent) < min(theirs)
    claims.close()
