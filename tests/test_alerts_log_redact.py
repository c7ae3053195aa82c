"""Signed link tokens never reach the access log."""

from __future__ import annotations

import logging

import pytest

from app.alerts.log_redact import RedactLinks, install


def test_link_tokens_are_redacted_in_access_log_records(caplog: pytest.LogCaptureFixture) -> None:
    install("test.access")
    install("test.access")  # once only
    logger = logging.getLogger("test.access")
    assert sum(isinstance(f, RedactLinks) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="test.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/links/WyJwYXVzZSIsMTJd.6p34kci5H1w7?x=1", "1.1", 200)
        logger.info("POST /links/abc.def done")
    text = caplog.text
    assert "WyJwYXVzZSIsMTJd" not in text
    assert "abc.def" not in text
    assert text.count("/links/<redacted>") == 2
    assert "?x=1" in text
