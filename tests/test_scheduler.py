"""The in-process scheduler: started by the app's lifespan, it polls the demo feed and publishes."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import socrata_fake as sf
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from app.alerts.delivery import deliver_due
from app.alerts.evaluate import STREAM, alert_events
from app.alerts.rules import AreaRule, Filters
from app.alerts.store import AlertStore
from app.api.main import create_app
from app.config import Settings, get_settings
from app.data.demo import DemoSpec, floor_hour
from app.data.ingest import main as ingest_main
from app.data.registry import REGISTRY_FILE
from app.data.sources.http import RetryPolicy
from app.data.sources.socrata import SocrataAdapter
from app.data.store import Store
from app.pipeline import build_demo, refresh
from app.scheduler import refresh_and_warm
from conftest import SHARED_DATA


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


def test_refresh_polls_registry_sources_through_the_ingest_path(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the scheduler does with ``CSH_SOURCES=nyc311``: same ingest code, then a snapshot."""
    fake = sf.FakeSocrata.from_cassette("nyc311")
    base = fake.install(httpserver)
    registry = REGISTRY_FILE.read_text().replace('base_url = "https://data.cityofnewyork.us"', f'base_url = "{base}"', 1)
    (tmp_path / "sources.toml").write_text(registry)
    monkeypatch.setenv("CSH_SOURCES_FILE", str(tmp_path / "sources.toml"))
    monkeypatch.delenv("SOCRATA_APP_TOKEN", raising=False)
    monkeypatch.setattr(SocrataAdapter, "default_policy", RetryPolicy(attempts=2, base=0.01, cap=0.05))
    store = Store(tmp_path / "store")
    snap = refresh(store, live_sources=["nyc311"])
    assert snap is not None
    assert snap.row_counts()["request"] == len(fake.rows) > 0
    state = snap.ingest_state().filter(pl.col("source") == "nyc311").to_dicts()[0]
    assert state["last_success"] is not None
    assert state["rows_total"] == len(fake.rows)
    again = refresh(store, live_sources=["nyc311"])
    assert again is not None
    assert again.id != snap.id
    assert again.row_counts()["request"] == len(fake.rows)  # re-polling never duplicates


def _import_uk(path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``python -m app.data.ingest --source uk_planned_roadworks --file PATH`` in-process into ``data_dir``."""
    monkeypatch.setenv("CSH_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        return ingest_main(["--source", "uk_planned_roadworks", "--file", str(path)])
    finally:
        get_settings.cache_clear()


def test_cli_imports_a_real_uk_roadworks_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = SHARED_DATA / "events/uk/national_highways_planned_roadworks_2025-04-14.xml.gz"
    if not path.exists():
        pytest.skip(f"real UK planned-roadworks file not found at {path}")
    assert _import_uk(path, tmp_path, monkeypatch) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 1428  # 1,429 works, one listed twice in the file
    snap = Store(tmp_path).current()
    assert snap is not None
    assert summary["snapshot"] == snap.id
    assert snap.row_counts()["closure"] == 1428
    assert "uk" in snap.cities()


def test_cli_keeps_the_rows_and_says_so_when_no_release_can_be_protected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An import whose release the audit cannot protect at any grain exits 1 with the reason in its
    summary, keeps the imported rows in the working database and publishes nothing unaudited."""
    import app.pipeline
    from app.engine.suppression import UnprotectedCells

    path = SHARED_DATA / "events/uk/national_highways_planned_roadworks_2025-04-14.xml.gz"
    if not path.exists():
        pytest.skip(f"real UK planned-roadworks file not found at {path}")

    def refuse(*_: object, **__: object) -> None:
        raise UnprotectedCells("privacy audit: 3 withheld cells of tract+neighborhood+borough+city@week cannot be protected", {})

    monkeypatch.setattr(app.pipeline, "publish", refuse)
    assert _import_uk(path, tmp_path, monkeypatch) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["snapshot"] is None
    assert "cannot be protected" in summary["error"]
    assert "rows are stored" in summary["error"]
    store = Store(tmp_path)
    assert store.current() is None  # nothing published
    with store.writer() as con:
        assert con.execute("SELECT count(*) FROM closure").fetchone() == (1428,)


def test_each_tick_brings_one_signed_delivery_per_new_row(tmp_path: Path, httpserver: HTTPServer) -> None:
    """The poll job evaluates the rules against every new snapshot and the delivery job sends to a
    real receiver that verifies each signature: the first tick starts the watch, the next brings
    exactly one delivery per new row in the watched borough, and a tick that brings nothing (its
    re-read overlaps the last) sends nothing again."""
    end = floor_hour(datetime.now(UTC)) - timedelta(hours=6)
    store = Store(tmp_path)
    build_demo(store, DemoSpec(seed=3, end=end, days=10, size=5_000), settings=Settings(data_dir=tmp_path))
    alerts = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    key, _ = alerts.create_key("test")
    rule = alerts.create_rule(key.id, "manhattan", AreaRule(level="borough", unit_id="MN"), Filters(), city="nyc")
    endpoint = alerts.create_endpoint(key.id, "webhook", httpserver.url_for("/hook").replace("127.0.0.1", "localhost"))
    alerts.link(rule.id, endpoint.id)
    assert endpoint.secret is not None
    seen: list[str] = []

    def receive(request: Request) -> Response:
        body = request.get_data(as_text=True)
        Webhook(endpoint.secret).verify(body, {k.lower(): v for k, v in request.headers.items()})  # raises on a bad signature
        seen.append(json.loads(body)["item_id"])
        return Response("ok", status=200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)

    def deliver() -> None:
        asyncio.run(deliver_due(alerts, allow=frozenset({"localhost"}), limit=10_000, timeout=5))

    refresh_and_warm(store, [], alerts, now=end + timedelta(hours=2))
    deliver()
    assert alerts.cursor("nyc", STREAM) is not None
    assert seen == []
    watched = store.current()
    assert watched is not None
    start = watched.newest_stored("nyc")
    refresh_and_warm(store, [], alerts, now=end + timedelta(hours=5))
    deliver()
    snap = store.current()
    assert snap is not None
    assert start is not None
    rows = alert_events(snap.rows_stored_after("nyc", start), snap.units("nyc"))
    want = set(rows.filter(pl.col("borough") == "MN")["event_id"].to_list())
    assert len(want) > 0
    assert sorted(seen) == sorted(want)  # each new Manhattan row once, nothing from before the watch
    refresh_and_warm(store, [], alerts, now=end + timedelta(hours=5))
    deliver()
    assert sorted(seen) == sorted(want)
    assert {d.status for d in alerts.deliveries(key.id)} == {"sent"}


def test_a_publish_that_queues_alerts_sends_them_without_waiting_for_the_delivery_round(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery job runs as soon as a publish has queued deliveries: with its own round set to
    an hour, the alerts of the first poll still arrive within seconds."""
    import app.scheduler

    monkeypatch.setattr(app.scheduler, "DELIVERY_SECONDS", 3600.0)
    end = floor_hour(datetime.now(UTC)) - timedelta(hours=2)
    store = Store(tmp_path)
    built = build_demo(store, DemoSpec(seed=3, end=end, days=10, size=20_000), settings=Settings(data_dir=tmp_path))
    alerts = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    key, _ = alerts.create_key("test")
    rule = alerts.create_rule(key.id, "city", AreaRule(level="borough", unit_id="MN"), Filters(), city="nyc")
    alerts.link(rule.id, alerts.create_endpoint(key.id, "webhook", httpserver.url_for("/hook").replace("127.0.0.1", "localhost")).id)
    newest = built.newest_stored("nyc")
    assert newest is not None
    alerts.enqueue("nyc", STREAM, f"{newest.isoformat()} {newest.isoformat()}", [])  # the watch began with the built store
    seen: list[str] = []
    httpserver.expect_request("/hook", method="POST").respond_with_handler(
        lambda request: seen.append(json.loads(request.get_data(as_text=True))["item_id"]) or Response("ok", status=200)
    )
    alerts.close()
    settings = Settings(data_dir=tmp_path, poll_seconds=1.0, scheduler_enabled=True, webhook_allow="localhost")
    with TestClient(create_app(settings)):
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            time.sleep(0.25)
    assert seen, "no delivery arrived within 60 s although the delivery round is an hour"
    assert len(seen) == len(set(seen))
