"""Tables of the alerts store (SQLAlchemy 2 declarative). The schema is created and upgraded only
by the Alembic migrations in :mod:`app.alerts.migrations`; these classes must match them (a test
compares the two)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Dialect, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ApiKey", "AuditEntry", "Base", "Delivery", "Endpoint", "EvaluationCursor", "Rule", "RuleEndpoint"]


class Base(DeclarativeBase):
    """Declarative base of the alerts tables."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every backend (SQLite keeps no zone: it comes back naive,
    and is read as UTC); a naive value is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("alerts store times must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc() -> UtcDateTime:
    return UtcDateTime()


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` is the visible start (``csh_...``)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(_utc())
    revoked_at: Mapped[datetime | None] = mapped_column(_utc(), nullable=True)


class Rule(Base):
    """One alert rule of a key: its kind (``radius``, ``address``, ``keyword``, ``plate``,
    ``polygon``, ``area``, ``anomaly``), the kind's parameters and the common filters."""

    __tablename__ = "rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    city: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    filters: Mapped[dict[str, object]] = mapped_column(JSON)
    timezone: Mapped[str] = mapped_column(String(64))
    daily_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quiet_start: Mapped[str | None] = mapped_column(String(5), nullable=True)  # "22:00" local
    quiet_end: Mapped[str | None] = mapped_column(String(5), nullable=True)
    digest_at: Mapped[str | None] = mapped_column(String(5), nullable=True)  # a daily digest instead of single sends
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(_utc())
    updated_at: Mapped[datetime] = mapped_column(_utc())


class Endpoint(Base):
    """Where deliveries go: a webhook, an email address or a Discord webhook of a key."""

    __tablename__ = "endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # webhook | email | discord
    target: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(String(200), nullable=True)  # whsec_... (webhooks)
    previous_secret: Mapped[str | None] = mapped_column(String(200), nullable=True)  # signed with too until it expires
    previous_until: Mapped[datetime | None] = mapped_column(_utc(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_utc())


class RuleEndpoint(Base):
    """A rule delivers to an endpoint (several endpoints per rule)."""

    __tablename__ = "rule_endpoints"
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True)


class Delivery(Base):
    """One match to send to one endpoint; unique per (rule, endpoint, source, item), so a match is
    never enqueued twice."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("rule_id", "endpoint_id", "source", "item_id", name="uq_delivery_item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    item_id: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending|sending|held|sent|dead|capped|paused|digest|digested
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(_utc(), index=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_utc())
    sent_at: Mapped[datetime | None] = mapped_column(_utc(), nullable=True)


class EvaluationCursor(Base):
    """How far matching has read: per city and stream (``events``: the newest event ingest time
    matched; ``anomalies``: the newest snapshot evaluated)."""

    __tablename__ = "evaluation_cursors"
    city: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(_utc())


class AuditEntry(Base):
    """A change to a key, rule or endpoint: who (key id), what, when; never a secret."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(_utc(), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, object]] = mapped_column(JSON)
