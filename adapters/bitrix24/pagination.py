"""I/O-free Bitrix24 paging: PHP query encoding, keyset batch plans, batch reading.

The export loop the vendor documents (and both official SDKs use): ``order ID ASC``,
``filter >ID = last``, ``start = -1`` (no COUNT), 50 rows a page, stop at a short page.
Up to 50 such pages are chained inside one ``batch`` through ``$result[prev][49][ID]``,
so one request reads 2,500 rows. Everything here works on plain data and is tested on
hand-built responses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = [
    "MAX_BATCH",
    "PAGE_SIZE",
    "KeysetStep",
    "PagingError",
    "as_php_map",
    "encode_php_query",
    "keyset_params",
    "plan_keyset_batch",
    "read_keyset_batch",
]

PAGE_SIZE = 50
MAX_BATCH = 50


class PagingError(RuntimeError):
    """The server's pages broke the keyset invariant (IDs not strictly ascending)."""


def encode_php_query(params: Mapping[str, Any]) -> str:
    """``{"filter": {">ID": 5}, "select": ["ID"]}`` → ``filter%5B%3EID%5D=5&select%5B0%5D=ID``.

    Keys and values are percent-encoded except ``$result[...]`` references, which
    the server must see verbatim to substitute them.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        _flatten(str(key), value, pairs)
    return "&".join(f"{quote(k, safe='')}={_quote_value(v)}" for k, v in pairs)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif isinstance(value, bool):
        out.append((prefix, "Y" if value else "N"))
    elif value is None:
        out.append((prefix, ""))
    else:
        out.append((prefix, str(value)))


def _quote_value(value: str) -> str:
    if value.startswith("$result["):
        return value
    return quote(value, safe="")


def keyset_params(
    select: Sequence[str], filter: Mapping[str, Any], after: int | str
) -> dict[str, Any]:
    """Parameters of one keyset page: ``>ID`` after ``after``, ID ascending, no COUNT."""
    return {
        "order": {"ID": "ASC"},
        "filter": {**filter, ">ID": after},
        "select": list(select),
        "start": -1,
    }


def plan_keyset_batch(
    method: str,
    *,
    select: Sequence[str],
    filter: Mapping[str, Any],
    after_id: int,
    pages: int = MAX_BATCH,
    key_prefix: str = "p",
) -> dict[str, str]:
    """Command key → ``"method?query"`` for ``pages`` chained keyset pages.

    Keys are never bare numbers: PHP turns a map keyed 0..n-1 into a JSON list and the
    answer would lose which command is which.
    """
    if not 1 <= pages <= MAX_BATCH:
        raise ValueError(f"a batch holds 1..{MAX_BATCH} commands, not {pages}")
    commands: dict[str, str] = {}
    previous: str | None = None
    for index in range(pages):
        key = f"{key_prefix}{index}"
        after: int | str = (after_id if previous is None
                            else f"$result[{previous}][{PAGE_SIZE - 1}][ID]")
        commands[key] = f"{method}?{encode_php_query(keyset_params(select, filter, after))}"
        previous = key
    return commands


@dataclass(frozen=True)
class KeysetStep:
    """What one keyset batch yielded.

    ``done`` means a short page was seen (the table is exhausted); ``error`` is the
    first failed command's error payload, rows before it are kept.
    """

    rows: list[dict[str, Any]]
    last_id: int
    done: bool
    error: Mapping[str, Any] | None = None


def as_php_map(value: Any) -> dict[str, Any]:
    """PHP sends ``[]`` for an empty map and a list for a map keyed 0..n-1."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return {}


def read_keyset_batch(
    results: Mapping[str, Any],
    errors: Mapping[str, Any],
    keys: Sequence[str],
    after_id: int,
) -> KeysetStep:
    """Concatenate the pages of a keyset batch in key order, up to the first short page.

    Everything after a short page is discarded: what the server substitutes for a
    ``$result`` path that does not exist is undocumented, and it may restart the walk.
    """
    rows: list[dict[str, Any]] = []
    last_id = after_id
    for key in keys:
        if key in errors:
            return KeysetStep(rows, last_id, False, errors[key])
        page = results.get(key)
        page_rows = page if isinstance(page, list) else []
        last_id = _check_ascending(page_rows, last_id)
        rows.extend(page_rows)
        if len(page_rows) < PAGE_SIZE:
            return KeysetStep(rows, last_id, True)
    return KeysetStep(rows, last_id, False)


def _check_ascending(rows: Sequence[Mapping[str, Any]], after_id: int) -> int:
    last = after_id
    for row in rows:
        try:
            current = int(str(row.get("ID")))
        except ValueError:
            raise PagingError(f"row without a numeric ID after {last}") from None
        if current <= last:
            raise PagingError(f"keyset went backwards: ID {current} after {last}")
        last = current
    return last
