"""The evaluation cursors and the delivery queue of the alerts store (a part of
:class:`app.alerts.store.AlertStore`): matches and the cursor move commit together; due deliveries
are claimed under a lease and settled by the claimant only."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from app.alerts.models import AuditEntry, Delivery, Endpoint, EvaluationCursor, Rule, RuleEndpoint
from app.alerts.pacing import local_day_start
from app.alerts.store_base import StoreBase

__all__ = ["DeliveryQueue", "Match", "RetryRefusedError"]

log = structlog.get_logger(__name__)

#: A match to enqueue: ``(rule_id, source, item_id, payload)``.
Match = tuple[int, str, str, dict[str, Any]]


class RetryRefusedError(Exception):
    """A delivery that cannot be retried by hand (it is not dead, or its endpoint is disabled)."""


class DeliveryQueue(StoreBase):
    """Cursors and deliveries."""

    def cursor(self, city: str, stream: str) -> str | None:
        """How far ``stream`` of ``city`` has been matched (None: never)."""
        with self.session() as s:
            row = s.get(EvaluationCursor, (city, stream))
            return None if row is None else row.position

    def enqueue(self, city: str, stream: str, position: str, matches: list[Match], now: datetime | None = None) -> int:
        """In one transaction: queue one delivery per match and linked endpoint (a pair already
        queued is skipped, so a repeated evaluation never sends twice) and move the cursor to
        ``position``. Returns how many deliveries are new."""
        for rule_id, source, item_id, payload in matches:
            if not (0 < len(source) <= 64 and 0 < len(item_id) <= 200):
                raise ValueError(f"match of rule {rule_id}: source must have 1-64 and item id 1-200 characters")
            try:
                json.dumps(payload, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ValueError(f"payload of rule {rule_id}, item {item_id} is not JSON: {err}") from err
        now = now or datetime.now(UTC)
        with self.session() as s:
            links: dict[int, list[int]] = {}
            wanted = sorted({m[0] for m in matches})
            digests = set(s.scalars(select(Rule.id).where(Rule.id.in_(wanted), Rule.digest_at.is_not(None))))
            for rule_id, endpoint_id in s.execute(
                select(RuleEndpoint.rule_id, RuleEndpoint.endpoint_id).where(RuleEndpoint.rule_id.in_(wanted))
            ):
                links.setdefault(rule_id, []).append(endpoint_id)
            rows = [
                {
                    "rule_id": rule_id,
                    "endpoint_id": endpoint_id,
                    "source": source,
                    "item_id": item_id,
                    "payload": payload,
                    "status": "digest" if rule_id in digests else "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for rule_id, source, item_id, payload in matches
                for endpoint_id in links.get(rule_id, [])
            ]
            added = 0
            insert = postgresql.insert if self.url.get_backend_name() == "postgresql" else sqlite.insert
            for at in range(0, len(rows), 1_000):
                statement = (
                    insert(Delivery)
                    .values(rows[at : at + 1_000])
                    .on_conflict_do_nothing(index_elements=["rule_id", "endpoint_id", "source", "item_id"])
                    .returning(Delivery.id)
                )
                added += len(s.execute(statement).all())
            cursor = s.get(EvaluationCursor, (city, stream))
            if cursor is None:
                s.add(EvaluationCursor(city=city, stream=stream, position=position, updated_at=now))
            else:
                cursor.position, cursor.updated_at = position, now
        return added

    def deliveries(self, key_id: int | None = None, status: str | None = None) -> list[Delivery]:
        """Queued and finished deliveries (of one key's rules, of one status), oldest first."""
        with self.session() as s:
            query = select(Delivery).order_by(Delivery.id)
            if key_id is not None:
                query = query.join(Rule, Rule.id == Delivery.rule_id).where(Rule.key_id == key_id)
            if status is not None:
                query = query.where(Delivery.status == status)
            return list(s.scalars(query))

    def delivery_page(
        self, key_id: int, *, status: str | None = None, rule_id: int | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Delivery], int]:
        """One page of key ``key_id``'s deliveries (of one status, of one rule), newest first, and
        how many there are in all."""
        with self.session() as s:
            query = select(Delivery).join(Rule, Rule.id == Delivery.rule_id).where(Rule.key_id == key_id)
            if status is not None:
                query = query.where(Delivery.status == status)
            if rule_id is not None:
                query = query.where(Delivery.rule_id == rule_id)
            total = int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)
            return list(s.scalars(query.order_by(Delivery.id.desc()).offset(offset).limit(limit))), total

    def retry(self, key_id: int, delivery_id: int, now: datetime) -> Delivery | None:
        """Put key ``key_id``'s dead, capped or paused delivery back in the queue (pacing applies again), due at ``now`` with a fresh retry
        schedule (the last error stays until the next attempt). None when the key has no such
        delivery; :class:`RetryRefusedError` when it is not dead or its endpoint is disabled."""
        with self.session() as s:
            row = s.execute(
                select(Delivery, Endpoint)
                .join(Rule, Rule.id == Delivery.rule_id)
                .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .where(Delivery.id == delivery_id, Rule.key_id == key_id)
            ).one_or_none()
            if row is None:
                return None
            delivery, endpoint = row
            if delivery.status not in ("dead", "capped", "paused"):
                raise RetryRefusedError(f"only a dead, capped or paused delivery can be retried; this one is {delivery.status}")
            if endpoint.disabled_reason is not None:
                raise RetryRefusedError(f"its endpoint is disabled ({endpoint.disabled_reason}); create a new endpoint")
            before = delivery.attempts
            delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, now
            detail: dict[str, object] = {"attempts_before": before}
            self._audit(s, now, key_id, "delivery.retry", f"delivery:{delivery_id}", detail)
        return delivery

    def claim(
        self,
        now: datetime,
        *,
        kinds: tuple[str, ...],
        limit: int = 100,
        lease: timedelta = timedelta(minutes=5),
        exclude_endpoints: Collection[int] = (),
    ) -> list[tuple[Delivery, Endpoint, datetime]]:
        """Take the deliveries that are due (pending, or ``sending`` whose lease ran out: a
        process died while sending) to live endpoints of ``kinds``, oldest first, each marked
        ``sending`` until ``now + lease``. A row is taken by a conditional update, so two
        processes claiming at once never get the same delivery. Each comes with its lease end,
        the token :meth:`settle` needs."""
        taken: list[tuple[Delivery, Endpoint, datetime]] = []
        with self.session() as s:
            rows = s.execute(
                select(Delivery, Endpoint)
                .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .where(Delivery.status.in_(("pending", "held", "sending")), Delivery.next_attempt_at <= now)
                .where(Endpoint.kind.in_(kinds), Endpoint.disabled_reason.is_(None), Endpoint.id.not_in(list(exclude_endpoints)))
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            ).all()
            for delivery, endpoint in rows:
                won = s.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == delivery.id, Delivery.status == delivery.status, Delivery.next_attempt_at == delivery.next_attempt_at
                    )
                    .values(status="sending", next_attempt_at=now + lease)
                    .returning(Delivery.id)
                ).all()
                if won:
                    taken.append((delivery, endpoint, now + lease))
        return taken

    def settle(
        self,
        delivery_id: int,
        lease: datetime,
        status: str,
        next_at: datetime | None,
        reason: str | None,
        now: datetime,
        *,
        disable_endpoint: bool = False,
        code: int | None = None,
        attempted: bool = True,
    ) -> bool:
        """Record one attempt (or, ``attempted=False``, a hold or cap) of a delivery claimed with
        ``lease``: its new status, when to try again, why. Nothing is written when the claim is
        no longer this one's (its lease ran out and another process took the delivery); returns
        whether it was written."""
        with self.session() as s:
            delivery = s.get(Delivery, delivery_id)
            if delivery is None or delivery.status != "sending" or delivery.next_attempt_at != lease:
                log.warning("alerts.settle_lost_claim", delivery=delivery_id)
                return False
            if attempted:  # a hold or a cap is not an attempt: it keeps its status and retry count
                delivery.attempts += 1
                delivery.last_status = code
            delivery.status = status
            delivery.last_error = None if status == "sent" else reason
            if status == "sent":
                delivery.sent_at = now
            if next_at is not None:
                delivery.next_attempt_at = next_at
            if disable_endpoint:
                endpoint = s.get(Endpoint, delivery.endpoint_id)
                if endpoint is not None:
                    endpoint.disabled_reason = reason
                    s.execute(  # what was still queued for it will not be sent: dead, with the reason
                        update(Delivery)
                        .where(Delivery.endpoint_id == endpoint.id, Delivery.status == "pending", Delivery.id != delivery_id)
                        .values(status="dead", last_error=f"the endpoint was disabled: {reason}")
                    )
                    s.add(
                        AuditEntry(
                            at=now,
                            key_id=endpoint.key_id,
                            action="endpoint.disable",
                            subject=f"endpoint:{endpoint.id}",
                            detail={"reason": reason},
                        )
                    )
        return True

    def pacing(self, rule_id: int, endpoint_id: int, now: datetime) -> tuple[Rule | None, bool, int]:
        """A delivery's rule, whether the rule still delivers to the endpoint (not unsubscribed),
        and how many of its deliveries this endpoint was sent since local midnight (the rule's zone)."""
        with self.session() as s:
            rule = s.get(Rule, rule_id)
            if rule is None:
                return None, False, 0
            linked = s.get(RuleEndpoint, (rule_id, endpoint_id)) is not None
            since = local_day_start(now, rule.timezone)
            sent = s.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.rule_id == rule_id, Delivery.endpoint_id == endpoint_id, Delivery.status == "sent", Delivery.sent_at >= since
                )
            )
            return rule, linked, int(sent or 0)

    def digest_rules(self) -> list[Rule]:
        """Rules that gather their alerts into a daily digest."""
        with self.session() as s:
            return list(s.scalars(select(Rule).where(Rule.digest_at.is_not(None)).order_by(Rule.id)))

    def gather_digest(self, rule_id: int, day: str, cutoff: datetime, now: datetime) -> int:
        """In one transaction, per endpoint of the rule: the items waiting for its digest (queued
        before ``cutoff``) become one delivery ``digest/<day>`` carrying them, and are marked
        ``digested``. A day's digest is made once (the queue's unique key); items that arrive
        after it wait for the next one. Returns how many digests were made."""
        made = 0
        with self.session() as s:
            waiting = list(
                s.scalars(
                    select(Delivery)
                    .where(Delivery.rule_id == rule_id, Delivery.status == "digest", Delivery.created_at <= cutoff)
                    .order_by(Delivery.id)
                )
            )
            by_endpoint: dict[int, list[Delivery]] = {}
            for item in waiting:
                by_endpoint.setdefault(item.endpoint_id, []).append(item)
            for endpoint_id, items in by_endpoint.items():
                exists = s.scalar(
                    select(Delivery.id).where(
                        Delivery.rule_id == rule_id,
                        Delivery.endpoint_id == endpoint_id,
                        Delivery.source == "digest",
                        Delivery.item_id == f"digest/{day}",
                    )
                )
                if exists is not None:
                    continue
                digest = Delivery(
                    rule_id=rule_id,
                    endpoint_id=endpoint_id,
                    source="digest",
                    item_id=f"digest/{day}",
                    payload={"type": "digest", "rule_id": rule_id, "day": day, "items": [i.payload for i in items]},
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                s.add(digest)
                s.flush()
                for item in items:
                    item.status, item.last_error = "digested", f"sent in digest {digest.id}"
                made += 1
        return made
