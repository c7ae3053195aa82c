"""Quiet hours, daily caps and daily digests under a controlled clock, in the rule's own time zone,
through the real queue and a real local webhook receiver; and pause through the queue."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.alerts.delivery import Channels, deliver_due
from app.alerts.pacing import digest_time, local_day_start, parse_hhmm, quiet_until
from app.alerts.rules import Filters, KeywordRule
from app.alerts.store import AlertStore

NY = ZoneInfo("America/New_York")


def ny(y: int, m: int, d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NY).astimezone(UTC)


def test_quiet_hours_across_midnight_and_a_dst_change() -> None:
    assert quiet_until(ny(2026, 11, 30, 23), "America/New_York", "22:00", "07:00") == ny(2026, 12, 1, 7)
    assert quiet_until(ny(2026, 12, 1, 3), "America/New_York", "22:00", "07:00") == ny(2026, 12, 1, 7)
    assert quiet_until(ny(2026, 12, 1, 7), "America/New_York", "22:00", "07:00") is None
    assert quiet_until(ny(2026, 12, 1, 12), "America/New_York", "22:00", "07:00") is None
    assert quiet_until(ny(2026, 12, 1, 12), "America/New_York", "12:00", "13:30") == ny(2026, 12, 1, 13, 30)
    assert quiet_until(ny(2026, 12, 1, 12), "America/New_York", "09:00", "09:00") is None
    # the night clocks go back (1 Nov 2026): 22:00 EDT to 07:00 EST is 10 hours, not 9
    start = ny(2026, 10, 31, 22)
    assert quiet_until(start, "America/New_York", "22:00", "07:00") - start == timedelta(hours=10)  # type: ignore[operator]  # not None here
    assert local_day_start(ny(2026, 12, 1, 0, 30), "America/New_York") == ny(2026, 12, 1, 0)
    assert digest_time(ny(2026, 12, 1, 23), "America/New_York", "08:00") == ("2026-12-01", ny(2026, 12, 1, 8))


@pytest.mark.parametrize("bad", ["7:00", "24:00", "12:60", "ab:cd", "12-00", ""])
def test_bad_local_times_name_the_rule(bad: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM|between 00:00"):
        parse_hhmm(bad)


class Hook:
    def __init__(self, server: HTTPServer) -> None:
        self.bodies: list[dict[str, Any]] = []
        server.expect_request("/hook", method="POST").respond_with_handler(self)

    def __call__(self, request: Request) -> Response:
        self.bodies.append(json.loads(request.get_data(as_text=True)))
        return Response("ok", status=200)


@pytest.fixture
def store(alert_store: AlertStore) -> AlertStore:
    return alert_store  # SQLite and PostgreSQL


def _rule(store: AlertStore, server: HTTPServer, **options: Any) -> int:
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "r", KeywordRule(keyword="heat"), Filters(), city="nyc", timezone="America/New_York", **options)
    endpoint = store.create_endpoint(key.id, "webhook", server.url_for("/hook").replace("127.0.0.1", "localhost"))
    store.link(rule.id, endpoint.id)
    return rule.id


def _queue(store: AlertStore, rule_id: int, items: list[str], now: datetime) -> None:
    store.enqueue("nyc", "events", now.isoformat(), [(rule_id, "nyc_311", i, {"unique_key": i}) for i in items], now=now)


def _run(store: AlertStore, now: datetime) -> int:
    return asyncio.run(deliver_due(store, now=now, channels=Channels(allow=frozenset({"localhost"}), timeout=5)))


def test_quiet_hours_hold_then_send(store: AlertStore, httpserver: HTTPServer) -> None:
    hook = Hook(httpserver)
    rule_id = _rule(store, httpserver, quiet_start="22:00", quiet_end="07:00")
    night = ny(2026, 11, 30, 23)
    _queue(store, rule_id, ["A"], night)
    _run(store, night)
    (held,) = store.deliveries(status="held")
    assert held.next_attempt_at == ny(2026, 12, 1, 7)
    assert held.attempts == 0
    assert "quiet hours" in (held.last_error or "")
    assert hook.bodies == []
    assert _run(store, ny(2026, 12, 1, 6, 59)) == 0  # still quiet: not due
    _run(store, ny(2026, 12, 1, 7, 1))
    assert [b["item_id"] for b in hook.bodies] == ["A"]
    (sent,) = store.deliveries(status="sent")
    assert sent.attempts == 1


def test_a_daily_cap_stops_sends_for_the_local_day(store: AlertStore, httpserver: HTTPServer) -> None:
    hook = Hook(httpserver)
    rule_id = _rule(store, httpserver, daily_cap=2)
    morning = ny(2026, 12, 1, 9)
    _queue(store, rule_id, ["A", "B", "C"], morning)
    _run(store, morning)
    assert [b["item_id"] for b in hook.bodies] == ["A", "B"]
    (capped,) = store.deliveries(status="capped")
    assert capped.item_id == "C"
    assert "daily cap of 2" in (capped.last_error or "")
    late = ny(2026, 12, 1, 23, 30)  # 04:30 UTC the next day, still 1 December in New York: still capped
    _queue(store, rule_id, ["D"], late)
    _run(store, late)
    assert len(hook.bodies) == 2
    tomorrow = ny(2026, 12, 2, 0, 30)
    _queue(store, rule_id, ["E"], tomorrow)
    _run(store, tomorrow)
    assert [b["item_id"] for b in hook.bodies] == ["A", "B", "E"]
    store.retry(store.rules()[0].key_id, capped.id, tomorrow)  # a capped alert retried the next day goes out
    _run(store, tomorrow)
    assert [b["item_id"] for b in hook.bodies] == ["A", "B", "E", "C"]


def test_a_daily_digest_gathers_the_day_once(store: AlertStore, httpserver: HTTPServer) -> None:
    hook = Hook(httpserver)
    rule_id = _rule(store, httpserver, digest_at="08:00")
    early = ny(2026, 12, 1, 6)
    _queue(store, rule_id, ["A", "B", "C"], early)
    _run(store, early)
    assert hook.bodies == []
    assert len(store.deliveries(status="digest")) == 3
    _run(store, ny(2026, 12, 1, 8, 5))
    (digest,) = hook.bodies
    assert digest["type"] == "alert.digest"
    assert digest["item_id"] == "digest/2026-12-01"
    assert [i["unique_key"] for i in digest["data"]["items"]] == ["A", "B", "C"]
    assert len(store.deliveries(status="digested")) == 3
    later = ny(2026, 12, 1, 9)
    _queue(store, rule_id, ["D"], later)
    _run(store, ny(2026, 12, 1, 20))  # today's digest is made: D waits for tomorrow's
    assert len(hook.bodies) == 1
    _run(store, ny(2026, 12, 2, 8, 1))
    assert [i["unique_key"] for i in hook.bodies[1]["data"]["items"]] == ["D"]
    assert hook.bodies[1]["item_id"] == "digest/2026-12-02"


def test_a_paused_rule_sends_nothing_already_queued(store: AlertStore, httpserver: HTTPServer) -> None:
    hook = Hook(httpserver)
    rule_id = _rule(store, httpserver)
    now = ny(2026, 12, 1, 12)
    _queue(store, rule_id, ["A"], now)
    with store.session() as s:
        from app.alerts.models import Rule

        rule = s.get(Rule, rule_id)
        assert rule is not None
        rule.paused = True
    _run(store, now)
    assert hook.bodies == []
    (paused,) = store.deliveries(status="paused")
    assert "paused" in (paused.last_error or "")
