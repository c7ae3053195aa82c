"""Request dependencies: parse and check query parameters once, then hand routes a ready lens.

Rules (each broken rule is a 422 naming the parameter): known city, level, category and time bin;
``since`` and ``until`` from 1900-01-01 to 2200-01-01, ``since < until`` with at most 366 days
between; bbox as four finite numbers min < max inside WGS84 ranges; ``0 <= offset``,
``1 <= limit <= 1000``; ``min_z`` and ``q`` inside the lens' bounds (:data:`MIN_Z_BOUNDS`,
:data:`Q_BOUNDS`). Nothing a client sends reaches the lens unchecked, so bad input is never a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from app.api.errors import NoSnapshotError, unprocessable
from app.config import Settings
from app.data.cities import default_city
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.lens import ALL, EARLIEST, LATEST, Lens

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_LIMIT",
    "MAX_WINDOW",
    "MIN_Z_BOUNDS",
    "Q_BOUNDS",
    "BBox",
    "BBoxDep",
    "LensDep",
    "Level",
    "Page",
    "PageDep",
    "SnapshotDep",
    "TimeBin",
    "default_city_of",
]

MAX_WINDOW = timedelta(days=366)
MAX_LIMIT = 1000
#: Threshold bounds are the lens' own, so the API declares exactly what the lens accepts.
Q_BOUNDS: tuple[float, float] = Lens.param["q"].bounds
MIN_Z_BOUNDS: tuple[float, float] = Lens.param["min_z"].bounds
Level = Literal["tract", "neighborhood", "borough", "city"]
TimeBin = Literal["hour", "day", "week"]


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_snapshot(store: Annotated[Store, Depends(get_store)]) -> Snapshot:
    snap = store.current()
    if snap is None:
        raise NoSnapshotError()
    return snap


SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]


def _utc(name: str, value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC; aware ones are converted to it. Out of range is a 422."""
    if value is None:
        return None
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 has no UTC instant
        raise unprocessable(name, f"{name} must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)", str(value)) from None
    if not EARLIEST <= value <= LATEST:
        raise unprocessable(name, f"{name} must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)", value.isoformat())
    return value


def default_city_of(snapshot: Snapshot) -> str | None:
    """The city a request without ``city`` gets: the lens' default when served, else the first."""
    return default_city(snapshot, Lens.param["city"].default)


def _known(values: list[str], most: int = 30) -> str:
    """Known values for a 422 message, at most ``most`` of them."""
    shown = ", ".join(values[:most])
    return shown + (f", ... ({len(values) - most} more)" if len(values) > most else "")


_WINDOW_RULE = f"from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}; at most {MAX_WINDOW.days} days between since and until"


def get_lens(
    request: Request,
    snapshot: SnapshotDep,
    city: Annotated[str | None, Query(max_length=100, description="City id (see /cities). Default: the snapshot's default city.")] = None,
    level: Annotated[Level, Query(description="Admin level of the units counted (names per city: /cities).")] = "tract",
    since: Annotated[
        datetime | None,
        Query(description=f"Window start, ISO 8601 (naive = UTC), {_WINDOW_RULE}. Default: 7 days before `until`."),
    ] = None,
    until: Annotated[
        datetime | None,
        Query(description=f"Window end (exclusive), ISO 8601, {_WINDOW_RULE}. Default: end of the newest event's day."),
    ] = None,
    category: Annotated[
        str | None,
        Query(
            max_length=200,
            description="One of the city's categories (complaint type, offence or closure kind; /cities counts them); "
            "an unknown one is a 422 listing the known ones. Default: all.",
        ),
    ] = None,
) -> Lens:
    """A lens for this request, after checking every lens parameter against the snapshot."""
    city = city if city is not None else default_city_of(snapshot)
    if city is None or city not in snapshot.cities():
        raise unprocessable("city", f"unknown city {city!r}; known: {', '.join(snapshot.cities())}", city)
    since, until = _utc("since", since), _utc("until", until)
    settings: Settings = request.app.state.settings
    lens = Lens(
        snapshot=snapshot,
        level=level,
        privacy_mode=settings.privacy_mode,
        privacy_k=settings.privacy_k,
        epsilon=settings.privacy_epsilon,
    )
    lens.city = city  # after the snapshot: the lens offers the snapshot's cities once it has one
    if until is not None:
        lens.until = until
    elif lens.until is None:  # a city without events: the week up to the end of today
        lens.until = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if since is not None:
        lens.since = since
    elif until is not None or lens.since is None:
        lens.since = lens.until - timedelta(days=7)
    assert lens.since is not None
    assert lens.until is not None
    if lens.since >= lens.until:
        raise unprocessable("since", "since must be earlier than until", since.isoformat() if since else None)
    if lens.until - lens.since > MAX_WINDOW:
        named, given = ("until", until) if until is not None or since is None else ("since", since)
        raise unprocessable(named, f"window longer than {MAX_WINDOW.days} days", given.isoformat() if given else None)
    if category is not None:
        if category not in lens.categories():
            raise unprocessable(
                "category", f"unknown category {category!r} for city {city!r}; known: {_known(lens.categories())}", category
            )
        lens.category = category
    else:
        lens.category = ALL
    return lens


LensDep = Annotated[Lens, Depends(get_lens)]


@dataclass(frozen=True)
class Page:
    """One page of a bounded result."""

    limit: int
    offset: int

    def next_offset(self, total: int) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < total else None


def get_page(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (1..1000).")] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip.")] = 0,
) -> Page:
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(get_page)]


@dataclass(frozen=True)
class BBox:
    """A WGS84 box ``min_lon, min_lat, max_lon, max_lat``."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


def get_bbox(
    bbox: Annotated[
        str | None,
        Query(
            max_length=200,
            description="min_lon,min_lat,max_lon,max_lat (WGS84). Units whose representative point lies inside are counted whole.",
        ),
    ] = None,
) -> BBox | None:
    if bbox is None:
        return None
    parts = bbox.split(",")
    if len(parts) != 4:
        raise unprocessable("bbox", "bbox must be four comma-separated numbers: min_lon,min_lat,max_lon,max_lat", bbox)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise unprocessable("bbox", "bbox values must be numbers", bbox) from None
    if not all(math.isfinite(v) for v in values):
        raise unprocessable("bbox", "bbox values must be finite", bbox)
    box = BBox(*values)
    if not (-180 <= box.min_lon <= 180 and -180 <= box.max_lon <= 180):
        raise unprocessable("bbox", "longitudes must lie in [-180, 180]", bbox)
    if not (-90 <= box.min_lat <= 90 and -90 <= box.max_lat <= 90):
        raise unprocessable("bbox", "latitudes must lie in [-90, 90]", bbox)
    if box.min_lon >= box.max_lon or box.min_lat >= box.max_lat:
        raise unprocessable("bbox", "bbox minimum must be below its maximum (min_lon < max_lon, min_lat < max_lat)", bbox)
    return box


BBoxDep = Annotated[BBox | None, Depends(get_bbox)]
