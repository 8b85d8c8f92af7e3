"""REST method handlers of the emulated portal, registered by name.

A handler takes ``(ctx, params)`` and returns a :class:`Outcome` (result, optional
``total``/``next``, server cost). Top-level parameter names reach it in lower case only
when its family accepts either case (see :func:`top_level`). Business errors raise
:class:`BadRequest` (HTTP 400, empty code) or :class:`ApiError` (a coded error). Add a
push method by writing a handler and registering it in :data:`HANDLERS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.bitrix24.emulator.fields import (
    ENTITY_FIELDS,
    MULTIFIELDS,
    describe,
    field_kind,
    selectable,
    writable,
)
from adapters.bitrix24.emulator.generator import FUNNELS
from adapters.bitrix24.emulator.limits import EmulatorLimits
from adapters.bitrix24.emulator.query import (
    BadRequest,
    Condition,
    parse_filter,
    parse_order,
    project,
    sort_key,
)
from adapters.bitrix24.emulator.store import Portal
from adapters.bitrix24.emulator.strictness import Strictness

__all__ = ["APP_ONLY", "HANDLERS", "ApiError", "Context", "Outcome", "ServerTimeout",
           "method_name", "required_scope", "top_level"]

PAGE = 50
_INTEGER = re.compile(r"^\s*[-+]?\d+\s*$")


class ApiError(Exception):
    """A coded REST error: ``{"error": code, "error_description": ...}`` with ``status``."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status, self.code, self.description = status, code, description


class ServerTimeout(Exception):
    """The request ran past the cloud's hard timeout (its server time is still charged)."""


@dataclass
class Context:
    """What a handler may use: the portal, the limits (real seconds) and the caller."""

    portal: Portal
    limits: EmulatorLimits
    strict: Strictness
    user_id: int
    scopes: tuple[str, ...]


@dataclass
class Outcome:
    """A handler's answer."""

    result: Any
    cost: float
    total: int | None = None
    next: int | None = None


Handler = Callable[[Context, Mapping[str, Any]], Outcome]


def top_level(method: str, params: Mapping[str, Any], strict: Strictness) -> dict[str, Any]:
    """Parameters as the method reads them: ``SELECT`` = ``select`` where §2.1 allows it.

    Only all-lower and all-upper names are folded ("either case"); a mixed-case name
    stays as sent, which no handler reads — PHP ignores parameters it does not know.
    """
    if not method.startswith(strict.either_case_families):
        return dict(params)
    mixed, lower, upper = {}, {}, {}
    for key, value in params.items():
        name = str(key)
        if name == name.lower():
            lower[name] = value
        elif name == name.upper():
            upper[name.lower()] = value
        else:
            mixed[name] = value
    return {**mixed, **lower, **upper}


def method_name(raw: str) -> str:
    """A method as the portal resolves it: any case, with or without ``.json``."""
    name = raw.strip().lower()
    if name.endswith(".xml"):
        raise ApiError(400, "INVALID_REQUEST", "XML output is not supported here")
    return name.removesuffix(".json")


def _as_map(value: Any, name: str) -> dict[str, Any]:
    if value in (None, "", []):
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"Parameter '{name}' must be array.")
    return dict(value)


def _select(value: Any) -> list[str]:
    if value in (None, "", []):
        return ["*", "UF_*"]
    if isinstance(value, Mapping):
        return [str(v) for v in value.values()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise BadRequest("Parameter 'select' must be array.")


def _start(value: Any) -> int:
    # An integer or an integer string; anything else would be read as 0 by PHP's
    # intval — a silent restart from the first page, which the emulator refuses.
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    raise BadRequest("Parameter 'start' must be integer.")


def _record_id(value: Any) -> int:
    """A positive record ID, or 0 when missing or malformed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    text = str(value or "").strip()
    return int(text) if text.isdigit() else 0


def list_entity(entity: str) -> Handler:
    """``crm.<entity>.list`` with select / filter / order / start."""

    def handler(ctx: Context, params: Mapping[str, Any]) -> Outcome:
        select = _select(params.get("select"))
        filter_ = _as_map(params.get("filter"), "filter")
        if entity == "deal" and ("CONTACT_IDS" in {s.upper() for s in select}
                                 or any("CONTACT_IDS" in str(k).upper() for k in filter_)):
            raise BadRequest("CONTACT_IDS is not supported in select or filter of crm.deal.list")
        fields = ctx.portal.fields(entity)
        conditions = parse_filter(filter_, fields, ctx.portal.tz, ctx.strict.unknown_filter)
        order = parse_order(_as_map(params.get("order"), "order"), fields)
        start = _start(params.get("start"))
        if start >= 0 and ctx.strict.offset_paging == "page":
            start -= start % PAGE  # start = (page − 1)·50: the page this offset falls in
        standard = {k: fields[k] for k in selectable(entity)}
        with ctx.portal.lock:
            rows, total = _page(ctx.portal, entity, conditions, order, start)
            page = [project(r, select, standard, ctx.portal.user_fields[entity],
                            ctx.strict.empty_user_fields) for r in rows]
            table_rows = len(ctx.portal.tables[entity].ids)
        cost = ctx.limits.page_cost(len(page), None if start < 0 else table_rows)
        if start < 0:
            return Outcome(page, cost, total=0)
        more = start + PAGE < total
        return Outcome(page, cost, total=total, next=start + PAGE if more else None)

    return handler


def _id_floor(conditions: list[Condition]) -> int | None:
    floors = [_as_int(c.value) for c in conditions
              if c.field == "ID" and c.op == ">" and not isinstance(c.value, list | dict)]
    return max(floors) if floors else None


def _as_int(value: Any) -> int:
    # PHP compares `ID > 'abc'` as ID > 0: anything unparsable is a zero floor.
    try:
        return int(float(str(value).strip() or 0))
    except ValueError:
        return 0


def _page(portal: Portal, entity: str, conditions: list[Condition],
          order: list[tuple[str, str]], start: int) -> tuple[list[dict[str, Any]], int]:
    table = portal.tables[entity]
    by_id = not order or order == [("ID", "ASC")]
    if by_id and not conditions and start >= 0:
        ids = table.ids[start:start + PAGE]
        return [table.rows[i] for i in ids], len(table.ids)
    if by_id and start < 0:
        # The keyset path: walk IDs above the floor until a page is full (no COUNT).
        page = []
        for record_id in table.ids_after(_id_floor(conditions)):
            row = table.rows[record_id]
            if all(c.matches(row) for c in conditions):
                page.append(row)
                if len(page) == PAGE:
                    break
        return page, 0
    matched = [table.rows[i] for i in table.ids
               if all(c.matches(table.rows[i]) for c in conditions)]
    fields = portal.fields(entity)
    for key, direction in reversed(order):
        matched.sort(key=sort_key(key, field_kind(fields[key])), reverse=direction == "DESC")
    offset = max(start, 0)
    return matched[offset:offset + PAGE], len(matched)


def get_entity(entity: str) -> Handler:
    """``crm.<entity>.get``: every field, multifields included."""

    def handler(ctx: Context, params: Mapping[str, Any]) -> Outcome:
        record_id = _record_id(params.get("id"))
        if record_id <= 0:
            raise BadRequest("ID is not defined or invalid.")
        row = ctx.portal.tables[entity].rows.get(record_id)
        if row is None:
            raise BadRequest("Not found")
        # get answers what a list answers for "*", "UF_*" and every multifield.
        fields = ctx.portal.fields(entity)
        result = project(row, ["*", "UF_*", *sorted(MULTIFIELDS)],
                         {k: fields[k] for k in selectable(entity)},
                         ctx.portal.user_fields[entity], ctx.strict.empty_user_fields)
        return Outcome(result, ctx.limits.call_cost_s)

    return handler


def update_entity(entity: str) -> Handler:
    """``crm.<entity>.update``: writable fields only (others ignored), bumps DATE_MODIFY."""

    def handler(ctx: Context, params: Mapping[str, Any]) -> Outcome:
        record_id = _record_id(params.get("id"))
        if record_id <= 0:
            raise BadRequest("ID is not defined or invalid.")
        fields = _as_map(params.get("fields"), "fields")
        row = ctx.portal.tables[entity].rows.get(record_id)
        if row is None:
            raise BadRequest("Not found")
        extra = ctx.portal.user_fields[entity]
        # Unknown and read-only keys are ignored silently, as the docs say (§8.1).
        changes = {str(k): v for k, v in fields.items() if writable(entity, str(k), extra)}
        if entity == "deal" and "STAGE_ID" in changes:
            changes.update(_stage_effects(str(changes["STAGE_ID"]), row, ctx.portal))
        ctx.portal.update(entity, record_id, changes)
        return Outcome(True, ctx.limits.call_cost_s)

    return handler


def _stage_effects(stage: str, row: Mapping[str, Any], portal: Portal) -> dict[str, Any]:
    # STAGE_SEMANTIC_ID and CLOSED follow the group of the current stage (§6.2).
    category = str(row.get("CATEGORY_ID") or "0")
    open_stages, won, lost = FUNNELS.get(category, ([], "", ""))
    if stage not in (*open_stages, won, lost):
        raise BadRequest(f"Stage '{stage}' does not belong to the deal's funnel.")
    semantic = "S" if stage == won else "F" if stage == lost else "P"
    effects = {"STAGE_SEMANTIC_ID": semantic, "CLOSED": "N" if semantic == "P" else "Y"}
    if stage != row.get("STAGE_ID"):
        effects["MOVED_TIME"] = portal.stamp()
    return effects


def deal_contacts(ctx: Context, params: Mapping[str, Any]) -> Outcome:
    """``crm.deal.contact.items.get``: integer bindings (facts sheet §6.2)."""
    deal_id = _record_id(params.get("id"))
    if deal_id <= 0:
        raise BadRequest("ID is not defined or invalid.")
    if deal_id not in ctx.portal.tables["deal"].rows:
        raise BadRequest("Not found.")
    items = [{"CONTACT_ID": c, "SORT": 10 * (i + 1), "ROLE_ID": 0,
              "IS_PRIMARY": "Y" if i == 0 else "N"}
             for i, c in enumerate(ctx.portal.deal_contacts.get(deal_id, []))]
    return Outcome(items, ctx.limits.call_cost_s)


def entity_fields(entity: str) -> Handler:
    """``crm.<entity>.fields``: field descriptions, user fields flagged ``isDynamic``."""

    def handler(ctx: Context, params: Mapping[str, Any]) -> Outcome:
        result = {name: describe(name, f, False) for name, f in ENTITY_FIELDS[entity].items()}
        for name, f in ctx.portal.user_fields[entity].items():
            result[name] = describe(name, f, True)
        return Outcome(result, ctx.limits.call_cost_s)

    return handler


def status_list(ctx: Context, params: Mapping[str, Any]) -> Outcome:
    """``crm.status.list``: deal stages of both funnels with their semantics."""
    rows: list[dict[str, Any]] = []
    for category, (open_stages, won, lost) in FUNNELS.items():
        entity_id = "DEAL_STAGE" if category == "0" else f"DEAL_STAGE_{category}"
        for sort, stage in enumerate([*open_stages, won, lost], start=1):
            semantics = "S" if stage == won else "F" if stage == lost else None
            rows.append({"ID": str(len(rows) + 1), "ENTITY_ID": entity_id, "STATUS_ID": stage,
                         "NAME": stage, "SORT": str(sort * 10), "SEMANTICS": semantics,
                         "CATEGORY_ID": category})
    filter_ = _as_map(params.get("filter"), "filter")
    wanted = filter_.get("ENTITY_ID")
    return Outcome([r for r in rows if wanted in (None, r["ENTITY_ID"])], ctx.limits.call_cost_s)


def profile(ctx: Context, params: Mapping[str, Any]) -> Outcome:
    """``profile`` / ``user.current``: the webhook's user."""
    return Outcome({"ID": str(ctx.user_id), "ADMIN": True, "NAME": "Emulated",
                    "LAST_NAME": "Admin", "TIME_ZONE_OFFSET": 10800}, ctx.limits.call_cost_s)


def scope(ctx: Context, params: Mapping[str, Any]) -> Outcome:
    """``scope``: the scopes granted to the webhook."""
    return Outcome(list(ctx.scopes), ctx.limits.call_cost_s)


def server_time(ctx: Context, params: Mapping[str, Any]) -> Outcome:
    """``server.time``: the portal clock."""
    return Outcome(ctx.portal.stamp(), ctx.limits.call_cost_s)


HANDLERS: dict[str, Handler] = {
    **{f"crm.{e}.list": list_entity(e) for e in ("contact", "company", "deal")},
    **{f"crm.{e}.get": get_entity(e) for e in ("contact", "company", "deal")},
    **{f"crm.{e}.update": update_entity(e) for e in ("contact", "company", "deal")},
    **{f"crm.{e}.fields": entity_fields(e) for e in ("contact", "company", "deal")},
    "crm.deal.contact.items.get": deal_contacts,
    "crm.status.list": status_list,
    "profile": profile,
    "user.current": profile,
    "scope": scope,
    "server.time": server_time,
}

APP_ONLY = frozenset({"event.bind", "event.unbind", "crm.automation.trigger.add",
                      "crm.automation.trigger.execute", "crm.automation.trigger.list",
                      "crm.automation.trigger.delete", "placement.bind"})


def required_scope(method: str) -> str | None:
    """The scope a method family needs (None: basic methods anyone may call)."""
    for prefix, name in (("crm.", "crm"), ("tasks.", "task"), ("task.", "task"),
                         ("bizproc.", "bizproc"), ("user.", "user")):
        if method.startswith(prefix):
            return name
    return None
