"""Shared fixtures: one tiny demo snapshot per test session (and the same demo published without
a privacy rule, for raw totals), and a live server over it; a Chicago-only store from the shared
real files and a live server over that; plus :func:`snapshot_sql` for tests that check a snapshot
file with SQL of their own and :func:`level_totals` for raw counts of a level."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import text

from app.alerts.store import AlertStore
from app.config import Settings
from app.data.demo import DemoSpec
from app.data.snapshot import Snapshot, connect, query
from app.data.store import Store
from app.pipeline import build_demo
from bench.serve import served
from tests.browser import ARGS, CHROMIUM, Problems, open_page
from tests.postgres import postgres_server
from tests.smtp_inbox import Inbox, smtp_inbox

ROOT = Path(__file__).resolve().parents[1]
#: The fixed demo used by tests: small, but with 35 days so a 28-day baseline exists.
TINY_SPEC = DemoSpec(seed=7, end=datetime(2026, 11, 1, tzinfo=UTC), days=35, size=60_000)
#: The tiny city is too sparse for the grains chosen automatically to be the product's usual ones
#: (neighborhood by day, borough by hour): tests pin them, so they exercise every grain.
TINY_GRAINS = "tract=week,neighborhood=day,borough=hour,city=hour"
# Every publish of the tests that does not say otherwise uses these grains (the ones the default
# demo chooses), so a small test city does not spend its time trying finer grains first; the
# real-data ingests (tests.real_stores.ingest_cli) and the default-demo evaluation choose them as a
# user's would ("auto").
os.environ.setdefault("CSH_GRAINS", TINY_GRAINS)
#: Real public data beside the project (read-only); tests that need it skip when absent.
SHARED_DATA = Path(os.environ.get("CSH_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the tiny demo snapshot (built once per session)."""
    data_dir = tmp_path_factory.mktemp("tiny")
    build_demo(Store(data_dir), TINY_SPEC, settings=Settings(data_dir=data_dir, grains=TINY_GRAINS))
    return data_dir


@pytest.fixture(scope="session")
def tiny_store(tiny_dir: Path) -> Store:
    """A read side over the tiny snapshot. Tests must not write to it (use their own tmp dirs)."""
    return Store(tiny_dir)


@pytest.fixture(scope="session")
def tiny_snap(tiny_store: Store) -> Snapshot:
    """The published tiny snapshot (shared, read-only)."""
    snap = tiny_store.current()
    assert snap is not None
    return snap


@pytest.fixture(scope="session")
def open_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the tiny demo published with privacy mode ``none`` (raw counts, internal
    use): the release rule is fixed per snapshot, so raw totals need a snapshot of their own."""
    data_dir = tmp_path_factory.mktemp("tiny-open")
    build_demo(Store(data_dir), TINY_SPEC, settings=Settings(data_dir=data_dir, privacy_mode="none", grains=TINY_GRAINS))
    return data_dir


@pytest.fixture(scope="session")
def open_snap(open_dir: Path) -> Snapshot:
    """The tiny demo's snapshot published with privacy mode ``none`` (shared, read-only)."""
    snap = Store(open_dir).current()
    assert snap is not None
    return snap


def level_totals(events: pl.DataFrame, parents: pl.DataFrame, level: str) -> pl.DataFrame:
    """Raw event counts per ``unit_id`` of ``level`` (``unit_id, count``), through the engine's own
    roll-up (:func:`app.engine.layers.layer_cells`, all categories): unlocated events count at
    ``city`` only. ``events`` need ``tract_id``; ``ts`` and ``category`` default to one bin."""
    from app.engine.layers import layer_cells

    fill = {"ts": pl.lit(datetime(2026, 1, 5, tzinfo=UTC)), "category": pl.lit("x")}
    events = events.with_columns(**{c: v for c, v in fill.items() if c not in events.columns})
    cells = layer_cells(events, parents, {level: "week"}, "UTC", [level]).filter(pl.col("category") == "*")
    return cells.group_by("unit_id").agg(pl.col("count").sum()).sort("unit_id")


def snapshot_sql(path: Path, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run ``sql`` on its own read-only connection to the snapshot file at ``path`` (closed after)."""
    con = connect(path, read_only=True)
    try:
        return query(con, sql, params)
    finally:
        con.close()


@pytest.fixture(scope="session")
def tiny_settings(tiny_dir: Path) -> Settings:
    """Settings for an app over the tiny snapshot, with the scheduler off (tests drive refreshes)."""
    return Settings(data_dir=tiny_dir, scheduler_enabled=False)


@pytest.fixture(scope="session")
def live_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server (``panel_serve.py``) on a free loopback port over the tiny snapshot."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with log_path.open("wb") as log:
        try:
            with served(tiny_dir, log, timeout=90) as url:
                yield url
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text(errors='replace')}") from exc


@pytest.fixture(scope="session")
def chicago_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding only Chicago: the shared 2022 crimes file (no ids, no points) and the 2012
    SODA export (located), each imported by the ingest CLI as a user would."""
    from tests.real_stores import CHICAGO_2012, CHICAGO_GEO, CHICAGO_SLIM, ingest_cli

    missing = [p.name for p in (CHICAGO_SLIM, CHICAGO_2012, CHICAGO_GEO) if not p.exists()]
    if missing:
        pytest.skip(f"shared real data absent ({', '.join(missing)}); see ../shared/data/README.md")
    data_dir = tmp_path_factory.mktemp("chicago")
    ingest_cli(data_dir, "chicago_crimes", CHICAGO_SLIM, "--id-field", "@content")
    ingest_cli(data_dir, "chicago_crimes", CHICAGO_2012, "--id-field", "case_number")
    return data_dir


@pytest.fixture(scope="session")
def chicago_server(chicago_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server over the Chicago-only store."""
    from tests.real_stores import serve_logged

    yield from serve_logged(chicago_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium per test module (skipped when the Debian package is not installed).

    Per module, not per session: Playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, and later modules that call ``asyncio.run`` would fail under it."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install -y chromium` to run the browser tests")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def dashboard(chromium: Browser, live_server: str) -> Iterator[tuple[Page, Problems]]:
    """The dashboard loaded in a fresh page, with the heat raster and the table rendered."""
    page, problems = open_page(chromium, f"{live_server}/dashboard")
    try:
        yield page, problems
    finally:
        page.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (skips with the reason where none can run)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def alert_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AlertStore]:
    """A fresh alerts store on SQLite (WAL) and, as a second case, on its own PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    else:
        base = request.getfixturevalue("pg_url")
        name = f"alerts_{abs(hash(request.node.nodeid)) % 10**9}"
        admin = AlertStore(base, migrate=False)
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as con:
            con.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            con.execute(text(f'CREATE DATABASE "{name}"'))
        admin.close()
        url = base.rsplit("/", 1)[0] + f"/{name}"
    s = AlertStore(url)
    yield s
    s.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real local SMTP server: its inbox and port."""
    with smtp_inbox() as server:
        yield server
