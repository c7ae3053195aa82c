"""The one object that owns the alerts database: engine, migrations and every read and write.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so the
scheduler and request handlers of one process can share it; PostgreSQL is used by URL
(``postgresql+psycopg://...``) where several processes share one store.

>>> store = AlertStore("sqlite:///:memory:")   # doctest: +SKIP
>>> key, token = store.create_key("ops")       # the token is shown once
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.alerts.links import Link, rule_stamp
from app.alerts.models import ApiKey, AuditEntry, Endpoint, Rule, RuleEndpoint
from app.alerts.queue import DeliveryQueue, Match
from app.alerts.rule_book import ENDPOINT_KINDS, RuleBook

__all__ = ["ENDPOINT_KINDS", "KEY_PREFIX", "AlertStore", "Match", "hash_token"]

log = structlog.get_logger(__name__)

#: Every API key starts with this, so a leaked one is recognisable (and scanners can find it).
KEY_PREFIX = "csh_"
_SHOWN = 12  # characters of a key kept in the clear for display


def hash_token(token: str) -> str:
    """SHA-256 hex of an API key: the only form of it the store keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


class AlertStore(RuleBook, DeliveryQueue):
    """Alert state behind one SQLAlchemy engine: keys and the audit log here, rules and endpoints
    (:class:`app.alerts.rule_book.RuleBook`), cursors and deliveries
    (:class:`app.alerts.queue.DeliveryQueue`)."""

    # -- API keys -------------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[ApiKey, str]:
        """A new API key named ``name`` and its token (shown once: only its hash is stored)."""
        if not name.strip():
            raise ValueError("a key needs a name")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.session() as s:
            key = ApiKey(name=name.strip(), prefix=token[:_SHOWN], sha256=hash_token(token), created_at=now)
            s.add(key)
            s.flush()
            s.add(AuditEntry(at=now, key_id=key.id, action="key.create", subject=f"key:{key.id}", detail={"name": key.name}))
        log.info("alerts.key_created", key_id=key.id, prefix=key.prefix)
        return key, token

    def revoke_key(self, ident: str) -> ApiKey:
        """Revoke the key with id or visible prefix ``ident``; raises ``LookupError`` when none is
        (or more than one matches a prefix)."""
        now = datetime.now(UTC)
        with self.session() as s:
            query = select(ApiKey).where(ApiKey.id == int(ident)) if ident.isdigit() else select(ApiKey).where(ApiKey.prefix == ident)
            found = list(s.scalars(query))
            if len(found) != 1:
                raise LookupError(f"no single key matches {ident!r} ({len(found)} do)")
            key = found[0]
            if key.revoked_at is None:
                key.revoked_at = now
                s.add(AuditEntry(at=now, key_id=key.id, action="key.revoke", subject=f"key:{key.id}", detail={}))
        return key

    def list_keys(self) -> list[ApiKey]:
        """Every key, newest first (hashes only)."""
        with self.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.id.desc())))

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key whose token this is, else None (compared by hash; a revoked key is None)."""
        if not token.startswith(KEY_PREFIX):
            return None
        with self.session() as s:
            key = s.scalars(select(ApiKey).where(ApiKey.sha256 == hash_token(token))).one_or_none()
            return key if key is not None and key.revoked_at is None else None

    def live_key(self, key_id: int) -> ApiKey | None:
        """Key ``key_id`` while it is not revoked, else None (a signed-in page checks before each change)."""
        with self.session() as s:
            key = s.get(ApiKey, key_id)
            return key if key is not None and key.revoked_at is None else None

    def audit(self, key_id: int | None = None) -> list[AuditEntry]:
        """The audit log (of one key, or all), oldest first."""
        with self.session() as s:
            query = select(AuditEntry).order_by(AuditEntry.id)
            if key_id is not None:
                query = query.where(AuditEntry.key_id == key_id)
            return list(s.scalars(query))

    # -- signed links ---------------------------------------------------------------------------

    def follow_link(self, link: Link, now: datetime | None = None) -> str:
        """Do what a signed link asks (pause or resume its rule, or unsubscribe its endpoint from
        the rule) and say what was done; doing it again changes nothing more."""
        now = now or datetime.now(UTC)
        with self.session() as s:
            rule = self._linked_rule(s, link)
            if rule is None:
                return "This rule no longer exists: nothing more will be sent for it."
            subject = f"rule:{rule.id}"
            if link.action == "unsubscribe":
                joined = s.get(RuleEndpoint, (rule.id, link.endpoint_id))
                if joined is not None:
                    s.delete(joined)
                    self._audit(s, now, rule.key_id, "link.unsubscribe", subject, {"endpoint": link.endpoint_id})
                return f"Unsubscribed: the rule “{rule.name}” sends nothing more to this address."
            paused = link.action == "pause"
            if rule.paused != paused:
                rule.paused, rule.updated_at = paused, now
                self._audit(s, now, rule.key_id, f"link.{link.action}", subject, {"endpoint": link.endpoint_id})
            return f"The rule “{rule.name}” is {'paused: no alerts are sent until it is resumed' if paused else 'active again'}."

    def link_subject(self, link: Link) -> str | None:
        """The name of the rule a link is about (None when it no longer exists)."""
        with self.session() as s:
            rule = self._linked_rule(s, link)
            return None if rule is None else rule.name

    @staticmethod
    def _linked_rule(s: Session, link: Link) -> Rule | None:
        """The rule a link was made for: the same id and creation instant, with the link's
        endpoint belonging to the rule's key (else None: the rule is gone)."""
        rule = s.get(Rule, link.rule_id)
        endpoint = s.get(Endpoint, link.endpoint_id)
        if rule is None or rule_stamp(rule.created_at) != link.stamp or endpoint is None or endpoint.key_id != rule.key_id:
            return None
        return rule
