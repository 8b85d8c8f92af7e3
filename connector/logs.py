"""Logging set-up: one stderr handler whose filter redacts secrets from every record.

httpx logs each request URL at INFO — for a Bitrix24 inbound webhook that URL *is*
the credential — so its loggers are quietened and, as a second line of defence,
every formatted message passes through :func:`connector.http.redact`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from connector.http import quiet_http_loggers, redact

__all__ = ["RedactingFilter", "configure_logging"]


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets and credential-looking parts hidden."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the fully formatted message (args included) in place."""
        message = record.getMessage()
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are formatted later from exc_info; keep only the redacted text.
            record.msg = f"{record.msg}: {redact(str(record.exc_info[1]), self.secrets)}"
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(level: str = "WARNING", secrets: Iterable[str] = ()) -> None:
    """Send logs to stderr at ``level`` with redaction on the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_crm_retention", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._crm_retention = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_http_loggers()
