"""Real data end to end (skipped with a reason when ``../shared/data`` is absent): the real NYC 311
SODA rows served by a local Socrata server and ingested, the real CSV/JSON exports imported, and
the Chicago crimes export counted per community area, each against a direct count of the file."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
import shapely
import socrata_fake as sf
from pytest_httpserver import HTTPServer
from replay import load_cassette

from app.config import get_settings
from app.data import geography
from app.data.contract import detect_drift, load_contract, validate_rows
from app.data.ingest import ingest_source
from app.data.registry import SourceSpec, get_source
from app.data.snapshot import query
from app.data.sources import adapter_for
from app.data.sources.export_file import ingest_file, read_export
from app.data.store import Store
from conftest import SHARED_DATA

EVENTS = SHARED_DATA / "events"
NYC_JSON = EVENTS / "soda_examples" / "nyc311_erm2-nwe9_soda_response_2024-05-27.json.gz"
NYC_CSV_2024 = EVENTS / "nyc" / "nyc_311_erm2-nwe9_soda_csv_2024-05-26.csv.gz"
NYC_CSV_2019 = EVENTS / "nyc" / "nyc_311_76ig-c548_soda_csv_2019-12-31.csv.gz"
NYC_PORTAL_CSV = EVENTS / "nyc" / "nyc_311_2022-05-01_sample.csv.gz"
CHICAGO_CRIMES = EVENTS / "chicago" / "chicago_crimes_2012-01_to_02_soda_export.csv.gz"
CHICAGO_GEO = SHARED_DATA / "geo" / "chicago"
BOROUGHS = {"MANHATTAN": "MN", "BRONX": "BX", "BROOKLYN": "BK", "QUEENS": "QN", "STATEN ISLAND": "SI"}
RIKERS_TRACT = "36005000100"  # a Bronx tract inside Queens NTA QN0151: the roll-up says Queens


def needs(*paths: Path) -> pytest.MarkDecorator:
    missing = [p.name for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared real data absent ({', '.join(missing)}); see ../shared/data/README.md")


def file_rows(path: Path) -> list[dict[str, str]]:
    """The file's rows as the raw text cells (the direct count's side: no project code)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def stored(store: Store, spec: SourceSpec) -> pl.DataFrame:
    with store.writer() as con:
        return query(con, f"SELECT source_id, ts, lon, lat, tract_id, attrs FROM {spec.table} WHERE source = $s", {"s": spec.name})


# ---- NYC 311 through the local Socrata server ------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[HTTPServer]:
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.stop()


@needs(NYC_JSON)
def test_real_nyc311_rows_served_and_ingested_count_per_borough(tmp_path: Path, server: HTTPServer) -> None:
    rows: list[dict[str, Any]] = json.loads(gzip.decompress(NYC_JSON.read_bytes()))
    # The file is a plain query's answer; the server adds the system fields $select=:*,* returns
    # (one :updated_at per 150 rows, as SODA's batch upserts share one).
    served = [{":id": f"row-{i}", ":updated_at": f"2024-05-27T07:{i // 150:02d}:00.000Z", **r} for i, r in enumerate(rows)]
    cassette = load_cassette("socrata/nyc311.json")
    types = dict(zip(json.loads(cassette.headers["X-SODA2-Fields"]), json.loads(cassette.headers["X-SODA2-Types"]), strict=True))
    fake = sf.FakeSocrata("erm2-nwe9", served, types, "unique_key", ":updated_at")
    server.clear()
    spec = get_source("nyc311").model_copy(update={"base_url": fake.install(server), "page_size": 250})
    schema = load_contract("nyc311")
    assert validate_rows(schema, served) == []

    async def go() -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            return await ingest_source(Store(tmp_path), spec, client)

    report = asyncio.run(go())
    assert (report.error, report.rows, report.pages) == (None, 1000, 5)  # 4 full pages and the empty end
    assert detect_drift(schema, served) == {"new": [], "vanished": [], "retyped": []}
    assert not any(report.drift.values())

    got = stored(Store(tmp_path), spec)
    assert got.height == got["source_id"].n_unique() == 1000
    parents = geography.load_geography("nyc").tract_parents().select("tract_id", "borough_id")
    got = got.join(parents, on="tract_id", how="left").join(
        pl.DataFrame({"source_id": [r["unique_key"] for r in rows], "file_borough": [r["borough"] for r in rows]}), on="source_id"
    )
    without_point = sum(1 for r in rows if "latitude" not in r)
    assert without_point == 12
    assert got["lon"].null_count() == without_point  # unlocated rows are kept, not dropped
    assert report.unlocated == got["tract_id"].null_count() == without_point  # every located row is in a tract
    # Per borough: the roll-up agrees with the file's own borough field for every located row but
    # one just across the Brooklyn/Queens line; no row here falls in the Rikers tract.
    located = got.filter(pl.col("tract_id").is_not_null())
    direct = Counter(BOROUGHS[b] for b in located["file_borough"])
    rolled = Counter(located["borough_id"].to_list())
    assert direct - rolled == Counter({"BK": 1})
    assert rolled - direct == Counter({"QN": 1})
    disagree = located.filter(pl.col("file_borough").replace_strict(BOROUGHS, default=None) != pl.col("borough_id"))
    assert disagree.select("file_borough", "borough_id").rows() == [("BROOKLYN", "QN")]
    assert located.filter(pl.col("tract_id") == RIKERS_TRACT).height == 0
    assert dict(Counter(BOROUGHS.get(b, b) for b in got.filter(pl.col("tract_id").is_null())["file_borough"])) == {
        "BK": 2, "QN": 7, "BX": 1, "SI": 1, "Unspecified": 1,
    }  # fmt: skip
    # and a snapshot published now holds exactly these rows
    snap = Store(tmp_path).publish({"source": "nyc311"})
    assert snap.row_counts()["request"] == 1000


# ---- CSV / JSON exports --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "path", "rows", "without_point", "known"),
    [
        ("nyc311", NYC_PORTAL_CSV, 924, 11, ("54049402", "2022-05-01T04:00:03+00:00")),  # "05/01/2022 12:00:03 AM" EDT
        ("nyc311", NYC_CSV_2024, 1000, 12, ("61276295", "2024-05-27T06:08:51+00:00")),
        ("nyc311_2010_2019", NYC_CSV_2019, 1000, 13, ("45278137", "2020-01-01T04:59:11+00:00")),  # EST, into 2020 UTC
        ("nyc311", NYC_JSON, 1000, 12, ("61276295", "2024-05-27T06:08:51+00:00")),
    ],
    ids=["portal-headers", "api-names-2024", "api-names-76ig-c548", "json-export"],
)
def test_real_exports_import(tmp_path: Path, source: str, path: Path, rows: int, without_point: int, known: tuple[str, str]) -> None:
    if not path.exists():
        pytest.skip(f"shared real data absent ({path.name}); see ../shared/data/README.md")
    spec = get_source(source)
    report = ingest_file(Store(tmp_path), spec, path, chunk_rows=400)
    assert (report.rows, report.rejected, report.pages) == (rows, 0, -(-rows // 400))
    got = stored(Store(tmp_path), spec)
    assert got.height == got["source_id"].n_unique() == rows
    assert got["lon"].null_count() == without_point
    assert report.unlocated == got["tract_id"].null_count() == without_point  # README: every located row is in a 2020 tract
    assert got.filter(pl.col("source_id") == known[0])["ts"].item() == datetime.fromisoformat(known[1]).astimezone(UTC)
    # re-importing the same file replaces rows, never duplicates them
    assert ingest_file(Store(tmp_path), spec, path).rows == rows
    assert stored(Store(tmp_path), spec).height == rows


@needs(NYC_CSV_2024, NYC_JSON, NYC_CSV_2019)
def test_api_name_exports_are_api_shaped_and_agree_with_the_json() -> None:
    """The CSV export of the same 1,000 rows reads back into rows the JSON contract accepts, and
    normalises to the same frame as the JSON response."""
    spec = get_source("nyc311")
    from_csv, from_json = read_export(spec, NYC_CSV_2024), read_export(spec, NYC_JSON)
    assert validate_rows(load_contract("nyc311"), from_csv) == []
    assert validate_rows(load_contract("nyc311_2010_2019"), read_export(get_source("nyc311_2010_2019"), NYC_CSV_2019)) == []
    adapter = adapter_for(spec)
    a, b = (adapter.normalize(r).sort("source_id") for r in (from_csv, from_json))
    assert a.drop("attrs").equals(b.drop("attrs"))
    assert [json.loads(x) for x in a["attrs"]] == [json.loads(x) for x in b["attrs"]]


# ---- Chicago crimes per community area ----------------------------------------------------------------
@pytest.fixture
def chicago_geography(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[geography.CityGeography]:
    if "chicago" not in geography.CITIES:
        pytest.skip('Chicago geography not available yet: "chicago" is not in app.data.geography.CITIES')
    if not (CHICAGO_GEO / "chicago_census_tracts_2010.geojson.gz").exists():
        pytest.skip("shared Chicago boundaries absent; see ../shared/data/README.md")
    monkeypatch.setenv("CSH_GEO_DIR", str(CHICAGO_GEO))
    monkeypatch.setenv("CSH_DATA_DIR", str(tmp_path / "settings"))
    get_settings.cache_clear()
    geography.load_geography.cache_clear()
    try:
        yield geography.load_geography("chicago")
    finally:
        get_settings.cache_clear()
        geography.load_geography.cache_clear()


def _tract_commarea() -> tuple[list[Any], list[str]]:
    """Chicago tract polygons and their ``commarea`` straight from the shared GeoJSON."""
    doc = json.loads(gzip.decompress((CHICAGO_GEO / "chicago_census_tracts_2010.geojson.gz").read_bytes()))
    return [shapely.geometry.shape(f["geometry"]) for f in doc["features"]], [f["properties"]["commarea"] for f in doc["features"]]


@needs(CHICAGO_CRIMES)
def test_real_chicago_crimes_count_per_community_area(tmp_path: Path, chicago_geography: geography.CityGeography) -> None:
    spec = get_source("chicago_crimes")
    raw = file_rows(CHICAGO_CRIMES)
    # The export has no `id`: case_number stands in. One case has two rows (a double homicide,
    # two victims), so 10,000 rows are 9,999 incidents.
    by_case = {r["case_number"]: r for r in raw}
    assert (len(raw), len(by_case)) == (10_000, 9_999)
    report = ingest_file(Store(tmp_path / "store"), spec, CHICAGO_CRIMES, id_field="case_number")
    assert (report.rows, report.rejected) == (9_999, 0)
    got = stored(Store(tmp_path / "store"), spec)
    assert got.height == got["source_id"].n_unique() == 9_999

    # Direct count: the file's own latitude/longitude in the shared tract polygons -> commarea.
    lon = np.asarray([float(r["longitude"]) if r["longitude"] else np.nan for r in by_case.values()])
    lat = np.asarray([float(r["latitude"]) if r["latitude"] else np.nan for r in by_case.values()])
    polygons, commarea = _tract_commarea()
    ok = np.flatnonzero(np.isfinite(lon) & np.isfinite(lat))
    point_i, tract_i = shapely.STRtree(polygons).query(shapely.points(lon[ok], lat[ok]), predicate="intersects")
    first = np.unique(point_i, return_index=True)[1]
    direct = Counter(int(commarea[t]) for t in tract_i[first])
    assert np.isnan(lon).sum() == 87  # README: 87 rows without coordinates
    assert sum(direct.values()) / len(ok) > 0.995  # README: 99.8% of located rows fall in a tract

    parents = chicago_geography.tract_parents().select("tract_id", "neighborhood_id")
    rolled = got.join(parents, on="tract_id", how="inner")["neighborhood_id"].to_list()
    assert Counter(int(a) for a in rolled) == direct
    assert report.unlocated == 9_999 - sum(direct.values())  # no coordinates, bad geocodes, outside the city
    assert len(direct) == 77


@needs(CHICAGO_CRIMES)
def test_real_chicago_crimes_severity_and_times() -> None:
    spec = get_source("chicago_crimes")
    frame = adapter_for(spec).normalize(read_export(spec, CHICAGO_CRIMES, id_field="case_number"))
    by_type = frame.group_by("type").agg(pl.col("severity").unique()).sort("type")
    assert dict(zip(by_type["type"], by_type["severity"].to_list(), strict=True)) == {
        "ASSAULT": [2], "BATTERY": [2], "CRIM SEXUAL ASSAULT": [3], "CRIMINAL SEXUAL ASSAULT": [3], "HOMICIDE": [3],
        "KIDNAPPING": [3], "OFFENSE INVOLVING CHILDREN": [2], "ROBBERY": [3], "SEX OFFENSE": [2],
    }  # fmt: skip
    assert frame["ts"].min() == datetime(2012, 1, 1, 6, tzinfo=UTC)  # CST midnight
    assert frame["ts"].max() == datetime(2012, 2, 14, 20, 10, tzinfo=UTC)
    assert frame["lon"].null_count() == 87
