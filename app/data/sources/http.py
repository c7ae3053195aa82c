"""Resilient HTTP for adapters: retries with exponential backoff and full jitter on timeouts,
transport errors, 5xx and 429 (honouring ``Retry-After``), via tenacity.

Non-retryable answers (4xx other than 429) raise at once: retrying them only hides a bug.
"""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

__all__ = ["RETRY_STATUS", "RetryPolicy", "TruncatedBodyError", "get", "get_json", "redact"]

log = structlog.get_logger(__name__)
RETRY_STATUS = frozenset({202, 429, 500, 502, 503, 504})  # 202: Socrata's 'still processing'
#: Query parameters that carry secrets (Open311 ``api_key``, SODA ``$$app_token``, generic tokens).
_SECRET_PARAM = re.compile(r"((?:api_key|apikey|key|token|\$\$app_token|access_token)=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters masked: httpx errors quote the full URL."""
    return _SECRET_PARAM.sub(r"\1***", text)


class RetryPolicy:
    """How hard to try: ``attempts`` in all, waits of ``uniform(0, min(cap, base * 2**n))`` seconds
    (AWS "full jitter"), or the server's ``Retry-After`` when it gives one (capped too)."""

    def __init__(self, attempts: int = 5, base: float = 0.5, cap: float = 30.0) -> None:
        self.attempts, self.base, self.cap = attempts, base, cap

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, httpx.HTTPStatusError):
            after = _retry_after(exc.response)
            if after is not None:
                return min(self.cap, after)
        return random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when else None


class TruncatedBodyError(ValueError):
    """A 2xx body that does not parse: a page cut off in transit; worth another try."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, TruncatedBodyError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in RETRY_STATUS
    return isinstance(exc, httpx.TransportError)  # timeouts, refused or reset connections, truncated bodies


async def get(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy | None = None,
    parse: bool = False,
    check: Callable[[httpx.Response], object] | None = None,
) -> httpx.Response:
    """GET ``url`` with retries; returns the final 2xx or 304 response, raises otherwise. With
    ``parse``, a 2xx body must be valid JSON; with ``check``, ``check(response)`` must not raise
    (e.g. an XML parse). A body failing either is taken as truncated and retried like a 5xx."""
    policy = policy or RetryPolicy()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=policy.wait,
        retry=retry_if_exception(_retryable),
        reraise=True,
        before_sleep=lambda s: log.warning(
            "http.retry", url=url, attempt=s.attempt_number, error=redact(repr(s.outcome.exception())) if s.outcome else None
        ),
    )
    async for attempt in retrying:
        with attempt:
            response = await client.get(url, params=params, headers=headers)
            if response.status_code == 202:  # accepted, not ready: no body to use yet
                raise httpx.HTTPStatusError("202 Accepted: still processing", request=response.request, response=response)
            if response.status_code != 304:
                response.raise_for_status()
            await response.aread()
            if response.status_code != 304 and (parse or check is not None):
                try:
                    response.json() if parse else None
                    check(response) if check is not None else None
                except (ValueError, SyntaxError) as exc:  # lxml's XMLSyntaxError is a SyntaxError
                    raise TruncatedBodyError(f"unparseable body from {url}: {exc}") from exc
            return response
    raise AssertionError("unreachable")  # tenacity re-raises the last error


async def get_json(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[Any, httpx.Response]:
    """GET and parse JSON with retries; ``(None, response)`` on 304 Not Modified."""
    response = await get(client, url, params, headers, policy, parse=True)
    return (None if response.status_code == 304 else response.json()), response
