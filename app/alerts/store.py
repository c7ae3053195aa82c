"""The one object that owns the alerts database: engine, migrations and every read and write.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so the
scheduler and request handlers of one process can share it; PostgreSQL is used by URL
(``postgresql+psycopg://...``) where several processes share one store.

>>> store = AlertStore("sqlite:///:memory:")   # doctest: +SKIP
>>> key, token = store.create_key("ops")       # the token is shown once
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from pydantic import TypeAdapter
from sqlalchemy import Engine, create_engine, delete, event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.models import ApiKey, AuditEntry, Delivery, Endpoint, EvaluationCursor, Rule, RuleEndpoint
from app.alerts.rules import AnomalyRule, Filters, RuleSpec

__all__ = ["ENDPOINT_KINDS", "KEY_PREFIX", "AlertStore", "Match", "hash_token"]

#: A match to enqueue: ``(rule_id, source, item_id, payload)``.
Match = tuple[int, str, str, dict[str, Any]]
ENDPOINT_KINDS = ("webhook", "email", "discord")
_SPEC: TypeAdapter[Any] = TypeAdapter(RuleSpec)

log = structlog.get_logger(__name__)

#: Every API key starts with this, so a leaked one is recognisable (and scanners can find it).
KEY_PREFIX = "csh_"
_SHOWN = 12  # characters of a key kept in the clear for display


def hash_token(token: str) -> str:
    """SHA-256 hex of an API key: the only form of it the store keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class AlertStore:
    """Alert state behind one SQLAlchemy engine; the schema is brought to the newest Alembic
    revision when the store opens (``migrate=False`` to leave it as it is)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = make_url(url)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (Alembic, on this store's engine)."""
        config = Config()
        config.set_main_option("script_location", str(files("app.alerts").joinpath("migrations")))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._sessions.begin() as session:
            yield session

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

    def audit(self, key_id: int | None = None) -> list[AuditEntry]:
        """The audit log (of one key, or all), oldest first."""
        with self.session() as s:
            query = select(AuditEntry).order_by(AuditEntry.id)
            if key_id is not None:
                query = query.where(AuditEntry.key_id == key_id)
            return list(s.scalars(query))

    # -- rules and endpoints --------------------------------------------------------------------

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

    # -- matches, cursor and the delivery queue --------------------------------------------------

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
                    "status": "pending",
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

    def claim(
        self, now: datetime, *, kinds: tuple[str, ...], limit: int = 100, lease: timedelta = timedelta(minutes=5)
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
                .where(Delivery.status.in_(("pending", "sending")), Delivery.next_attempt_at <= now)
                .where(Endpoint.kind.in_(kinds), Endpoint.disabled_reason.is_(None))
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
    ) -> bool:
        """Record one attempt of a delivery claimed with ``lease``: its new status, when to try again, why. Nothing is written when the claim is
        no longer this one's (its lease ran out and another process took the delivery); returns
        whether it was written."""
        with self.session() as s:
            delivery = s.get(Delivery, delivery_id)
            if delivery is None or delivery.status != "sending" or delivery.next_attempt_at != lease:
                log.warning("alerts.settle_lost_claim", delivery=delivery_id)
                return False
            delivery.attempts += 1
            delivery.status = status
            delivery.last_status = code
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
