"""Rules, endpoints and their links in the alerts store (a part of
:class:`app.alerts.store.AlertStore`)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import delete, select

from app.alerts.models import ApiKey, AuditEntry, Delivery, Endpoint, Rule, RuleEndpoint
from app.alerts.rules import AnomalyRule, Filters, RuleSpec
from app.alerts.store_base import StoreBase

__all__ = ["ENDPOINT_KINDS", "RuleBook"]

ENDPOINT_KINDS = ("webhook", "email", "discord")
_SPEC: TypeAdapter[Any] = TypeAdapter(RuleSpec)


class RuleBook(StoreBase):
    """What each key watches and where its alerts go."""

    def create_rule(self, key_id: int, name: str, spec: Any, filters: Filters, *, city: str, timezone: str = "UTC", **options: Any) -> Rule:
        """Store a validated rule of key ``key_id`` (``options``: ``daily_cap``, ``quiet_start``,
        ``quiet_end``, ``digest_at``, ``paused``)."""
        now = datetime.now(UTC)
        with self.session() as s:
            rule = Rule(
                key_id=key_id,
                name=name,
                kind=spec.kind,
                city=city,
                params=spec.model_dump(mode="json"),
                filters=filters.model_dump(mode="json"),
                timezone=timezone,
                paused=bool(options.pop("paused", False)),
                created_at=now,
                updated_at=now,
                **options,
            )
            s.add(rule)
            s.flush()
            s.add(
                AuditEntry(at=now, key_id=key_id, action="rule.create", subject=f"rule:{rule.id}", detail={"kind": rule.kind, "name": name})
            )
        return rule

    def rules(self, key_id: int | None = None) -> list[Rule]:
        """The rules of one key (or of every key), oldest first."""
        with self.session() as s:
            query = select(Rule).order_by(Rule.id)
            return list(s.scalars(query if key_id is None else query.where(Rule.key_id == key_id)))

    def delete_rule(self, key_id: int, rule_id: int) -> bool:
        """Delete a rule of ``key_id`` with its links and queued deliveries; False when it has none."""
        with self.session() as s:
            rule = s.get(Rule, rule_id)
            if rule is None or rule.key_id != key_id:
                return False
            s.execute(delete(Delivery).where(Delivery.rule_id == rule_id))
            s.execute(delete(RuleEndpoint).where(RuleEndpoint.rule_id == rule_id))
            s.delete(rule)
            s.add(AuditEntry(at=datetime.now(UTC), key_id=key_id, action="rule.delete", subject=f"rule:{rule_id}", detail={}))
        return True

    def create_endpoint(self, key_id: int, kind: str, target: str) -> Endpoint:
        """A delivery endpoint of ``key_id``; a webhook gets a fresh ``whsec_`` signing secret."""
        if kind not in ENDPOINT_KINDS:
            raise ValueError(f"endpoint kind must be one of {', '.join(ENDPOINT_KINDS)}")
        now = datetime.now(UTC)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() if kind == "webhook" else None
        with self.session() as s:
            endpoint = Endpoint(key_id=key_id, kind=kind, target=target, secret=secret, created_at=now)
            s.add(endpoint)
            s.flush()
            s.add(AuditEntry(at=now, key_id=key_id, action="endpoint.create", subject=f"endpoint:{endpoint.id}", detail={"kind": kind}))
        return endpoint

    def link(self, rule_id: int, endpoint_id: int) -> None:
        """Deliver the rule's matches to the endpoint too (the rule and endpoint must share a key)."""
        with self.session() as s:
            rule, endpoint = s.get(Rule, rule_id), s.get(Endpoint, endpoint_id)
            if rule is None or endpoint is None or rule.key_id != endpoint.key_id:
                raise LookupError("rule and endpoint must exist and belong to the same key")
            if s.get(RuleEndpoint, (rule_id, endpoint_id)) is None:
                s.add(RuleEndpoint(rule_id=rule_id, endpoint_id=endpoint_id))

    def event_rules(self, city: str) -> list[tuple[int, Any, Filters]]:
        """Live event rules of ``city`` (not paused, key not revoked, at least one endpoint) as
        :func:`app.alerts.matching.match_events` takes them."""
        with self.session() as s:
            rows = s.execute(
                select(Rule)
                .join(ApiKey, ApiKey.id == Rule.key_id)
                .where(Rule.city == city, Rule.kind != "anomaly", ~Rule.paused, ApiKey.revoked_at.is_(None))
                .where(select(RuleEndpoint.rule_id).where(RuleEndpoint.rule_id == Rule.id).exists())
                .order_by(Rule.id)
            ).scalars()
            return [(r.id, _SPEC.validate_python(r.params), Filters.model_validate(r.filters)) for r in rows]

    def anomaly_rules(self, city: str) -> list[tuple[int, AnomalyRule, Filters]]:
        """Live anomaly rules of ``city`` (as :meth:`event_rules`)."""
        with self.session() as s:
            rows = s.execute(
                select(Rule)
                .join(ApiKey, ApiKey.id == Rule.key_id)
                .where(Rule.city == city, Rule.kind == "anomaly", ~Rule.paused, ApiKey.revoked_at.is_(None))
                .order_by(Rule.id)
            ).scalars()
            return [(r.id, AnomalyRule.model_validate(r.params), Filters.model_validate(r.filters)) for r in rows]

    def rotate_secret(self, endpoint_id: int, *, overlap: timedelta = timedelta(hours=24), now: datetime | None = None) -> str:
        """A new signing secret for a webhook endpoint; the old one signs too until ``overlap`` ends."""
        now = now or datetime.now(UTC)
        with self.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is None or endpoint.kind != "webhook":
                raise LookupError(f"no webhook endpoint {endpoint_id}")
            endpoint.previous_secret, endpoint.previous_until = endpoint.secret, now + overlap
            endpoint.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            s.add(AuditEntry(at=now, key_id=endpoint.key_id, action="endpoint.rotate", subject=f"endpoint:{endpoint_id}", detail={}))
            return endpoint.secret
