"""What the PHP server does to parameters and JSON (facts sheet §2.1, §2.4).

* ``a[b][]=1&a[b][]=2`` style bracket keys become nested maps and lists;
* maps serialize the PHP way: an empty map is ``[]`` and a map keyed exactly
  ``0..n-1`` becomes a JSON list (losing its keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["parse_php_pairs", "parse_php_query", "php_value"]

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def parse_php_query(query: str) -> dict[str, Any]:
    """Parse a URL-encoded query string with PHP bracket keys into nested data."""
    return parse_php_pairs(parse_qsl(query, keep_blank_values=True))


def parse_php_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Build nested maps from (bracket key, value) pairs; ``[]`` appends."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, rest = _split_key(key)
        _assign(root, [head, *rest], value)
    converted = _lists_from_maps(root)
    return converted if isinstance(converted, dict) else {}


def _split_key(key: str) -> tuple[str, list[str]]:
    first = key.find("[")
    if first <= 0:
        return key, []
    return key[:first], _BRACKETS.findall(key[first:])


def _assign(node: dict[str, Any], path: list[str], value: str) -> None:
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if part == "":
            part = str(_next_index(node))
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def _next_index(node: Mapping[str, Any]) -> int:
    numeric = [int(k) for k in node if k.isdigit()]
    return max(numeric) + 1 if numeric else 0


def _lists_from_maps(node: Any) -> Any:
    # PHP arrays are maps; a map keyed 0..n-1 in order is what PHP code treats as a list.
    if isinstance(node, dict):
        converted = {k: _lists_from_maps(v) for k, v in node.items()}
        keys = list(converted)
        if keys and keys == [str(i) for i in range(len(keys))]:
            return list(converted.values())
        return converted
    return node


def php_value(value: Any) -> Any:
    """Data as PHP's json_encode would write it: ``{}`` → ``[]``, ``{"0":a,"1":b}`` → list."""
    if isinstance(value, Mapping):
        items = {str(k): php_value(v) for k, v in value.items()}
        if not items:
            return []
        if list(items) == [str(i) for i in range(len(items))]:
            return list(items.values())
        return items
    if isinstance(value, list | tuple):
        return [php_value(v) for v in value]
    return value
