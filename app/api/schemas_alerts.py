"""Request and response models of the alert API. Rule bodies reuse the specs of
:mod:`app.alerts.rules`; every rule a value breaks is a 422 naming the field. Nothing here ever
carries a secret except :class:`EndpointCreated` and :class:`RotateOut`, which show a webhook's
signing secret once."""

from __future__ import annotations

import re
import zoneinfo
from collections import Counter
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from app.alerts.models import Delivery, Endpoint, Rule
from app.alerts.rules import Filters, RuleSpec

__all__ = [
    "MAX_ID",
    "DeliveriesOut",
    "DeliveryOut",
    "DeliveryStatus",
    "EndpointCreated",
    "EndpointIn",
    "EndpointOut",
    "EndpointsOut",
    "PreviewIn",
    "RotateOut",
    "RuleIn",
    "RuleOut",
    "RulePatch",
    "RulesOut",
    "TestOut",
]

#: Ids are 32-bit on PostgreSQL: a larger one is refused as input, never sent to the database.
MAX_ID = 2_147_483_647
DeliveryStatus = Literal["pending", "held", "sending", "sent", "dead", "capped", "paused", "digest", "digested"]
_CLOCK = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
# A strict address check (email-validator is not installed): dot-atom local part, a host name of
# letter-digit-hyphen labels with a letter TLD; nothing that could break a mail header.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_DISCORD = re.compile(r"https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/webhooks/[0-9]{1,30}/[A-Za-z0-9_-]{1,200}")


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@lru_cache(maxsize=1024)
def _polars_knows(zone: str) -> bool:
    """Matching and previews localise with polars, whose zone database is not the system's:
    ``localtime`` and ``Factory`` are files of the system's but zones polars refuses."""
    try:
        pl.Series([datetime(2020, 1, 1)]).dt.replace_time_zone(zone)
    except Exception:  # polars raises its ComputeError (or another error) for a zone it lacks
        return False
    return True


def _iana(value: str) -> str:
    if value not in _zones() or not _polars_knows(value):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. America/New_York, Europe/London, UTC)")
    return value


def _clock(value: str) -> str:
    if not _CLOCK.fullmatch(value):
        raise ValueError(f"{value!r} is not a local time HH:MM from 00:00 to 23:59")
    return value


Timezone = Annotated[str, Field(max_length=64), AfterValidator(_iana)]
ClockTime = Annotated[str, Field(max_length=5), AfterValidator(_clock)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]
City = Annotated[str, Field(min_length=1, max_length=64, description="City id (see /cities).")]
DailyCap = Annotated[int, Field(ge=1, le=10_000, description="Alerts sent per local day at most (1..10000); the rest are dropped.")]


def _distinct(ids: list[int]) -> list[int]:
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"endpoint_ids must not repeat an id: {', '.join(map(str, repeated))}")
    return ids


# Strict: JSON true is no endpoint 1, nor 1.0 or "1" an id.
EndpointIds = Annotated[
    list[Annotated[StrictInt, Field(ge=1, le=MAX_ID)]],
    Field(max_length=50, description="Endpoints of this key the rule delivers to (distinct ids)."),
    AfterValidator(_distinct),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RuleFields(_Body):
    """What a rule is and when it may send (shared by create and preview)."""

    city: City
    spec: RuleSpec = Field(description="What the rule watches: one of the rule kinds, tagged by `kind`.")
    filters: Filters = Field(default_factory=Filters, description="Only these categories, event kinds or sources (empty: all).")
    timezone: Timezone | None = Field(None, description="IANA zone of quiet hours, digests and daily caps. Default: the city's zone.")
    daily_cap: DailyCap | None = None
    quiet_start: ClockTime | None = Field(None, description="Local HH:MM from which alerts are held (with quiet_end).")
    quiet_end: ClockTime | None = Field(None, validate_default=True, description="Local HH:MM at which held alerts go out.")
    digest_at: ClockTime | None = Field(None, description="Local HH:MM of one daily digest instead of single alerts.")

    @field_validator("quiet_end")
    @classmethod
    def _quiet_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("quiet_start")
        if (start is None) != (value is None) and "quiet_start" in info.data:
            raise ValueError("quiet_start and quiet_end are given together or not at all")
        if start is not None and start == value:
            raise ValueError("quiet hours must end at another time than they start")
        return value


class RuleIn(_RuleFields):
    """A new rule."""

    name: Name
    paused: bool = False
    endpoint_ids: EndpointIds = Field(default_factory=list)


class PreviewIn(_RuleFields):
    """A rule to preview, as for ``POST /rules`` (nothing is saved; name, pause and endpoints are ignored)."""

    name: Name | None = None
    paused: bool = False
    endpoint_ids: EndpointIds = Field(default_factory=list)


class RulePatch(_Body):
    """Fields to change (absent: unchanged; ``null`` clears an optional one). ``spec`` and
    ``filters`` are replaced whole; ``endpoint_ids`` is the whole new set."""

    name: Name | None = None
    city: City | None = None
    spec: RuleSpec | None = None
    filters: Filters | None = None
    timezone: Timezone | None = None
    daily_cap: DailyCap | None = None
    quiet_start: ClockTime | None = None
    quiet_end: ClockTime | None = None
    digest_at: ClockTime | None = None
    paused: bool | None = None
    endpoint_ids: EndpointIds | None = None


class RuleOut(BaseModel):
    """A stored rule."""

    id: int
    name: str
    city: str
    spec: RuleSpec
    filters: Filters
    timezone: str
    daily_cap: int | None
    quiet_start: str | None
    quiet_end: str | None
    digest_at: str | None
    paused: bool
    endpoint_ids: list[int]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, rule: Rule, endpoint_ids: list[int]) -> RuleOut:
        return cls.model_validate(
            {
                **{f: getattr(rule, f) for f in ("id", "name", "city", "timezone", "daily_cap", "quiet_start", "quiet_end", "digest_at")},
                **{"paused": rule.paused, "created_at": rule.created_at, "updated_at": rule.updated_at},
                **{"spec": rule.params, "filters": rule.filters, "endpoint_ids": endpoint_ids},
            }
        )


class RulesOut(BaseModel):
    """One page of the key's rules, oldest first."""

    total: int
    limit: int
    offset: int
    next_offset: int | None
    items: list[RuleOut]


class EndpointIn(_Body):
    """A new delivery endpoint."""

    kind: Literal["webhook", "email", "discord"]
    target: str = Field(
        min_length=3,
        max_length=2048,
        description="webhook: an http(s) URL resolving to public addresses (or a host in CSH_WEBHOOK_ALLOW); email: an address; "
        "discord: https://discord.com/api/webhooks/<id>/<token>.",
    )

    @field_validator("target")
    @classmethod
    def _target_of_kind(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind == "email" and not (_EMAIL.fullmatch(value) and len(value) <= 254 and len(value.split("@")[0]) <= 64):
            raise ValueError("an email target must be one plain address such as name@example.org")
        if kind == "discord" and not _DISCORD.fullmatch(value):
            raise ValueError("a discord target must be a Discord webhook URL: https://discord.com/api/webhooks/<id>/<token>")
        return value


def shown_target(endpoint: Endpoint) -> str:
    """The target as the API shows it: a Discord webhook's token (its credential) masked."""
    if endpoint.kind == "discord":
        return endpoint.target.rsplit("/", 1)[0] + "/****"
    return endpoint.target


class EndpointOut(BaseModel):
    """A stored endpoint, without its secret."""

    id: int
    kind: str
    target: str = Field(description="Where alerts go (a Discord webhook's token is masked).")
    created_at: datetime
    disabled_reason: str | None = Field(description="Why deliveries to it stopped (e.g. it answered 410 Gone); null while live.")
    signed: bool = Field(description="Deliveries carry Standard Webhooks signatures (webhooks).")
    previous_secret_until: datetime | None = Field(description="After a rotation: the old secret signs too until then.")

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointOut:
        return cls(
            id=endpoint.id,
            kind=endpoint.kind,
            target=shown_target(endpoint),
            created_at=endpoint.created_at,
            disabled_reason=endpoint.disabled_reason,
            signed=endpoint.secret is not None,
            previous_secret_until=endpoint.previous_until if endpoint.previous_secret else None,
        )


class EndpointCreated(EndpointOut):
    """A new endpoint; a webhook's signing secret is shown here once and never again."""

    secret: str | None = Field(description="The whsec_... signing secret (webhooks; shown only in this answer).")


class EndpointsOut(BaseModel):
    """The key's endpoints, oldest first."""

    items: list[EndpointOut]


class TestOut(BaseModel):
    """How a test send went."""

    sent: bool
    code: int | None = Field(description="The receiver's HTTP status, when it answered.")
    reason: str | None = Field(description="Why it was not sent (refused target, timeout, status ...).")


class RotateOut(BaseModel):
    """A webhook's new signing secret (shown once)."""

    id: int
    secret: str
    previous_secret_until: datetime | None


class DeliveryOut(BaseModel):
    """One queued or finished delivery (its payload is what the receiver gets)."""

    id: int
    rule_id: int
    endpoint_id: int
    source: str
    item_id: str
    status: str = Field(
        description="pending (due at next_attempt_at) | sending | held (quiet hours, until next_attempt_at) | sent | dead "
        "(given up, see last_error; retryable) | capped (over the rule's daily cap) | paused (the rule was paused) | digest "
        "(waiting for the daily digest) | digested (sent in a digest)"
    )
    attempts: int
    last_status: int | None = Field(description="The receiver's last answer: HTTP status, or SMTP reply code for email.")
    last_error: str | None = Field(description="Why the last attempt did not succeed, or why the delivery was not sent.")
    next_attempt_at: datetime | None = Field(description="When it is tried next (null once it is no longer waiting).")
    created_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        fields = {f: getattr(delivery, f) for f in cls.model_fields}
        if delivery.status not in _WAITING:
            fields["next_attempt_at"] = None
        return cls.model_validate(fields)


_WAITING = ("pending", "sending", "held")


class DeliveriesOut(BaseModel):
    """One page of the key's deliveries, newest first."""

    total: int
    limit: int
    offset: int
    next_offset: int | None
    items: list[DeliveryOut]
