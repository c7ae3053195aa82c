"""Signed pause and unsubscribe links that need no login and always work.

A link carries the action, the rule (its id and creation instant, so a link of a deleted rule
never acts on a later rule that got its id) and the endpoint, signed with the server's link secret
(itsdangerous, HMAC-SHA256, a salt per purpose); it does not expire, so the link in a year-old
email still stops the emails. Following it twice does the same as once. The secret is
``CSH_ALERTS_LINK_SECRET`` or, when unset, a random one kept in ``<data_dir>/alerts_link.key``
(created on first use, readable by its owner only)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from itsdangerous import BadSignature, URLSafeSerializer

from app.config import Settings

__all__ = ["ACTIONS", "BadLinkError", "Link", "LinkSigner", "link_secret", "rule_stamp", "signer_from_settings"]

Action = Literal["pause", "resume", "unsubscribe"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "unsubscribe")
_SALT = "csh-alert-link"


class BadLinkError(ValueError):
    """A link whose signature or content does not check."""


@dataclass(frozen=True)
class Link:
    """What a link asks: ``action`` on ``rule_id`` (created at ``stamp``, milliseconds since the
    epoch: see :func:`rule_stamp`) for ``endpoint_id``."""

    action: Action
    rule_id: int
    endpoint_id: int
    stamp: int


class LinkSigner:
    """Makes and reads the links of one server (``base_url``: where its ``/links`` route is served)."""

    def __init__(self, secret: str, base_url: str) -> None:
        if len(secret) < 32:
            raise ValueError("the link secret must have at least 32 characters")
        self._serializer = URLSafeSerializer(secret, salt=_SALT)
        self.base_url = base_url.rstrip("/")

    def token(self, link: Link) -> str:
        """The signed token of ``link``."""
        return str(self._serializer.dumps([link.action, link.rule_id, link.endpoint_id, link.stamp]))

    def url(self, action: Action, rule_id: int, endpoint_id: int, stamp: int) -> str:
        """The absolute URL that does ``action``."""
        return f"{self.base_url}/links/{self.token(Link(action, rule_id, endpoint_id, stamp))}"

    def read(self, token: str) -> Link:
        """The link a token carries; :class:`BadLinkError` when it was not signed here."""
        if len(token) > 512:
            raise BadLinkError("the link is too long")
        try:
            action, rule_id, endpoint_id, stamp = self._serializer.loads(token)
        except (BadSignature, ValueError, TypeError) as err:
            raise BadLinkError("the link is not valid (it may be cut short or altered)") from err
        if action not in ACTIONS or not all(isinstance(v, int) and not isinstance(v, bool) for v in (rule_id, endpoint_id, stamp)):
            raise BadLinkError("the link is not valid")
        return Link(action, rule_id, endpoint_id, stamp)


def link_secret(configured: str | None, data_dir: Path) -> str:
    """``configured``, else the secret kept in ``data_dir`` (made on first use, mode 0600)."""
    if configured:
        return configured
    path = data_dir / "alerts_link.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def signer_from_settings(settings: Settings) -> LinkSigner:
    """The link signer of this server: its secret (see :func:`link_secret`) and public address."""
    configured = settings.alerts_link_secret.get_secret_value() if settings.alerts_link_secret else None
    return LinkSigner(link_secret(configured, settings.data_dir), settings.base_url)


def rule_stamp(created_at: datetime) -> int:
    """A rule's creation instant as a link carries it (milliseconds since the epoch)."""
    return int(created_at.timestamp() * 1000)
