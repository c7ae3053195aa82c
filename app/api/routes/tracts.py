"""``/tracts``: unit polygons of one admin level as GeoJSON."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import shapely
from fastapi import APIRouter, Query, Response

from app.api.deps import Level, SnapshotDep, default_city_of
from app.api.errors import unprocessable
from app.api.schemas import FeatureCollection
from app.data.snapshot import Snapshot

router = APIRouter(tags=["geography"])


@router.get(
    "/tracts", response_model=None, responses={200: {"model": FeatureCollection, "description": "GeoJSON FeatureCollection (WGS84)."}}
)
def tracts(
    snapshot: SnapshotDep,
    city: Annotated[str | None, Query(max_length=100, description="City id (see /cities). Default: the snapshot's default city.")] = None,
    level: Annotated[Level, Query(description="Admin level: tract, neighborhood, borough or city (names per city: /cities).")] = "tract",
) -> Response:
    """Polygons of every unit at ``level`` with id, name, parent id and representative point."""
    city = city if city is not None else default_city_of(snapshot)
    if city is None or city not in snapshot.cities():
        raise unprocessable("city", f"unknown city {city!r}; known: {', '.join(snapshot.cities())}", city)
    return Response(snapshot.memo(("geojson", city, level), lambda: _geojson(snapshot, city, level)), media_type="application/json")


def _geojson(snapshot: Snapshot, city: str, level: str) -> bytes:
    """The FeatureCollection as bytes (memoised on the snapshot by the route: snapshots never change)."""
    units = snapshot.unit_geometries(city, level)
    geoms = shapely.from_wkb(np.asarray(units["geom_wkb"].to_list(), dtype=object))
    geometries = shapely.to_geojson(geoms)
    features = []
    for row, geometry in zip(units.drop("geom_wkb").iter_rows(named=True), geometries, strict=True):
        props = json.dumps(
            {
                "unit_id": row["unit_id"],
                "name": row["name"],
                "level": level,
                "parent_id": row["parent_id"],
                "lon": row["lon"],
                "lat": row["lat"],
            }
        )
        features.append(f'{{"type":"Feature","id":{json.dumps(row["unit_id"])},"geometry":{geometry},"properties":{props}}}')
    return ('{"type":"FeatureCollection","features":[' + ",".join(features) + "]}").encode()
