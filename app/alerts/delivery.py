"""Sending queued deliveries through their channel (signed webhook, email, Discord) and deciding
what each answer means.

Before a due delivery goes, its rule's pacing applies (:mod:`app.alerts.pacing`): quiet hours
hold it, a daily cap stops it, a paused rule or an unsubscribed endpoint keeps it unsent (with the
reason; retryable). Digest rules' items are first gathered into one delivery a day.

Only 2xx (an accepted email) is success. Timeouts, connection errors, 429 (its ``Retry-After`` honoured) and 5xx are
retried on :data:`RETRY_SCHEDULE_S` with jitter, then the delivery is dead with its reason (visible,
and retryable by hand); 410 Gone disables the endpoint; a redirect or any other 4xx is not retried.
A delivery keeps one message id for all its attempts, so after a crash between sending and
recording, the repeat carries the same ``webhook-id`` and the receiver can drop it."""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial

import aiosmtplib
import httpx
import structlog

from app.alerts.discord import discord_body
from app.alerts.links import LinkSigner, rule_stamp, signer_from_settings
from app.alerts.mail import MailSettings, compose, send_mail
from app.alerts.messages import Message, digest_message, item_message
from app.alerts.models import Delivery, Endpoint, Rule
from app.alerts.pacing import digest_time, pace
from app.alerts.ssrf import TargetRefusedError, check_target
from app.alerts.store import AlertStore
from app.alerts.webhook import post_pinned, send_signed
from app.config import Settings

__all__ = ["RETRY_SCHEDULE_S", "Channels", "Decision", "decide", "deliver_due", "gather_digests", "message_body", "message_id", "send_test"]

log = structlog.get_logger(__name__)
#: Seconds before attempt 2, 3, ...: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 24 h.
RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 86400)
_MAX_RETRY_AFTER_S = 86400
#: Sends a delivery round runs at once (at most one per endpoint).
CONCURRENCY = 8
_KINDS = ("webhook", "email", "discord")


@dataclass(frozen=True)
class Channels:
    """How to reach receivers: trusted private hosts, the per-attempt timeout, the SMTP server
    (None: email endpoints cannot be sent to) and the signer of pause and unsubscribe links."""

    allow: frozenset[str] = frozenset()
    timeout: float = 10.0
    mail: MailSettings | None = None
    links: LinkSigner | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Channels:
        """The channels the settings configure (``CSH_SMTP_*``, ``CSH_WEBHOOK_ALLOW``, the link secret)."""
        mail = None
        if settings.smtp_host and settings.smtp_from:
            mail = MailSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=settings.smtp_from,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                security=settings.smtp_security,
            )
        return cls(allow=settings.webhook_allow_hosts, mail=mail, links=signer_from_settings(settings))


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


def message_id(delivery: Delivery) -> str:
    """The delivery's ``webhook-id`` (and email ``Message-ID`` part): the same over all its attempts,
    never the same for two deliveries (its creation instant is part of it, so an id the store
    hands out again after a deletion still makes a new message id)."""
    return f"msg_{delivery.id}_{int(delivery.created_at.timestamp() * 1_000_000):x}"


def message_body(delivery: Delivery) -> str:
    """The JSON a webhook receiver gets: the rule, the item and the provider's own record (a
    digest: ``type`` ``alert.digest`` and its items in ``data.items``)."""
    return json.dumps(
        {
            "type": {"digest": "alert.digest", "test": "alert.test"}.get(delivery.source, "alert.match"),
            "rule_id": delivery.rule_id,
            "source": delivery.source,
            "item_id": delivery.item_id,
            "data": delivery.payload,
        },
        sort_keys=True,
    )


def _messages(delivery: Delivery, rule_name: str) -> tuple[Message, list[Message]]:
    """What a person reads of ``delivery``: one message, or a digest and its items."""
    payload = delivery.payload
    if delivery.source == "digest":
        items = payload.get("items")
        return digest_message(items if isinstance(items, list) else [], rule_name, str(payload.get("day")))
    return item_message(payload, rule_name), []


async def send_test(
    endpoint: Endpoint, *, allow: frozenset[str] = frozenset(), timeout: float = 10.0, channels: Channels | None = None
) -> Decision:
    """Send one test message to ``endpoint`` now (outside the queue) and say how it went, as a
    delivery attempt would (``status`` ``sent`` or why not, the receiver's ``code``)."""
    channels = channels or Channels(allow=allow, timeout=timeout)
    now = datetime.now(UTC)
    test = Delivery(
        id=0,
        rule_id=0,
        endpoint_id=endpoint.id,
        source="test",
        item_id=f"test/{int(now.timestamp())}",
        payload={"type": "test", "message": "a test from City Service Heat: this endpoint is reachable"},
        attempts=0,
    )
    return await _send(test, endpoint, _RuleRef("a test rule", 0), f"msg_test_{endpoint.id}_{secrets.token_hex(8)}", now, channels)


@dataclass(frozen=True)
class _RuleRef:
    """What a message needs of its rule: the name it shows and the stamp its links carry."""

    name: str
    stamp: int


async def _send(delivery: Delivery, endpoint: Endpoint, rule: _RuleRef, msg_id: str, now: datetime, channels: Channels) -> Decision:
    """One attempt through the endpoint's channel. Whatever a target or receiver does, the answer
    is a decision, never an exception: one bad endpoint must not stop the queue for everyone else."""
    attempt = delivery.attempts + 1
    try:
        if endpoint.kind == "email":
            return await _send_email(delivery, endpoint, rule, msg_id, attempt, now, channels)
        target = await asyncio.to_thread(check_target, endpoint.target, channels.allow)
    except TargetRefusedError as err:
        return Decision("dead", reason=f"target refused: {err}")
    # A client per delivery, without keep-alive: a pooled connection is keyed by the pinned
    # address, so another host on the same address would reuse it without its own TLS check.
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(channels.timeout), limits=limits, trust_env=False) as client:
            if endpoint.kind == "discord":
                message, items = _messages(delivery, rule.name)
                pause = (
                    channels.links.url("pause", delivery.rule_id, endpoint.id, rule.stamp) if channels.links and delivery.rule_id else None
                )
                async with asyncio.timeout(channels.timeout * 1.5):
                    reply = await post_pinned(client, target, discord_body(message, items, pause), {})
            else:
                signing = [s for s in (endpoint.secret, endpoint.previous_secret if (endpoint.previous_until or now) > now else None) if s]
                reply = await send_signed(
                    client, target, signing, msg_id, datetime.now(UTC), message_body(delivery), channels.timeout * 1.5
                )
    except (TimeoutError, httpx.TimeoutException):
        return decide(None, attempt, now, error="timed out")
    except httpx.TransportError as err:
        return decide(None, attempt, now, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # any other failure is this delivery's, recorded, not raised
        return Decision("dead", reason=f"could not send: {type(err).__name__}: {err}"[:500])
    return decide(reply.status, attempt, now, reply.retry_after)


async def _send_email(
    delivery: Delivery, endpoint: Endpoint, rule: _RuleRef, msg_id: str, attempt: int, now: datetime, channels: Channels
) -> Decision:
    if channels.mail is None:
        return Decision("dead", reason="email is not configured on this server (set CSH_SMTP_HOST and CSH_SMTP_FROM)")
    if channels.links is None:
        return Decision("dead", reason="email needs unsubscribe links: the server has no link signer")
    message, items = _messages(delivery, rule.name)
    links = {a: channels.links.url(a, delivery.rule_id, endpoint.id, rule.stamp) for a in ("pause", "unsubscribe")}
    domain = channels.mail.sender.rpartition("@")[2] or "localhost"
    email = compose(endpoint.target, channels.mail.sender, message, items, links, f"<{msg_id}@{domain}>")
    try:
        async with asyncio.timeout(channels.mail.timeout * 1.5):
            outcome = await send_mail(channels.mail, email)
    except (TimeoutError, aiosmtplib.SMTPTimeoutError):
        return decide(None, attempt, now, error="the SMTP server timed out")
    except (aiosmtplib.SMTPException, OSError) as err:
        return decide(None, attempt, now, error=f"SMTP: {type(err).__name__}: {err}"[:500])
    if outcome.code is not None and 200 <= outcome.code < 300:
        return Decision("sent", code=outcome.code)
    if outcome.permanent:
        return Decision(
            "dead",
            disable_endpoint=True,
            reason=f"the address was refused ({outcome.code} {outcome.text}): the endpoint was disabled",
            code=outcome.code,
        )
    return replace(decide(None, attempt, now, error=f"SMTP {outcome.code} {outcome.text}"), code=outcome.code)


def gather_digests(store: AlertStore, now: datetime) -> int:
    """Make today's digest of every digest rule whose local digest time has passed; returns how many."""
    made = 0
    for rule in store.digest_rules():
        assert rule.digest_at is not None
        day, at = digest_time(now, rule.timezone, rule.digest_at)
        if now >= at:
            made += store.gather_digest(rule.id, day, at, now)
    return made


def _paced(rule: Rule | None, linked: bool, sent_today: int, now: datetime) -> Decision | None:
    """Why a due delivery does not go now (a decision that is not an attempt), else None."""
    if rule is None:
        return Decision("dead", reason="the rule no longer exists")
    if not linked:
        return Decision("dead", reason="not sent: the endpoint was unsubscribed from this rule")
    if rule.paused:
        return Decision("paused", reason="not sent: the rule is paused (resume it, then retry to send it)")
    step = pace(now, rule.timezone, rule.quiet_start, rule.quiet_end, rule.daily_cap, sent_today)
    if step.action == "hold":
        return Decision("held", next_attempt_at=step.until, reason=step.reason)
    if step.action == "cap":
        return Decision("capped", reason=step.reason)
    return None


async def deliver_due(
    store: AlertStore,
    *,
    now: datetime | None = None,
    allow: frozenset[str] = frozenset(),
    limit: int = 100,
    timeout: float = 10.0,
    channels: Channels | None = None,
    concurrency: int = CONCURRENCY,
) -> int:
    """Gather due digests, then send deliveries that are due (at most ``limit``) and record each
    outcome; returns how many were claimed. ``concurrency`` sends run at once, at most one per
    endpoint (so a slow receiver holds up only its own queue, and each endpoint gets its
    deliveries in order); each is claimed alone, so a claim's lease covers only its own send.
    The store is used from worker threads, never on the event loop. ``now`` is the queue's clock
    (tests move it); signatures carry the real time."""
    channels = channels or Channels(allow=allow, timeout=timeout)
    now = now or datetime.now(UTC)
    await asyncio.to_thread(gather_digests, store, now)
    busy: set[int] = set()
    claiming = asyncio.Lock()
    left = [limit]

    async def worker() -> int:
        done = 0
        while True:
            async with claiming:  # one claim at a time, so two workers never take one endpoint
                if left[0] <= 0:
                    return done
                claimed = await asyncio.to_thread(store.claim, now, kinds=_KINDS, limit=1, exclude_endpoints=frozenset(busy))
                if not claimed:
                    return done
                left[0] -= 1
                delivery, endpoint, lease = claimed[0]
                busy.add(endpoint.id)
            try:
                await _deliver_one(store, delivery, endpoint, lease, now, channels)
            finally:
                busy.discard(endpoint.id)
            done += 1

    return sum(await asyncio.gather(*(worker() for _ in range(max(1, concurrency)))))


async def _deliver_one(
    store: AlertStore, delivery: Delivery, endpoint: Endpoint, lease: datetime, now: datetime, channels: Channels
) -> None:
    """Pace, send and settle one claimed delivery."""
    rule, linked, sent_today = await asyncio.to_thread(store.pacing, delivery.rule_id, endpoint.id, now)
    held = _paced(rule, linked, sent_today, now)
    if held is not None:
        await asyncio.to_thread(store.settle, delivery.id, lease, held.status, held.next_attempt_at, held.reason, now, attempted=False)
        log.info("alerts.delivery_paced", delivery=delivery.id, status=held.status, reason=held.reason)
        return
    assert rule is not None
    decision = await _send(delivery, endpoint, _RuleRef(rule.name, rule_stamp(rule.created_at)), message_id(delivery), now, channels)
    await asyncio.to_thread(
        partial(
            store.settle,
            delivery.id,
            lease,
            decision.status,
            decision.next_attempt_at,
            decision.reason,
            now,
            disable_endpoint=decision.disable_endpoint,
            code=decision.code,
        )
    )
    log.info("alerts.delivery", delivery=delivery.id, endpoint=endpoint.id, status=decision.status, reason=decision.reason)
