"""``retention check``: is the config valid, the CRM reachable, and the webhook allowed?

Each check returns a :class:`CheckResult` with a sentence an admin can act on; the
common failures (wrong or regenerated webhook, missing scope, no CRM read right) are
explained rather than shown as raw codes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapters.bitrix24.client import Bitrix24Client
from connector.config import Config
from connector.errors import AuthError, ConnectorError, FatalCrmError, RetryableCrmError

__all__ = ["PULL_SCOPES", "PUSH_SCOPES", "CheckResult", "run_checks"]

PULL_SCOPES = frozenset({"crm"})
PUSH_SCOPES = frozenset({"crm", "task", "bizproc"})


@dataclass(frozen=True)
class CheckResult:
    """One line of ``retention check`` output."""

    name: str
    ok: bool
    detail: str


def run_checks(config: Config, client: Bitrix24Client) -> Iterator[CheckResult]:
    """Run the checks in order; stops after the first one the rest depend on fails."""
    yield CheckResult("config", True, "valid")
    yield _check_mirror_path(Path(config.mirror.path))
    reach = _check_reachable(client)
    yield reach
    if not reach.ok:
        return
    scopes = _check_scopes(client)
    yield scopes
    if not scopes.ok and scopes.detail.startswith(_LACKS):
        return  # every read would fail on the same missing scope
    for method in ("crm.contact.list", "crm.deal.list", "crm.company.list"):
        yield _check_read(client, method)


def _check_mirror_path(path: Path) -> CheckResult:
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return CheckResult("mirror", False, f"{path} exists but is not writable")
    if not path.exists() and not os.access(folder if folder.exists() else Path("."), os.W_OK):
        return CheckResult("mirror", False, f"cannot create {path}: folder not writable")
    return CheckResult("mirror", True, f"{path} {'exists' if path.exists() else 'will be created'}")


def _check_reachable(client: Bitrix24Client) -> CheckResult:
    try:
        profile = client.call("profile").result
    except AuthError as exc:
        return CheckResult("crm", False, f"{exc} — the webhook URL is wrong, expired, or its "
                           "secret changed (an admin editing a webhook regenerates it)")
    except RetryableCrmError as exc:
        return CheckResult("crm", False, f"portal not reachable right now: {exc}")
    except ConnectorError as exc:
        return CheckResult("crm", False, str(exc))
    who = profile.get("NAME") or profile.get("ID") if isinstance(profile, dict) else None
    admin = " (admin)" if isinstance(profile, dict) and profile.get("ADMIN") else ""
    return CheckResult("crm", True, f"reachable as user {who}{admin}")


def _check_scopes(client: Bitrix24Client) -> CheckResult:
    try:
        scopes = set(client.call("scope").result or [])
    except ConnectorError as exc:
        return CheckResult("scopes", False, f"could not list scopes: {exc}")
    missing_pull = PULL_SCOPES - scopes
    if missing_pull:
        return CheckResult("scopes", False, f"{_LACKS} {', '.join(sorted(missing_pull))}: "
                           "tick them in the webhook settings")
    missing_push = PUSH_SCOPES - scopes
    note = (f"; push will also need {', '.join(sorted(missing_push))}" if missing_push else "")
    return CheckResult("scopes", True, f"{', '.join(sorted(scopes))}{note}")


_LACKS = "the webhook lacks scope(s)"
_SCOPE_CODES = frozenset({"insufficient_scope", "invalid_scope"})


def _check_read(client: Bitrix24Client, method: str) -> CheckResult:
    try:
        total = client.count(method)
    except AuthError as exc:
        return CheckResult(method, False, f"{exc} — the webhook is wrong or revoked, or its "
                                          "user lacks the rights to use it")
    except FatalCrmError as exc:
        return CheckResult(method, False, f"{exc} — {_read_hint(exc)}")
    except ConnectorError as exc:
        return CheckResult(method, False, str(exc))
    return CheckResult(method, True, f"{total} records visible")


def _read_hint(exc: FatalCrmError) -> str:
    # A missing scope and a missing CRM permission are fixed in different places.
    if exc.code.casefold() in _SCOPE_CODES:
        return "the webhook lacks the crm scope: tick it in the webhook settings"
    if exc.code == "PAYMENT_REQUIRED" or "commercial plan" in str(exc):
        return "REST needs a commercial plan (or a Market subscription) on this portal"
    return ("the webhook's user needs read access to this CRM entity "
            "(CRM > Settings > Access permissions)")
