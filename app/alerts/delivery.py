"""Sending queued deliveries and deciding what each answer means.

Only 2xx is success. Timeouts, connection errors, 429 (its ``Retry-After`` honoured) and 5xx are
retried on :data:`RETRY_SCHEDULE_S` with jitter, then the delivery is dead with its reason (visible,
and retryable by hand); 410 Gone disables the endpoint; a redirect or any other 4xx is not retried.
A delivery keeps one message id for all its attempts, so after a crash between sending and
recording, the repeat carries the same ``webhook-id`` and the receiver can drop it."""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import structlog

from app.alerts.models import Delivery, Endpoint
from app.alerts.ssrf import TargetRefusedError, check_target
from app.alerts.store import AlertStore
from app.alerts.webhook import send_signed

__all__ = ["RETRY_SCHEDULE_S", "Decision", "decide", "deliver_due", "message_body", "send_test"]

log = structlog.get_logger(__name__)
#: Seconds before attempt 2, 3, ...: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 24 h.
RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 86400)
_MAX_RETRY_AFTER_S = 86400


@dataclass(frozen=True)
class Decision:
    """What to do with a delivery after an attempt."""

    status: str  # sent | pending | dead
    next_attempt_at: datetime | None = None
    disable_endpoint: bool = False
    reason: str | None = None
    code: int | None = None  # the receiver's HTTP status, when it answered


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` asks for (delay or HTTP date), capped at a day; None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,9}", text):
        return float(min(int(text), _MAX_RETRY_AFTER_S))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    return max(0.0, min((when - now).total_seconds(), _MAX_RETRY_AFTER_S))


def decide(status: int | None, attempts: int, now: datetime, retry_after: str | None = None, error: str | None = None) -> Decision:
    """The decision after attempt number ``attempts`` answered ``status`` (None: no answer)."""
    return replace(_decide(status, attempts, now, retry_after, error), code=status)


def _decide(status: int | None, attempts: int, now: datetime, retry_after: str | None, error: str | None) -> Decision:
    if status is not None and 200 <= status < 300:
        return Decision("sent")
    if status == 410:
        return Decision("dead", disable_endpoint=True, reason="410 Gone: the endpoint was disabled")
    if status is not None and status != 429 and status < 500:
        kind = "redirect (not followed)" if 300 <= status < 400 else "refused"
        return Decision("dead", reason=f"{status} {kind}: not retried")
    if attempts > len(RETRY_SCHEDULE_S):
        return Decision("dead", reason=f"gave up after {attempts} attempts: {error or status}")
    wait = RETRY_SCHEDULE_S[attempts - 1] * random.uniform(0.8, 1.2)  # jitter, not a secret
    asked = _retry_after(retry_after, now) if status == 429 else None
    if asked is not None:
        wait = max(wait, asked)
    return Decision("pending", next_attempt_at=now + timedelta(seconds=wait), reason=error or f"{status}: will retry")


def message_body(delivery: Delivery) -> str:
    """The JSON a receiver gets: the rule, the item and the provider's own record."""
    return json.dumps(
        {
            "type": "alert.match",
            "rule_id": delivery.rule_id,
            "source": delivery.source,
            "item_id": delivery.item_id,
            "data": delivery.payload,
        },
        sort_keys=True,
    )


async def send_test(endpoint: Endpoint, *, allow: frozenset[str] = frozenset(), timeout: float = 10.0) -> Decision:
    """Send one test message to ``endpoint`` now (outside the queue) and say how it went, as a
    delivery attempt would (``status`` ``sent`` or why not, the receiver's ``code``)."""
    body = json.dumps({"type": "alert.test", "endpoint_id": endpoint.id, "data": {"message": "a test from City Service Heat"}})
    now = datetime.now(UTC)
    return await _send(endpoint, f"msg_test_{endpoint.id}_{int(now.timestamp())}", body, 1, now, allow, timeout)


async def _send(endpoint: Endpoint, msg_id: str, body: str, attempt: int, now: datetime, allow: frozenset[str], timeout: float) -> Decision:
    """Attempt number ``attempt``. Whatever a target or receiver does, the answer is a decision,
    never an exception: one bad endpoint must not stop the queue for everyone else."""
    try:
        target = await asyncio.to_thread(check_target, endpoint.target, allow)
    except TargetRefusedError as err:
        return Decision("dead", reason=f"target refused: {err}")
    secrets = [s for s in (endpoint.secret, endpoint.previous_secret if (endpoint.previous_until or now) > now else None) if s]
    # A client per delivery, without keep-alive: a pooled connection is keyed by the pinned
    # address, so another host on the same address would reuse it without its own TLS check.
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits, trust_env=False) as client:
            reply = await send_signed(client, target, secrets, msg_id, datetime.now(UTC), body, timeout * 1.5)
    except (TimeoutError, httpx.TimeoutException):
        return decide(None, attempt, now, error="timed out")
    except httpx.TransportError as err:
        return decide(None, attempt, now, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # any other failure is this delivery's, recorded, not raised
        return Decision("dead", reason=f"could not send: {type(err).__name__}: {err}"[:500])
    return decide(reply.status, attempt, now, reply.retry_after)


async def deliver_due(
    store: AlertStore, *, now: datetime | None = None, allow: frozenset[str] = frozenset(), limit: int = 100, timeout: float = 10.0
) -> int:
    """Send webhook deliveries that are due (at most ``limit``), claiming one at a time (so a
    claim's lease covers only its own send), and record each outcome; returns how many were
    attempted. ``now`` is the queue's clock (tests move it); signatures carry the real time."""
    now = now or datetime.now(UTC)
    tried = 0
    for _ in range(limit):
        claimed = store.claim(now, kinds=("webhook",), limit=1)
        if not claimed:
            break
        (delivery, endpoint, lease) = claimed[0]
        tried += 1
        decision = await _send(endpoint, f"msg_{delivery.id}", message_body(delivery), delivery.attempts + 1, now, allow, timeout)
        store.settle(
            delivery.id,
            lease,
            decision.status,
            decision.next_attempt_at,
            decision.reason,
            now,
            disable_endpoint=decision.disable_endpoint,
            code=decision.code,
        )
        log.info("alerts.delivery", delivery=delivery.id, endpoint=endpoint.id, status=decision.status, reason=decision.reason)
    return tried
