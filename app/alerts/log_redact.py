"""Keep the tokens of signed links out of access logs: a link never expires and pauses or
unsubscribes a rule, so a log line holding it is as good as the link."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactLinks", "install"]

_LINK = re.compile(r"/links/[^/?\s\"]+")


class RedactLinks(logging.Filter):
    """Rewrites ``/links/<token>`` to ``/links/<redacted>`` in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_LINK.sub("/links/<redacted>", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _LINK.sub("/links/<redacted>", record.msg)
        return True


def install(logger_name: str = "uvicorn.access") -> None:
    """Add the filter to the named logger once (call after the server configured its logging)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactLinks) for f in logger.filters):
        logger.addFilter(RedactLinks())
