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

from connector.errors import FatalCrmError

__all__ = [
    "MAX_BATCH",
    "PAGE_SIZE",
    "KeysetStep",
    "PagingError",
    "as_php_map",
    "encode_php_query",
    "id_params",
    "keyset_params",
    "plan_id_batch",
    "plan_keyset_batch",
    "read_id_batch",
    "read_keyset_batch",
    "read_keyset_page",
]

PAGE_SIZE = 50
MAX_BATCH = 50


class PagingError(FatalCrmError):
    """The server's pages broke the keyset invariant (IDs not strictly ascending).

    A ``FatalCrmError`` so a sync reports it for that entity instead of crashing: what
    was already stored stays, and the next run resumes from the last good ID.
    """

    def __init__(self, message: str, *, method: str = "") -> None:
        super().__init__(message, crm="bitrix24", method=method, code="KEYSET_ORDER")


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
    if not key_prefix or key_prefix[0].isdigit() or not key_prefix.isidentifier():
        raise ValueError(f"key_prefix must be a non-numeric identifier, not {key_prefix!r}")
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

    ``done`` means a short page was seen (the walk is over). ``error`` is the payload
    of the first command that failed (or returned nothing); the rows before it are
    kept and ``done`` is False, so the walk can go on from ``last_id``.
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
    batch_result: Mapping[str, Any], keys: Sequence[str], after_id: int
) -> KeysetStep:
    """Concatenate the pages of a keyset batch in key order, up to the first short page.

    ``batch_result`` is the batch envelope's ``result`` object (``result``,
    ``result_error``, … as PHP sends them). Everything after a short page is discarded:
    what the server substitutes for a ``$result`` path that does not exist is
    undocumented, and it may restart the walk. Raises :class:`PagingError` when IDs do
    not ascend strictly above the previous last ID (a loop) or a page is not a list.
    """
    results = as_php_map(batch_result.get("result"))
    errors = as_php_map(batch_result.get("result_error"))
    rows: list[dict[str, Any]] = []
    last_id = after_id
    for key in keys:
        if key in errors or key not in results:
            return KeysetStep(rows, last_id, False, _error_payload(errors.get(key), key))
        page = _page_rows(results[key], key)
        last_id = _check_ascending(page, last_id, key)
        rows.extend(page)
        if len(page) < PAGE_SIZE:
            return KeysetStep(rows, last_id, True)
    return KeysetStep(rows, last_id, False)


def _error_payload(error: Any, key: str) -> Mapping[str, Any]:
    if isinstance(error, Mapping):
        return error
    # halt=0 answers every command; a missing one is treated as that command failing.
    return {"error": "", "error_description": f"batch returned no result for command {key}"}


def _page_rows(page: Any, key: str) -> list[dict[str, Any]]:
    # Anything but a list of rows would otherwise look like a short page and end the
    # walk early, silently losing the rest.
    if not isinstance(page, list) or not all(isinstance(row, Mapping) for row in page):
        raise PagingError(f"command {key} did not return a list of rows")
    return [dict(row) for row in page]


def _check_ascending(rows: Sequence[Mapping[str, Any]], after_id: int, key: str = "") -> int:
    last = after_id
    for row in rows:
        try:
            current = int(str(row.get("ID")))
        except ValueError:
            raise PagingError(f"{key or 'page'}: a row without a numeric ID after {last}") \
                from None
        if current <= last:
            raise PagingError(f"{key or 'page'}: keyset went backwards: ID {current} after "
                              f"{last}")
        last = current
    return last


def read_keyset_page(result: Any, after_id: int) -> KeysetStep:
    """One keyset page answered by a single call (not a batch)."""
    rows = _page_rows(result, "page")
    last_id = _check_ascending(rows, after_id)
    return KeysetStep(rows, last_id, len(rows) < PAGE_SIZE)


# -- records by ID ----------------------------------------------------------------------


def id_params(select: Sequence[str], ids: Sequence[int]) -> dict[str, Any]:
    """Parameters of one page holding the records with these IDs (≤ 50, no COUNT)."""
    if not 1 <= len(ids) <= PAGE_SIZE:
        raise ValueError(f"one page holds 1..{PAGE_SIZE} IDs, not {len(ids)}")
    return {
        "order": {"ID": "ASC"},
        "filter": {"@ID": [int(i) for i in ids]},
        "select": list(select),
        "start": -1,
    }


def plan_id_batch(
    method: str, *, select: Sequence[str], id_chunks: Sequence[Sequence[int]],
    key_prefix: str = "i",
) -> dict[str, str]:
    """Command key → ``"method?query"``, one ``@ID`` page per chunk (no chaining)."""
    if not 1 <= len(id_chunks) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1..{MAX_BATCH} commands, not {len(id_chunks)}")
    if not key_prefix or key_prefix[0].isdigit() or not key_prefix.isidentifier():
        raise ValueError(f"key_prefix must be a non-numeric identifier, not {key_prefix!r}")
    return {f"{key_prefix}{index}": f"{method}?{encode_php_query(id_params(select, chunk))}"
            for index, chunk in enumerate(id_chunks)}


def read_id_batch(
    batch_result: Mapping[str, Any], keys: Sequence[str]
) -> tuple[list[dict[str, Any]], Mapping[str, Any] | None]:
    """Rows of every command of an ``@ID`` batch, or the first command's error.

    On an error no rows are returned: the caller retries (or fails) the whole batch,
    which re-reads the same IDs, rather than keep half of it.
    """
    results = as_php_map(batch_result.get("result"))
    errors = as_php_map(batch_result.get("result_error"))
    rows: list[dict[str, Any]] = []
    for key in keys:
        if key in errors or key not in results:
            return [], _error_payload(errors.get(key), key)
        rows.extend(_page_rows(results[key], key))
    return rows, None
