"""City facts in one place: what a reader calls each city and its levels, its time zone, and what a
snapshot holds of it (units per level, event kinds, categories, first and last event).

The API (``GET /cities``) and the dashboard's labels read these; everything else keeps the generic
level keys ``tract, neighborhood, borough, city``, so a city is named here and nowhere else:

===========  =================  ===================  ====================  ======
city         tract              neighborhood         borough               city
===========  =================  ===================  ====================  ======
``nyc``      Census tract       Neighborhood (NTA)   Borough               City
``chicago``  Census tract       Community area       Side                  City
H3 regions   H3 cell (res 7)    H3 cell (res 5)      H3 cell (res 3)       Region
===========  =================  ===================  ====================  ======

A city with a boundary set (:data:`app.data.geography.CITIES`) has its own names; any other city
is an H3 region (:mod:`app.data.h3grid`). The time zone and the grain each level is published at are
the snapshot's release facts (:meth:`app.data.snapshot.Snapshot.release_meta`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from app.data.geography import CITIES, LEVELS
from app.data.h3grid import H3_RESOLUTIONS
from app.data.registry import REGISTRY_FILE, city_timezone, load_registry
from app.data.snapshot import Snapshot
from app.data.sources.base import CANONICAL_COLUMNS

__all__ = [
    "EVENT_KINDS",
    "CityInfo",
    "LevelInfo",
    "cities_info",
    "city_info",
    "city_kinds",
    "city_name",
    "default_city",
    "known_cities",
    "level_name",
    "level_names",
]

#: Event kinds in display order: the store's event tables.
EVENT_KINDS: tuple[str, ...] = tuple(CANONICAL_COLUMNS)

#: Display names of the cities we know by name (others are shown by their id, capitalised).
_CITY_NAMES = {
    "nyc": "New York City",
    "chicago": "Chicago",
    "uk": "England",
    "boston": "Boston",
    "cambridge": "Cambridge, MA",
}

#: Level names of the cities with a boundary set of their own.
_BOUNDARY_LEVELS: dict[str, dict[str, str]] = {
    "nyc": {"tract": "Census tract", "neighborhood": "Neighborhood (NTA)", "borough": "Borough", "city": "City"},
    "chicago": {"tract": "Census tract", "neighborhood": "Community area", "borough": "Side", "city": "City"},
}
_GENERIC_LEVELS = {"tract": "Tract", "neighborhood": "Neighborhood", "borough": "Borough", "city": "City"}
_H3_LEVELS = {**{level: f"H3 cell (res {res})" for level, res in H3_RESOLUTIONS.items()}, "city": "Region"}


@dataclass(frozen=True)
class LevelInfo:
    """One admin level of a city: its generic key, its display name, units and publishing grain."""

    key: str
    name: str
    units: int
    grain: str


@dataclass(frozen=True)
class CityInfo:
    """What a snapshot holds of one city, with the names a reader sees."""

    id: str
    name: str
    timezone: str
    levels: tuple[LevelInfo, ...]
    kinds: tuple[str, ...]
    categories: int
    first_event: datetime | None
    last_event: datetime | None


def city_name(city: str) -> str:
    """What a reader calls ``city`` ("New York City" for ``nyc``)."""
    return _CITY_NAMES.get(city) or city.replace("_", " ").title()


def level_names(city: str) -> dict[str, str]:
    """Level key -> display name for ``city``, finest first."""
    if city in _BOUNDARY_LEVELS:
        return dict(_BOUNDARY_LEVELS[city])
    return dict(_GENERIC_LEVELS if city in CITIES else _H3_LEVELS)


def level_name(city: str, level: str) -> str:
    """The display name of one level of ``city`` ("Community area" for Chicago's neighborhoods)."""
    return level_names(city).get(level, level)


def city_kinds(snapshot: Snapshot, city: str) -> tuple[str, ...]:
    """Event kinds ``city`` has events of in ``snapshot``, in display order."""
    present = set(snapshot.memo(("city-kinds", city), lambda: snapshot.events(city)["kind"].unique().to_list()))
    return tuple(k for k in EVENT_KINDS if k in present)


def default_city(snapshot: Snapshot, preferred: str | None = None) -> str | None:
    """``preferred`` when the snapshot has it, else its first city (None when it holds none)."""
    cities = snapshot.cities()
    if preferred in cities:
        return preferred
    return cities[0] if cities else None


def known_cities(snapshot: Snapshot | None) -> list[str]:
    """Cities a rule may watch: those of the snapshot, those with a boundary set and those the
    source registry (``CSH_SOURCES_FILE``) feeds, sorted."""
    path = os.environ.get("CSH_SOURCES_FILE", str(REGISTRY_FILE))
    registry = snapshot.memo(("registry-cities", path), lambda: _registry_cities(path)) if snapshot else _registry_cities(path)
    return sorted({*(snapshot.cities() if snapshot else []), *CITIES, *registry})


def _registry_cities(path: str) -> set[str]:
    try:
        return {s.city for s in load_registry(Path(path)).values()}
    except (OSError, ValueError, KeyError):  # an unreadable registry feeds no city
        return set()


def city_info(snapshot: Snapshot, city: str) -> CityInfo:
    """The facts of one city of ``snapshot`` (memoised on it: a snapshot never changes)."""
    return snapshot.memo(("city-info", city), lambda: _city_info(snapshot, city))


def cities_info(snapshot: Snapshot) -> list[CityInfo]:
    """:func:`city_info` of every city of ``snapshot``, in its order."""
    return [city_info(snapshot, city) for city in snapshot.cities()]


def _city_info(snapshot: Snapshot, city: str) -> CityInfo:
    units = snapshot.units(city).group_by("level").agg(n=pl.len())
    per_level = dict(zip(units["level"].to_list(), units["n"].to_list(), strict=True))
    names = level_names(city)
    release = snapshot.release_meta(city)
    grains = release.get("grains") or {}
    events = snapshot.events(city)
    first, last = (events["ts"].min(), events["ts"].max()) if events.height else (None, None)
    if release.get("mode") == "dp":  # exact event times would undo the noise: the release's own bounds
        first, last = release.get("history_start"), release.get("horizon")
    return CityInfo(
        id=city,
        name=city_name(city),
        timezone=str(release.get("timezone") or city_timezone(city)),
        levels=tuple(LevelInfo(level, names[level], int(per_level.get(level, 0)), str(grains.get(level, "none"))) for level in LEVELS),
        kinds=city_kinds(snapshot, city),
        categories=int(events["category"].drop_nulls().n_unique()),
        first_event=first if isinstance(first, datetime) else None,
        last_event=last if isinstance(last, datetime) else None,
    )
