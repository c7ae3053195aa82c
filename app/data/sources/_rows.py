"""Helpers shared by the JSON-row adapters (Open311, SeeClickFix, and Socrata's request tables): the
canonical request frame built from a registry entry's field map, and provider times as UTC cursors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from app.data.normalize import attrs_json, get_path, local_to_utc, parse_points
from app.data.registry import SourceSpec
from app.data.sources.base import CANONICAL_COLUMNS, IngestCursor

__all__ = ["iso_z", "later", "request_frame", "start_time", "time_range"]


def request_frame(spec: SourceSpec, rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Provider rows -> the canonical ``request`` frame, every column read through ``spec.fields``
    (dotted paths reach nested objects such as SeeClickFix's ``request_type.title``)."""
    f = spec.fields
    lon, lat = parse_points(rows, f.lon, f.lat, f.location)
    schema = CANONICAL_COLUMNS["request"]
    return pl.DataFrame(
        {
            "source_id": _strings(rows, f.id),
            "ts": local_to_utc(pl.Series("ts", _strings(rows, f.time), dtype=pl.String), spec.timezone),
            "category": _strings(rows, f.category),
            "descriptor": _strings(rows, f.descriptor),
            "lon": lon,
            "lat": lat,
            "attrs": attrs_json(rows, f.attrs),
        },
        schema=schema,
    ).with_columns(pl.col("lon", "lat").fill_nan(None))  # unlocated rows: null, as the contract says


def _strings(rows: Sequence[dict[str, Any]], path: str | None) -> list[str | None]:
    """One field of every row as text (ids arrive as numbers from some providers); ``None`` stays."""
    if path is None:
        return [None] * len(rows)
    return [None if (v := get_path(r, path)) is None or v == "" else str(v) for r in rows]


def time_range(rows: Sequence[dict[str, Any]], path: str, timezone: str) -> tuple[datetime | None, datetime | None]:
    """Oldest and newest UTC instant of a time field over ``rows`` (``None`` when none parse)."""
    times = local_to_utc(pl.Series("t", _strings(rows, path), dtype=pl.String), timezone).drop_nulls()
    if times.is_empty():
        return None, None
    lo, hi = times.min(), times.max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    return lo, hi


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two optional instants."""
    return b if a is None else a if b is None else max(a, b)


def iso_z(when: datetime) -> str:
    """``2026-11-01T12:00:00Z``: the W3C/ISO 8601 form both Open311 and SeeClickFix accept."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_time(spec: SourceSpec, state: IngestCursor, since: str | None, now: datetime, lookback: timedelta) -> datetime:
    """Where a run starts: an explicit backfill date (a bare date is local to the source), else the
    stored cursor minus the overlap window (late and updated rows), else ``lookback`` before now."""
    if since:
        return _aware(datetime.fromisoformat(since), spec.timezone)
    if state.cursor:
        return _aware(datetime.fromisoformat(state.cursor), "UTC") - timedelta(minutes=spec.overlap_minutes)
    return now - lookback


def _aware(when: datetime, timezone: str) -> datetime:
    return (when if when.tzinfo else when.replace(tzinfo=ZoneInfo(timezone))).astimezone(UTC)
