"""The H3 hierarchy fallback for regions with no boundary set (UK closures, Open311 or SeeClickFix
cities we hold no tracts for): hexagon cells stand in for tracts, and coarser cells for their parents.

The levels map to H3 resolutions chosen to match the scale of the admin units they replace:

========================  ==========  ==================  =================================
level                     resolution  mean cell area      compares with
========================  ==========  ==================  =================================
``tract``                 7           ~5.2 km²            a suburban census tract / MSOA
``neighborhood``          5           ~253 km²            a district or community area
``borough``               3           ~12,400 km²         a county or region
``city``                  --          the region id       e.g. ``"uk"``
========================  ==========  ==================  =================================

Res 7 keeps a motorway closure's cell small enough to tell junctions apart, yet large enough that a
week of closures lands on repeat cells (so anomaly baselines have counts to work with). Units follow
the ``geo_unit`` schema, so the engine's roll-up (:func:`app.data.geography.tract_parents`) works
on H3 units unchanged. H3 cells do not nest exactly (a child pokes slightly out of its parent's
hexagon); the roll-up follows ``h3.cell_to_parent``, as tracts follow their assigned parents.
"""

from __future__ import annotations

from itertools import pairwise

import h3
import numpy as np
import polars as pl
import shapely
from h3.api import basic_int as h3int
from numpy.typing import NDArray

from app.data.geography import UNIT_SCHEMA

__all__ = ["H3_RESOLUTIONS", "h3_locate", "h3_units"]

#: Unit level -> H3 resolution (``city`` is the region itself, not a cell).
H3_RESOLUTIONS: dict[str, int] = {"tract": 7, "neighborhood": 5, "borough": 3}

_UNIT_SCHEMA = UNIT_SCHEMA  # one definition of the unit table, in app.data.geography


def h3_locate(city: str, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> tuple[NDArray[np.object_], pl.DataFrame]:
    """The res-7 cell id of each point (``None`` where unlocated) and the unit rows those cells need.

    h3 4.5 has no array API for ``latlng_to_cell`` (its ``numpy_int`` flavour only converts cell
    collections), so points go through the integer API one by one (~0.7 µs each); everything after
    that works on the far fewer distinct cells.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    out = np.full(len(lon), None, dtype=object)
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return out, h3_units(city, [])
    res = H3_RESOLUTIONS["tract"]
    cells = np.fromiter(
        (h3int.latlng_to_cell(y, x, res) for y, x in zip(lat[idx].tolist(), lon[idx].tolist(), strict=True)),
        dtype=np.uint64,
        count=len(idx),
    )
    distinct, inverse = np.unique(cells, return_inverse=True)
    ids = np.array([h3.int_to_str(int(c)) for c in distinct], dtype=object)
    out[idx] = ids[inverse]
    return out, h3_units(city, ids.tolist())


def h3_units(city: str, tract_cells: list[str]) -> pl.DataFrame:
    """``geo_unit`` rows for ``tract_cells``, their parent cells and the region row (named as
    :func:`app.data.cities.city_name` names the region).

    The region's geometry is the union of the borough and tract cells given here (a tract cell can
    poke out of its parent's hexagon): an outline of the area covered, not a boundary.
    """
    levels = list(H3_RESOLUTIONS)
    cells_by_level: dict[str, list[str]] = {levels[0]: sorted(set(tract_cells))}
    parents_by_level: dict[str, list[str]] = {}
    for child, parent in pairwise(levels):
        parents = [h3.cell_to_parent(c, H3_RESOLUTIONS[parent]) for c in cells_by_level[child]]
        parents_by_level[child] = parents
        cells_by_level[parent] = sorted(set(parents))
    top = levels[-1]
    parents_by_level[top] = [city] * len(cells_by_level[top])
    frames = [_cell_frame(city, lvl, cells_by_level[lvl], parents_by_level[lvl]) for lvl in levels]
    if frames[-1].height:
        from app.data.cities import city_name  # the region's display name (cities imports this module)

        region = shapely.union_all(shapely.from_wkb(pl.concat([frames[0], frames[-1]])["geom_wkb"].to_numpy()))
        point = shapely.point_on_surface(region)
        frames.append(
            pl.DataFrame(
                {
                    "city": [city],
                    "level": ["city"],
                    "unit_id": [city],
                    "name": [city_name(city)],
                    "parent_id": [None],
                    "lon": [shapely.get_x(point)],
                    "lat": [shapely.get_y(point)],
                    "geom_wkb": [shapely.to_wkb(region)],
                },
                schema=_UNIT_SCHEMA,
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=_UNIT_SCHEMA)


def _cell_frame(city: str, level: str, cells: list[str], parents: list[str]) -> pl.DataFrame:
    """One unit row per cell: hexagon polygon (lon/lat order) and the cell centre."""
    rings = [[(lng, lat) for lat, lng in h3.cell_to_boundary(c)] for c in cells]
    polygons = [shapely.Polygon(r) for r in rings]
    centres = [h3.cell_to_latlng(c) for c in cells]
    return pl.DataFrame(
        {
            "city": [city] * len(cells),
            "level": [level] * len(cells),
            "unit_id": cells,
            "name": [f"H3 r{H3_RESOLUTIONS[level]} {c}" for c in cells],
            "parent_id": parents,
            "lon": [lng for _, lng in centres],
            "lat": [lat for lat, _ in centres],
            "geom_wkb": list(shapely.to_wkb(np.asarray(polygons, dtype=object))) if polygons else [],
        },
        schema=_UNIT_SCHEMA,
    )
