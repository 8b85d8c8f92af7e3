"""Logging set-up: one stderr handler whose formatter redacts secrets from every line.

httpx logs each request URL at INFO — for a Bitrix24 inbound webhook that URL *is*
the credential — so its loggers are quietened and, as a second line of defence,
every formatted line (message, arguments and traceback) passes through
:func:`connector.http.redact`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from connector.http import quiet_http_loggers, redact

__all__ = ["RedactingFormatter", "configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats a record as usual, then hides secrets anywhere in the resulting text.

    Redacting the formatted text rather than rewriting the record leaves the record
    as it was for any other handler (a test's capture, an embedding application's own
    logging), so what they see does not depend on the order handlers were added in.
    """

    def __init__(self, fmt: str = _FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        """The usual text (traceback included) with credentials masked."""
        return redact(super().format(record), self.secrets)


def configure_logging(level: str = "WARNING", secrets: Iterable[str] = ()) -> None:
    """Send logs to stderr at ``level`` with redaction on the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_crm_retention", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._crm_retention = True  # type: ignore[attr-defined]
    handler.setFormatter(RedactingFormatter(secrets=secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_http_loggers()
