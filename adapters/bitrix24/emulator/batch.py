"""The ``batch`` method (facts sheet §4): up to 50 commands run in key order in one request.

Later commands may read earlier results through ``$result[cmd][path…]``; failures go to
``result_error`` and the HTTP call still answers 200; ``halt`` stops at the first
failure; every part of the answer is a PHP map (``[]`` when empty, a list when keyed
0..n-1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from adapters.bitrix24.emulator.methods import ApiError, Outcome, ServerTimeout, method_name
from adapters.bitrix24.emulator.php import parse_php_pairs, php_value
from adapters.bitrix24.emulator.query import BadRequest

if TYPE_CHECKING:
    from adapters.bitrix24.emulator.app import BitrixEmulator

__all__ = ["MAX_BATCH", "command_params", "run_batch"]

MAX_BATCH = 50
_RESULT_REF = re.compile(r"\$result\[([^\]]*)\]((?:\[[^\]]*\])*)")
_PARTS = ("result", "result_error", "result_total", "result_next", "result_time")
_OVERFLOW = {"error": "ERROR_BATCH_LENGTH_EXCEEDED",
             "error_description": "Max batch length exceeded"}


def run_batch(emulator: BitrixEmulator, credential: str, params: Mapping[str, Any]) -> bytes:
    """Run a batch call; the JSON body of its HTTP 200 answer."""
    started = emulator.clock()
    commands = _commands(params.get("cmd"))
    if len(commands) > MAX_BATCH and emulator.strict.batch_overflow == "reject":
        raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    per_batch = emulator.limits.batch_accounting == "batch"
    if per_batch:  # the batch is charged as one method, so it is blocked as one (§5.2)
        emulator.check_allowed(credential, "batch")
    halt = str(params.get("halt", "0")).strip().lower() in ("1", "true", "y")
    parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
    total_cost = 0.0
    for index, (key, command) in enumerate(commands.items()):
        answer: Outcome | dict[str, str] = dict(_OVERFLOW)  # beyond 50: "per_command"
        if index < MAX_BATCH:
            answer = _run_command(emulator, credential, command, parts["result"],
                                  budget=not per_batch)
        if isinstance(answer, Outcome):
            total_cost += answer.cost
            _record(emulator, key, answer, parts, credential, command, started, per_batch)
            continue
        parts["result_error"][key] = answer
        if halt:
            break
    timed_out = emulator.spend(total_cost, started)
    timing = emulator.charge(credential, "batch", total_cost if per_batch else 0.0, started)
    if per_batch:
        # Sub-results carry the accumulated figure of what was charged: the batch (§4).
        for command_time in parts["result_time"].values():
            command_time["operating"] = timing["operating"]
            command_time["operating_reset_at"] = timing["operating_reset_at"]
    if timed_out:
        raise ServerTimeout()
    envelope = {"result": {k: php_value(v) for k, v in parts.items()}, "time": timing}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def _run_command(emulator: BitrixEmulator, credential: str, command: str,
                 done: Mapping[str, Any], *, budget: bool) -> Outcome | dict[str, str]:
    """The command's outcome, or its ``result_error`` entry."""
    name, _, query = command.partition("?")
    try:
        method = method_name(name)
        if method == "batch":
            raise ApiError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED",
                           "Method is not allowed for batch usage")
        emulator.check_allowed(credential, method, budget=budget)
        return emulator.run(method, command_params(query, done))
    except ApiError as exc:
        if exc.code == "OPERATION_TIME_LIMIT":
            emulator.note_batch_429()
        return {"error": exc.code, "error_description": exc.description}
    except BadRequest as exc:
        return {"error": "", "error_description": str(exc)}
    except Exception:  # a handler bug answers like PHP would: a 500 for that command
        return {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal error"}


def _record(emulator: BitrixEmulator, key: str, outcome: Outcome,
            parts: dict[str, dict[str, Any]], credential: str, command: str, started: float,
            per_batch: bool) -> None:
    parts["result"][key] = outcome.result
    if outcome.total is not None:
        parts["result_total"][key] = outcome.total
    if outcome.next is not None:
        parts["result_next"][key] = outcome.next
    if per_batch:
        parts["result_time"][key] = emulator.time_block(started, emulator.clock(), outcome.cost,
                                                        0.0, 0)
    else:
        # Charged as it finishes, so the next command's budget check already sees it.
        method = method_name(command.partition("?")[0])
        parts["result_time"][key] = emulator.charge(credential, method, outcome.cost, started)


def _commands(value: Any) -> dict[str, str]:
    if isinstance(value, list):
        return {str(i): str(v) for i, v in enumerate(value)}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    raise BadRequest("Parameter 'cmd' must be array.")


def command_params(query: str, done: Mapping[str, Any]) -> dict[str, Any]:
    """A batch command's parameters with ``$result[cmd][path…]`` references resolved.

    References are resolved in decoded values, so clients that percent-encode them
    (b24pysdk) and clients that do not (ours) are read alike. A missing path becomes an
    empty string: the real behaviour is undocumented (facts sheet §4), and an empty
    ``>ID`` then reads from the start — the duplicate trap a careless client falls into.
    """

    def value(match: re.Match[str]) -> str:
        node: Any = done.get(match.group(1))
        for part in re.findall(r"\[([^\]]*)\]", match.group(2)):
            node = _step(node, part)
        if node is None or node is False or isinstance(node, dict | list):
            return ""
        return "1" if node is True else str(node)  # PHP's string cast of true is "1"

    pairs = [(k, _RESULT_REF.sub(value, v)) for k, v in parse_qsl(query, keep_blank_values=True)]
    return parse_php_pairs(pairs)


def _step(node: Any, part: str) -> Any:
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    if isinstance(node, dict):
        return node.get(part)
    return None
