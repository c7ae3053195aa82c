"""Stores built from the real public files in ``../shared/data`` the way a user builds them (the
ingest CLI for files, the ingest loop against a replayed Open311 server), and the files' own
event times read without project code, for direct counts to check the served numbers against."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import httpx
import pytest
from pytest_httpserver import HTTPServer
from replay import cassette_pages, serve_by_page

from app.data.ingest import ingest_source
from app.data.registry import get_source
from app.data.sources import base
from app.data.sources.open311 import Open311Adapter
from app.data.store import Store
from app.pipeline import publish
from bench.serve import served

__all__ = [
    "BOSTON_NOW",
    "CHICAGO_2012",
    "CHICAGO_GEO",
    "CHICAGO_SLIM",
    "UK_XML",
    "boston_rows",
    "build_boston",
    "chicago_2012_times",
    "chicago_slim_rows",
    "count_between",
    "ingest_cli",
    "serve_logged",
    "uk_works",
]

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CSH_SHARED_DATA", ROOT.parent / "shared" / "data"))
CHICAGO_SLIM = SHARED / "events" / "chicago" / "chicago_crimes_2022_slim.csv.gz"
CHICAGO_2012 = SHARED / "events" / "chicago" / "chicago_crimes_2012-01_to_02_soda_export.csv.gz"
CHICAGO_GEO = SHARED / "geo" / "chicago"
UK_XML = SHARED / "events" / "uk" / "national_highways_planned_roadworks_2025-04-14.xml.gz"
#: The replayed Boston server's "now" (the cassettes were recorded then).
BOSTON_NOW = datetime(2025, 11, 3, 15, 0, tzinfo=UTC)
_CHICAGO = ZoneInfo("America/Chicago")
_LONDON = ZoneInfo("Europe/London")


def ingest_cli(data_dir: Path, source: str, path: Path, *extra: str) -> dict[str, Any]:
    """``python -m app.data.ingest --source SOURCE --file PATH ...`` into ``data_dir`` (which it
    publishes), with Chicago's boundaries from the shared folder; returns the CLI's JSON summary."""
    env = {**os.environ, "CSH_DATA_DIR": str(data_dir), "CSH_GEO_DIR": str(CHICAGO_GEO)}
    env.pop("CSH_GRAINS", None)  # the grains a user's import chooses
    done = subprocess.run(
        [sys.executable, "-m", "app.data.ingest", "--source", source, "--file", str(path), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"ingest of {path.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def _local(text: str, zone: ZoneInfo, fmt: str | None = None) -> datetime:
    """A floating local time as UTC (the earlier instant on the autumn repeat, as the ingest does)."""
    value = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    return value.replace(tzinfo=zone).astimezone(UTC)


def chicago_slim_rows() -> list[dict[str, str]]:
    """Every row of the 2022 "slim" crimes file (no id, no point: each row is one incident)."""
    with gzip.open(CHICAGO_SLIM, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def chicago_slim_times(rows: Iterable[dict[str, str]]) -> list[datetime]:
    """The rows' ``Date`` (Chicago wall clock) as UTC instants."""
    return [_local(r["Date"], _CHICAGO) for r in rows]


def chicago_2012_times(located: bool = False) -> list[datetime]:
    """One UTC time per incident of the 2012 SODA export (rows keyed by ``case_number``, as
    imported); only those with coordinates when ``located``."""
    with gzip.open(CHICAGO_2012, "rt", encoding="utf-8", newline="") as fh:
        by_case = {r["case_number"]: r for r in csv.DictReader(fh)}
    return [_local(r["date"], _CHICAGO) for r in by_case.values() if not located or (r["latitude"] and r["longitude"])]


def uk_works() -> list[dict[str, Any]]:
    """The planned works of the UK extract, one per ``NEW_EVENT_NUMBER`` (the newest publication),
    with ``start`` (``SDATE``, UK wall clock) as a UTC instant."""
    root = ElementTree.fromstring(gzip.decompress(UK_XML.read_bytes()))
    newest: dict[str, dict[str, str]] = {}
    for works in root.iter():
        if works.tag.rsplit("}", 1)[-1] != "HE_PLANNED_WORKS":
            continue
        row, key = dict(works.attrib), works.attrib["NEW_EVENT_NUMBER"]
        if key not in newest or row.get("PUBLISHED_DATE", "") >= newest[key].get("PUBLISHED_DATE", ""):
            newest[key] = row
    return [{**r, "start": _local(r["SDATE"], _LONDON, "%d-%b-%Y %H:%M")} for r in newest.values()]


def boston_rows() -> list[dict[str, Any]]:
    """The distinct requests of the Boston Open311 cassettes, with ``ts`` as a UTC instant."""
    rows = {r["service_request_id"]: r for page in cassette_pages("open311", "boston_requests") for r in page.body}
    return [{**r, "ts": datetime.fromisoformat(r["requested_datetime"]).astimezone(UTC)} for r in rows.values()]


def count_between(times: Iterable[datetime], since: datetime, until: datetime) -> int:
    """How many instants fall in ``[since, until)``."""
    return sum(since <= t < until for t in times)


def serve_logged(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server (:func:`bench.serve.served`) over ``data_dir``, its log in a temp file that
    is shown when it fails to start (a warm-up that crashes is a start-up failure)."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with log_path.open("wb") as log:
        try:
            with served(data_dir, log, timeout=120) as url:
                yield url
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text(errors='replace')}") from exc


def build_boston(data_dir: Path) -> None:
    """The Boston 311 cassettes served by a local Open311 server, ingested by the ingest loop (the
    scheduler's and CLI's path) with the recording's clock, then published as the CLI publishes."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    adapters = base._ADAPTERS
    previous = adapters["open311"]
    adapters["open311"] = lambda s: Open311Adapter(s, clock=lambda: BOSTON_NOW)
    try:
        serve_by_page(server, cassette_pages("open311", "boston_requests"), empty=lambda page: [])
        spec = get_source("boston311").model_copy(update={"base_url": server.url_for("/open311/v2")})
        store = Store(data_dir)

        async def go() -> Any:
            async with httpx.AsyncClient(timeout=10) as client:
                return await ingest_source(store, spec, client, since="2025-11-03T13:00:00Z")

        # In a thread of its own: a browser test's Playwright may hold an event loop in this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            report = pool.submit(asyncio.run, go()).result()
        assert report.error is None, report.error
        publish(store, {spec.city}, built_by=f"ingest:{spec.name}")
    finally:
        adapters["open311"] = previous
        server.stop()
