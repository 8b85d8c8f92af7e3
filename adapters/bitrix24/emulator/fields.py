"""The emulated portal's field catalogue (facts sheet §6): names, types and flags.

One table drives everything field-related — what ``*`` selects, which keys a filter
or ``order`` may name, how values compare (numbers, dates, codes, multifields), what
``crm.*.update`` may write and what ``crm.*.fields`` describes — so the handlers cannot
disagree with each other about a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_USER_FIELDS",
    "ENTITY_FIELDS",
    "MULTIFIELDS",
    "Field",
    "describe",
    "field_kind",
    "no_like",
    "selectable",
    "user_fields",
    "writable",
]

MULTIFIELDS = frozenset({"PHONE", "EMAIL", "WEB", "IM", "LINK"})
# Types whose values are numbers on the server (the wire carries them as strings).
_NUMERIC_TYPES = frozenset({"integer", "double", "user", "crm_contact", "crm_company",
                            "crm_lead", "crm_category"})
# LIKE does not work on crm_status/crm_contact/crm_company fields (facts sheet §3.1); the
# other reference types are refused too, because nothing says LIKE works on them.
_CODE_TYPES = frozenset({"crm_status", "crm_contact", "crm_company", "crm_lead",
                         "crm_currency", "crm_category"})


@dataclass(frozen=True)
class Field:
    """One field as ``crm.<entity>.fields`` describes it."""

    type: str
    read_only: bool = False
    multiple: bool = False
    immutable: bool = False
    status_type: str | None = None
    # CONTACT_IDS is described by crm.deal.fields but crm.deal.list refuses it (§3.1).
    listable: bool = True


_RO_DATETIME = Field("datetime", read_only=True)
_USER = Field("user")
_FLAG = Field("char")
_MULTI = Field("crm_multifield", multiple=True)

ENTITY_FIELDS: Mapping[str, Mapping[str, Field]] = {
    "contact": {
        "ID": Field("integer", read_only=True), "NAME": Field("string"),
        "SECOND_NAME": Field("string"), "LAST_NAME": Field("string"), "BIRTHDATE": Field("date"),
        "TYPE_ID": Field("crm_status", status_type="CONTACT_TYPE"),
        "SOURCE_ID": Field("crm_status", status_type="SOURCE"), "COMPANY_ID": Field("crm_company"),
        "ASSIGNED_BY_ID": _USER, "CREATED_BY_ID": Field("user", read_only=True),
        "MODIFY_BY_ID": Field("user", read_only=True), "DATE_CREATE": _RO_DATETIME,
        "DATE_MODIFY": _RO_DATETIME, "HAS_PHONE": Field("char", read_only=True),
        "HAS_EMAIL": Field("char", read_only=True), "OPENED": _FLAG,
        "PHONE": _MULTI, "EMAIL": _MULTI, "WEB": _MULTI, "IM": _MULTI,
    },
    "company": {
        "ID": Field("integer", read_only=True), "TITLE": Field("string"),
        "COMPANY_TYPE": Field("crm_status", status_type="COMPANY_TYPE"),
        "ASSIGNED_BY_ID": _USER, "DATE_CREATE": _RO_DATETIME, "DATE_MODIFY": _RO_DATETIME,
        "OPENED": _FLAG, "PHONE": _MULTI, "EMAIL": _MULTI,
    },
    "deal": {
        "ID": Field("integer", read_only=True), "TITLE": Field("string"),
        "TYPE_ID": Field("crm_status", status_type="DEAL_TYPE"),
        "CATEGORY_ID": Field("crm_category", immutable=True),
        "STAGE_ID": Field("crm_status", status_type="DEAL_STAGE"),
        "STAGE_SEMANTIC_ID": Field("string", read_only=True), "CLOSED": _FLAG,
        "OPPORTUNITY": Field("double"), "CURRENCY_ID": Field("crm_currency"),
        "PROBABILITY": Field("integer"), "CONTACT_ID": Field("crm_contact"),
        "CONTACT_IDS": Field("crm_contact", multiple=True, listable=False),
        "COMPANY_ID": Field("crm_company"), "ASSIGNED_BY_ID": _USER,
        "BEGINDATE": Field("date"), "CLOSEDATE": Field("date"), "DATE_CREATE": _RO_DATETIME,
        "MOVED_TIME": _RO_DATETIME, "DATE_MODIFY": _RO_DATETIME, "OPENED": _FLAG,
        "IS_RETURN_CUSTOMER": _FLAG,
    },
}

# User fields the generator fills; tests may register more on a Portal.
DEFAULT_USER_FIELDS: Mapping[str, Mapping[str, Field]] = {
    "contact": {"UF_CRM_NPS": Field("integer"), "UF_CRM_REVIEW": Field("string")},
    "company": {},
    "deal": {},
}


def user_fields(entity: str) -> dict[str, Field]:
    """A fresh copy of the default user fields of ``entity``."""
    return dict(DEFAULT_USER_FIELDS[entity])


def selectable(entity: str) -> tuple[str, ...]:
    """The standard fields ``*`` stands for: no user fields, no multifields (§3.1)."""
    return tuple(name for name, f in ENTITY_FIELDS[entity].items()
                 if f.listable and f.type != "crm_multifield")


def writable(entity: str, name: str, extra: Mapping[str, Field]) -> bool:
    """Whether ``crm.<entity>.update`` stores ``name`` (others are ignored, §8.1)."""
    f = ENTITY_FIELDS[entity].get(name) or extra.get(name)
    return f is not None and not f.read_only and not f.immutable \
        and f.type != "crm_multifield"


def field_kind(f: Field) -> str:
    """How a filter compares values: ``multi``, ``number``, ``date``, ``code`` or ``text``."""
    if f.type == "crm_multifield":
        return "multi"
    if f.type in ("date", "datetime"):
        return "date"
    if f.type in _NUMERIC_TYPES:
        return "number"
    if f.type in _CODE_TYPES:
        return "code"
    return "text"


def no_like(f: Field) -> bool:
    """LIKE operators are refused on reference-typed fields (§3.1)."""
    return f.type in _CODE_TYPES


def describe(name: str, f: Field, dynamic: bool) -> dict[str, object]:
    """One entry of ``crm.<entity>.fields`` (user fields carry ``isDynamic`` and labels)."""
    entry: dict[str, object] = {
        "type": f.type, "isRequired": False, "isReadOnly": f.read_only,
        "isImmutable": f.immutable, "isMultiple": f.multiple, "isDynamic": dynamic,
        "title": name,
    }
    if f.status_type:
        entry["statusType"] = f.status_type
    if dynamic:
        entry.update(listLabel=name, formLabel=name, filterLabel=name)
    return entry
