"""The fault matrix: Socrata cassettes replayed by a real local HTTP server with injected faults
(5xx, 429 + Retry-After, timeouts, a truncated page, empty pages, rows repeated across pages, a row
updated between polls, a process killed mid-ingest). After each, the stored set equals the
provider's set exactly and a published snapshot agrees."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import socrata_fake as sf
from polars.testing import assert_frame_equal
from pytest_httpserver import HTTPServer

from app.data.ingest import IngestReport, ingest_source
from app.data.registry import SourceSpec, get_source
from app.data.snapshot import query
from app.data.sources import adapter_for
from app.data.sources.http import RetryPolicy
from app.data.sources.socrata import SocrataAdapter
from app.data.store import Store
from conftest import ROOT, snapshot_sql

COLUMNS = ["source_id", "ts", "category", "descriptor", "lon", "lat", "attrs"]
FAST = RetryPolicy(attempts=4, base=0.005, cap=0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[HTTPServer]:
    """A threaded local server (a slow or blocked answer must not hold up the next request)."""
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.clear()
    srv.stop()


@pytest.fixture
def fake(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> sf.FakeSocrata:
    monkeypatch.setattr(SocrataAdapter, "default_policy", FAST)
    monkeypatch.delenv("SOCRATA_APP_TOKEN", raising=False)
    server.clear()
    fake = sf.FakeSocrata.from_cassette("nyc311")
    fake.install(server)
    return fake


def spec_for(server: HTTPServer, page_size: int = 5, name: str = "nyc311") -> SourceSpec:
    return get_source(name).model_copy(update={"base_url": server.url_for("/").rstrip("/"), "page_size": page_size})


def ingest(store: Store, spec: SourceSpec, timeout: float = 2.0) -> IngestReport:
    async def go() -> IngestReport:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await ingest_source(store, spec, client)

    return asyncio.run(go())


def stored(store: Store, spec: SourceSpec) -> pl.DataFrame:
    with store.writer() as con:
        frame = query(con, f"SELECT {', '.join(COLUMNS)} FROM {spec.table} WHERE source = $s ORDER BY source_id", {"s": spec.name})
    return frame


def expected(spec: SourceSpec, rows: list[dict[str, Any]]) -> pl.DataFrame:
    return adapter_for(spec).normalize(rows).select(COLUMNS).sort("source_id")


def in_order(fake: sf.FakeSocrata) -> list[dict[str, Any]]:
    """The provider's rows in the order the adapter asks for (cursor, then id)."""
    return sorted(fake.current(), key=lambda r: (r[":updated_at"], r["unique_key"]))


def state_of(store: Store, source: str) -> dict[str, Any]:
    with store.writer() as con:
        rows: list[dict[str, Any]] = query(con, "SELECT * FROM ingest_state WHERE source = $s", {"s": source}).to_dicts()
    return rows[0]


def assert_exact(store: Store, spec: SourceSpec, fake: sf.FakeSocrata) -> None:
    """Stored rows == the provider's current rows (ids, times, categories, points, attrs), no
    duplicates; and a snapshot published now holds exactly them."""
    want, got = expected(spec, fake.current()), stored(store, spec)
    assert got["source_id"].to_list() == want["source_id"].to_list()  # sorted lists: no loss, no duplicates
    assert_frame_equal(got.drop("attrs"), want.drop("attrs"))
    assert [json.loads(a) for a in got["attrs"]] == [json.loads(a) for a in want["attrs"]]
    snap = store.publish({"source": spec.name})
    assert snap.row_counts()[spec.table] == want.height
    ids = snapshot_sql(snap.path, f"SELECT source_id, count(*) AS n FROM {spec.table} GROUP BY ALL ORDER BY source_id")
    assert ids["source_id"].to_list() == want["source_id"].to_list()
    assert set(ids["n"].to_list()) == {1}
    assert snap.events(spec.city).height == want.height


@pytest.mark.parametrize(
    ("faults", "retries"),
    [
        ([sf.status(500), sf.status(503), None, sf.status(502)], 3),
        ([sf.delay(1.0), None, sf.delay(1.0)], 2),  # the client gives up after 0.25 s
        ([None, sf.truncate(), sf.truncate()], 2),
        ([None, sf.repeat(2), sf.repeat(5)], 0),
        ([None, None, None, None, sf.empty()], 0),  # 24 rows in pages of 6: the 5th, empty page is the end
    ],
    ids=["5xx", "timeouts", "truncated-json", "repeated-rows", "empty-last-page"],
)
def test_one_poll_through_faults_stores_the_exact_set(
    tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata, faults: list[Any], retries: int
) -> None:
    fake.inject(*faults)
    spec = spec_for(server, page_size=6)
    report = ingest(Store(tmp_path), spec, timeout=0.25)
    assert report.error is None
    assert not fake.faults  # every fault was served
    assert len(fake.requests) == 5 + retries  # 4 full pages and the empty last one, plus retries
    assert report.rows == len(fake.rows) + sum(f.rows for f in faults if f is not None and f.kind == "repeat")
    assert_exact(Store(tmp_path), spec, fake)


def test_429_waits_as_long_as_retry_after_says(
    tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SocrataAdapter, "default_policy", RetryPolicy(attempts=3, base=0.005, cap=5))
    fake.inject(None, sf.status(429, retry_after="1"))
    started = time.monotonic()
    report = ingest(Store(tmp_path), spec_for(server))
    assert report.error is None
    assert time.monotonic() - started >= 1.0
    assert_exact(Store(tmp_path), spec_for(server), fake)


def test_an_empty_page_mid_run_is_caught_up_by_the_next_poll(tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata) -> None:
    """A glitch answering ``[]`` ends the run early; the cursor covers only what was stored and no
    validator is kept, so the next poll is not answered 304 and reads the rest."""
    store, spec = Store(tmp_path), spec_for(server)
    fake.inject(None, sf.empty())
    first = ingest(store, spec)
    assert (first.rows, first.error) == (5, None)
    assert state_of(store, "nyc311")["etag"] is None
    assert stored(store, spec)["source_id"].to_list() == sorted(r["unique_key"] for r in in_order(fake)[:5])
    second = ingest(store, spec)
    assert not second.not_modified
    assert "If-None-Match" not in fake.requests[2]["headers"]
    assert_exact(store, spec, fake)


def test_persistent_5xx_fails_the_run_without_moving_the_cursor(tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata) -> None:
    store, spec = Store(tmp_path), spec_for(server)
    fake.inject(None, *[sf.status(500)] * FAST.attempts)
    report = ingest(store, spec)
    assert report.error is not None
    assert "HTTPStatusError" in report.error
    state = state_of(store, "nyc311")
    assert state["consecutive_failures"] == 1
    assert state["cursor"] == in_order(fake)[4][":updated_at"]  # page 1 was committed, page 2 was not
    assert stored(store, spec).height == 5
    assert ingest(store, spec).error is None
    assert_exact(store, spec, fake)
    assert state_of(store, "nyc311")["consecutive_failures"] == 0


def test_a_row_updated_between_polls_is_replaced_not_duplicated(tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata) -> None:
    store, spec = Store(tmp_path), spec_for(server)
    assert ingest(store, spec).error is None
    assert_exact(store, spec, fake)
    cursor = state_of(store, "nyc311")["cursor"]
    fake.update("61276295", status="Closed", closed_date="2024-05-27T09:30:00.000")
    fake.add(sf.load_cassette("socrata/nyc311.json").body[0] | {"unique_key": "61299999", ":id": "row-new"})
    before = len(fake.requests)
    report = ingest(store, spec)
    assert report.error is None
    assert not report.not_modified
    poll = fake.requests[before]
    assert poll["args"]["$where"].startswith(":updated_at >= ")  # from the cursor, less the overlap
    assert poll["args"]["$where"] < f":updated_at >= '{cursor}'"
    assert poll["headers"]["If-None-Match"] == '"erm2-nwe9-v1--gzip"'
    assert_exact(store, spec, fake)
    row = stored(store, spec).filter(pl.col("source_id") == "61276295")
    assert row.height == 1
    attrs = json.loads(row["attrs"].item())
    assert attrs["status"] == "Closed"
    assert attrs["closed_date"] == "2024-05-27T09:30:00.000"
    # nothing changed since: the conditional request is answered 304 and nothing is re-read
    again = ingest(store, spec)
    assert again.not_modified
    assert again.rows == 0
    assert_exact(store, spec, fake)


def test_drifted_payload_is_recorded_and_known_fields_keep_flowing(tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata) -> None:
    for ident, row in fake.rows.items():
        row.pop("status", None)
        row["incident_zip"] = int(row["incident_zip"]) if "incident_zip" in row else None
        row["descriptor_3"] = "new"
        fake.rows[ident] = {k: v for k, v in row.items() if v is not None}
    store, spec = Store(tmp_path), spec_for(server, page_size=50)
    report = ingest(store, spec)
    assert report.error is None
    drift = json.loads(state_of(store, "nyc311")["drift"])
    assert drift == {"new": ["descriptor_3"], "vanished": ["status"], "retyped": ["incident_zip: string -> integer"]}
    assert_exact(store, spec, fake)
    assert stored(store, spec)["category"].null_count() == 0


_CHILD = """
import asyncio, sys
from pathlib import Path
import httpx
from app.data.ingest import ingest_source
from app.data.registry import get_source
from app.data.sources.http import RetryPolicy
from app.data.sources.socrata import SocrataAdapter
from app.data.store import Store

SocrataAdapter.default_policy = RetryPolicy(attempts=2, base=0.01, cap=0.02)
spec = get_source("nyc311").model_copy(update={"base_url": sys.argv[2], "page_size": 5})

async def main():
    async with httpx.AsyncClient(timeout=60) as client:
        await ingest_source(Store(Path(sys.argv[1])), spec, client)

asyncio.run(main())
"""


def test_a_process_killed_mid_ingest_resumes_without_loss_or_duplicates(tmp_path: Path, server: HTTPServer, fake: sf.FakeSocrata) -> None:
    """The second page's request arrives only after the first page is committed; the child is
    killed (SIGKILL) while it waits for it, then a fresh run takes over from the stored cursor."""
    started, release = threading.Event(), threading.Event()
    fake.inject(None, sf.block(started, release))
    spec = spec_for(server)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), spec.base_url], cwd=ROOT, env=env)
    try:
        assert started.wait(60), "the child never asked for page 2"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        release.set()
        if child.poll() is None:
            child.kill()
    store = Store(tmp_path)
    assert stored(store, spec)["source_id"].to_list() == sorted(r["unique_key"] for r in in_order(fake)[:5])
    assert state_of(store, "nyc311")["cursor"] == in_order(fake)[4][":updated_at"]
    before = len(fake.requests)
    assert ingest(store, spec).error is None
    assert fake.requests[before]["args"]["$where"].startswith(":updated_at >= ")
    assert_exact(store, spec, fake)
