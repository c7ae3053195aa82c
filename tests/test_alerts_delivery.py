"""Webhook deliveries to a real local HTTP receiver that verifies every signature with the
``standardwebhooks`` package: one delivery per item, retries on 5xx and 429 (Retry-After), 410
disables the endpoint, redirects are not followed, the SSRF guard refuses private targets, and
secret rotation signs with both secrets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from app.alerts.delivery import RETRY_SCHEDULE_S, decide, deliver_due
from app.alerts.rules import Filters, KeywordRule
from app.alerts.ssrf import TargetRefusedError, check_target
from app.alerts.store import AlertStore

NOW = datetime.now(UTC).replace(microsecond=0)  # receivers check the timestamp is fresh (5 minutes)
ALLOW = frozenset({"localhost"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    s = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    yield s
    s.close()


class Receiver:
    """Answers with the queued statuses in turn (then 200) and keeps what verified."""

    def __init__(self, server: HTTPServer, statuses: list[int | tuple[int, dict[str, str]]]) -> None:
        self.statuses, self.seen, self.secrets = list(statuses), [], []
        server.expect_request("/hook", method="POST").respond_with_handler(self)

    def __call__(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request.get_data(as_text=True)
        verified = [Webhook(secret).verify(body, headers) for secret in self.secrets]
        self.seen.append({"headers": headers, "body": json.loads(body), "verified": len(verified)})
        answer = self.statuses.pop(0) if self.statuses else 200
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        return Response("ok", status=status, headers=extra)


def _setup(store: AlertStore, server: HTTPServer, items: list[str]) -> tuple[int, int, str]:
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "heat", KeywordRule(keyword="heat"), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, "webhook", server.url_for("/hook").replace("127.0.0.1", "localhost"))
    store.link(rule.id, endpoint.id)
    store.enqueue(
        "nyc", "events", "p", [(rule.id, "nyc_311", item, {"unique_key": item, "descriptor": "NO HEAT"}) for item in items], now=NOW
    )
    assert endpoint.secret is not None
    return rule.id, endpoint.id, endpoint.secret


def _run(store: AlertStore, now: datetime) -> int:
    return asyncio.run(deliver_due(store, now=now, allow=ALLOW, timeout=5))


def test_a_signed_delivery_arrives_once_per_item(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [])
    rule_id, _, secret = _setup(store, httpserver, ["A1", "A2"])
    receiver.secrets = [secret]
    store.enqueue("nyc", "events", "p2", [(rule_id, "nyc_311", "A1", {"unique_key": "A1"})], now=NOW)  # the same item again
    assert _run(store, NOW) == 2
    assert _run(store, NOW + timedelta(hours=1)) == 0  # nothing left to send
    assert [s["body"]["item_id"] for s in receiver.seen] == ["A1", "A2"]
    first = receiver.seen[0]
    assert first["verified"] == 1
    assert first["body"]["data"] == {"unique_key": "A1", "descriptor": "NO HEAT"}
    assert first["headers"]["webhook-id"].startswith("msg_")
    assert first["headers"]["webhook-signature"].startswith("v1,")
    assert abs(int(first["headers"]["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60  # signed at the real time
    sent = store.deliveries(status="sent")
    assert [d.attempts for d in sent] == [1, 1]


def test_a_tampered_body_fails_verification(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [])
    _, _, secret = _setup(store, httpserver, ["A1"])
    _run(store, NOW)
    seen = receiver.seen[0]
    body = json.dumps({**seen["body"], "item_id": "forged"})
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(secret).verify(body, seen["headers"])


def test_500_then_200_is_one_success_after_a_retry(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [500])
    _, _, secret = _setup(store, httpserver, ["A1"])
    receiver.secrets = [secret]
    _run(store, NOW)
    (pending,) = store.deliveries(status="pending")
    wait = (pending.next_attempt_at - NOW).total_seconds()
    assert RETRY_SCHEDULE_S[0] * 0.8 <= wait <= RETRY_SCHEDULE_S[0] * 1.2
    assert _run(store, NOW + timedelta(seconds=1)) == 0  # not due yet
    assert _run(store, pending.next_attempt_at) == 1
    (sent,) = store.deliveries(status="sent")
    assert sent.attempts == 2
    assert sent.last_status == 200
    assert len(receiver.seen) == 2
    assert receiver.seen[0]["headers"]["webhook-id"] == receiver.seen[1]["headers"]["webhook-id"]  # a receiver can drop repeats


def test_429_honours_retry_after(store: AlertStore, httpserver: HTTPServer) -> None:
    Receiver(httpserver, [(429, {"Retry-After": "600"})])
    _setup(store, httpserver, ["A1"])
    _run(store, NOW)
    (pending,) = store.deliveries(status="pending")
    assert (pending.next_attempt_at - NOW).total_seconds() >= 600
    assert pending.last_status == 429


def test_410_disables_the_endpoint(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [410])
    _setup(store, httpserver, ["A1", "A2"])
    assert _run(store, NOW) == 1  # the second is not tried once the endpoint is gone
    first, second = store.deliveries(status="dead")
    assert "410" in (first.last_error or "")
    assert first.attempts == 1
    assert second.attempts == 0
    assert "disabled" in (second.last_error or "")
    assert _run(store, NOW + timedelta(days=1)) == 0
    assert len(receiver.seen) == 1
    assert "endpoint.disable" in [e.action for e in store.audit()]


@pytest.mark.parametrize("status", [302, 400, 404])
def test_redirects_and_other_4xx_are_not_retried(store: AlertStore, httpserver: HTTPServer, status: int) -> None:
    Receiver(httpserver, [(status, {"Location": "http://169.254.169.254/"})])
    _setup(store, httpserver, ["A1"])
    _run(store, NOW)
    (dead,) = store.deliveries(status="dead")
    assert str(status) in (dead.last_error or "")
    assert dead.attempts == 1


def test_a_private_target_is_refused_and_nothing_is_sent(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [])
    _setup(store, httpserver, ["A1"])

    asyncio.run(deliver_due(store, now=NOW))  # no allow-list: localhost is private
    (dead,) = store.deliveries(status="dead")
    assert "non-public" in (dead.last_error or "")
    assert receiver.seen == []


def test_rotation_signs_with_the_old_and_the_new_secret(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [])
    _, endpoint_id, old = _setup(store, httpserver, ["A1"])
    new = store.rotate_secret(endpoint_id, overlap=timedelta(hours=24), now=NOW - timedelta(hours=1))
    assert new != old
    receiver.secrets = [old, new]
    _run(store, NOW)
    assert receiver.seen[0]["verified"] == 2
    assert len(receiver.seen[0]["headers"]["webhook-signature"].split(" ")) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/h",
        "http://10.0.0.1/h",
        "http://100.64.0.1/h",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://[64:ff9b::7f00:1]/h",
        "http://0x7f000001/h",
        "http://localhost/h",
        "http://metadata.google.internal/h",
        "http://224.0.0.1/h",
        "http://[::127.0.0.1]/h",
        "http://[::ffff:0:7f00:1]/h",
        "http://[fec0::1]/h",
        "http://192.0.0.192/h",
        "http://[64:ff9b:1:7f00:0:100:808:808]/h",
        "http://0.0.0.0/h",
        "http://[::1/h",
        "http://example.org/a\x01b",
        "http://bücher.invalid/h",
        "file:///etc/passwd",
        "http://user:pw@example.org/h",
    ],
)
def test_the_ssrf_guard_refuses(url: str) -> None:
    with pytest.raises(TargetRefusedError):
        check_target(url)


def test_the_guard_pins_the_checked_address() -> None:
    target = check_target("http://localhost:8123/h?x=1", allow=ALLOW)
    assert target.pinned_url == "http://127.0.0.1:8123/h?x=1"
    assert target.host == "localhost"


def test_retries_end_in_a_dead_letter() -> None:
    assert decide(503, len(RETRY_SCHEDULE_S), NOW).status == "pending"
    last = decide(503, len(RETRY_SCHEDULE_S) + 1, NOW)
    assert last.status == "dead"
    assert "gave up" in (last.reason or "")
    assert decide(None, 1, NOW, error="timed out").status == "pending"
    assert decide(204, 1, NOW).status == "sent"


def test_the_allow_list_setting_names_trusted_hosts() -> None:
    from app.config import Settings

    allow = Settings(webhook_allow="LocalHost, hooks.lan.").webhook_allow_hosts
    assert allow == {"localhost", "hooks.lan"}
    assert check_target("http://localhost:9/h", allow=allow).address == "127.0.0.1"
    with pytest.raises(TargetRefusedError, match="http or https"):
        check_target("gopher://localhost/h", allow=allow)  # trusted hosts still need http(s)


def test_a_claim_is_exclusive_and_a_dead_process_lease_runs_out(store: AlertStore, httpserver: HTTPServer) -> None:
    receiver = Receiver(httpserver, [])
    _, _, secret = _setup(store, httpserver, ["A1"])
    receiver.secrets = [secret]
    taken = store.claim(NOW, kinds=("webhook",), lease=timedelta(minutes=2))
    assert [d.item_id for d, _, _ in taken] == ["A1"]
    assert store.claim(NOW, kinds=("webhook",)) == []  # another process gets nothing meanwhile
    # the first process dies without settling: after its lease the delivery is sent, not lost
    assert _run(store, NOW + timedelta(minutes=1)) == 0
    assert _run(store, NOW + timedelta(minutes=2)) == 1  # (receivers accept timestamps within 5 minutes)
    (sent,) = store.deliveries(status="sent")
    assert sent.item_id == "A1"
    assert len(receiver.seen) == 1
    # the first process wakes up late: its claim is gone, so its verdict is not written
    (delivery, _, lease) = taken[0]
    assert store.settle(delivery.id, lease, "pending", NOW, "late", NOW) is False
    assert store.deliveries(status="sent")[0].id == delivery.id


@pytest.mark.parametrize(
    ("status", "headers", "target"),
    [
        (429, {"Retry-After": "\u00b2"}, None),
        (429, {"Retry-After": "9" * 5000}, None),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, None),
        (200, {}, "http://[::1/"),
        (200, {}, "http://localhost/" + "a" * 70_000),
    ],
)
def test_no_receiver_or_target_stops_the_queue(
    store: AlertStore, httpserver: HTTPServer, status: int, headers: dict[str, str], target: str | None
) -> None:
    Receiver(httpserver, [(status, headers)])
    rule_id, endpoint_id, _ = _setup(store, httpserver, ["A1"])
    if target is not None:
        with store.session() as s:
            from app.alerts.models import Endpoint

            s.get(Endpoint, endpoint_id).target = target  # type: ignore[union-attr]  # the row exists
    key_id = store.rules()[0].key_id
    healthy = store.create_endpoint(key_id, "webhook", httpserver.url_for("/hook").replace("127.0.0.1", "localhost"))
    store.link(rule_id, healthy.id)
    store.enqueue("nyc", "events", "p2", [(rule_id, "nyc_311", "B1", {})], now=NOW)
    _run(store, NOW)
    statuses = {(d.endpoint_id, d.item_id): d.status for d in store.deliveries()}
    assert statuses[(endpoint_id, "A1")] in ("pending", "dead")
    assert statuses[(healthy.id, "B1")] == "sent"  # the next one in the queue still went out
    assert "sending" not in statuses.values()


def test_a_slow_drip_reply_hits_the_deadline(store: AlertStore) -> None:
    import socket
    import threading
    import time as clock

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def drip() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(40):
            try:
                conn.sendall(b"x")
            except OSError:
                break
            clock.sleep(0.25)
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "r", KeywordRule(keyword="heat"), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, "webhook", f"http://localhost:{port}/hook")
    store.link(rule.id, endpoint.id)
    store.enqueue("nyc", "events", "p", [(rule.id, "nyc_311", "A1", {})], now=NOW)
    started = clock.perf_counter()
    asyncio.run(deliver_due(store, now=NOW, allow=ALLOW, timeout=1.0))
    assert clock.perf_counter() - started < 4  # 1.5 s deadline, although every read arrives within 1 s
    (pending,) = store.deliveries(status="pending")
    assert "timed out" in (pending.last_error or "")
    server.close()


def test_a_slow_receiver_holds_up_only_its_own_queue(store: AlertStore, httpserver: HTTPServer) -> None:
    """Sends run side by side, one at a time per endpoint: a receiver that takes 2 s per request
    delays its own deliveries, not another endpoint's."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's hook name
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(2)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    fast_seen: list[float] = []
    httpserver.expect_request("/hook", method="POST").respond_with_handler(lambda r: fast_seen.append(time.monotonic()) or Response("ok"))
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "r", KeywordRule(keyword="heat"), Filters(), city="nyc")
    slow_ep = store.create_endpoint(key.id, "webhook", f"http://localhost:{slow.server_address[1]}/hook")
    fast_ep = store.create_endpoint(key.id, "webhook", httpserver.url_for("/hook").replace("127.0.0.1", "localhost"))
    store.link(rule.id, slow_ep.id)
    store.link(rule.id, fast_ep.id)
    store.enqueue("nyc", "events", "p", [(rule.id, "nyc_311", f"A{i}", {"i": i}) for i in range(3)], now=NOW)
    started = time.monotonic()
    try:
        assert _run(store, NOW) == 6
    finally:
        slow.shutdown()
        slow.server_close()
    assert len(fast_seen) == 3
    assert max(fast_seen) - started < 1.5  # the fast endpoint did not wait behind the slow one's 2 s sends
    assert time.monotonic() - started >= 6  # the slow endpoint got its three one after another
    assert {d.status for d in store.deliveries()} == {"sent"}
