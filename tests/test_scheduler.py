"""The in-process scheduler: started by the app's lifespan, it polls the demo feed and publishes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.data.demo import DemoSpec, floor_hour
from app.data.store import Store
from app.pipeline import build_demo


def test_lifespan_scheduler_polls_the_feed_and_publishes_a_new_snapshot(tmp_path: Path) -> None:
    end = floor_hour(datetime.now(UTC)) - timedelta(hours=2)
    store = Store(tmp_path)
    first = build_demo(store, DemoSpec(seed=3, end=end, days=30, size=20_000))
    settings = Settings(data_dir=tmp_path, poll_seconds=0.5, scheduler_enabled=True)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        body = client.get("/healthz").json()
        while body["snapshot"]["id"] == first.id and time.monotonic() < deadline:
            time.sleep(0.25)
            body = client.get("/healthz").json()
    assert body["snapshot"]["id"] != first.id, "the scheduler published no new snapshot within 60 s"
    source = body["sources"][0]
    assert source["source"] == "demo"
    assert datetime.fromisoformat(source["cursor"]) > end  # the cursor moved past the built window
    assert source["consecutive_failures"] == 0
    before, after = first.row_counts(), body["snapshot"]["rows"]
    assert after["request"] > before["request"]  # two hours of simulated 311 requests arrived


def test_scheduler_disabled_publishes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = build_demo(store, DemoSpec(seed=3, end=floor_hour(datetime.now(UTC)) - timedelta(hours=2), days=30, size=20_000))
    with TestClient(create_app(Settings(data_dir=tmp_path, poll_seconds=0.2, scheduler_enabled=False))) as client:
        time.sleep(1.0)
        assert client.get("/healthz").json()["snapshot"]["id"] == first.id
