"""``/cities``: the cities of the served snapshot with their names, levels and time zones, so a
client can label and query any city without knowing it in advance."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SnapshotDep, default_city_of
from app.api.schemas import CitiesOut, CityOut, LevelOut
from app.data.cities import cities_info

router = APIRouter(tags=["geography"])


@router.get("/cities", response_model=CitiesOut)
def cities(snapshot: SnapshotDep) -> CitiesOut:
    """Every city: display name, levels in order (generic key, display name, units, publishing
    grain), event kinds, number of categories, first and last event time and IANA time zone."""
    return CitiesOut(
        snapshot_id=snapshot.id,
        default_city=default_city_of(snapshot),
        cities=[
            CityOut(
                id=c.id,
                name=c.name,
                timezone=c.timezone,
                levels=[LevelOut(key=lv.key, name=lv.name, units=lv.units, grain=lv.grain) for lv in c.levels],
                kinds=list(c.kinds),
                categories=c.categories,
                first_event=c.first_event,
                last_event=c.last_event,
            )
            for c in cities_info(snapshot)
        ],
    )
