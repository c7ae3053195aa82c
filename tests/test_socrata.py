"""The Socrata adapter and its contracts: SoQL it sends, paging, conditional requests, the app token,
split NYC datasets, normalisation of SODA's quirks, export import, and schema drift."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from replay import load_cassette

from app.data.contract import detect_drift, load_contract, validate_rows
from app.data.registry import SourceSpec, get_source, load_registry
from app.data.sources import IngestCursor, RawPage, adapter_for
from app.data.sources.base import CANONICAL_COLUMNS
from app.data.sources.export_file import CONTENT_ID, read_export
from app.data.sources.http import RetryPolicy
from app.data.sources.socrata import SocrataAdapter, api_field_name, covering_sources, crime_severity

SOCRATA = ["nyc311", "nyc311_2010_2019", "chicago311", "chicago_crimes"]
FAST = RetryPolicy(attempts=3, base=0.001, cap=0.01)


def cassette_rows(name: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = load_cassette(f"socrata/{name}.json").body
    return body


def spec_of(name: str, **changes: Any) -> SourceSpec:
    return get_source(name).model_copy(update=changes)


def drain(
    spec: SourceSpec, handler: Callable[[httpx.Request], httpx.Response], state: IngestCursor | None = None, since: str | None = None
) -> list[RawPage]:
    """All pages of ``spec`` against an in-process transport (the httpx seam)."""

    async def go() -> list[RawPage]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [p async for p in SocrataAdapter(spec, FAST).pages(client, state or IngestCursor(), since)]

    return asyncio.run(go())


def paged(
    rows: list[dict[str, Any]], seen: list[httpx.Request], headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering ``$limit`` rows per call from ``rows`` in order, recording each request."""
    served = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal served
        seen.append(request)
        limit = int(request.url.params["$limit"])
        page, served = rows[served : served + limit], served + limit
        return httpx.Response(200, json=page, headers=headers or {"ETag": '"v1"', "Last-Modified": "Mon, 27 May 2024 06:00:00 GMT"})

    return handle


# ---- contracts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOCRATA)
def test_cassettes_match_their_contract(name: str) -> None:
    cassette = load_cassette(f"socrata/{name}.json")
    schema = load_contract(name)
    assert validate_rows(schema, cassette.body) == []
    assert detect_drift(schema, cassette.body) == {"new": [], "vanished": [], "retyped": []}
    fields = json.loads(cassette.headers["X-SODA2-Fields"])
    assert len(fields) == len(json.loads(cassette.headers["X-SODA2-Types"]))
    assert {k for row in cassette.body for k in row} <= set(fields)
    assert cassette.headers["ETag"].startswith('"')
    assert cassette.headers["Last-Modified"].endswith("GMT")


def test_every_socrata_source_has_a_contract_and_a_cassette() -> None:
    names = {s.name for s in load_registry().values() if s.provider == "socrata"}
    assert names == set(SOCRATA)
    for name in names:
        assert load_contract(name)["$schema"].endswith("2020-12/schema")
        assert load_cassette(f"socrata/{name}.json").path == f"/resource/{get_source(name).dataset}.json"


@pytest.mark.parametrize(
    ("edit", "kind", "expected"),
    [
        (lambda r: r | {"descriptor_3": "x"}, "new", ["descriptor_3"]),
        (lambda r: {k: v for k, v in r.items() if k != "status"}, "vanished", ["status"]),
        (lambda r: r | {"incident_zip": 10001}, "retyped", ["incident_zip: string -> integer"]),
        (lambda r: r | {"location": "POINT (-73.9 40.7)"} if "location" in r else r, "retyped", ["location: object -> string"]),
        (lambda r: r | {":@computed_region_zz99_ab12": "7"}, "new", []),
    ],
    ids=["new-field", "vanished-field", "retyped-field", "location-to-wkt", "computed-region-is-not-drift"],
)
def test_drift_is_detected(edit: Callable[[dict[str, Any]], dict[str, Any]], kind: str, expected: list[str]) -> None:
    rows = [edit(dict(r)) for r in cassette_rows("nyc311")]
    assert len(rows) >= 20  # a field counts as vanished only when a whole page of >= 20 rows lacks it
    drift = detect_drift(load_contract("nyc311"), rows)
    assert drift[kind] == expected
    assert sum(map(len, drift.values())) == len(expected)


# ---- normalising ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOCRATA)
def test_normalize_gives_the_canonical_frame(name: str) -> None:
    spec = get_source(name)
    rows = cassette_rows(name)
    frame = adapter_for(spec).normalize(rows)
    assert dict(frame.schema) == CANONICAL_COLUMNS[spec.table]
    assert frame.height == len(rows)
    assert frame["source_id"].null_count() == 0
    assert frame["ts"].null_count() == 0
    unlocated = sum(1 for r in rows if "latitude" not in r and "location" not in r)
    assert frame["lon"].null_count() == unlocated  # kept, not dropped


@pytest.mark.parametrize(
    ("name", "source_id", "utc"),
    [
        ("nyc311", "61276295", "2024-05-27T06:08:51+00:00"),  # EDT, UTC-4
        ("nyc311_2010_2019", "45278137", "2020-01-01T04:59:11+00:00"),  # EST, UTC-5, across the new year
        ("chicago_crimes", "9000001", "2012-01-01T06:00:00+00:00"),  # CST, UTC-6
        ("chicago311", "SR19-00001001", "2019-06-01T13:15:00+00:00"),  # CDT, UTC-5
    ],
)
def test_floating_local_times_become_utc(name: str, source_id: str, utc: str) -> None:
    frame = adapter_for(get_source(name)).normalize(cassette_rows(name))
    ts = frame.filter(pl.col("source_id") == source_id)["ts"].item()
    assert ts == datetime.fromisoformat(utc)


LEGACY = {"latitude": "40.84735682050765", "longitude": "-73.93517137747149", "human_address": '{"address": ""}'}


@pytest.mark.parametrize(
    "location",
    [
        LEGACY,
        {"type": "Point", "coordinates": [-73.93517137747149, 40.84735682050765]},
        "POINT (-73.93517137747149 40.84735682050765)",
        "\n,  \n(40.84735682050765, -73.93517137747149)",  # the CSV endpoint's flattened legacy object
        json.dumps(LEGACY),
    ],
    ids=["legacy-object", "geojson", "wkt", "csv-flattened", "legacy-as-text"],
)
def test_every_location_shape_gives_the_point(location: Any) -> None:
    row = {"unique_key": "1", "created_date": "2024-05-27T02:08:51.000", "complaint_type": "Noise", "location": location}
    frame = adapter_for(get_source("nyc311")).normalize([row])
    assert frame["lon"].item() == pytest.approx(-73.93517137747149)
    assert frame["lat"].item() == pytest.approx(40.84735682050765)


@pytest.mark.parametrize(
    ("primary_type", "severity"),
    [
        ("HOMICIDE", 3),
        ("CRIM SEXUAL ASSAULT", 3),
        ("ROBBERY", 3),
        (" kidnapping ", 3),
        ("BATTERY", 2),
        ("ASSAULT", 2),
        ("THEFT", 1),
        ("NEW TYPE", 1),
    ],
)
def test_crime_severity_mapping(primary_type: str, severity: int) -> None:
    assert crime_severity(pl.Series([primary_type])).item() == severity


def test_crime_attrs_keep_checkbox_booleans() -> None:
    frame = adapter_for(get_source("chicago_crimes")).normalize(cassette_rows("chicago_crimes"))
    attrs = json.loads(frame["attrs"][0])
    assert attrs["arrest"] is False
    assert attrs["case_number"] == "JC225381"


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("Created Date", "created_date"),
        ("X Coordinate (State Plane)", "x_coordinate_state_plane"),
        ("Cross Street 1", "cross_street_1"),
        ("BBL", "bbl"),
        ("SR_NUMBER", "sr_number"),
        ("created_date", "created_date"),
        (":@computed_region_efsh_h5xi", ":@computed_region_efsh_h5xi"),
    ],
)
def test_export_headers_map_to_api_names(header: str, field: str) -> None:
    assert api_field_name(header) == field


def test_both_export_header_styles_normalize_alike(tmp_path: Path) -> None:
    """The same row as a portal CSV ("Created Date", 12-hour clock) and an API-name CSV (ISO)."""
    portal = tmp_path / "portal.csv.gz"
    api = tmp_path / "api.csv"
    with gzip.open(portal, "wt") as fh:
        fh.write("Unique Key,Created Date,Complaint Type,Descriptor,Status,Latitude,Longitude,Location\n")
        fh.write(
            '54049402,05/01/2022 12:00:03 AM,Noise - Residential,Loud Music/Party,In Progress,,,"(40.83065331987539, -73.92308231033165)"\n'
        )
    api.write_text(
        '"unique_key","created_date","complaint_type","descriptor","status","latitude","longitude"\n'
        '"54049402","2022-05-01T00:00:03.000","Noise - Residential","Loud Music/Party","In Progress","40.83065331987539","-73.92308231033165"\n'
    )
    adapter = adapter_for(get_source("nyc311"))
    a, b = (adapter.normalize(read_export(get_source("nyc311"), p)) for p in (portal, api))
    assert a.equals(b)
    assert a["ts"].item() == datetime(2022, 5, 1, 4, 0, 3, tzinfo=UTC)


def test_export_without_the_id_column_is_refused_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "crimes.csv"
    path.write_text(
        "case_number,date,primary_type,arrest,location\nHY1,2012-01-01T00:00:00.000,ROBBERY,False,\"{'latitude': '41.9', 'longitude': '-87.7'}\"\n"
    )
    spec = get_source("chicago_crimes")
    with pytest.raises(ValueError, match="no 'id' column"):
        read_export(spec, path)
    rows = read_export(spec, path, id_field="case_number")
    assert rows[0]["id"] == "HY1"
    assert rows[0]["arrest"] is False
    assert rows[0]["location"] == {"latitude": "41.9", "longitude": "-87.7"}


def test_export_with_no_unique_column_takes_ids_from_its_cells(tmp_path: Path) -> None:
    """Like the shared 2022 "slim" crimes file: no id at all, and two identical rows (two victims)."""
    header = "Date,Primary Type,Community Area\n"
    first, twin, other = "2022-09-16 21:30:00,BURGLARY,30\n", "2022-09-16 21:30:00,BURGLARY,30\n", "2022-09-17 01:00:00,ROBBERY,28\n"
    path, reordered = tmp_path / "slim.csv", tmp_path / "reordered.csv"
    path.write_text(header + first + twin + other)
    reordered.write_text(header + other + first + twin)
    spec = get_source("chicago_crimes")
    ids = [r["id"] for r in read_export(spec, path, id_field=CONTENT_ID)]
    assert len(set(ids)) == 3  # identical rows are two incidents, numbered in file order
    assert ids[1] == f"{ids[0]}#2"
    assert sorted(r["id"] for r in read_export(spec, reordered, id_field=CONTENT_ID)) == sorted(ids)  # stable: a re-import replaces
    with pytest.raises(ValueError, match="@content"):
        read_export(spec, path)  # refused unless told, and the message says how


def test_portal_rows_json_export(tmp_path: Path) -> None:
    doc = {
        "meta": {
            "view": {
                "columns": [
                    {"fieldName": ":sid"},
                    {"fieldName": "unique_key"},
                    {"fieldName": "created_date"},
                    {"fieldName": "complaint_type"},
                ]
            }
        },
        "data": [[1, "7", "2024-01-01T00:00:00", "Rodent"]],
    }
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(doc))
    frame = adapter_for(get_source("nyc311")).normalize(read_export(get_source("nyc311"), path))
    assert frame.select("source_id", "category").row(0) == ("7", "Rodent")


# ---- requests -------------------------------------------------------------------------------------
def test_first_poll_asks_for_the_window_in_stable_order_and_pages_by_key() -> None:
    rows = cassette_rows("nyc311")
    seen: list[httpx.Request] = []
    pages = drain(spec_of("nyc311", page_size=10), paged(rows, seen))
    assert [len(p.rows) for p in pages] == [10, 10, 4]
    first = seen[0].url.params
    assert first["$select"] == ":*,*"
    assert first["$order"] == ":updated_at,unique_key"
    assert first["$limit"] == "10"
    assert first["$where"] == "created_date >= '2020-01-01T00:00:00.000'"
    last = rows[9]
    assert seen[1].url.params["$where"] == (
        f"created_date >= '2020-01-01T00:00:00.000' AND (:updated_at > '{last[':updated_at']}' "
        f"OR (:updated_at = '{last[':updated_at']}' AND unique_key > '{last['unique_key']}'))"
    )
    assert "$offset" not in seen[1].url.params
    # the cursor of each page is its newest update; validators only with the (non-empty) last page
    assert [p.cursor for p in pages] == [rows[9][":updated_at"], rows[19][":updated_at"], rows[23][":updated_at"]]
    assert [(p.etag, p.last_modified) for p in pages[:2]] == [(None, None), (None, None)]
    assert pages[-1].etag == '"v1"'


def test_number_ids_are_compared_as_numbers() -> None:
    rows = cassette_rows("chicago_crimes")
    seen: list[httpx.Request] = []
    fields = json.dumps(["id", "updated_on"])
    headers = {"X-SODA2-Fields": fields, "X-SODA2-Types": json.dumps(["number", "floating_timestamp"])}
    drain(spec_of("chicago_crimes", page_size=5), paged(rows, seen, headers))
    assert "$select" not in seen[0].url.params
    assert seen[0].url.params["$order"] == "updated_on,id"
    assert f"id > {rows[4]['id']})" in seen[1].url.params["$where"]


def test_poll_starts_overlap_before_the_cursor_and_is_conditional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCRATA_APP_TOKEN", "s3cret")
    seen: list[httpx.Request] = []
    state = IngestCursor("2024-05-27T07:00:01.002Z", '"v1"', "Mon, 27 May 2024 06:00:00 GMT")
    drain(get_source("nyc311"), paged(cassette_rows("nyc311"), seen), state)
    assert seen[0].url.params["$where"] == ":updated_at >= '2024-05-27T06:00:01.002Z'"
    assert seen[0].headers["If-None-Match"] == '"v1"'
    assert seen[0].headers["If-Modified-Since"] == "Mon, 27 May 2024 06:00:00 GMT"
    assert seen[0].headers["X-App-Token"] == "s3cret"
    assert "s3cret" not in str(seen[0].url)  # a header, never a query parameter


def test_no_token_header_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOCRATA_APP_TOKEN", raising=False)
    seen: list[httpx.Request] = []
    drain(get_source("chicago311"), paged(cassette_rows("chicago311"), seen))
    assert "X-App-Token" not in seen[0].headers
    assert "If-None-Match" not in seen[0].headers


def test_not_modified_yields_a_marker_page() -> None:
    state = IngestCursor("2024-05-27T07:00:01.002Z", '"v1"', None)
    pages = drain(get_source("nyc311"), lambda r: httpx.Response(304, headers={"ETag": '"v1"'}), state)
    assert [(p.not_modified, p.rows, p.cursor) for p in pages] == [(True, [], None)]


def test_a_backfill_is_not_conditional_and_reads_by_creation_time() -> None:
    seen: list[httpx.Request] = []
    drain(get_source("nyc311"), paged([], seen), IngestCursor("2024-05-27T07:00:01.002Z", '"v1"', None), since="2025-11-01")
    assert seen[0].url.params["$where"] == "created_date >= '2025-11-01T00:00:00.000'"
    assert "If-None-Match" not in seen[0].headers


def test_a_server_that_ignores_the_page_key_is_not_followed_forever() -> None:
    rows = cassette_rows("nyc311")[:5]
    with pytest.raises(RuntimeError, match="ignored the page key"):
        drain(spec_of("nyc311", page_size=5), lambda r: httpx.Response(200, json=rows))


# ---- split datasets -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2019-06-01", ["nyc311_2010_2019", "nyc311"]),
        ("2010-01-01", ["nyc311_2010_2019", "nyc311"]),
        ("2021-03-01", ["nyc311"]),
        (None, ["nyc311"]),
    ],
)
def test_covering_sources_route_a_backfill_across_the_split(since: str | None, expected: list[str]) -> None:
    assert [s.name for s in covering_sources(get_source("nyc311"), since)] == expected
    if since:
        assert [s.name for s in covering_sources(get_source("nyc311_2010_2019"), since)] == expected


@pytest.mark.parametrize(
    ("name", "since", "where"),
    [
        ("nyc311", "2019-06-01", "created_date >= '2020-01-01T00:00:00.000'"),
        ("nyc311_2010_2019", "2019-06-01", "created_date >= '2019-06-01T00:00:00.000' AND created_date < '2020-01-01T00:00:00.000'"),
        ("nyc311_2010_2019", "2021-03-01", None),  # nothing to ask for: no request at all
    ],
)
def test_each_split_entry_reads_only_its_window(name: str, since: str, where: str | None) -> None:
    seen: list[httpx.Request] = []
    pages = drain(get_source(name), paged([], seen), since=since)
    assert [r.url.params["$where"] for r in seen] == ([where] if where else [])
    assert len(pages) == (1 if where else 0)


def test_a_new_socrata_city_is_one_registry_entry(tmp_path: Path) -> None:
    """A city the code has never heard of: only a registry entry, with its own field names."""
    registry = tmp_path / "sources.toml"
    registry.write_text(
        """
[[source]]
name = "sf311"
provider = "socrata"
city = "sf"
table = "request"
base_url = "https://data.sfgov.org"
dataset = "vw6y-z8j6"
timezone = "America/Los_Angeles"
page_size = 2
[source.fields]
id = "service_request_id"
time = "requested_datetime"
updated = "updated_datetime"
category = "service_name"
descriptor = "service_subtype"
location = "point"
attrs = ["status_description"]
"""
    )
    spec = load_registry(registry)["sf311"]
    rows = [
        {"service_request_id": "101", "requested_datetime": "2024-07-04T12:00:00.000", "updated_datetime": "2024-07-04T13:00:00.000",
         "service_name": "Street Cleaning", "point": {"type": "Point", "coordinates": [-122.41, 37.77]}, "status_description": "Open"},
        {"service_request_id": "102", "requested_datetime": "2024-07-04T12:05:00.000", "updated_datetime": "2024-07-04T13:00:00.000",
         "service_name": "Graffiti"},
        {"service_request_id": "103", "requested_datetime": "2024-07-04T12:10:00.000", "updated_datetime": "2024-07-04T14:00:00.000",
         "service_name": "Graffiti", "point": "POINT (-122.40 37.78)"},
    ]  # fmt: skip
    seen: list[httpx.Request] = []
    pages = drain(spec, paged(rows, seen))
    assert seen[0].url.host == "data.sfgov.org"
    assert seen[0].url.path == "/resource/vw6y-z8j6.json"
    assert seen[0].url.params["$order"] == "updated_datetime,service_request_id"
    assert "$select" not in seen[0].url.params
    frame = adapter_for(spec).normalize([r for p in pages for r in p.rows])
    assert frame["source_id"].to_list() == ["101", "102", "103"]
    assert frame["ts"][0] == datetime(2024, 7, 4, 19, 0, tzinfo=UTC)  # PDT, UTC-7
    assert frame["lon"].to_list() == [-122.41, None, -122.40]
    assert pages[-1].cursor == "2024-07-04T14:00:00.000"
