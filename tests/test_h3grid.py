"""The H3 fallback geography: cells per point, a unit hierarchy in the ``geo_unit`` schema, and the
engine's roll-up (``tract_parents`` + the release layers) working on it unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest
import shapely

from app.data.geography import locate, tract_parents
from app.data.h3grid import H3_RESOLUTIONS, h3_locate, h3_units
from app.data.snapshot import query
from app.data.store import Store
from app.engine.layers import layer_cells
from conftest import level_totals

RNG = np.random.default_rng(3)
#: Points spread over England (lon, lat), plus the unlocatable kinds ingest hands over.
LON = np.concatenate([RNG.uniform(-5.5, 1.7, 400), [np.nan, -0.1, 200.0, np.nan]])
LAT = np.concatenate([RNG.uniform(50.1, 55.8, 400), [51.5, np.nan, 51.5, np.nan]])
LOCATED = 400


@pytest.fixture(scope="module")
def located() -> tuple[np.ndarray, pl.DataFrame]:
    return h3_locate("uk", LON, LAT)


def test_cells_match_scalar_h3_and_unlocated_are_none(located: tuple[np.ndarray, pl.DataFrame]) -> None:
    ids, _ = located
    assert ids.dtype == object
    assert len(ids) == len(LON)
    expected = [h3.latlng_to_cell(y, x, H3_RESOLUTIONS["tract"]) for x, y in zip(LON[:LOCATED], LAT[:LOCATED], strict=True)]
    assert ids[:LOCATED].tolist() == expected
    assert ids[LOCATED:].tolist() == [None] * 4  # NaN lon, NaN lat, lon out of range, both missing


def test_units_form_the_hierarchy(located: tuple[np.ndarray, pl.DataFrame]) -> None:
    ids, units = located
    assert units.columns == ["city", "level", "unit_id", "name", "parent_id", "lon", "lat", "geom_wkb"]
    assert units.select(pl.struct("level", "unit_id").is_unique().all()).item()
    by_level = {lvl: units.filter(pl.col("level") == lvl) for lvl in ("tract", "neighborhood", "borough", "city")}
    assert set(by_level["tract"]["unit_id"]) == {i for i in ids if i is not None}
    for child, parent in (("tract", "neighborhood"), ("neighborhood", "borough")):
        res = H3_RESOLUTIONS[parent]
        frame = by_level[child]
        assert frame["parent_id"].to_list() == [h3.cell_to_parent(c, res) for c in frame["unit_id"]]
        assert set(frame["parent_id"]) == set(by_level[parent]["unit_id"])
    assert set(by_level["borough"]["parent_id"]) == {"uk"}
    assert by_level["city"].select("unit_id", "parent_id").rows() == [("uk", None)]
    assert {h3.get_resolution(c) for c in by_level["neighborhood"]["unit_id"]} == {5}


def test_unit_geometry_is_the_cell(located: tuple[np.ndarray, pl.DataFrame]) -> None:
    _, units = located
    geoms = shapely.from_wkb(units["geom_wkb"].to_numpy())
    assert shapely.is_valid(geoms).all()
    centres = shapely.points(units["lon"].to_numpy(), units["lat"].to_numpy())
    assert shapely.contains(geoms, centres).all()  # lon/lat order, centre inside its own hexagon
    tracts = units.filter(pl.col("level") == "tract")
    area_km2 = np.array([h3.cell_area(c, unit="km^2") for c in tracts["unit_id"]])
    assert 3 < area_km2.mean() < 8  # res 7: ~5.2 km² per cell
    city_geom = geoms[units["level"].to_numpy() == "city"][0]
    assert shapely.covers(city_geom.buffer(1e-9), shapely.points(LON[:LOCATED], LAT[:LOCATED])).all()


def test_engine_rolls_h3_units_up(located: tuple[np.ndarray, pl.DataFrame]) -> None:
    ids, units = located
    start = datetime(2026, 1, 5, tzinfo=UTC)
    events = pl.DataFrame(
        {
            "ts": [start + timedelta(hours=int(h)) for h in RNG.integers(0, 24 * 14, len(ids))],
            "category": ["Major Schemes"] * len(ids),
            "tract_id": pl.Series(ids.tolist(), dtype=pl.String),
        }
    )
    parents = tract_parents(units)
    assert parents.height == units.filter(pl.col("level") == "tract").height
    assert parents.null_count().sum_horizontal().item() == 0
    for level, res in (("neighborhood", 5), ("borough", 3)):
        counts = level_totals(events, parents, level)
        expected = pl.Series([h3.cell_to_parent(c, res) for c in ids[:LOCATED]]).value_counts(name="count").sort("")
        assert dict(counts.iter_rows()) == dict(expected.iter_rows())
        weekly = layer_cells(events, parents, {level: "week"}, "Europe/London", [level]).filter(pl.col("category") == "*")
        assert weekly["count"].sum() == LOCATED
        assert weekly["bin_start"].n_unique() == 2  # 14 days from a Monday: two London weeks (00:00 UTC in winter)
    assert level_totals(events, parents, "city").rows() == [("uk", len(ids))]  # unlocated count at city level only


def test_locate_falls_back_to_h3_for_cities_without_boundaries() -> None:
    ids, units = locate("uk", np.array([-1.5]), np.array([52.4]))
    assert ids.tolist() == [h3.latlng_to_cell(52.4, -1.5, 7)]
    assert units.filter(pl.col("level") == "tract")["unit_id"].to_list() == ids.tolist()


def test_no_points_gives_no_units() -> None:
    ids, units = h3_locate("uk", np.array([np.nan]), np.array([np.nan]))
    assert ids.tolist() == [None]
    assert units.is_empty()
    assert units.columns == h3_units("uk", ["87194ad33ffffff"]).columns


def test_units_fit_the_store(tmp_path: Path, located: tuple[np.ndarray, pl.DataFrame]) -> None:
    _, units = located
    store = Store(tmp_path)
    with store.writer() as con:
        store.upsert(con, "geo_unit", units)
        stored = query(con, "SELECT level, count(*) AS n FROM geo_unit WHERE city = 'uk' GROUP BY level")
    assert dict(stored.iter_rows()) == dict(units.group_by("level").len().iter_rows())
