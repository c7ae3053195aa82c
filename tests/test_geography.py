"""Boundary sets read through a column mapping (GeoJSON, GeoPackage, Shapefile; any CRS), the Chicago
hierarchy from the real files, the portal download cache, and the point-in-tract join against a
brute-force reference."""

from __future__ import annotations

import gzip
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import polars as pl
import pytest
import shapely

from app.config import get_settings
from app.data import geography
from app.data._pointindex import GridIndex
from app.data.boundaries import BoundarySet, LevelSource, LookupLevel, build_levels, read_level, resolve_file
from app.data.geography import CHICAGO, CITIES, CityGeography, from_boundary_set, load_geography, locate, tract_join
from conftest import SHARED_DATA, level_totals

CHICAGO_DIR = SHARED_DATA / "geo" / "chicago"
NYC_DIR = SHARED_DATA / "geo" / "nyc"
TRACTS, AREAS = CHICAGO.levels[0], CHICAGO.levels[1]
needs_chicago = pytest.mark.skipif(
    not (CHICAGO_DIR / "chicago_census_tracts_2010.geojson.gz").exists(), reason=f"Chicago boundary files not in {CHICAGO_DIR}"
)
needs_nyc_2010 = pytest.mark.skipif(
    not (NYC_DIR / "nyct2010_dcp_shapefile" / "nyct2010.shp").exists(), reason=f"NYC DCP 2010 shapefile not in {NYC_DIR}"
)
#: Sides per the lookup's README: number of community areas in each.
SIDE_SIZES = {
    "far-north-side": 12,
    "south-side": 12,
    "far-southeast-side": 12,
    "southwest-side": 12,
    "west-side": 9,
    "northwest-side": 6,
    "far-southwest-side": 6,
    "north-side": 5,
    "central": 3,
}


@pytest.fixture(scope="module")
def chicago() -> CityGeography:
    if not (CHICAGO_DIR / "chicago_census_tracts_2010.geojson.gz").exists():
        pytest.skip(f"Chicago boundary files not in {CHICAGO_DIR}")
    return from_boundary_set(CHICAGO, [CHICAGO_DIR])


def _level(geo: CityGeography, level: str) -> pl.DataFrame:
    return geo.units.filter(pl.col("level") == level)


# ---- Chicago ------------------------------------------------------------------------------------


def test_chicago_is_registered() -> None:
    assert "chicago" in CITIES


@pytest.mark.parametrize(("level", "count"), [("tract", 801), ("neighborhood", 77), ("borough", 9), ("city", 1)])
def test_chicago_unit_counts(chicago: CityGeography, level: str, count: int) -> None:
    units = _level(chicago, level)
    assert units.height == count
    assert units["unit_id"].n_unique() == count
    assert shapely.is_valid(shapely.from_wkb(units["geom_wkb"].to_numpy())).all()


def test_every_chicago_unit_has_a_parent_one_level_up(chicago: CityGeography) -> None:
    ids = {lvl: set(_level(chicago, lvl)["unit_id"]) for lvl in ("neighborhood", "borough", "city")}
    for child, parent in (("tract", "neighborhood"), ("neighborhood", "borough"), ("borough", "city")):
        assert set(_level(chicago, child)["parent_id"]) <= ids[parent], child
    assert _level(chicago, "city")["parent_id"].to_list() == [None]


def test_chicago_tracts_take_the_citys_community_area(chicago: CityGeography) -> None:
    """``commarea`` is the City's assignment, kept even where a tract straddles the line."""
    tracts = gpd.read_file(f"/vsigzip/{(CHICAGO_DIR / TRACTS.file).resolve()}", columns=["geoid10", "commarea"], engine="pyogrio")
    expected = dict(zip(tracts["geoid10"], tracts["commarea"], strict=True))
    got = dict(_level(chicago, "tract").select("unit_id", "parent_id").iter_rows())
    assert got == expected


def test_chicago_sides_group_the_community_areas(chicago: CityGeography) -> None:
    sides = _level(chicago, "neighborhood").group_by("parent_id").len()
    assert dict(sides.iter_rows()) == SIDE_SIZES
    assert _level(chicago, "borough").filter(pl.col("unit_id") == "far-north-side")["name"].to_list() == ["Far North Side"]


def test_chicago_roll_up_through_tract_parents(chicago: CityGeography) -> None:
    parents = chicago.tract_parents()
    assert parents.height == 801
    assert parents.null_count().row(0) == (0, 0, 0, 0)
    assert set(parents["city_id"]) == {"chicago"}
    # Events in every tract roll up so each level's counts add to the same total.
    events = pl.DataFrame({"tract_id": parents["tract_id"].to_list() * 2 + [None]})
    totals = {lvl: level_totals(events, parents, lvl) for lvl in ("tract", "neighborhood", "borough", "city")}
    assert [totals[lvl].height for lvl in ("tract", "neighborhood", "borough", "city")] == [801, 77, 9, 1]
    assert {lvl: t["count"].sum() for lvl, t in totals.items()} == {"tract": 1602, "neighborhood": 1602, "borough": 1602, "city": 1603}
    assert dict(totals["borough"].iter_rows())["central"] == 2 * parents.filter(pl.col("borough_id") == "central").height


def test_chicago_points_join_to_the_tract_holding_them(chicago: CityGeography) -> None:
    reps = _level(chicago, "tract")
    got = tract_join(reps["lon"].to_numpy(), reps["lat"].to_numpy(), chicago)
    assert got.tolist() == reps["unit_id"].to_list()


@needs_chicago
def test_chicago_loader_reads_the_geo_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CSH_GEO_DIR", str(CHICAGO_DIR))
    monkeypatch.setenv("CSH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    load_geography.cache_clear()
    try:
        ids, units = locate("chicago", np.asarray([-87.6298, 0.0, np.nan]), np.asarray([41.8781, 0.0, np.nan]))
        assert ids[0] is not None
        assert ids[1:].tolist() == [None, None]
        assert units.filter(pl.col("level") == "tract").height == 801
    finally:
        get_settings.cache_clear()
        load_geography.cache_clear()
    assert not (tmp_path / "geo").exists()  # nothing was downloaded


@needs_chicago
def test_spatial_parents_mostly_agree_with_the_citys_assignment() -> None:
    """Without a parent column a tract joins the community area holding its representative point."""
    spatial = BoundarySet("chi", "Chicago", (LevelSource(TRACTS.file, "geoid10"), AREAS, CHICAGO.levels[2]))
    by_column, by_space = build_levels(CHICAGO, [CHICAGO_DIR])[0], build_levels(spatial, [CHICAGO_DIR])[0]
    agree = np.mean([a == b for a, b in zip(by_column.parents, by_space.parents, strict=True)])
    assert 0.95 < agree < 1.0  # tracts straddle community-area lines (README: 97.9%)
    assert None not in by_space.parents


# ---- other formats and CRSs through the same mapping ---------------------------------------------


@needs_chicago
@pytest.mark.parametrize(("name", "layer"), [("chicago.gpkg", "tracts"), ("tracts.shp", None)])
def test_geopackage_and_shapefile_round_trip(tmp_path: Path, chicago: CityGeography, name: str, layer: str | None) -> None:
    """The tracts written in Illinois State Plane feet load back to the same units in WGS84."""
    tracts = gpd.read_file(f"/vsigzip/{(CHICAGO_DIR / TRACTS.file).resolve()}", engine="pyogrio").to_crs("EPSG:3435")
    tracts.to_file(tmp_path / name, layer=layer, engine="pyogrio")
    tract_src = LevelSource(name, id_col="geoid10", name_col="namelsad10", parent_col="commarea", layer=layer)
    geo = from_boundary_set(BoundarySet("chicago", "Chicago", (tract_src, AREAS, CHICAGO.levels[2])), [tmp_path, CHICAGO_DIR])
    assert_frame_without_geoms_equal(geo.units, chicago.units)
    moved = shapely.hausdorff_distance(geo.tract_geoms, chicago.tract_geoms)
    assert moved.max() < 1e-6  # degrees, after a round trip through feet


def assert_frame_without_geoms_equal(a: pl.DataFrame, b: pl.DataFrame) -> None:
    keys = ["city", "level", "unit_id", "name", "parent_id"]
    assert a.select(keys).equals(b.select(keys))
    assert np.allclose(a["lon"].to_numpy(), b["lon"].to_numpy(), atol=1e-5)


@needs_nyc_2010
def test_nyc_dcp_shapefile_reprojects_from_state_plane() -> None:
    path = NYC_DIR / "nyct2010_dcp_shapefile" / "nyct2010.shp"
    ids, _names, parents, geoms = read_level(LevelSource(path.name, "BoroCT2010", "NTAName", "NTACode"), path)
    assert len(ids) == len(set(ids)) == 2165
    assert shapely.is_valid(geoms).all()
    assert set(shapely.get_type_id(geoms)) <= {3, 6}
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    assert -74.27 < x0 < x1 < -73.69
    assert 40.49 < y0 < y1 < 40.92
    assert parents[ids.index("5000900")] == "SI22"


@needs_nyc_2010
def test_a_nyc_2010_hierarchy_mixes_shapefile_and_geojson() -> None:
    """A new boundary set is declaration only: DCP 2010 tracts -> 2010 NTAs -> boroughs."""
    nyc2010 = BoundarySet(
        "nyc2010",
        "New York City (2010)",
        (
            LevelSource("nyct2010_dcp_shapefile/nyct2010.shp", "BoroCT2010", "NTAName", parent_col="NTACode"),
            LevelSource("nyc_nta_2010.geojson.gz", "nta2010", "name", parent_col="borough_code"),
            LevelSource("nyc_boroughs.geojson.gz", "borough_code", "name"),
        ),
    )
    geo = from_boundary_set(nyc2010, [NYC_DIR])
    counts = dict(geo.units.group_by("level").len().iter_rows())
    assert counts == {"tract": 2165, "neighborhood": 195, "borough": 5, "city": 1}
    assert geo.tract_parents().null_count().row(0) == (0, 0, 0, 0)


def test_invalid_polygons_are_repaired(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
    gpd.GeoDataFrame({"id": ["a"]}, geometry=[bowtie], crs="EPSG:4326").to_file(tmp_path / "b.geojson", engine="pyogrio")
    _, _, _, geoms = read_level(LevelSource("b.geojson", "id"), tmp_path / "b.geojson")
    assert shapely.is_valid(geoms).all()
    assert shapely.area(geoms[0]) == pytest.approx(0.5)


# ---- where the files come from -------------------------------------------------------------------


def test_missing_file_without_url_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CSH_GEO_DIR"):
        resolve_file("nope.geojson", [tmp_path], None)


def test_portal_file_is_downloaded_once_then_cached(tmp_path: Path) -> None:
    body = b'{"type": "FeatureCollection", "features": []}'
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=body)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    cache = tmp_path / "cache"
    first = resolve_file(TRACTS.file, [tmp_path / "empty"], cache, TRACTS.url, client)
    again = resolve_file(TRACTS.file, [tmp_path / "empty"], cache, TRACTS.url, client)
    assert first == again == cache / TRACTS.file
    assert seen == ["https://data.cityofchicago.org/api/geospatial/5jrd-6zik?method=export&format=GeoJSON"]
    assert gzip.decompress(first.read_bytes()) == body
    assert not list(cache.glob("*.part"))


def test_a_directory_file_wins_over_the_cache(tmp_path: Path) -> None:
    for d in ("dir", "cache"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.geojson").write_text(d)
    assert resolve_file("f.geojson", [tmp_path / "dir"], tmp_path / "cache").read_text() == "dir"


def test_lookup_level_table_ships_with_the_app() -> None:
    lookup = CHICAGO.levels[2]
    assert isinstance(lookup, LookupLevel)
    table = pl.read_csv(lookup.file, comment_prefix="#")
    assert table.height == 78
    assert table["Side"].drop_nulls().n_unique() == 9


# ---- the point-in-tract join ---------------------------------------------------------------------


def _brute_force(geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Lowest index of a polygon covering each point (boundary included), -1 for none."""
    out = np.full(len(lon), -1)
    for i in range(len(geoms) - 1, -1, -1):  # lower indices overwrite higher ones
        out[shapely.intersects_xy(geoms[i], lon, lat)] = i
    return out


def _test_points(geoms: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points over (and beyond) the bounds, vertices (on shared boundaries), edge midpoints,
    the bounds' corners and NaNs."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    pad = 0.05 * (x1 - x0)
    uniform = np.column_stack([rng.uniform(x0 - pad, x1 + pad, n), rng.uniform(y0 - pad, y1 + pad, n)])
    coords = shapely.get_coordinates(geoms)
    vertices = coords[rng.choice(len(coords), n // 4)]
    midpoints = (vertices + coords[np.minimum(rng.choice(len(coords), n // 4), len(coords) - 1)]) / 2
    edges = np.column_stack([[x0, x1, x0, x1, np.nan, 0.0], [y0, y1, y1, y0, y0, np.nan]])
    pts = np.vstack([uniform, vertices, midpoints, edges])
    return pts[:, 0].copy(), pts[:, 1].copy()


def test_grid_index_matches_brute_force_on_nyc() -> None:
    geo = load_geography("nyc")
    lon, lat = _test_points(geo.tract_geoms, 20_000, seed=1)
    assert np.array_equal(geo.index.lookup(lon, lat), _brute_force(geo.tract_geoms, lon, lat))


def test_tract_join_matches_brute_force_on_chicago(chicago: CityGeography) -> None:
    lon, lat = _test_points(chicago.tract_geoms, 20_000, seed=2)
    expected = _brute_force(chicago.tract_geoms, lon, lat)
    got = tract_join(lon, lat, chicago)
    assert list(got) == [chicago.tract_ids[e] if e >= 0 else None for e in expected]
    assert (expected >= 0).mean() > 0.3
    assert (expected < 0).mean() > 0.1


@pytest.mark.parametrize("seed", range(3))
def test_grid_index_on_overlapping_and_touching_polygons(seed: int) -> None:
    """Hand-made polygons that overlap, touch and nest: the lowest index wins everywhere."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 10, (40, 2))
    geoms = np.asarray([shapely.box(x, y, x + r, y + r) for (x, y), r in zip(centres, rng.uniform(0.2, 3, 40), strict=True)])
    geoms = np.append(geoms, shapely.Point(5, 5).buffer(2))
    lon, lat = _test_points(geoms, 5_000, seed)
    lon = np.append(lon, np.round(lon[:2000], 1))  # many points exactly on grid-aligned box edges
    lat = np.append(lat, np.round(lat[:2000], 1))
    for cells in (1, 16, 256):
        assert np.array_equal(GridIndex(geoms, cells_per_polygon=cells).lookup(lon, lat), _brute_force(geoms, lon, lat)), cells


def test_join_of_no_points_and_of_unlocated_points() -> None:
    geo = load_geography("nyc")
    assert tract_join(np.empty(0), np.empty(0), geo).tolist() == []
    assert tract_join(np.asarray([np.nan, 0.0]), np.asarray([np.nan, 0.0]), geo).tolist() == [None, None]


def test_geography_module_exports() -> None:
    assert set(geography.__all__) >= {"CHICAGO", "CITIES", "from_boundary_set", "tract_join"}
