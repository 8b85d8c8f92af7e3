"""Behaviours the facts sheet leaves open, each set to the strict choice by default.

Where the sheet marks a behaviour UNVERIFIED, or its sources disagree, the emulator
must not guess kindly: a kind guess hides a client bug until it meets a real portal.
Each default below is the harsher reading (the one that makes a careless client fail
here rather than in production); the other reading is a switch away, for tests that
want to see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Strictness"]


@dataclass(frozen=True)
class Strictness:
    """The emulator's answers to the sheet's open questions."""

    # §2.1: crm.deal.*/crm.contact.* take top-level names "in either case" (all lower or
    # all upper); other families are not verified, so they get the lower-case names only.
    either_case_families: tuple[str, ...] = ("crm.deal.", "crm.contact.")
    # §3.1 gives start = (page − 1)·50. "page": any other start is read as the page it
    # falls in (rows from the page boundary); "exact": a raw row offset.
    offset_paging: Literal["page", "exact"] = "page"
    # §11: whether legacy lists ignore unknown filter keys is UNVERIFIED. "error": HTTP 400;
    # "ignore": the key is dropped and the list answers as if it were absent.
    unknown_filter: Literal["error", "ignore"] = "error"
    # §4: "more than 50" commands — the sheet's sources disagree. "reject": the whole call
    # fails with 400 ERROR_BATCH_LENGTH_EXCEEDED; "per_command": the first 50 run and every
    # later command gets that error in result_error.
    batch_overflow: Literal["reject", "per_command"] = "reject"
    # §8.3: whether empty user fields are present or omitted in list/get output is
    # UNVERIFIED. "omit": the key is left out; "keep": sent as stored ("" or null).
    empty_user_fields: Literal["omit", "keep"] = "omit"
