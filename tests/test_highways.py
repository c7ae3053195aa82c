"""National Highways adapters: the nine real planned-roadworks extracts (both XML generations) and
hand-checked records, an end-to-end ingest through a real local HTTP server into H3 units, and the
DATEX II closures API replayed from its cassette (subscription key header, x-next paging, 304)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h3
import httpx
import jsonschema
import polars as pl
import pytest
import structlog
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.data.contract import detect_drift, load_contract, validate_rows
from app.data.geography import tract_parents
from app.data.ingest import ingest_source
from app.data.registry import SourceSpec, get_source
from app.data.snapshot import query
from app.data.sources import IngestCursor, RawPage
from app.data.sources.highways import DatexClosuresAdapter, PlannedRoadworksAdapter, datex_records, parse_planned_xml
from app.data.sources.http import RetryPolicy
from app.data.store import Store
from conftest import SHARED_DATA, level_totals

UK_DIR = SHARED_DATA / "events" / "uk"
CASSETTES = Path(__file__).parent / "cassettes" / "highways"
#: Works per file, as counted in the shared data README.
WORKS = {
    "highways_england_planned_roadworks_2016-02-29_oldformat.xml.gz": 2196,
    "highways_england_planned_roadworks_2018-02-26.xml.gz": 1477,
    "highways_england_planned_roadworks_2019-04-15.xml.gz": 1103,
    "highways_england_planned_roadworks_2020-05-25.xml.gz": 1426,
    "highways_england_planned_roadworks_2021-03-01.xml.gz": 1567,
    "national_highways_planned_roadworks_2022-03-14.xml.gz": 1621,
    "national_highways_planned_roadworks_2023-03-06.xml.gz": 1407,
    "national_highways_planned_roadworks_2024-05-13.xml.gz": 1323,
    "national_highways_planned_roadworks_2025-04-14.xml.gz": 1429,
}
OLD_FORMAT = "highways_england_planned_roadworks_2016-02-29_oldformat.xml.gz"
#: Works without a usable point: 0/0 in the 2016 file, no EASTNORTH point in the 2020 one.
UNLOCATED = {OLD_FORMAT: 2, "highways_england_planned_roadworks_2020-05-25.xml.gz": 7}
GB_BBOX = (-8.7, 49.8, 1.8, 60.9)  # Great Britain, lon/lat
KEY = "test-subscription-key-0123456789"
needs_uk = pytest.mark.skipif(not UK_DIR.is_dir(), reason=f"real UK planned-roadworks files not found in {UK_DIR} (../shared/data absent)")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def spec_at(name: str, server: HTTPServer, **update: Any) -> SourceSpec:
    """The registry entry aimed at the local server."""
    return get_source(name).model_copy(update={"base_url": server.url_for("/").rstrip("/"), **update})


async def collect(pages: AsyncIterator[RawPage]) -> list[RawPage]:
    return [page async for page in pages]


def run_pages(adapter: Any, state: IngestCursor | None = None, since: str | None = None) -> list[RawPage]:
    async def go() -> list[RawPage]:
        async with httpx.AsyncClient(timeout=5) as client:
            return await collect(adapter.pages(client, state or IngestCursor(), since))

    return asyncio.run(go())


def ingest(store: Store, spec: SourceSpec) -> Any:
    async def go() -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            return await ingest_source(store, spec, client)

    return asyncio.run(go())


@pytest.mark.parametrize("name", ["uk_planned_roadworks", "uk_closures_datex"])
def test_contracts_are_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load_contract(name))


# ---- planned-roadworks XML: the nine real files ------------------------------------------------
@pytest.fixture(scope="module")
def real() -> dict[str, list[dict[str, Any]]]:
    return {name: parse_planned_xml((UK_DIR / name).read_bytes()) for name in WORKS}


@needs_uk
@pytest.mark.parametrize(("name", "works"), WORKS.items())
def test_real_file_parses_every_works(real: dict[str, list[dict[str, Any]]], name: str, works: int) -> None:
    rows = real[name]
    assert len(rows) == works
    schema = load_contract("uk_planned_roadworks")
    assert validate_rows(schema, rows) == []
    assert detect_drift(schema, rows) == {"new": [], "vanished": [], "retyped": []}
    generation_2016 = name == OLD_FORMAT
    assert all(("LOCAL_AUTHORITY" in r or "LOCATION" in r) == generation_2016 for r in rows)


@needs_uk
@pytest.mark.parametrize("name", WORKS)
def test_real_file_normalizes(real: dict[str, list[dict[str, Any]]], name: str) -> None:
    rows = real[name]
    frame = PlannedRoadworksAdapter(get_source("uk_planned_roadworks")).normalize(rows)
    assert frame.height == len({r["NEW_EVENT_NUMBER"] for r in rows})  # re-published works kept once
    assert frame["source_id"].is_unique().all()
    assert frame["start_ts"].null_count() == 0
    assert frame["end_ts"].null_count() == 0
    assert frame.filter(pl.col("end_ts") < pl.col("start_ts")).is_empty()
    assert frame.filter(pl.col("lon").is_null())["lat"].null_count() == frame["lon"].null_count()
    assert frame["lon"].null_count() == UNLOCATED.get(name, 0)
    located = frame.drop_nulls(["lon", "lat"])
    lon_min, lat_min, lon_max, lat_max = GB_BBOX
    assert located["lon"].is_between(lon_min, lon_max).all()
    assert located["lat"].is_between(lat_min, lat_max).all()


@needs_uk
def test_real_record_checked_by_hand(real: dict[str, list[dict[str, Any]]]) -> None:
    """00352573-001 (M25 Jct 11 to 9): starts 31-DEC-2023 23:59 GMT, ends 31-MAY-2025 23:59 BST;
    BNG 507930 E 159334 N is 51.32288 N 0.45248 W (the Ordnance Survey's inverse Transverse
    Mercator and OSGB36->WGS84 Helmert formulas worked separately), on the M25 by Wisley."""
    frame = PlannedRoadworksAdapter(get_source("uk_planned_roadworks")).normalize(
        real["national_highways_planned_roadworks_2025-04-14.xml.gz"]
    )
    row = frame.filter(pl.col("source_id") == "00352573-001").row(0, named=True)
    assert row["start_ts"] == utc(2023, 12, 31, 23, 59)
    assert row["end_ts"] == utc(2025, 5, 31, 22, 59)  # BST: an hour behind the wall clock
    assert row["lon"] == pytest.approx(-0.45248, abs=1e-4)
    assert row["lat"] == pytest.approx(51.32288, abs=1e-4)
    assert row["kind"] == "Major Schemes"
    assert row["description"].startswith("M25 Anticlockwise Jct 11 to Jct 9\nNarrow Lanes")
    assert json.loads(row["attrs"])["ROAD_NUMBER"] == ["M25"]


# ---- planned-roadworks XML: excerpts kept with the tests (run without ../shared) ---------------
def excerpt(name: str) -> list[dict[str, Any]]:
    return parse_planned_xml((CASSETTES / name).read_bytes())


def test_excerpt_2020_generation() -> None:
    rows = excerpt("planned_roadworks_2020-05-25_excerpt.xml")  # starts with a UTF-8 BOM, as published
    assert len(rows) == 5
    frame = PlannedRoadworksAdapter(get_source("uk_planned_roadworks")).normalize(rows).sort("source_id")
    assert frame["source_id"].to_list() == ["00001796-014", "00004410-003", "00027051-008", "00047398-047"]
    by_id = {r["source_id"]: r for r in frame.iter_rows(named=True)}
    gmt, bst, twice, pointless = (by_id[i] for i in ("00001796-014", "00004410-003", "00027051-008", "00047398-047"))
    assert (gmt["start_ts"], gmt["end_ts"]) == (utc(2019, 1, 8, 6), utc(2021, 11, 19, 6))
    assert (bst["start_ts"], bst["end_ts"]) == (utc(2020, 6, 2, 19), utc(2020, 6, 5, 4, 30))
    assert json.loads(gmt["attrs"])["ROAD_NUMBER"] == ["M27", "M3"]
    assert json.loads(bst["attrs"])["OLD_REFERENCE_NUMBER"] == "2940935"
    assert bst["description"] == "A50  eastbound and westbound Meir Tunnel \nCarriageway closure for maintenance works."
    assert json.loads(twice["attrs"])["PUBLISHED_DATE"] == "2020-05-11T17:04:24"  # the newer publication wins
    assert pointless["lon"] is None
    assert pointless["lat"] is None
    assert gmt["lon"] == pytest.approx(-1.27416, abs=1e-4)
    assert gmt["lat"] == pytest.approx(50.90838, abs=1e-4)


def test_excerpt_2016_generation() -> None:
    rows = excerpt("planned_roadworks_2016-02-29_excerpt.xml")
    assert [r["NEW_EVENT_NUMBER"] for r in rows] == ["1535363", "1535380", "1824563", "3623145"]
    assert rows[0]["ROAD_NUMBER"] == ["M1"]
    assert rows[0]["LOCAL_AUTHORITY"] == "Leicestershire"
    assert "LOCAL_AUTHORITY" not in rows[3]  # <local_authority/> is empty: omitted, not ""
    frame = PlannedRoadworksAdapter(get_source("uk_planned_roadworks")).normalize(rows)
    by_id = {r["source_id"]: r for r in frame.iter_rows(named=True)}
    assert (by_id["1535363"]["start_ts"], by_id["1535363"]["end_ts"]) == (utc(2016, 3, 14, 8, 30), utc(2016, 4, 21, 4))
    assert by_id["3623145"]["lon"] is None  # easting/northing 0/0: unlocated
    assert by_id["1535363"]["kind"] == "Planned Works"
    assert json.loads(by_id["1535363"]["attrs"])["TRAFFIC_MANAGEMENT"] == "Mobile Lane Closure"


def test_gzip_and_unknown_roots() -> None:
    plain = (CASSETTES / "planned_roadworks_2016-02-29_excerpt.xml").read_bytes()
    assert parse_planned_xml(gzip.compress(plain)) == parse_planned_xml(plain)
    with pytest.raises(ValueError, match="root element <html>"):
        parse_planned_xml(b"<html><body>dataset page</body></html>")


def test_xml_feed_honours_validators(httpserver: HTTPServer) -> None:
    body = (CASSETTES / "planned_roadworks_2020-05-25_excerpt.xml").read_bytes()
    httpserver.expect_request("/roadworks.xml").respond_with_handler(_feed(body, etag='"v1"'))
    adapter = PlannedRoadworksAdapter(spec_at("uk_planned_roadworks", httpserver, dataset="roadworks.xml"))
    (page,) = run_pages(adapter)
    assert len(page.rows) == 5
    assert page.etag == '"v1"'
    assert page.cursor == "2020-05-11T17:04:24"
    (again,) = run_pages(adapter, IngestCursor(page.cursor, page.etag, page.last_modified))
    assert again.not_modified
    assert again.rows == []
    (forced,) = run_pages(adapter, IngestCursor(page.cursor, page.etag, page.last_modified), since="2020-01-01")
    assert len(forced.rows) == 5  # an explicit backfill sends no validators


def _feed(body: bytes, etag: str) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304, headers={"ETag": etag})
        return Response(body, content_type="application/xml", headers={"ETag": etag, "Last-Modified": "Mon, 25 May 2020 06:00:00 GMT"})

    return handler


@needs_uk
@pytest.mark.parametrize("name", [OLD_FORMAT, "highways_england_planned_roadworks_2020-05-25.xml.gz"])
def test_ingest_real_file_end_to_end(tmp_path: Path, httpserver: HTTPServer, name: str) -> None:
    body = gzip.decompress((UK_DIR / name).read_bytes())
    httpserver.expect_request("/planned.xml").respond_with_handler(_feed(body, etag='"w1"'))
    spec = spec_at("uk_planned_roadworks", httpserver, dataset="planned.xml")
    store = Store(tmp_path)
    report = ingest(store, spec)
    ids = {r["NEW_EVENT_NUMBER"] for r in parse_planned_xml(body)}
    assert report.error is None
    assert report.pages == 1
    assert report.rows == len(ids)
    assert report.unlocated == UNLOCATED[name]
    assert report.drift == {"new": [], "vanished": [], "retyped": []}
    with store.writer() as con:
        closures = query(
            con, "SELECT source_id, tract_id, lon, lat, kind, start_ts, end_ts FROM closure WHERE source = 'uk_planned_roadworks'"
        )
        units = query(con, "SELECT * FROM geo_unit WHERE city = 'uk'")
        state = query(con, "SELECT etag, rows_total, unlocated_total FROM ingest_state WHERE source = 'uk_planned_roadworks'").row(0)
    assert set(closures["source_id"]) == ids
    assert closures.height == len(ids)
    assert closures.filter(pl.col("tract_id").is_null()).height == UNLOCATED[name]
    assert state == ('"w1"', len(ids), UNLOCATED[name])
    located = closures.drop_nulls("tract_id")
    assert located["tract_id"].to_list() == [h3.latlng_to_cell(y, x, 7) for x, y in located.select("lon", "lat").iter_rows()]
    parents = tract_parents(units)
    assert set(parents["tract_id"]) == set(located["tract_id"])
    assert parents.null_count().sum_horizontal().item() == 0
    events = closures.rename({"start_ts": "ts", "kind": "category"})
    for level in ("neighborhood", "borough"):
        assert level_totals(events, parents, level)["count"].sum() == located.height
    assert ingest(store, spec).not_modified  # the stored ETag makes the next poll a 304


# ---- DATEX II closures API against its cassette ------------------------------------------------
CASSETTE = json.loads((CASSETTES / "datex_closures.json").read_text())


def _datex_server(server: HTTPServer, fail_first: int = 0) -> list[Request]:
    """Replay the cassette: the page chosen by query string, 401 without the right key, 304 when
    the client sends the last page's ETag, and ``fail_first`` 503s before anything else."""
    seen: list[Request] = []
    base = server.url_for("/").rstrip("/")
    interactions = {tuple(sorted(i["request"]["query"].items())): i["response"] for i in CASSETTE["interactions"]}
    etag = next(r["headers"]["ETag"] for r in interactions.values() if "ETag" in r["headers"])

    def handler(request: Request) -> Response:
        seen.append(request)
        if len(seen) <= fail_first:
            return Response("busy", status=503)
        if request.headers.get("Ocp-Apim-Subscription-Key") != KEY:
            return Response('{"statusCode": 401, "message": "Access denied due to invalid subscription key."}', status=401)
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304)
        page = interactions[tuple(sorted((k, v) for k, v in request.args.items() if k == "PageCursor"))]
        headers = {k: v.replace("{base_url}", base) for k, v in page["headers"].items()}
        return Response(json.dumps(page["body"]), status=page["status"], headers=headers)

    server.expect_request("/roads/v2.0/closures").respond_with_handler(handler)
    return seen


@pytest.fixture
def datex_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(get_source("uk_closures_datex").token_env or "", KEY)
    return KEY


def test_datex_cassette_matches_its_contract() -> None:
    rows = [r for i in CASSETTE["interactions"] for r in datex_records(i["response"]["body"])]
    schema = load_contract("uk_closures_datex")
    assert len(rows) == 4
    assert validate_rows(schema, rows) == []
    assert detect_drift(schema, rows) == {"new": [], "vanished": [], "retyped": []}
    drifted = [{**r, "validity": "planned", "severity": "high"} for r in rows]
    assert detect_drift(schema, drifted) == {"new": ["severity"], "vanished": [], "retyped": ["validity: object -> string"]}


def test_datex_pages_follow_x_next_with_the_key(httpserver: HTTPServer, datex_key: str) -> None:
    seen = _datex_server(httpserver)
    pages = run_pages(DatexClosuresAdapter(spec_at("uk_closures_datex", httpserver)))
    assert [len(p.rows) for p in pages] == [2, 2]
    assert [r["situation"]["idG"] for p in pages for r in p.rows] == ["467118", "473996", "458159", "409447"]
    assert pages[0].cursor is None
    assert pages[0].etag is None
    assert pages[1].cursor == "2026-07-07T19:27:59.590000+00:00"
    assert pages[1].etag == '"closures-2026-07-07T19:34:36Z"'
    assert all(r.headers["Ocp-Apim-Subscription-Key"] == datex_key for r in seen)
    assert all(r.headers["X-Response-MediaType"] == "application/json" for r in seen)
    assert [dict(r.args) for r in seen] == [{}, {"PageCursor": "2"}]


def test_datex_incremental_poll_and_304(httpserver: HTTPServer, datex_key: str) -> None:
    seen = _datex_server(httpserver)
    adapter = DatexClosuresAdapter(spec_at("uk_closures_datex", httpserver))
    state = IngestCursor(cursor="2026-07-07T19:27:59.590000+00:00", etag='"closures-2026-07-07T19:34:36Z"')
    (page,) = run_pages(adapter, state)
    assert page.not_modified
    assert page.rows == []
    assert seen[0].args["modifiedSinceDateTime"] == "2026-07-07T18:27:59"  # cursor less the 60-minute overlap
    assert seen[0].headers["If-None-Match"] == '"closures-2026-07-07T19:34:36Z"'
    run_pages(adapter, IngestCursor(), since="2026-06-01")
    assert seen[-2].args["startDateTime"] == "2026-06-01T00:00:00"
    assert "If-None-Match" not in seen[-2].headers


def test_datex_normalize_real_shapes() -> None:
    rows = [r for i in CASSETTE["interactions"] for r in datex_records(i["response"]["body"])]
    rows.append({**rows[0], "idG": "no-location", "locationReference": {}})
    frame = DatexClosuresAdapter(get_source("uk_closures_datex")).normalize(rows)
    by_id = {r["source_id"]: r for r in frame.iter_rows(named=True)}
    a27 = by_id["1-1779093921-86d6b09a-efeb-42f6-9e56-6dd8f68f5fa6"]
    assert (a27["start_ts"], a27["end_ts"]) == (utc(2026, 6, 17, 5), utc(2026, 7, 26, 19))
    assert a27["kind"] == "roadMaintenance"
    assert a27["description"] == "A27 westbound Falmer exit slip road closure"
    assert (a27["lon"], a27["lat"]) == (-0.078274, 50.863413)  # middle vertex; posList is "lat lon ..."
    attrs = json.loads(a27["attrs"])
    assert attrs["roads"] == ["A27"]
    assert attrs["situation.idG"] == "467118"
    assert attrs["validity.validityStatus"] == "planned"
    assert sorted(frame["kind"]) == ["authorityOperation", "constructionWork", "roadMaintenance", "roadMaintenance", "roadMaintenance"]
    assert by_id["no-location"]["lon"] is None  # kept, unlocated
    located = frame.drop_nulls("lon")
    assert located["lon"].is_between(GB_BBOX[0], GB_BBOX[2]).all()
    assert located["lat"].is_between(GB_BBOX[1], GB_BBOX[3]).all()


def test_datex_ingest_end_to_end_never_logs_the_key(tmp_path: Path, httpserver: HTTPServer, datex_key: str) -> None:
    seen = _datex_server(httpserver, fail_first=1)  # one 503: the retry path logs the URL
    spec = spec_at("uk_closures_datex", httpserver)
    store = Store(tmp_path)
    with structlog.testing.capture_logs() as logs:
        report = ingest(store, spec)
    assert report.error is None
    assert report.rows == 4
    assert report.pages == 2
    assert report.unlocated == 0
    assert any(e["event"] == "http.retry" for e in logs)
    assert len(seen) == 3
    assert datex_key not in json.dumps(logs, default=str)
    with store.writer() as con:
        stored = query(con, "SELECT kind, tract_id FROM closure WHERE source = 'uk_closures_datex'")
        state = query(con, 'SELECT "cursor", etag, last_error FROM ingest_state WHERE source = $s', {"s": spec.name}).row(0)
        n_units = query(con, "SELECT count(*) AS n FROM geo_unit WHERE city = 'uk' AND level = 'tract'").item()
    assert stored.height == 4
    assert stored["tract_id"].null_count() == 0
    assert n_units == stored["tract_id"].n_unique()
    assert state == ("2026-07-07T19:27:59.590000+00:00", '"closures-2026-07-07T19:34:36Z"', None)
    assert ingest(store, spec).not_modified


def test_datex_bad_or_missing_key(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _datex_server(httpserver)
    spec = spec_at("uk_closures_datex", httpserver)
    monkeypatch.delenv(spec.token_env or "", raising=False)
    with pytest.raises(RuntimeError, match="set NH_SUBSCRIPTION_KEY"):
        run_pages(DatexClosuresAdapter(spec))
    assert seen == []  # no request without a key
    monkeypatch.setenv(spec.token_env or "", "wrong-key")
    with pytest.raises(httpx.HTTPStatusError) as err:
        run_pages(DatexClosuresAdapter(spec, RetryPolicy(attempts=2, base=0.01)))
    assert err.value.response.status_code == 401
    assert len(seen) == 1
    assert "wrong-key" not in str(err.value)
