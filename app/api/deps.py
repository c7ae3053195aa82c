"""Request dependencies: parse and check query parameters once, then hand routes a ready lens.

Rules (each broken rule is a 422 naming the parameter): known city, level, category and time bin;
``since < until`` with at most 366 days between; bbox as four finite numbers min < max inside
WGS84 ranges; ``0 <= offset``, ``1 <= limit <= 1000``; ``0 <= min_z <= 1000``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from app.api.errors import NoSnapshotError, unprocessable
from app.config import Settings
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.lens import ALL, Lens

__all__ = ["MAX_LIMIT", "MAX_WINDOW", "BBox", "BBoxDep", "LensDep", "Level", "Page", "PageDep", "SnapshotDep", "TimeBin"]

MAX_WINDOW = timedelta(days=366)
MAX_LIMIT = 1000
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


def _utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC; aware ones are converted to it."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def get_lens(
    request: Request,
    snapshot: SnapshotDep,
    city: Annotated[str, Query(description="City id, e.g. 'nyc' (see /tracts).")] = "nyc",
    level: Annotated[Level, Query(description="Admin level of the units counted.")] = "tract",
    since: Annotated[datetime | None, Query(description="Window start, ISO 8601 (naive = UTC). Default: 7 days before `until`.")] = None,
    until: Annotated[
        datetime | None, Query(description="Window end (exclusive), ISO 8601. Default: end of the newest event's day.")
    ] = None,
    category: Annotated[
        str | None, Query(max_length=200, description="One category (complaint type, offence or closure kind); default all.")
    ] = None,
) -> Lens:
    """A lens for this request, after checking every lens parameter against the snapshot."""
    if city not in snapshot.cities():
        raise unprocessable("city", f"unknown city {city!r}; known: {', '.join(snapshot.cities())}", city)
    settings: Settings = request.app.state.settings
    lens = Lens(
        snapshot=snapshot,
        city=city,
        level=level,
        privacy_mode=settings.privacy_mode,
        privacy_k=settings.privacy_k,
        epsilon=settings.privacy_epsilon,
        ledger=getattr(request.app.state, "ledger", None),
    )
    since, until = _utc(since), _utc(until)
    if until is not None:
        lens.until = until
    if since is not None:
        lens.since = since
    elif until is not None:
        lens.since = until - timedelta(days=7)
    if lens.since is not None and lens.until is not None:
        if lens.since >= lens.until:
            raise unprocessable("since", "since must be earlier than until", since.isoformat() if since else None)
        if lens.until - lens.since > MAX_WINDOW:
            raise unprocessable("until", f"window longer than {MAX_WINDOW.days} days", until.isoformat() if until else None)
    if category is not None:
        if category not in lens.categories():
            raise unprocessable("category", f"unknown category {category!r} for city {city!r}", category)
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
