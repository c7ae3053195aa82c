"""Rules, endpoints and their links in the alerts store (a part of
:class:`app.alerts.store.AlertStore`)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.alerts.models import ApiKey, Delivery, Endpoint, Rule, RuleEndpoint
from app.alerts.rules import AnomalyRule, Filters, RuleSpec
from app.alerts.store_base import StoreBase

__all__ = ["ENDPOINT_KINDS", "RULE_FIELDS", "QuotaExceededError", "RuleBook"]

ENDPOINT_KINDS = ("webhook", "email", "discord")
#: What :meth:`RuleBook.update_rule` may change (``spec`` replaces kind and parameters together).
RULE_FIELDS = frozenset(
    {"name", "city", "spec", "filters", "timezone", "daily_cap", "quiet_start", "quiet_end", "digest_at", "paused", "endpoint_ids"}
)
_SPEC: TypeAdapter[Any] = TypeAdapter(RuleSpec)


class QuotaExceededError(Exception):
    """A key already holds as many rules or endpoints as it may."""


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class RuleBook(StoreBase):
    """What each key watches and where its alerts go. Every read and change of one object takes the
    key it must belong to: another key's object is reported as absent, so ids do not leak."""

    # -- rules ------------------------------------------------------------------------------------

    def create_rule(
        self,
        key_id: int,
        name: str,
        spec: Any,
        filters: Filters,
        *,
        city: str,
        timezone: str = "UTC",
        endpoint_ids: Sequence[int] = (),
        most: int | None = None,
        **options: Any,
    ) -> Rule:
        """Store a validated rule of key ``key_id`` linked to its ``endpoint_ids`` (``options``:
        ``daily_cap``, ``quiet_start``, ``quiet_end``, ``digest_at``, ``paused``). Raises
        :class:`QuotaExceededError` when the key holds ``most`` rules already and ``LookupError``
        when an endpoint is not the key's."""
        now = datetime.now(UTC)
        with self.session() as s:
            if most is not None and self._count(s, Rule, key_id) >= most:
                raise QuotaExceededError(f"a key may hold at most {most} rules; delete one first")
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
            self._set_links(s, key_id, rule.id, endpoint_ids)
            detail: dict[str, object] = {"kind": rule.kind, "name": name, "endpoint_ids": sorted(set(endpoint_ids))}
            self._audit(s, now, key_id, "rule.create", f"rule:{rule.id}", detail)
        return rule

    def rules(self, key_id: int | None = None, *, limit: int | None = None, offset: int = 0) -> list[Rule]:
        """The rules of one key (or of every key), oldest first (a page of them with ``limit``)."""
        with self.session() as s:
            query = select(Rule).order_by(Rule.id)
            query = query if key_id is None else query.where(Rule.key_id == key_id)
            return list(s.scalars(query.offset(offset).limit(limit)))

    def count_rules(self, key_id: int) -> int:
        """How many rules key ``key_id`` holds."""
        with self.session() as s:
            return self._count(s, Rule, key_id)

    def get_rule(self, key_id: int, rule_id: int) -> Rule | None:
        """Rule ``rule_id`` if it is key ``key_id``'s, else None."""
        with self.session() as s:
            rule = s.get(Rule, rule_id)
            return rule if rule is not None and rule.key_id == key_id else None

    def update_rule(self, key_id: int, rule_id: int, **changes: Any) -> Rule | None:
        """Change the given fields (:data:`RULE_FIELDS`; ``spec`` a validated rule spec,
        ``filters`` :class:`Filters`, ``endpoint_ids`` the whole new set of links) of key
        ``key_id``'s rule; None when the key has no such rule, ``LookupError`` when an endpoint is
        not the key's. The audit entry names the fields changed, not their values."""
        unknown = set(changes) - RULE_FIELDS
        if unknown:
            raise ValueError(f"rules have no field(s) {', '.join(sorted(unknown))}")
        now = datetime.now(UTC)
        with self.session() as s:
            rule = s.get(Rule, rule_id)
            if rule is None or rule.key_id != key_id:
                return None
            endpoint_ids = changes.pop("endpoint_ids", None)
            spec, filters = changes.pop("spec", None), changes.pop("filters", None)
            if spec is not None:
                rule.kind, rule.params = spec.kind, spec.model_dump(mode="json")
            if filters is not None:
                rule.filters = filters.model_dump(mode="json")
            for field, value in changes.items():
                setattr(rule, field, bool(value) if field == "paused" else value)
            if endpoint_ids is not None:
                self._set_links(s, key_id, rule_id, endpoint_ids, replace=True)
            rule.updated_at = now
            fields = sorted({*changes, *(["spec"] if spec is not None else []), *(["filters"] if filters is not None else [])})
            detail: dict[str, object] = {"fields": fields + (["endpoint_ids"] if endpoint_ids is not None else [])}
            if "paused" in changes:
                detail["paused"] = rule.paused
            self._audit(s, now, key_id, "rule.update", f"rule:{rule_id}", detail)
        return rule

    def delete_rule(self, key_id: int, rule_id: int) -> bool:
        """Delete a rule of ``key_id`` with its links and queued deliveries; False when it has none."""
        return self._delete_owned(Rule, key_id, rule_id)

    def rule_endpoint_ids(self, rule_ids: Sequence[int]) -> dict[int, list[int]]:
        """The endpoints each rule delivers to (every asked rule has an entry, maybe empty)."""
        links: dict[int, list[int]] = {rule_id: [] for rule_id in rule_ids}
        with self.session() as s:
            query = select(RuleEndpoint.rule_id, RuleEndpoint.endpoint_id).where(RuleEndpoint.rule_id.in_(list(rule_ids)))
            for rule_id, endpoint_id in s.execute(query.order_by(RuleEndpoint.endpoint_id)):
                links[rule_id].append(endpoint_id)
        return links

    # -- endpoints --------------------------------------------------------------------------------

    def create_endpoint(self, key_id: int, kind: str, target: str, *, most: int | None = None) -> Endpoint:
        """A delivery endpoint of ``key_id``; a webhook gets a fresh ``whsec_`` signing secret.
        Raises :class:`QuotaExceededError` when the key holds ``most`` endpoints already."""
        if kind not in ENDPOINT_KINDS:
            raise ValueError(f"endpoint kind must be one of {', '.join(ENDPOINT_KINDS)}")
        now = datetime.now(UTC)
        secret = _new_secret() if kind == "webhook" else None
        with self.session() as s:
            if most is not None and self._count(s, Endpoint, key_id) >= most:
                raise QuotaExceededError(f"a key may hold at most {most} endpoints; delete one first")
            endpoint = Endpoint(key_id=key_id, kind=kind, target=target, secret=secret, created_at=now)
            s.add(endpoint)
            s.flush()
            self._audit(
                s, now, key_id, "endpoint.create", f"endpoint:{endpoint.id}", {"kind": kind}
            )  # never the target: it may hold a token
        return endpoint

    def endpoints(self, key_id: int) -> list[Endpoint]:
        """The endpoints of key ``key_id``, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(Endpoint).where(Endpoint.key_id == key_id).order_by(Endpoint.id)))

    def get_endpoint(self, key_id: int, endpoint_id: int) -> Endpoint | None:
        """Endpoint ``endpoint_id`` if it is key ``key_id``'s, else None."""
        with self.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            return endpoint if endpoint is not None and endpoint.key_id == key_id else None

    def delete_endpoint(self, key_id: int, endpoint_id: int) -> bool:
        """Delete an endpoint of ``key_id`` with its links and deliveries; False when it has none."""
        return self._delete_owned(Endpoint, key_id, endpoint_id)

    def _delete_owned(self, table: type[Rule] | type[Endpoint], key_id: int, ident: int) -> bool:
        """Delete a rule or endpoint of ``key_id`` with its links and deliveries, audited; False
        when the key has no such row."""
        own = "rule" if table is Rule else "endpoint"
        with self.session() as s:
            row = s.get(Rule, ident) if table is Rule else s.get(Endpoint, ident)
            if row is None or row.key_id != key_id:
                return False
            s.execute(delete(Delivery).where(getattr(Delivery, f"{own}_id") == ident))
            s.execute(delete(RuleEndpoint).where(getattr(RuleEndpoint, f"{own}_id") == ident))
            s.delete(row)
            self._audit(s, datetime.now(UTC), key_id, f"{own}.delete", f"{own}:{ident}")
        return True

    def link(self, rule_id: int, endpoint_id: int) -> None:
        """Deliver the rule's matches to the endpoint too (the rule and endpoint must share a key)."""
        with self.session() as s:
            rule, endpoint = s.get(Rule, rule_id), s.get(Endpoint, endpoint_id)
            if rule is None or endpoint is None or rule.key_id != endpoint.key_id:
                raise LookupError("rule and endpoint must exist and belong to the same key")
            if s.get(RuleEndpoint, (rule_id, endpoint_id)) is None:
                s.add(RuleEndpoint(rule_id=rule_id, endpoint_id=endpoint_id))
                self._audit(s, datetime.now(UTC), rule.key_id, "rule.link", f"rule:{rule_id}", {"endpoint_id": endpoint_id})

    def unlink(self, key_id: int, rule_id: int, endpoint_id: int) -> bool:
        """Stop delivering key ``key_id``'s rule to the endpoint; False when there was no such link."""
        with self.session() as s:
            rule = s.get(Rule, rule_id)
            if rule is None or rule.key_id != key_id or s.get(RuleEndpoint, (rule_id, endpoint_id)) is None:
                return False
            s.execute(delete(RuleEndpoint).where(RuleEndpoint.rule_id == rule_id, RuleEndpoint.endpoint_id == endpoint_id))
            self._audit(s, datetime.now(UTC), key_id, "rule.unlink", f"rule:{rule_id}", {"endpoint_id": endpoint_id})
        return True

    def rotate_secret(
        self, endpoint_id: int, *, key_id: int | None = None, overlap: timedelta = timedelta(hours=24), now: datetime | None = None
    ) -> str:
        """A new signing secret for a webhook endpoint (of ``key_id``, when given); the old one
        signs too until ``overlap`` ends. ``LookupError`` when there is no such webhook."""
        now = now or datetime.now(UTC)
        with self.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is None or endpoint.kind != "webhook" or (key_id is not None and endpoint.key_id != key_id):
                raise LookupError(f"no webhook endpoint {endpoint_id}")
            endpoint.previous_secret, endpoint.previous_until = endpoint.secret, now + overlap
            endpoint.secret = _new_secret()
            self._audit(s, now, endpoint.key_id, "endpoint.rotate", f"endpoint:{endpoint_id}", {"overlap_s": overlap.total_seconds()})
            return endpoint.secret

    # -- what matching reads ----------------------------------------------------------------------

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

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _count(s: Session, table: type[Rule] | type[Endpoint], key_id: int) -> int:
        return int(s.scalar(select(func.count()).select_from(table).where(table.key_id == key_id)) or 0)

    @staticmethod
    def _set_links(s: Session, key_id: int, rule_id: int, endpoint_ids: Sequence[int], *, replace: bool = False) -> None:
        """Link the rule to exactly ``endpoint_ids`` (``replace``: dropping the others), each of
        which must be an endpoint of ``key_id``."""
        wanted = sorted(set(endpoint_ids))
        if wanted:
            owned = set(s.scalars(select(Endpoint.id).where(Endpoint.id.in_(wanted), Endpoint.key_id == key_id)))
            missing = [i for i in wanted if i not in owned]
            if missing:
                raise LookupError(f"no endpoint {', '.join(map(str, missing))}")
        if replace:
            s.execute(delete(RuleEndpoint).where(RuleEndpoint.rule_id == rule_id))
            s.flush()
        for endpoint_id in wanted:
            s.add(RuleEndpoint(rule_id=rule_id, endpoint_id=endpoint_id))
