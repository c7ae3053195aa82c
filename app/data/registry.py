"""The source registry: one declarative entry per dataset, read from ``sources.toml``.

Adding another Socrata city or SeeClickFix organisation is a new ``[[source]]`` entry and no new
code: the adapter for its ``provider`` reads everything else (fields, time zone, geography) from
the entry. ``CSH_SOURCES_FILE`` points at another registry file (tests use that).
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CITY_ZONES", "REGISTRY_FILE", "FieldMap", "SourceSpec", "city_timezone", "get_source", "load_registry"]

REGISTRY_FILE = Path(__file__).with_name("sources.toml")
Provider = Literal["socrata", "highways_xml", "highways_datex", "open311", "seeclickfix", "demo"]
Table = Literal["request", "incident", "closure"]


class FieldMap(BaseModel):
    """Provider field names of the canonical columns (``None`` when the provider has no such field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Stable provider id of a row.")
    time: str = Field(description="Event time (request created, incident occurred, closure start).")
    updated: str | None = Field(None, description="Last-updated field used as the incremental cursor, if any.")
    end_time: str | None = Field(None, description="Closure end time.")
    category: str = Field(description="Category: complaint type, offence type or closure kind.")
    descriptor: str | None = Field(None, description="Finer category (311 descriptor, offence description).")
    lon: str | None = Field(None, description="Longitude field (or easting for projected sources).")
    lat: str | None = Field(None, description="Latitude field (or northing for projected sources).")
    location: str | None = Field(None, description="Point field in any of SODA's shapes (legacy object, WKT, GeoJSON).")
    severity: str | None = Field(None, description="Incident severity field.")
    attrs: tuple[str, ...] = Field((), description="Provider fields kept verbatim in ``attrs``.")
    area: str | None = Field(
        None,
        description="Field (also listed in ``attrs``) naming the row's unit at the neighborhood level, e.g. Chicago's community "
        "area: a row without a usable point is still counted there (and above), though in no tract.",
    )


class SourceSpec(BaseModel):
    """One dataset of one provider, and how its rows map to a canonical table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Registry key, also the store's `source` column.")
    provider: Provider
    city: str = Field(description="City id whose geography the rows are joined to (`uk` uses H3 cells).")
    table: Table
    base_url: str = Field(description="Provider root, e.g. https://data.cityofnewyork.us")
    dataset: str | None = Field(None, description="Dataset id (Socrata 4x4, SeeClickFix organisation/place, ...).")
    fields: FieldMap
    timezone: str = Field("UTC", description="IANA zone of the provider's floating local times.")
    crs: str = Field("EPSG:4326", description="CRS of lon/lat fields; projected sources are converted to WGS84.")
    publisher: str = ""
    licence: str = ""
    page_size: int = Field(1000, ge=1, le=50_000)
    overlap_minutes: int = Field(60, ge=0, description="Re-read window before the cursor, for late or updated rows.")
    token_env: str | None = Field(None, description="Environment variable holding the app token / subscription key.")
    active_from: str | None = Field(None, description="First date the dataset covers (ISO), for split datasets.")
    active_until: str | None = Field(None, description="Last date the dataset covers (ISO).")

    def token(self) -> str | None:
        """The secret from the environment (server side only; never logged)."""
        return os.environ.get(self.token_env) if self.token_env else None


def load_registry(path: Path | None = None) -> dict[str, SourceSpec]:
    """All entries of a registry file, keyed by name (duplicate names are an error)."""
    path = path or Path(os.environ.get("CSH_SOURCES_FILE", REGISTRY_FILE))
    entries = tomllib.loads(path.read_text())["source"]
    specs = [SourceSpec.model_validate(e) for e in entries]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate source names in {path}: {sorted(n for n in names if names.count(n) > 1)}")
    return {s.name: s for s in specs}


@lru_cache(maxsize=4)
def _cached(path: str) -> dict[str, SourceSpec]:
    return load_registry(Path(path))


def get_source(name: str, path: Path | None = None) -> SourceSpec:
    """One entry by name; ``KeyError`` naming the known ones otherwise."""
    registry = _cached(str(path or os.environ.get("CSH_SOURCES_FILE", REGISTRY_FILE)))
    if name not in registry:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


#: The clock each known city lives by (a source's ``timezone`` is that of its floating timestamps,
#: which may be UTC although the city is not).
CITY_ZONES = {
    "nyc": "America/New_York",
    "chicago": "America/Chicago",
    "uk": "Europe/London",
    "boston": "America/New_York",
    "cambridge": "America/New_York",
}


def city_timezone(city: str, path: Path | None = None) -> str:
    """The IANA time zone of ``city`` (days and weeks are cut at its local midnight): the known
    zone, else that of its first registry source, else UTC."""
    if city in CITY_ZONES:
        return CITY_ZONES[city]
    registry = _cached(str(path or os.environ.get("CSH_SOURCES_FILE", REGISTRY_FILE)))
    zones = [s.timezone for s in registry.values() if s.city == city]
    return zones[0] if zones else "UTC"
