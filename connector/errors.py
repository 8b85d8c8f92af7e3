"""Every error the connector raises on purpose, branched by what the caller should do.

::

    ConnectorError                  base: catch this to catch everything we raise
    ├── ConfigError                 the config file is wrong: fix it, nothing was done
    ├── CrmError                    the CRM said no (attributes: crm, method, status, code)
    │   ├── RetryableCrmError       try again later (rate limit, time budget, 5xx, network);
    │   │                           carries ``retry_after`` seconds when the CRM said how long
    │   ├── FatalCrmError           give up: credentials, permissions, scopes, bad request
    │   │   └── AuthError           credentials are wrong or expired beyond refresh
    │   └── RecordError             skip this one record, count it, keep going
    └── MirrorError                 the local SQLite mirror cannot be opened or written

CRM error codes are translated into this tree once, at the adapter boundary, by a
table (``adapters/<crm>/errors.py``); nothing above the adapters looks at raw codes.
Programmer mistakes stay built-in exceptions (``ValueError``, ``TypeError``).

Exception text never contains a secret: adapters redact URLs before they build one.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectorError",
    "CrmError",
    "FatalCrmError",
    "MirrorError",
    "RecordError",
    "RetryableCrmError",
]


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """The configuration is invalid; ``problems`` lists every one as ``(toml_path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{path}: {message}" if path else message for path, message in problems]
        super().__init__("; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines))


class CrmError(ConnectorError):
    """The CRM answered with an error (or could not be reached).

    Attributes are structured so callers and logs need not parse the text.
    """

    def __init__(
        self,
        message: str,
        *,
        crm: str = "",
        method: str = "",
        status: int | None = None,
        code: str = "",
    ) -> None:
        self.crm = crm
        self.method = method
        self.status = status
        self.code = code
        super().__init__(message)

    def attrs(self) -> dict[str, object]:
        """The structured attributes, for logs and reports."""
        return {"crm": self.crm, "method": self.method, "status": self.status, "code": self.code}


class RetryableCrmError(CrmError):
    """Try again later; ``retry_after`` is the wait the CRM asked for, in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **attrs: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **attrs)  # type: ignore[arg-type]


class FatalCrmError(CrmError):
    """Retrying will not help: fix credentials, permissions, scopes or the request."""


class AuthError(FatalCrmError):
    """Credentials are wrong, revoked or expired beyond refresh."""


class RecordError(CrmError):
    """One record is unusable; skip it, record why, and keep going."""

    def __init__(self, message: str, *, record_id: object = None, **attrs: object) -> None:
        self.record_id = record_id
        super().__init__(message, **attrs)  # type: ignore[arg-type]


class MirrorError(ConnectorError):
    """The local SQLite mirror cannot be opened, migrated or written."""
