"""``alert_e2e_p95_ms``: how long after a snapshot is published its alerts reach a receiver.

A small demo city is built once into a throw-away store, with an alerts store (SQLite, WAL) of 100
rules of every event kind, each with its own webhook endpoint on a real local HTTP server that
verifies every signature with the ``standardwebhooks`` package. Each round writes 20 new rows (copies
of demo rows: realistic places and categories, fresh ids, stored now) into the working database and
publishes; then the scheduler's path runs: the new snapshot's frames are loaded
(:func:`app.scheduler.refresh_and_warm` warms them), the rules are evaluated
(:func:`app.alerts.evaluate.evaluate_snapshot`) and the due deliveries sent
(:func:`app.alerts.delivery.deliver_due`). A round's latency runs from the swap of the ``CURRENT``
pointer (its file time: the coarse kernel clock, never late) to the receiver's arrival time of the
round's last delivery; the figure is the 95th percentile over the rounds.

The scheduler runs the delivery job every :data:`app.scheduler.DELIVERY_SECONDS`; a job that
waits for its next tick adds up to that interval, which this figure leaves out (it measures the
work, not the timer).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
from standardwebhooks.webhooks import Webhook

from app.alerts.delivery import deliver_due, message_id
from app.alerts.evaluate import evaluate_snapshot
from app.alerts.models import Delivery
from app.alerts.rules import AddressRule, AreaRule, Filters, KeywordRule, PolygonRule, RadiusRule
from app.alerts.store import AlertStore
from app.config import Settings
from app.data.demo import DemoSpec, floor_hour
from app.data.snapshot import query
from app.data.store import Store
from app.pipeline import build_demo
from bench.run import Figures

__all__ = ["Receiver", "alert_e2e_figures", "e2e_latencies_ms"]

ALLOW = frozenset({"localhost"})
_POOL, _PER_ROUND = 200, 20


class Receiver:
    """A local webhook receiver (a thread serving HTTP): verifies each delivery with the secret of
    its path ``/hook/<n>`` and keeps the first arrival time (ns) of each ``webhook-id``.

    >>> with Receiver.running() as receiver:       # doctest: +SKIP
    ...     url = receiver.url("/hook/1")
    """

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.arrived: dict[str, int] = {}
        self.refused: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                at = time.time_ns()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(outer.secrets[self.path]).verify(body, headers)
                except Exception as err:  # unknown path or bad signature: refused and counted
                    outer.refused.append(f"{self.path}: {err}")
                    self.send_response(400)
                else:
                    with outer._lock:
                        outer.arrived.setdefault(headers["webhook-id"], at)
                    self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://localhost:{self.server.server_address[1]}{path}"

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[Receiver]:
        receiver = cls()
        thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield receiver
        finally:
            receiver.server.shutdown()
            receiver.server.server_close()


def _rules(pool: pl.DataFrame, rng: np.random.Generator) -> list[tuple[str, object]]:
    """100 rules on the pool's places and texts: radius, area, keyword, address and polygon."""
    rules: list[tuple[str, object]] = []
    for i in range(100):
        row = pool.row(int(rng.integers(0, pool.height)) if i >= 40 else i, named=True)  # radius i watches pool row i
        if i < 40:
            rules.append((f"radius{i}", RadiusRule(lat=row["lat"], lon=row["lon"], radius_m=250)))
        elif i < 65:
            rules.append((f"area{i}", AreaRule(level="tract", unit_id=row["tract_id"])))
        elif i < 85:
            rules.append((f"keyword{i}", KeywordRule(keyword=f"[ref{int(rng.integers(0, _POOL)):03d}]")))
        elif i < 95:
            rules.append((f"address{i}", AddressRule(address=f"{int(rng.integers(0, 50))} bench st")))
        else:
            x, y, d = row["lon"], row["lat"], 0.004
            ring = [[x - d, y - d], [x + d, y - d], [x + d, y + d], [x - d, y + d], [x - d, y - d]]
            rules.append((f"polygon{i}", PolygonRule(geometry={"type": "Polygon", "coordinates": [ring]})))
    return rules


def _new_rows(pool: pl.DataFrame, round_no: int, rng: np.random.Generator) -> pl.DataFrame:
    """``_PER_ROUND`` copies of pool rows stored now, the first at radius rule ``round_no % 40``'s
    centre so every round alerts; each carries a ``[refNNN]`` token and a street address."""
    picks = [round_no % 40, *rng.integers(0, pool.height, _PER_ROUND - 1).tolist()]
    now = datetime.now(UTC)
    rows = pool[picks].with_row_index("_i")
    source_id = pl.format("bench-{}-{}", pl.lit(round_no), pl.col("_i"))
    return rows.with_columns(
        source_id=source_id,
        id=pl.format("{}:{}", pl.col("source"), source_id),
        ts=pl.lit(now),
        valid_from=pl.lit(now),
        descriptor=pl.format("{} [ref{}]", pl.col("descriptor").fill_null(""), pl.col("_pool").cast(pl.String).str.zfill(3)),
        attrs=pl.concat_str(
            pl.lit('{"agency": "NYPD", "incident_address": "'), (pl.col("_pool") % 50).cast(pl.String), pl.lit(' Bench St."}')
        ),
    ).drop("_i", "_pool")


def e2e_latencies_ms(data_dir: Path, rounds: int = 25, seed: int = 0) -> tuple[list[float], int]:
    """Latency of each round (ms, see the module docstring) and how many deliveries were sent."""
    end = floor_hour(datetime.now(UTC)) - timedelta(hours=1)
    settings = Settings(data_dir=data_dir)
    store = Store(data_dir)
    build_demo(store, DemoSpec(seed=11, end=end, days=7, size=3_000), settings=settings)
    with store.writer() as con:
        sql = f"SELECT * FROM request WHERE lon IS NOT NULL AND tract_id IS NOT NULL ORDER BY id LIMIT {_POOL}"
        pool = query(con, sql).with_row_index("_pool").with_columns(pl.col("_pool").cast(pl.Int64))
    rng = np.random.default_rng(seed)
    alerts = AlertStore(f"sqlite:///{data_dir / 'alerts.sqlite'}")
    latencies: list[float] = []
    sent = 0
    try:
        with Receiver.running() as receiver:
            key, _ = alerts.create_key("bench")
            for n, (name, spec) in enumerate(_rules(pool, rng)):
                rule = alerts.create_rule(key.id, name, spec, Filters(), city="nyc")
                endpoint = alerts.create_endpoint(key.id, "webhook", receiver.url(f"/hook/{n}"))
                assert endpoint.secret is not None
                receiver.secrets[f"/hook/{n}"] = endpoint.secret
                alerts.link(rule.id, endpoint.id)
            first = store.current()
            assert first is not None
            evaluate_snapshot(alerts, first)  # the first evaluation starts the watch
            last_id = 0
            for round_no in range(rounds):
                with store.writer() as con:
                    store.upsert(con, "request", _new_rows(pool, round_no, rng))
                snap = store.publish({"source": "bench"})
                swapped = (store.data_dir / "CURRENT").stat().st_mtime_ns
                for city in snap.cities():  # what refresh_and_warm does after a publish
                    snap.events(city)
                evaluate_snapshot(alerts, snap)
                asyncio.run(deliver_due(alerts, allow=ALLOW, timeout=5))
                new: list[Delivery] = [d for d in alerts.deliveries() if d.id > last_id]
                if not new or any(d.status != "sent" for d in new) or receiver.refused:
                    raise RuntimeError(f"round {round_no}: deliveries {[(d.id, d.status) for d in new]}, refused {receiver.refused}")
                last_id = max(d.id for d in new)
                arrived = [receiver.arrived[message_id(d)] for d in new]
                latencies.append((max(arrived) - swapped) / 1e6)
                sent += len(new)
    finally:
        alerts.close()
    return latencies, sent


def alert_e2e_figures(rounds: int = 25) -> Figures:
    """``alert_e2e_p95_ms``: 95th percentile of :func:`e2e_latencies_ms` over ``rounds`` rounds."""
    with tempfile.TemporaryDirectory(prefix="csh-bench-e2e-") as tmp:
        latencies, _ = e2e_latencies_ms(Path(tmp), rounds)
    return {"alert_e2e_p95_ms": (round(float(np.percentile(latencies, 95)), 1), "ms")}


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="csh-bench-e2e-") as tmp:
        t0 = time.perf_counter()
        ms, count = e2e_latencies_ms(Path(tmp))
        print(f"{len(ms)} rounds, {count} deliveries, {time.perf_counter() - t0:.1f}s in all")
        print("latencies ms:", json.dumps([round(v, 1) for v in ms]))
        print(f"median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms (pid {os.getpid()})")
