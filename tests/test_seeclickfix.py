"""The SeeClickFix API v2 adapter against a real local server replaying Cambridge cassettes: paging
by ``metadata.pagination.next_page``, the newest-update-first order down to the cursor, backfill
filters, 304 on an unchanged first page, auth only when configured, nested fields, UTC times,
unlocated rows, the canonical frame and contract drift."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from pytest_httpserver import HTTPServer
from replay import cassette_pages, drain, requests_to, serve_by_page

from app.data.contract import detect_drift, load_contract, validate_rows
from app.data.registry import SourceSpec, get_source
from app.data.sources import IngestCursor, adapter_for
from app.data.sources.base import CANONICAL_COLUMNS
from app.data.sources.seeclickfix import STATUSES, SeeClickFixAdapter

NOW = datetime(2025, 11, 3, 15, 30, tzinfo=UTC)
PATH = "/api/v2/issues"
PAGES = cassette_pages("seeclickfix", "cambridge_issues")
ISSUES = {i["id"]: i for c in PAGES for i in c.body["issues"]}  # 10 distinct issues (one repeated across pages)
ETAG = PAGES[0].headers["ETag"]
NEWEST = "2025-11-03T15:12:45Z"


@pytest.fixture
def spec(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> SourceSpec:
    """The real ``cambridge_scf`` registry entry aimed at the local server, with a credential variable to toggle."""
    monkeypatch.delenv("CAMBRIDGE_SCF_LOGIN", raising=False)
    return get_source("cambridge_scf").model_copy(update={"base_url": httpserver.url_for("/api/v2"), "token_env": "CAMBRIDGE_SCF_LOGIN"})


def _adapter(spec: SourceSpec) -> SeeClickFixAdapter:
    return SeeClickFixAdapter(spec, clock=lambda: NOW)


def _empty(page: int) -> dict[str, Any]:
    return {
        "metadata": {"pagination": {"entries": 10, "page": page, "per_page": 4, "pages": 3, "next_page": None}},
        "issues": [],
        "errors": {},
    }


def _replay(httpserver: HTTPServer) -> None:
    """The cassettes by ``page``; an unchanged first page answers 304 to its own ETag."""
    httpserver.expect_request(PATH, headers={"If-None-Match": ETAG}).respond_with_data("", status=304, headers={"ETag": ETAG})
    serve_by_page(httpserver, PAGES, empty=_empty)


def test_registry_entry_gets_this_adapter(spec: SourceSpec) -> None:
    assert isinstance(adapter_for(spec), SeeClickFixAdapter)


def test_backfill_pages_to_the_end_newest_update_first(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    pages = drain(_adapter(spec), IngestCursor())

    sent = requests_to(httpserver, PATH)
    assert [r.args["page"] for r in sent] == ["1", "2", "3"]  # next_page is null on page 3: no extra call
    for request in sent:
        assert request.args["place_url"] == "cambridge"  # the entry's dataset is the place
        assert (request.args["sort"], request.args["sort_direction"], request.args["status"]) == ("updated_at", "DESC", STATUSES)
        assert request.args["per_page"] == str(min(spec.page_size, 1000))
        assert request.args["after"] == "2025-08-05T15:30:00Z"  # no cursor yet: the 90-day lookback, by creation time
        assert "Authorization" not in request.headers
        assert "If-None-Match" not in request.headers
    assert [len(p.rows) for p in pages] == [4, 4, 3]  # the issue repeated across pages is upserted twice, harmlessly
    assert {i["id"] for p in pages for i in p.rows} == set(ISSUES)
    assert [p.cursor for p in pages] == [None, None, NEWEST]  # newest first: only the last page may move the cursor
    assert pages[-1].etag is None  # a backfill's first page is another query than a poll's


def test_poll_stops_below_the_cursor_minus_overlap_and_keeps_the_etag(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    pages = drain(_adapter(spec), IngestCursor(cursor="2025-11-03T00:00:00Z"))

    sent = requests_to(httpserver, PATH)
    assert [r.args["page"] for r in sent] == ["1", "2"]  # page 2 reaches below 2025-11-02T23:00Z: page 3 is not needed
    assert all("after" not in r.args for r in sent)  # `after` bounds creation; an old issue updated now must come
    assert [p.cursor for p in pages] == [None, NEWEST]
    assert (pages[-1].etag, pages[-1].last_modified) == (ETAG, PAGES[0].headers["Last-Modified"])


def test_unchanged_first_page_is_not_modified(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    pages = drain(_adapter(spec), IngestCursor(cursor=NEWEST, etag=ETAG, last_modified=PAGES[0].headers["Last-Modified"]))

    assert [(p.not_modified, p.rows) for p in pages] == [(True, [])]
    sent = requests_to(httpserver, PATH)
    assert len(sent) == 1
    assert sent[0].headers["If-None-Match"] == ETAG


def test_since_overrides_the_cursor_and_a_query_dataset_selects_an_organisation(httpserver: HTTPServer, spec: SourceSpec) -> None:
    _replay(httpserver)
    org = spec.model_copy(update={"dataset": "request_types=6208,6211&organization_id=71"})
    drain(_adapter(org), IngestCursor(cursor=NEWEST, etag=ETAG), since="2025-11-01")

    first = requests_to(httpserver, PATH)[0]
    assert "place_url" not in first.args
    assert (first.args["request_types"], first.args["organization_id"]) == ("6208,6211", "71")
    assert first.args["after"] == "2025-11-01T00:00:00Z"
    assert "If-None-Match" not in first.headers


def test_an_issue_stamped_in_the_future_does_not_push_the_cursor_past_now(httpserver: HTTPServer, spec: SourceSpec) -> None:
    body = copy.deepcopy(PAGES[2].body)
    body["issues"][0]["updated_at"] = "2099-01-01T00:00:00-05:00"
    httpserver.expect_request(PATH).respond_with_json(body)
    pages = drain(_adapter(spec), IngestCursor(cursor="2025-11-03T00:00:00Z"))
    assert [p.cursor for p in pages] == ["2025-11-03T15:30:00Z"]


@pytest.mark.parametrize("configured", [True, False])
def test_basic_auth_only_when_configured(
    httpserver: HTTPServer, spec: SourceSpec, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    if configured:
        monkeypatch.setenv("CAMBRIDGE_SCF_LOGIN", "ops@example.org:pa55")
    _replay(httpserver)
    drain(_adapter(spec), IngestCursor())
    auth = {r.headers.get("Authorization") for r in requests_to(httpserver, PATH)}
    assert auth == ({"Basic " + base64.b64encode(b"ops@example.org:pa55").decode()} if configured else {None})


@pytest.mark.parametrize("body", [{"error": "maintenance"}, [1, 2]], ids=["no-issues", "list"])
def test_unexpected_payload_is_an_error(httpserver: HTTPServer, spec: SourceSpec, body: Any) -> None:
    httpserver.expect_request(PATH).respond_with_json(body)
    with pytest.raises(ValueError, match="issues"):
        drain(_adapter(spec), IngestCursor())


def test_normalize_reads_nested_fields_in_utc_with_unlocated_rows_kept(spec: SourceSpec) -> None:
    frame = _adapter(spec).normalize(list(ISSUES.values()))

    assert frame.schema == pl.Schema(CANONICAL_COLUMNS["request"])
    assert frame.height == len(ISSUES)
    by_id = {r["source_id"]: r for r in frame.to_dicts()}  # numeric ids become text ids
    assert by_id["19249655"]["ts"] == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)  # 01:30 EDT, the first of the two
    assert by_id["19249650"]["ts"] == datetime(2025, 11, 2, 6, 30, tzinfo=UTC)  # 01:30 EST, an hour later
    assert by_id["19249101"]["category"] == "Missed Trash/Recycling/Compost Pickup"  # request_type.title
    assert by_id["19250101"]["descriptor"] == "Pothole"
    assert (by_id["19250101"]["lon"], by_id["19250101"]["lat"]) == (-71.10566, 42.36631)
    unlocated = by_id["19249333"]  # lat/lng null: kept, without a point
    assert unlocated["lon"] is None
    assert unlocated["lat"] is None
    assert unlocated["ts"] is not None
    assert json.loads(by_id["19249512"]["attrs"]) == {
        "status": "Archived",
        "address": "Harvard Square Cambridge, MA 02138, USA",
        "html_url": "https://seeclickfix.com/issues/19249512",
    }


def test_cassettes_honour_the_contract() -> None:
    schema = load_contract("cambridge_scf")
    for cassette in PAGES:
        assert validate_rows(schema, cassette.body["issues"]) == []
        assert detect_drift(schema, cassette.body["issues"]) == {"new": [], "vanished": [], "retyped": []}


def _drifted(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A provider change: 24 issues where lat became text, ``summary`` went and ``priority`` appeared."""
    out = []
    for i in range(24):
        issue = copy.deepcopy(issues[i % len(issues)])
        issue["id"] = 19260000 + i
        issue["lat"] = None if issue["lat"] is None else str(issue["lat"])
        issue.pop("summary")
        issue["priority"] = "normal"
        out.append(issue)
    return out


def test_drift_on_a_modified_payload_is_detected() -> None:
    drift = detect_drift(load_contract("cambridge_scf"), _drifted(PAGES[0].body["issues"]))
    assert drift == {"new": ["priority"], "vanished": ["summary"], "retyped": ["lat: integer/null/number -> string"]}
    assert validate_rows(load_contract("cambridge_scf"), _drifted(PAGES[0].body["issues"]))  # and the contract test fails


def test_ingest_end_to_end(httpserver: HTTPServer, spec: SourceSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("app.data.h3grid", reason="the H3 fallback for cities without a boundary set is not there yet")
    from app.data.ingest import ingest_source
    from app.data.snapshot import query
    from app.data.sources import base
    from app.data.store import Store

    monkeypatch.setitem(base._ADAPTERS, "seeclickfix", lambda s: SeeClickFixAdapter(s, clock=lambda: NOW))
    store = Store(tmp_path)

    def ingest() -> Any:
        async def go() -> Any:
            async with httpx.AsyncClient(timeout=5) as client:
                return await ingest_source(store, spec, client)

        return asyncio.run(go())

    _replay(httpserver)
    first = ingest()  # no cursor yet: a backfill
    assert first.error is None
    assert first.pages == 3
    assert first.rows == 11
    assert first.unlocated == 1
    assert not any(first.drift.values())
    second = ingest()  # a poll from the cursor: reads down to it and keeps the first page's ETag
    assert second.error is None
    assert second.pages == 1
    assert not second.not_modified
    third = ingest()  # nothing changed since: the first page answers 304 and no row is touched
    assert third.error is None
    assert third.not_modified
    assert third.rows == 0
    with store.writer() as con:
        stored = query(con, "SELECT source_id, tract_id FROM request WHERE source = 'cambridge_scf'")
        state = query(con, """SELECT "cursor", etag FROM ingest_state WHERE source = 'cambridge_scf'""").row(0)
    assert sorted(stored["source_id"]) == sorted(str(i) for i in ISSUES)
    assert stored["tract_id"].null_count() == 1
    assert state == (NEWEST, ETAG)
