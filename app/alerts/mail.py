"""Email deliveries over SMTP (``aiosmtplib``): a text and an HTML part, a stable ``Message-ID`` per
delivery (a repeat after a crash is recognisable), and one-click unsubscribe per RFC 8058
(``List-Unsubscribe`` with the signed link, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``).

What an SMTP answer means: accepted is sent; a permanent refusal of the recipient (5xx: no such
mailbox, it bounced) disables the endpoint, as a webhook's 410 does; a temporary one (4xx) or a
lost connection is retried on the usual schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

import aiosmtplib

from app.alerts.messages import Message, render_email

__all__ = ["MailSettings", "SmtpOutcome", "compose", "is_email_address", "send_mail"]

_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def is_email_address(text: str) -> bool:
    """A plain ``local@domain.tld`` address (no display name, no comments, at most 254 characters)."""
    return len(text) <= 254 and _ADDRESS.fullmatch(text) is not None


@dataclass(frozen=True)
class MailSettings:
    """The SMTP server deliveries go through (``CSH_SMTP_*``)."""

    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    security: Literal["none", "starttls", "tls"] = "starttls"
    timeout: float = 30.0


@dataclass(frozen=True)
class SmtpOutcome:
    """What the server said: ``code`` (250 accepted), whether a refusal is permanent, the reply text."""

    code: int | None
    permanent: bool
    text: str


#: SMTP line endings, and header lines up to RFC 5322's 998 characters, so the long signed URL in
#: ``List-Unsubscribe`` stays one raw ``<https://...>`` (folded into encoded words, mail clients
#: would not find the one-click link).
_POLICY = policy.SMTP.clone(max_line_length=998)


def _header(text: str) -> str:
    return " ".join(text.split())[:200]  # no line breaks reach a header, whatever a provider wrote


def compose(to: str, sender: str, message: Message, items: list[Message], links: dict[str, str], message_id: str) -> EmailMessage:
    """The email of one delivery (``links``: the signed ``pause`` and ``unsubscribe`` URLs)."""
    text, html = render_email(message, items, links)
    email = EmailMessage(policy=_POLICY)
    email["From"] = sender
    email["To"] = to
    email["Subject"] = _header(message.title)
    email["Date"] = formatdate(usegmt=True)
    email["Message-ID"] = message_id
    email["Auto-Submitted"] = "auto-generated"
    email["List-Unsubscribe"] = f"<{links['unsubscribe']}>"
    email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    email.set_content(text)
    email.add_alternative(html, subtype="html")
    return email


async def send_mail(settings: MailSettings, email: EmailMessage) -> SmtpOutcome:
    """Hand ``email`` to the SMTP server; connection failures raise (``aiosmtplib`` errors,
    ``OSError``, ``TimeoutError``) for the caller to retry."""
    try:
        replies, text = await aiosmtplib.send(
            email.as_bytes(policy=_POLICY),  # flattened here: aiosmtplib would fold with its own policy
            sender=settings.sender,
            recipients=[str(email["To"])],
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            use_tls=settings.security == "tls",
            start_tls=settings.security == "starttls",
            timeout=settings.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as err:
        codes = [r.code for r in err.recipients]
        return SmtpOutcome(max(codes) if codes else None, all(500 <= c < 600 for c in codes), "; ".join(r.message for r in err.recipients))
    except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as err:
        return SmtpOutcome(err.code, False, err.message)  # the server's fault or policy, not the address's: retried
    refused = {rcpt: r for rcpt, r in replies.items() if not 200 <= r.code < 300}
    if refused:
        codes = [r.code for r in refused.values()]
        return SmtpOutcome(max(codes), all(500 <= c < 600 for c in codes), "; ".join(r.message for r in refused.values()))
    return SmtpOutcome(250, False, text)
