"""The Open311 GeoReport v2 adapter against a real local server replaying Boston cassettes: paging to
the end, date windows and the cursor, the shrinking-window fallback, the API key (sent only when
configured, never logged), UTC times, unlocated rows, the canonical frame and contract drift."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from pytest_httpserver import HTTPServer
from replay import Cassette, cassette_pages, drain, requests_to, serve_by_page
from structlog.testing import capture_logs
from werkzeug import Request, Response

from app.data.contract import detect_drift, load_contract, validate_rows
from app.data.registry import SourceSpec, get_source
from app.data.sources import IngestCursor, adapter_for
from app.data.sources.base import CANONICAL_COLUMNS
from app.data.sources.open311 import WINDOW, Open311Adapter

NOW = datetime(2025, 11, 3, 15, 0, tzinfo=UTC)
PATH = "/open311/v2/requests.json"
PAGES = cassette_pages("open311", "boston_requests")
ROWS = {r["service_request_id"]: r for c in PAGES for r in c.body}  # 12 distinct requests (one repeated across pages)
SECRET = "s3cr3t-open311-key"


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOSTON_OPEN311_KEY", raising=False)


@pytest.fixture
def spec(httpserver: HTTPServer) -> SourceSpec:
    """The real ``boston311`` registry entry, aimed at the local server."""
    return get_source("boston311").model_copy(update={"base_url": httpserver.url_for("/open311/v2")})


def _adapter(spec: SourceSpec) -> Open311Adapter:
    return Open311Adapter(spec, clock=lambda: NOW)


def _replay(httpserver: HTTPServer) -> None:
    serve_by_page(httpserver, PAGES, empty=lambda page: [])


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _georeport(httpserver: HTTPServer, cap: int, honour_page: bool = True) -> None:
    """A server over the cassette rows that filters ``updated_datetime`` to the date window, sorts newest
    first like Boston and answers at most ``cap`` rows per call (ignoring ``page`` if told to)."""

    def handle(request: Request) -> Response:
        start, end = _t(request.args["start_date"]), _t(request.args["end_date"])
        hits = sorted(
            (r for r in ROWS.values() if start <= _t(r["updated_datetime"]) <= end), key=lambda r: _t(r["updated_datetime"]), reverse=True
        )
        size = min(int(request.args.get("page_size", cap)), cap)
        page = int(request.args.get("page", "1")) if honour_page else 1
        return Response(json.dumps(hits[(page - 1) * size : page * size]), headers={"Content-Type": "application/json"})

    httpserver.expect_request(PATH).respond_with_handler(handle)


def test_registry_entry_gets_this_adapter(spec: SourceSpec) -> None:
    assert isinstance(adapter_for(spec), Open311Adapter)


def test_pages_to_the_end_in_the_window_after_the_cursor(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    pages = drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))

    sent = requests_to(httpserver, PATH)
    assert [r.args["page"] for r in sent] == ["1", "2", "3", "4"]  # until the empty page
    for request in sent:  # the cursor minus the 60-minute overlap, up to now, in the spec's W3C form
        assert request.args["start_date"] == "2025-11-03T13:00:00Z"
        assert request.args["end_date"] == "2025-11-03T15:00:00Z"
        assert request.args["page_size"] == str(spec.page_size)
        assert "api_key" not in request.args
    assert [len(p.rows) for p in pages] == [5, 4, 3]  # the row repeated on page 2 is not passed on twice
    assert sorted(r["service_request_id"] for p in pages for r in p.rows) == sorted(ROWS)
    # Boston pages newest update first, so only the window's last page may move the cursor.
    assert [p.cursor for p in pages] == [None, None, "2025-11-03T14:58:12Z"]


def test_first_run_starts_at_the_default_lookback_and_since_overrides_the_cursor(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    drain(_adapter(spec), IngestCursor())
    first = requests_to(httpserver, PATH)[0]
    assert _t(first.args["start_date"]) == NOW - timedelta(days=90)
    assert _t(first.args["end_date"]) - _t(first.args["start_date"]) == WINDOW  # the span is cut into windows

    httpserver.clear_log()
    drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"), since="2025-11-03T09:30:00-05:00")
    assert requests_to(httpserver, PATH)[0].args["start_date"] == "2025-11-03T14:30:00Z"


def test_backfill_walks_contiguous_windows_oldest_first(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _georeport(httpserver, cap=4)
    pages = drain(_adapter(spec), IngestCursor(), since="2025-10-20")

    windows = sorted({(r.args["start_date"], r.args["end_date"]) for r in requests_to(httpserver, PATH)})
    assert windows[0][0] == "2025-10-20T00:00:00Z"
    assert windows[-1][1] == "2025-11-03T15:00:00Z"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))  # no gap between windows
    assert all(_t(end) - _t(start) <= WINDOW for start, end in windows)
    ids = [r["service_request_id"] for p in pages for r in p.rows]
    assert sorted(ids) == sorted(ROWS)  # every request once, across windows and 4-row pages
    cursors = [p.cursor for p in pages if p.cursor]
    assert cursors == sorted(cursors)
    assert cursors[-1] == "2025-11-03T14:58:12Z"


def test_server_ignoring_page_is_read_by_shrinking_the_window(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _georeport(httpserver, cap=4, honour_page=False)
    pages = drain(_adapter(spec), IngestCursor(cursor="2025-10-29T12:00:00Z"))

    ids = [r["service_request_id"] for p in pages for r in p.rows]
    assert sorted(ids) == sorted(ROWS)
    assert len(ids) == len(set(ids))
    ends = [r.args["end_date"] for r in requests_to(httpserver, PATH)]
    assert ends[0] == "2025-11-03T15:00:00Z"
    assert ends == sorted(ends, reverse=True)
    assert len(set(ends)) > 1
    assert pages[-1].cursor == "2025-11-03T14:58:12Z"


def test_a_row_stamped_in_the_future_does_not_push_the_cursor_past_the_window(httpserver: HTTPServer, spec: SourceSpec) -> None:
    future = {**PAGES[0].body[0], "updated_datetime": "2099-01-01T00:00:00-05:00"}
    serve_by_page(httpserver, [Cassette(PATH, {}, 200, {"Content-Type": "application/json"}, [future])], empty=lambda page: [])
    pages = drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))
    assert [p.cursor for p in pages] == ["2025-11-03T15:00:00Z"]  # the window's end: the next poll still overlaps it


@pytest.mark.parametrize("configured", [True, False])
def test_api_key_is_sent_only_when_configured(
    httpserver: HTTPServer, spec: SourceSpec, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    if configured:
        monkeypatch.setenv("BOSTON_OPEN311_KEY", SECRET)
    _replay(httpserver)
    drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))
    keys = {r.args.get("api_key") for r in requests_to(httpserver, PATH)}
    assert keys == ({SECRET} if configured else {None})


def test_api_key_never_reaches_logs_or_errors(httpserver: HTTPServer, spec: SourceSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSTON_OPEN311_KEY", SECRET)
    monkeypatch.setattr("app.data.sources.http.random.uniform", lambda a, b: 0.0)  # no backoff sleeps in tests
    httpserver.expect_oneshot_request(PATH).respond_with_data("upstream down", status=503)
    _replay(httpserver)
    with capture_logs() as logs:
        pages = drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))
    assert len(pages) == 3  # the 503 was retried
    assert any(e["event"] == "http.retry" for e in logs)
    assert SECRET not in repr(logs)

    httpserver.clear()
    httpserver.expect_request(PATH).respond_with_json([{"code": 403, "description": "Invalid api_key"}], status=403)
    with pytest.raises(httpx.HTTPStatusError) as failed:
        drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))
    assert "403" in str(failed.value)
    assert SECRET not in str(failed.value)
    assert "api_key=***" in str(failed.value)


@pytest.mark.parametrize(
    ("body", "ok"),
    [({"service_requests": PAGES[0].body}, True), ({"error": "maintenance"}, False), (["not", "rows"], False)],
    ids=["wrapped-list", "object", "not-objects"],
)
def test_payload_shapes(httpserver: HTTPServer, spec: SourceSpec, body: Any, ok: bool) -> None:
    httpserver.expect_oneshot_request(PATH).respond_with_json(body)
    httpserver.expect_request(PATH).respond_with_json([])
    if ok:
        assert [len(p.rows) for p in drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))] == [5]
    else:
        with pytest.raises(ValueError, match="list of service requests"):
            drain(_adapter(spec), IngestCursor(cursor="2025-11-03T14:00:00Z"))


def test_normalize_gives_the_canonical_frame_in_utc_with_unlocated_rows_kept(spec: SourceSpec) -> None:
    frame = _adapter(spec).normalize(list(ROWS.values()))

    assert frame.schema == pl.Schema(CANONICAL_COLUMNS["request"])
    assert frame.height == len(ROWS)
    assert frame["source_id"].n_unique() == len(ROWS)
    by_id = {r["source_id"]: r for r in frame.to_dicts()}
    # The two requests at 01:30 on the night New York falls back are an hour apart (offsets -04:00 / -05:00).
    assert by_id["101006100987"]["ts"] == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)
    assert by_id["101006100990"]["ts"] == datetime(2025, 11, 2, 6, 30, tzinfo=UTC)
    assert by_id["101006101101"]["category"] == "Request for Pothole Repair"
    # The entry maps no descriptor: Boston's free-text description (plates, addresses) is never stored.
    assert frame["descriptor"].null_count() == frame.height
    assert not any("Deep pothole" in a for a in frame["attrs"].to_list())
    graffiti = by_id["101006100955"]  # no lat/long: kept, unlocated
    assert graffiti["lon"] is None
    assert graffiti["lat"] is None
    assert graffiti["ts"] is not None
    assert frame.filter(pl.col("lon").is_null()).height == 1
    assert json.loads(by_id["101006101088"]["attrs"]) == {
        "status": "closed",
        "address": "55 Dorchester Ave, South Boston, MA 02127",
        "service_code": "4f389210e75084437f0001c6",
    }


def test_cassettes_honour_the_contract() -> None:
    schema = load_contract("boston311")
    for cassette in PAGES:
        assert validate_rows(schema, cassette.body) == []
        assert detect_drift(schema, cassette.body) == {"new": [], "vanished": [], "retyped": []}


def _drifted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A provider change: 24 rows where ids became numbers, a new field appeared and ``updated_datetime`` went."""
    out = []
    for i in range(24):
        row = copy.deepcopy(rows[i % len(rows)])
        row["service_request_id"] = 101007000000 + i
        row["case_url"] = f"https://311.boston.gov/tickets/{101007000000 + i}"
        row.pop("updated_datetime")
        out.append(row)
    return out


def test_drift_on_a_modified_payload_is_detected() -> None:
    drift = detect_drift(load_contract("boston311"), _drifted(PAGES[0].body))
    assert drift == {"new": ["case_url"], "vanished": ["updated_datetime"], "retyped": ["service_request_id: string -> integer"]}


def test_ingest_end_to_end_counts_unlocated_and_records_drift(
    httpserver: HTTPServer, spec: SourceSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("app.data.h3grid", reason="the H3 fallback for cities without a boundary set is not there yet")
    from app.data.ingest import ingest_source
    from app.data.snapshot import query
    from app.data.sources import base
    from app.data.store import Store

    monkeypatch.setitem(base._ADAPTERS, "open311", lambda s: Open311Adapter(s, clock=lambda: NOW))  # a fixed "now"
    store = Store(tmp_path)

    def ingest(since: str | None = None) -> Any:
        async def go() -> Any:
            async with httpx.AsyncClient(timeout=5) as client:
                return await ingest_source(store, spec, client, since=since)

        return asyncio.run(go())

    _replay(httpserver)
    report = ingest(since="2025-11-03T13:00:00Z")
    assert report.error is None
    assert report.rows == 12
    assert report.unlocated == 1
    assert not any(report.drift.values())
    again = ingest()  # from the stored cursor: re-running neither loses nor duplicates
    assert again.error is None
    assert again.rows == 12
    with store.writer() as con:
        stored = query(con, "SELECT source_id, tract_id FROM request WHERE source = 'boston311'")
        cursor, unlocated = query(con, """SELECT "cursor", unlocated_total FROM ingest_state WHERE source = 'boston311'""").row(0)
    assert sorted(stored["source_id"]) == sorted(ROWS)
    assert stored["tract_id"].null_count() == 1
    assert cursor == "2025-11-03T14:58:12Z"
    assert unlocated == 2

    httpserver.clear()
    serve_by_page(
        httpserver, [Cassette(PATH, {}, 200, {"Content-Type": "application/json"}, _drifted(PAGES[0].body))], empty=lambda page: []
    )
    drifted = ingest()
    assert drifted.error is None
    assert drifted.rows == 24
    assert drifted.drift == {"new": ["case_url"], "vanished": ["updated_datetime"], "retyped": ["service_request_id: string -> integer"]}
    with store.writer() as con:
        recorded = query(con, "SELECT drift FROM ingest_state WHERE source = 'boston311'").item()
    assert json.loads(recorded)["new"] == ["case_url"]
