"""Email over a real local SMTP server (``aiosmtpd``) and Discord to a real local HTTP receiver:
what arrives (text and HTML parts, one-click unsubscribe headers with a signed link, Discord
embeds with mentions disabled), and what each answer means (a refused mailbox disables the
endpoint, a temporary refusal and Discord's 429 are retried)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.alerts.delivery import Channels, deliver_due, message_id
from app.alerts.links import LinkSigner, rule_stamp
from app.alerts.mail import MailSettings
from app.alerts.rules import Filters, KeywordRule
from app.alerts.store import AlertStore
from tests.smtp_inbox import Inbox, free_port

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET = "s" * 40
RECORD = {"unique_key": "65012345", "complaint_type": "HEAT/HOT WATER", "descriptor": "ENTIRE BUILDING", "incident_address": "12 W 4 ST"}
PAYLOAD: dict[str, Any] = {
    "type": "event",
    "city": "nyc",
    "source": "nyc_311",
    "id": "65012345",
    "kind": "request",
    "category": "HEAT/HOT WATER",
    "time": "2026-11-30T08:00:00+00:00",
    "address": "12 W 4 ST",
    "lon": -73.99,
    "lat": 40.73,
    "record": RECORD,
}


@pytest.fixture
def store(alert_store: AlertStore) -> AlertStore:
    return alert_store  # SQLite and PostgreSQL


def _channels(port: int = 25) -> Channels:
    mail = MailSettings(host="127.0.0.1", port=port, sender="alerts@heat.example.org", security="none", timeout=5)
    return Channels(allow=frozenset({"localhost"}), timeout=5, mail=mail, links=LinkSigner(SECRET, "http://heat.example.org"))


def _queue(store: AlertStore, kind: str, target: str, items: list[str]) -> tuple[int, int]:
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "Heat on my block", KeywordRule(keyword="heat"), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, kind, target)
    store.link(rule.id, endpoint.id)
    store.enqueue("nyc", "events", "p", [(rule.id, "nyc_311", i, {**PAYLOAD, "id": i}) for i in items], now=NOW)
    return rule.id, endpoint.id


def _run(store: AlertStore, channels: Channels, now: datetime = NOW) -> int:
    return asyncio.run(deliver_due(store, now=now, channels=channels))


def test_an_email_has_text_html_and_one_click_unsubscribe(store: AlertStore, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    rule_id, endpoint_id = _queue(store, "email", "tenant@example.org", ["65012345"])
    assert _run(store, _channels(port)) == 1
    (message,) = inbox.messages
    assert message["To"] == "tenant@example.org"
    assert message["Subject"] == "Heat on my block: HEAT/HOT WATER at 12 W 4 ST"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert f"\r\nList-Unsubscribe: <{unsubscribe}>\r\n".encode() in inbox.raw[0]  # raw, as mail clients look for it
    link = LinkSigner(SECRET, "http://heat.example.org").read(unsubscribe.rsplit("/", 1)[1])
    assert (link.action, link.rule_id, link.endpoint_id) == ("unsubscribe", rule_id, endpoint_id)
    assert link.stamp == rule_stamp(store.rules()[0].created_at)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    plain, markup = text.get_content(), html.get_content()
    for value in RECORD.values():  # the provider's own record, as published
        assert value in plain
    assert "<th" in markup
    assert "ENTIRE BUILDING" in markup
    assert unsubscribe in markup
    (sent,) = store.deliveries(status="sent")
    assert sent.last_status == 250
    assert message["Message-ID"] == f"<{message_id(sent)}@heat.example.org>"  # stable per delivery: a repeat is recognisable


def test_provider_text_is_escaped_in_html_and_kept_out_of_headers(store: AlertStore, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "r", KeywordRule(keyword="xx"), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, "email", "a@example.org")
    store.link(rule.id, endpoint.id)
    evil = {**PAYLOAD, "category": "X\r\nBcc: victim@example.org", "record": {"descriptor": "<script>alert(1)</script>"}}
    store.enqueue("nyc", "events", "p", [(rule.id, "nyc_311", "1", evil)], now=NOW)
    _run(store, _channels(port))
    (message,) = inbox.messages
    assert message["Bcc"] is None
    assert "victim" not in str(message.get("To"))
    html = message.get_body(("html",))
    assert html is not None
    assert "<script>" not in html.get_content()
    assert "&lt;script&gt;" in html.get_content()


def test_a_refused_mailbox_disables_the_endpoint_and_a_temporary_refusal_retries(store: AlertStore, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    inbox.refuse = "451 4.3.0 try again later"
    _queue(store, "email", "tenant@example.org", ["1"])
    _run(store, _channels(port))
    (pending,) = store.deliveries(status="pending")
    assert pending.last_status == 451
    assert pending.next_attempt_at > NOW
    inbox.refuse = "550 5.1.1 no such mailbox"
    _run(store, _channels(port), pending.next_attempt_at)
    (dead,) = store.deliveries(status="dead")
    assert dead.last_status == 550
    assert "disabled" in (dead.last_error or "")
    assert inbox.messages == []
    assert store.audit()[-1].action == "endpoint.disable"


def test_email_without_a_configured_server_is_a_dead_letter_saying_so(store: AlertStore) -> None:
    _queue(store, "email", "tenant@example.org", ["1"])
    _run(store, Channels(links=LinkSigner(SECRET, "http://x")))
    (dead,) = store.deliveries(status="dead")
    assert "CSH_SMTP_HOST" in (dead.last_error or "")


def test_an_unreachable_smtp_server_is_retried(store: AlertStore) -> None:
    _queue(store, "email", "tenant@example.org", ["1"])
    _run(store, _channels(free_port()))  # nothing listens there
    (pending,) = store.deliveries(status="pending")
    assert pending.attempts == 1
    assert "SMTP" in (pending.last_error or "")


class DiscordReceiver:
    def __init__(self, server: HTTPServer, statuses: list[tuple[int, dict[str, str]]]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        server.expect_request("/api/webhooks/123/abc", method="POST").respond_with_handler(self)

    def __call__(self, request: Request) -> Response:
        self.bodies.append(json.loads(request.get_data(as_text=True)))
        status, headers = self.statuses.pop(0) if self.statuses else (204, {})
        return Response("", status=status, headers=headers)


def test_discord_gets_embeds_with_mentions_disabled(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = DiscordReceiver(httpserver, [])
    url = httpserver.url_for("/api/webhooks/123/abc").replace("127.0.0.1", "localhost")
    rule_id, endpoint_id = _queue(store, "discord", url, ["65012345"])
    assert _run(store, _channels()) == 1
    (body,) = receiver.bodies
    assert body["allowed_mentions"] == {"parse": []}  # "@everyone" in a provider's text pings no one
    (embed,) = body["embeds"]
    assert embed["title"] == "Heat on my block: HEAT/HOT WATER at 12 W 4 ST"
    assert {"name": "descriptor", "value": "ENTIRE BUILDING", "inline": True} in embed["fields"]
    assert embed["timestamp"] == PAYLOAD["time"]
    pause = embed["description"].rsplit("(", 1)[1].rstrip(")")
    link = LinkSigner(SECRET, "http://heat.example.org").read(pause.rsplit("/", 1)[1])
    assert (link.action, link.rule_id, link.endpoint_id) == ("pause", rule_id, endpoint_id)
    assert len(store.deliveries(status="sent")) == 1


def test_discord_429_honours_retry_after_and_a_long_digest_fits_its_limits(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = DiscordReceiver(httpserver, [(429, {"Retry-After": "120"})])
    url = httpserver.url_for("/api/webhooks/123/abc").replace("127.0.0.1", "localhost")
    _queue(store, "discord", url, ["1"])
    _run(store, _channels())
    (pending,) = store.deliveries(status="pending")
    assert (pending.next_attempt_at - NOW) >= timedelta(seconds=120)
    from app.alerts.discord import discord_body
    from app.alerts.messages import digest_message

    long = {**PAYLOAD, "record": {f"field{i}": "y" * 900 for i in range(20)}}
    message, items = digest_message([long] * 30, "r", "2026-11-30")
    body = json.loads(discord_body(message, items, "http://x/links/t"))
    total = sum(
        len(e["title"]) + len(e["description"]) + sum(len(f["name"]) + len(f["value"]) for f in e["fields"]) for e in body["embeds"]
    )
    assert total <= 6000
    assert len(body["embeds"]) <= 10
    assert all(len(f["value"]) <= 1024 for e in body["embeds"] for f in e["fields"])
    assert receiver.bodies  # the 429 attempt reached the receiver
