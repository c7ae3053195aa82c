"""A delivering process killed mid-delivery and restarted: nothing lost, nothing sent twice.

Real parts only: a SQLite alerts store on disk, a slow local HTTP receiver that verifies every
signature with the ``standardwebhooks`` package, and :func:`app.alerts.delivery.deliver_due` run
in real subprocesses. The first is SIGKILLed while the receiver holds one request open (the
delivery is claimed, sent, and never settled). A restart before the claim's lease ends sends what
was pending and leaves the in-flight delivery alone; a restart after the lease sends that one
again with the same ``webhook-id``, so the receiver can drop the repeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from app.alerts.delivery import message_id
from app.alerts.rules import Filters, KeywordRule
from app.alerts.store import AlertStore

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [f"R{i}" for i in range(8)]
HELD = 3  # the receiver holds the 3rd request open: the process is killed while it waits
#: One delivering process: ``deliver_due`` with the queue's clock moved by ``argv[2]`` seconds
#: (the claim's lease is five minutes; the signatures carry the real time).
DELIVER = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from app.alerts.delivery import deliver_due
from app.alerts.store import AlertStore
store = AlertStore(sys.argv[1])
now = datetime.now(UTC) + timedelta(seconds=float(sys.argv[2]))
print("tried", asyncio.run(deliver_due(store, now=now, allow=frozenset({"localhost"}), timeout=20)), flush=True)
"""


@dataclass
class SlowReceiver:
    """Answers each webhook after ``delay`` seconds, holds request number ``hold`` open until
    ``release`` is set, and keeps every verified arrival as ``(webhook-id, item id)``."""

    secret: str = ""
    delay: float = 0.15
    hold: int = HELD
    seen: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def handle(self, headers: dict[str, str], body: str) -> None:
        try:
            Webhook(self.secret).verify(body, headers)
        except Exception as err:
            self.refused.append(str(err))
            return
        self.seen.append((headers["webhook-id"], json.loads(body)["item_id"]))
        if len(self.seen) == self.hold:
            self.holding.set()
            self.release.wait(30)
        else:
            time.sleep(self.delay)


@pytest.fixture
def receiver() -> Iterator[tuple[SlowReceiver, str]]:
    state = SlowReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            try:
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the sender was killed while we held its request
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://localhost:{server.server_address[1]}/hook"
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def _tried(process: subprocess.Popen[str]) -> int:
    """How many deliveries a delivering process attempted (its last line; the log lines precede it)."""
    out, _ = process.communicate(timeout=40)
    assert process.returncode == 0
    word, count = out.strip().splitlines()[-1].split()
    assert word == "tried"
    return int(count)


def _deliver(url: str, shift_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", DELIVER, url, str(shift_s)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.timeout(90)
def test_a_process_killed_mid_delivery_loses_nothing_and_repeats_only_with_the_same_id(
    tmp_path: Path, receiver: tuple[SlowReceiver, str]
) -> None:
    state, target = receiver
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = AlertStore(url)
    key, _ = store.create_key("restart")
    rule = store.create_rule(key.id, "heat", KeywordRule(keyword="heat"), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, "webhook", target)
    assert endpoint.secret is not None
    state.secret = endpoint.secret
    store.link(rule.id, endpoint.id)
    store.enqueue("nyc", "events", "p", [(rule.id, "nyc_311", item, {"unique_key": item}) for item in ITEMS])

    first = _deliver(url, 0)
    while not state.holding.wait(0.1):
        assert first.poll() is None, "the delivering process ended before the request to hold"
    os.kill(first.pid, signal.SIGKILL)  # mid-delivery: sent, never answered, never settled
    first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    state.release.set()
    by_status = {s: [d.item_id for d in store.deliveries(status=s)] for s in ("sent", "sending", "pending")}
    in_flight = state.seen[HELD - 1]
    assert by_status == {"sent": ITEMS[: HELD - 1], "sending": [in_flight[1]], "pending": ITEMS[HELD:]}  # nothing lost

    state.hold = 0
    # restarted while the killed claim's lease still runs: the pending ones, the in-flight one left to its lease
    assert _tried(_deliver(url, 0)) == len(ITEMS) - HELD
    assert [d.item_id for d in store.deliveries(status="sending")] == [in_flight[1]]

    assert _tried(_deliver(url, timedelta(minutes=6).total_seconds())) == 1  # restarted after the lease

    assert state.refused == []
    deliveries = store.deliveries()
    assert sorted((d.rule_id, d.endpoint_id, d.item_id) for d in deliveries) == sorted((rule.id, endpoint.id, i) for i in ITEMS)
    assert all(d.status == "sent" and d.sent_at is not None for d in deliveries)  # one `sent` per (rule, endpoint, item)
    ids = {d.item_id: message_id(d) for d in deliveries}
    assert {item for _, item in state.seen} == set(ITEMS)  # the receiver saw every item
    assert all(webhook_id == ids[item] for webhook_id, item in state.seen)  # each item under its one webhook-id
    repeats = [w for w in set(ids.values()) if [s[0] for s in state.seen].count(w) > 1]
    assert repeats == [in_flight[0]]  # only the delivery in flight at the kill came twice, with the same id
    assert len(state.seen) == len(ITEMS) + 1
    store.close()
