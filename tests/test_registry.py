"""The source registry: the shipped file loads and every entry gets an adapter; duplicates and bad
entries fail clearly; and a new Socrata city and a new SeeClickFix organisation are each one registry
entry and no new code, proven end to end against a real local server."""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from replay import drain, load_cassette, requests_to, serve_by_page
from socrata_fake import FakeSocrata

from app.data.registry import REGISTRY_FILE, SourceSpec, get_source, load_registry
from app.data.sources import IngestCursor, adapter_for
from app.data.sources.base import CANONICAL_COLUMNS

SHIPPED = {
    "nyc311",
    "nyc311_2010_2019",
    "chicago311",
    "chicago_crimes",
    "uk_planned_roadworks",
    "uk_closures_datex",
    "boston311",
    "cambridge_scf",
}
VALID = """
[[source]]
name = "{name}"
provider = "seeclickfix"
city = "new_haven"
table = "request"
base_url = "https://seeclickfix.com/api/v2"
dataset = "new-haven"
[source.fields]
id = "id"
time = "created_at"
category = "request_type.title"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(text)
    return path


def test_shipped_registry_loads_and_every_entry_gets_its_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSH_SOURCES_FILE", raising=False)
    registry = load_registry()
    assert set(registry) >= SHIPPED
    for name, spec in registry.items():
        assert spec.name == name
        adapter = adapter_for(spec)  # the provider module is imported on demand and accepts the entry
        assert adapter.spec is spec
        assert type(adapter).__module__ == f"app.data.sources.{_module(spec.provider)}"
    secrets = {v for e in tomllib.loads(REGISTRY_FILE.read_text())["source"] for k, v in e.items() if "token" in k or "key" in k}
    assert all(v.isupper() for v in secrets)  # only the *names* of environment variables, never a secret


def _module(provider: str) -> str:
    return {"highways_xml": "highways", "highways_datex": "highways"}.get(provider, provider)


def test_registry_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSH_SOURCES_FILE", str(_write(tmp_path, VALID.format(name="new_haven_scf"))))
    assert list(load_registry()) == ["new_haven_scf"]
    assert get_source("new_haven_scf").dataset == "new-haven"
    with pytest.raises(KeyError, match="unknown source 'nyc311'; known: new_haven_scf"):
        get_source("nyc311")


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.format(name="twice") + VALID.format(name="once") + VALID.format(name="twice"))
    with pytest.raises(ValueError, match=r"duplicate source names in .*sources\.toml: \['twice', 'twice'\]"):
        load_registry(path)


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ('provider = "seeclickfix"', 'provider = "ckan"', "provider", "Input should be 'socrata', 'highways_xml'"),
        ('name = "ok"', 'name = "New Haven"', "name", "String should match pattern"),
        ('id = "id"\n', "", "fields.id", "Field required"),
        ('table = "request"', 'table = "requests"', "table", "Input should be 'request', 'incident' or 'closure'"),
        ('dataset = "new-haven"', 'dataset = "new-haven"\npage_size = 0', "page_size", "greater than or equal to 1"),
        ('dataset = "new-haven"', 'dataset = "new-haven"\ntoken = "abc"', "token", "Extra inputs are not permitted"),
    ],
    ids=["provider", "name", "missing-field", "table", "page-size", "unknown-key"],
)
def test_a_bad_entry_fails_with_a_clear_error(tmp_path: Path, old: str, new: str, where: str, message: str) -> None:
    text = VALID.format(name="ok")
    assert old in text
    with pytest.raises(ValidationError) as failed:
        load_registry(_write(tmp_path, text.replace(old, new, 1)))
    assert f"\n{where}\n" in str(failed.value)
    assert message in str(failed.value)


# ---- a new city and a new organisation, by registry entry alone ------------------------------------

NEW_ENTRIES = """
[[source]]
name = "sf311"
provider = "socrata"
city = "sf"
table = "request"
base_url = "{socrata}"
dataset = "vw6y-z8j6"
timezone = "America/Los_Angeles"
publisher = "DataSF (311 Cases)"
page_size = 3
[source.fields]
id = "service_request_id"
time = "requested_datetime"
updated = "updated_datetime"
category = "service_name"
descriptor = "service_subtype"
lon = "long"
lat = "lat"
location = "point"
attrs = ["status_description", "agency_responsible", "supervisor_district", "analysis_neighborhood"]

[[source]]
name = "new_haven_scf"
provider = "seeclickfix"
city = "new_haven"
table = "request"
base_url = "{scf}"
dataset = "request_types=122,657"
publisher = "City of New Haven via SeeClickFix"
[source.fields]
id = "id"
time = "created_at"
updated = "updated_at"
category = "request_type.title"
descriptor = "summary"
lon = "lng"
lat = "lat"
attrs = ["status", "request_type.organization", "reporter.role"]
"""
SF = load_cassette("registry/sf311_vw6y-z8j6.json")
NEW_HAVEN = load_cassette("registry/new_haven_scf_issues.json")


@pytest.fixture
def new_entries(httpserver: HTTPServer, tmp_path: Path) -> dict[str, SourceSpec]:
    """A registry file with the two new entries, both aimed at the local server (SODA and SeeClickFix)."""
    fields, types = json.loads(SF.headers["X-SODA2-Fields"]), json.loads(SF.headers["X-SODA2-Types"])
    fake = FakeSocrata("vw6y-z8j6", SF.body, dict(zip(fields, types, strict=True)), "service_request_id", "updated_datetime")
    socrata = fake.install(httpserver)
    serve_by_page(httpserver, [NEW_HAVEN], empty=lambda page: {"metadata": {"pagination": {"next_page": None}}, "issues": []})
    return load_registry(_write(tmp_path, NEW_ENTRIES.format(socrata=socrata, scf=httpserver.url_for("/api/v2"))))


def test_a_new_socrata_city_is_one_registry_entry(new_entries: dict[str, SourceSpec], httpserver: HTTPServer) -> None:
    pages = drain(adapter_for(new_entries["sf311"]), IngestCursor())
    assert [len(p.rows) for p in pages] == [3, 1]  # keyset pages of the entry's page_size, to the short one

    frame = pl.concat([adapter_for(new_entries["sf311"]).normalize(p.rows) for p in pages])
    assert frame.schema == pl.Schema(CANONICAL_COLUMNS["request"])
    by_id = {r["source_id"]: r for r in frame.to_dicts()}
    assert set(by_id) == {r["service_request_id"] for r in SF.body}
    bulky = by_id["101002345678"]  # 01:30 on the night San Francisco falls back: the earlier (PDT) instant
    assert bulky["ts"] == datetime(2025, 11, 2, 8, 30, tzinfo=UTC)
    assert (bulky["category"], bulky["descriptor"]) == ("Street and Sidewalk Cleaning", "Bulky Items")
    assert (bulky["lon"], bulky["lat"]) == (-122.41955, 37.76462)
    graffiti = by_id["101002345690"]  # no lat/long fields: the GeoJSON point named by `location`
    assert graffiti["ts"] == datetime(2025, 11, 2, 16, 5, 31, tzinfo=UTC)
    assert (graffiti["lon"], graffiti["lat"]) == (-122.40762, 37.7842)
    assert by_id["101002345702"]["lon"] is None  # no location at all: kept, unlocated
    assert json.loads(by_id["101002345711"]["attrs"])["agency_responsible"] == "PUC Sewer Ops"
    assert all("vw6y-z8j6" in r.path for r in requests_to(httpserver, "/resource/vw6y-z8j6.json"))


def test_a_new_seeclickfix_organisation_is_one_registry_entry(new_entries: dict[str, SourceSpec], httpserver: HTTPServer) -> None:
    pages = drain(adapter_for(new_entries["new_haven_scf"]), IngestCursor())
    request = requests_to(httpserver, "/api/v2/issues")[0]
    assert request.args["request_types"] == "122,657"
    assert "place_url" not in request.args

    frame = adapter_for(new_entries["new_haven_scf"]).normalize(pages[0].rows)
    assert frame.schema == pl.Schema(CANONICAL_COLUMNS["request"])
    rows = frame.sort("source_id").to_dicts()
    assert [r["source_id"] for r in rows] == ["19250950", "19250977", "19251010"]
    assert [r["category"] for r in rows] == ["Pothole", "Graffiti", "Pothole"]
    assert rows[2]["descriptor"] == "Pothole on Chapel"
    assert rows[2]["ts"] == datetime(2025, 11, 3, 13, 1, 10, tzinfo=UTC)
    assert rows[0]["lon"] is None  # unlocated, kept
    assert json.loads(rows[1]["attrs"]) == {
        "status": "Acknowledged",
        "request_type.organization": "City of New Haven",
        "reporter.role": "Verified Official",
    }
    assert pages[-1].cursor == "2025-11-03T13:01:11Z"


@pytest.mark.parametrize(("name", "rows", "unlocated"), [("sf311", 4, 1), ("new_haven_scf", 3, 1)])
def test_new_entries_ingest_end_to_end(new_entries: dict[str, SourceSpec], tmp_path: Path, name: str, rows: int, unlocated: int) -> None:
    from app.data.ingest import ingest_source
    from app.data.snapshot import query
    from app.data.store import Store

    store = Store(tmp_path / "data")
    spec = new_entries[name]

    async def go() -> Any:
        async with httpx.AsyncClient(timeout=5) as client:
            return await ingest_source(store, spec, client)

    report = asyncio.run(go())
    assert report.error is None
    assert (report.rows, report.unlocated) == (rows, unlocated)
    with store.writer() as con:
        stored = query(con, "SELECT city, tract_id FROM request WHERE source = $s", {"s": name})
        cursor = query(con, 'SELECT "cursor" FROM ingest_state WHERE source = $s', {"s": name}).item()
    assert stored.height == rows
    assert set(stored["city"]) == {spec.city}
    assert stored["tract_id"].null_count() == unlocated  # the located rows joined to H3 cells of the new city
    assert cursor is not None
