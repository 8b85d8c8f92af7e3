"""REST method handlers of the emulated portal, registered by name.

A handler takes ``(ctx, params)`` and returns a :class:`Outcome` (result, optional
``total``/``next``, server cost). Business errors raise :class:`BadRequest` (HTTP 400,
empty code) or :class:`ApiError` (a coded error). Add a push method by writing a
handler and registering it in :data:`HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.bitrix24.emulator.limits import EmulatorLimits
from adapters.bitrix24.emulator.query import BadRequest, parse_filter, project, sort_key
from adapters.bitrix24.emulator.store import Portal

__all__ = ["HANDLERS", "STANDARD_FIELDS", "ApiError", "Context", "Outcome"]

PAGE = 50

STANDARD_FIELDS: Mapping[str, tuple[str, ...]] = {
    "contact": ("ID", "NAME", "SECOND_NAME", "LAST_NAME", "BIRTHDATE", "TYPE_ID", "SOURCE_ID",
                "COMPANY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE",
                "DATE_MODIFY", "HAS_PHONE", "HAS_EMAIL", "OPENED"),
    "company": ("ID", "TITLE", "COMPANY_TYPE", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY",
                "OPENED"),
    "deal": ("ID", "TITLE", "TYPE_ID", "CATEGORY_ID", "STAGE_ID", "STAGE_SEMANTIC_ID", "CLOSED",
             "OPPORTUNITY", "CURRENCY_ID", "PROBABILITY", "CONTACT_ID", "COMPANY_ID",
             "ASSIGNED_BY_ID", "BEGINDATE", "CLOSEDATE", "DATE_CREATE", "MOVED_TIME",
             "DATE_MODIFY", "OPENED", "IS_RETURN_CUSTOMER"),
}
USER_FIELDS = {"contact": ("UF_CRM_NPS", "UF_CRM_REVIEW"), "deal": (), "company": ()}
FILTERABLE_EXTRA = {"contact": ("PHONE", "EMAIL", "WEB", "IM"), "company": ("PHONE", "EMAIL"),
                    "deal": ()}


class ApiError(Exception):
    """A coded REST error: ``{"error": code, "error_description": ...}`` with ``status``."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status, self.code, self.description = status, code, description


@dataclass
class Context:
    """What a handler may use: the portal, the limits (real seconds) and the caller."""

    portal: Portal
    limits: EmulatorLimits
    user_id: int
    scopes: tuple[str, ...]


@dataclass
class Outcome:
    """A handler's answer."""

    result: Any
    cost: float
    total: int | None = None
    next: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Context, Mapping[str, Any]], Outcome]


def _lower_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    # crm.deal.*/crm.contact.* accept top-level names in either case (facts sheet §2.1).
    return {str(k).lower(): v for k, v in params.items()}


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
    return [str(value)]


def _start(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def list_entity(entity: str) -> Handler:
    """``crm.<entity>.list`` with select / filter / order / start."""

    def handler(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
        params = _lower_keys(raw)
        select = _select(params.get("select"))
        filter_ = _as_map(params.get("filter"), "filter")
        order = {str(k).upper(): str(v).upper() for k, v in
                 _as_map(params.get("order"), "order").items()}
        if entity == "deal" and ("CONTACT_IDS" in {s.upper() for s in select}
                                 or any("CONTACT_IDS" in str(k).upper() for k in filter_)):
            raise BadRequest("CONTACT_IDS is not supported in select or filter of crm.deal.list")
        known = (*STANDARD_FIELDS[entity], *USER_FIELDS[entity], *FILTERABLE_EXTRA[entity])
        conditions = parse_filter(filter_, known, ctx.portal.tz)
        start = _start(params.get("start", 0))
        with ctx.portal.lock:
            rows, total = _page(ctx.portal, entity, conditions, order, start)
            page = [project(r, select, STANDARD_FIELDS[entity]) for r in rows]
            table_rows = len(ctx.portal.tables[entity].ids)
        counted = None if start < 0 else table_rows
        cost = ctx.limits.page_cost(len(page), counted)
        if start < 0:
            return Outcome(page, cost, total=0)
        more = start + PAGE < total
        return Outcome(page, cost, total=total, next=start + PAGE if more else None)

    return handler


def _id_floor(conditions: list[Any]) -> int | None:
    floors = [_as_int(c.value) for c in conditions
              if c.field == "ID" and c.op == ">" and not isinstance(c.value, list | dict)]
    return max(floors) if floors else None


def _as_int(value: Any) -> int:
    # PHP compares `ID > 'abc'` as ID > 0: anything unparsable is a zero floor.
    try:
        return int(float(str(value).strip() or 0))
    except ValueError:
        return 0


def _page(portal: Portal, entity: str, conditions: list[Any], order: Mapping[str, str],
          start: int) -> tuple[list[dict[str, Any]], int]:
    table = portal.tables[entity]
    by_id = not order or list(order.items()) == [("ID", "ASC")]
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
    for key, direction in reversed(list(order.items())):
        matched.sort(key=sort_key(key), reverse=direction == "DESC")
    offset = max(start, 0)
    return matched[offset:offset + PAGE], len(matched)


def get_entity(entity: str) -> Handler:
    """``crm.<entity>.get``: every field, multifields included."""

    def handler(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
        record_id = _start(_lower_keys(raw).get("id", 0))
        row = ctx.portal.tables[entity].rows.get(record_id)
        if record_id <= 0:
            raise BadRequest("ID is not defined or invalid.")
        if row is None:
            raise BadRequest("Not found")
        return Outcome(dict(row), ctx.limits.call_cost_s)

    return handler


def update_entity(entity: str) -> Handler:
    """``crm.<entity>.update``: changes the given fields, bumps DATE_MODIFY."""

    def handler(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
        params = _lower_keys(raw)
        record_id = _start(params.get("id", 0))
        fields = _as_map(params.get("fields"), "fields")
        if record_id not in ctx.portal.tables[entity].rows:
            raise BadRequest("Not found")
        allowed = {k: v for k, v in fields.items()
                   if k in STANDARD_FIELDS[entity] or str(k).startswith("UF_CRM_")}
        allowed.pop("ID", None)
        ctx.portal.update(entity, record_id, allowed)
        return Outcome(True, ctx.limits.call_cost_s)

    return handler


def deal_contacts(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
    """``crm.deal.contact.items.get``: integer bindings (facts sheet §6.2)."""
    deal_id = _start(_lower_keys(raw).get("id", 0))
    if deal_id not in ctx.portal.tables["deal"].rows:
        raise BadRequest("Not found.")
    items = [{"CONTACT_ID": c, "SORT": 10 * (i + 1), "ROLE_ID": 0,
              "IS_PRIMARY": "Y" if i == 0 else "N"}
             for i, c in enumerate(ctx.portal.deal_contacts.get(deal_id, []))]
    return Outcome(items, ctx.limits.call_cost_s)


def entity_fields(entity: str) -> Handler:
    """``crm.<entity>.fields``: field descriptions, user fields flagged ``isDynamic``."""

    def handler(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
        result: dict[str, Any] = {}
        for name in STANDARD_FIELDS[entity]:
            kind = "date" if name.startswith("DATE") else "integer" if name.endswith("ID") \
                else "string"
            result[name] = {"type": kind, "isRequired": False, "isReadOnly": name == "ID",
                            "isMultiple": False, "isDynamic": False, "title": name}
        for name in USER_FIELDS[entity]:
            result[name] = {"type": "string", "isDynamic": True, "isMultiple": False,
                            "title": name, "listLabel": name}
        return Outcome(result, ctx.limits.call_cost_s)

    return handler


def status_list(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
    """``crm.status.list``: deal stages of both funnels with their semantics."""
    from adapters.bitrix24.emulator.generator import FUNNELS

    rows: list[dict[str, Any]] = []
    for category, (open_stages, won, lost) in FUNNELS.items():
        entity_id = "DEAL_STAGE" if category == "0" else f"DEAL_STAGE_{category}"
        for sort, stage in enumerate([*open_stages, won, lost], start=1):
            semantics = "S" if stage == won else "F" if stage == lost else None
            rows.append({"ID": str(len(rows) + 1), "ENTITY_ID": entity_id, "STATUS_ID": stage,
                         "NAME": stage, "SORT": str(sort * 10), "SEMANTICS": semantics,
                         "CATEGORY_ID": category})
    filter_ = _as_map(_lower_keys(raw).get("filter"), "filter")
    wanted = filter_.get("ENTITY_ID")
    return Outcome([r for r in rows if wanted in (None, r["ENTITY_ID"])], ctx.limits.call_cost_s)


def profile(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
    """``profile`` / ``user.current``: the webhook's user."""
    return Outcome({"ID": str(ctx.user_id), "ADMIN": True, "NAME": "Emulated",
                    "LAST_NAME": "Admin", "TIME_ZONE_OFFSET": 10800}, ctx.limits.call_cost_s)


def scope(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
    """``scope``: the scopes granted to the webhook."""
    return Outcome(list(ctx.scopes), ctx.limits.call_cost_s)


def server_time(ctx: Context, raw: Mapping[str, Any]) -> Outcome:
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

