"""One TOML file → one validated, frozen :class:`Config`.

Loading rules, in order:

1. the file is parsed with :mod:`tomllib`;
2. every ``${ENV_VAR}`` inside a string value is replaced from the environment
   (a missing variable is an error that names the key and the variable);
3. the result is validated by pydantic: unknown keys are errors, secrets become
   :class:`~pydantic.SecretStr`, and *every* problem is reported at once with its
   TOML path (``crm.webhook_url: …``) and a hint.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError
from rules.config import RulesConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "CrmConfig",
    "LimitsConfig",
    "MirrorConfig",
    "RetryConfig",
    "SyncConfig",
    "is_loopback_host",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = "retention.toml"
CONFIG_ENV_VAR = "RETENTION_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WEBHOOK_PATH = re.compile(r"^/rest/(\d+)/([^/]+)/?$")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitsConfig(_Section):
    """Client-side pacing against Bitrix24's limits (defaults: the non-Enterprise plan)."""

    bucket_size: int = Field(50, ge=1)
    drain_per_s: float = Field(2.0, gt=0)
    operating_budget_s: float = Field(480.0, gt=0)
    operating_window_s: float = Field(600.0, gt=0)
    safety_margin_s: float = Field(5.0, ge=0)
    allow_crossing: bool = False


class RetryConfig(_Section):
    """How hard to retry a call the CRM refused for a temporary reason."""

    max_attempts: int = Field(8, ge=1)
    max_delay_s: float = Field(120.0, gt=0)
    deadline_s: float = Field(900.0, gt=0)


class CrmConfig(_Section):
    """Which CRM to talk to and how."""

    kind: Literal["bitrix24", "amocrm"]
    webhook_url: SecretStr | None = None
    timeout_s: float = Field(65.0, gt=0)
    contact_fields: tuple[str, ...] = ()
    deal_fields: tuple[str, ...] = ()
    company_fields: tuple[str, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _strip_webhook_url(cls, value: Any) -> Any:
        # A value pasted into an environment variable often carries a newline or spaces.
        return value.strip() if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_webhook_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> CrmConfig:
        if self.kind == "bitrix24" and self.webhook_url is None:
            raise ValueError(
                "webhook_url is required for kind = \"bitrix24\" "
                "(hint: webhook_url = \"${BITRIX24_WEBHOOK_URL}\")"
            )
        return self


class MirrorConfig(_Section):
    """Where the local SQLite mirror lives."""

    path: Path = Path("retention.db")


class SyncConfig(_Section):
    """What to pull and how to notice deletions."""

    entities: tuple[Literal["contacts", "deals", "companies"], ...] = (
        "contacts",
        "companies",
        "deals",
    )
    reconcile: Literal["count", "always", "never"] = "count"
    full_reconcile_hours: float = Field(24.0, ge=0)


class Config(_Section):
    """The whole connector configuration; frozen and handed down, never global."""

    crm: CrmConfig
    mirror: MirrorConfig = MirrorConfig()
    sync: SyncConfig = SyncConfig()
    rules: RulesConfig = RulesConfig()


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: str) -> None:
    """Validate an inbound-webhook URL without ever echoing its secret."""
    copy = "hint: copy it from Applications > Developer resources > Inbound webhook"
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"webhook_url must look like https://PORTAL/rest/USER_ID/SECRET/ ({copy})")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("webhook_url must use https:// (hint: plain http:// is accepted only "
                         "for loopback hosts such as 127.0.0.1 or localhost)")
    if "@" in parts.netloc:
        # user:password@ would travel as a Basic auth header nothing here redacts.
        raise ValueError("webhook_url must not carry user:password@ (hint: the secret belongs "
                         "in the path, /rest/USER_ID/SECRET/)")
    if not _WEBHOOK_PATH.match(parts.path):
        raise ValueError(f"webhook_url path must be /rest/USER_ID/SECRET/ with no method name "
                         f"after it ({copy})")
    if parts.query or parts.fragment:
        raise ValueError("webhook_url must not carry a query string or fragment (hint: end it "
                         "with the secret and a slash)")


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--config`` wins, then ``$RETENTION_CONFIG``, then ``retention.toml``."""
    env = os.environ if environ is None else environ
    return Path(cli_value or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a TOML config file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", f"config file not found: {path} (hint: cp config.example.toml "
                                "retention.toml, or pass --config)")]) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {path}: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"{path} is not valid TOML: {exc}")]) from None
    return parse_config(data, environ)


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed TOML data; every problem is reported at once."""
    env = os.environ if environ is None else environ
    problems: list[tuple[str, str]] = []
    expanded = _expand_env(data, env, (), problems)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        # A key whose ${VAR} was missing already has its one clear problem; skip the
        # follow-on complaints about the empty string left in its place.
        unset = {path for path, _ in problems}
        described = (_describe(error) for error in exc.errors())
        problems.extend(p for p in described if p[0] not in unset)
        config = None
    if problems or config is None:
        raise ConfigError(sorted(set(problems)))
    return config


def _expand_env(
    value: Any, env: Mapping[str, str], path: tuple[str | int, ...], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(value, str):
        return _expand_string(value, env, path, problems)
    if isinstance(value, Mapping):
        return {k: _expand_env(v, env, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, (*path, i), problems) for i, v in enumerate(value)]
    return value


def _expand_string(
    value: str, env: Mapping[str, str], path: tuple[str | int, ...], problems: list[tuple[str, str]]
) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            problems.append((_toml_path(path), f"environment variable {name} is not set "
                                               f"(hint: export {name}=...)"))
            return ""
        return env[name]

    return _ENV_REF.sub(substitute, value)


# Hints by pydantic error type (prefix); anything else points at the documented example.
_HINTS = (
    ("string", 'write it as a quoted string: key = "..."'),
    ("int", "write a whole number without quotes"),
    ("float", "write a number without quotes"),
    ("bool", "write true or false without quotes"),
    ("literal", "use one of the values listed"),
    ("greater_than", "raise the value to within the range given"),
    ("less_than", "lower the value to within the range given"),
    ("path", 'write the path as a quoted string: path = "retention.db"'),
    ("list", 'write a list: key = ["a", "b"]'),
    ("tuple", 'write a list: key = ["a", "b"]'),
    ("dict", "write a [table] (section) here"),
    ("model", "write a [table] (section) here"),
)


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    path, kind = _toml_path(loc), str(error["type"])
    if kind == "extra_forbidden":
        return path, "unknown key (hint: check the spelling against config.example.toml)"
    if kind == "missing":
        return path, f"required key is missing (hint: config.example.toml shows {path})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "hint:" in message:
        return path, message
    return path, f"{message} (hint: {_hint(kind, path)})"


def _hint(kind: str, path: str) -> str:
    for prefix, hint in _HINTS:
        if kind.startswith(prefix):
            return hint
    return f"see {path} in config.example.toml"


def _toml_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
