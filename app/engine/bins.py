"""Binning: filter the unified event frame, map tracts to any admin level and count per time bin.

Pure functions of frames and arguments, so a notebook can call them on any snapshot's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

__all__ = ["TIME_BINS", "bin_counts", "filter_events", "unit_counts", "with_unit"]

#: Time-bin name -> polars duration string (weeks start on Monday, UTC).
TIME_BINS: dict[str, str] = {"hour": "1h", "day": "1d", "week": "1w"}


def filter_events(
    events: pl.DataFrame,
    since: datetime | None = None,
    until: datetime | None = None,
    categories: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    tract_ids: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Events with ``since <= ts < until`` and, when given, the listed categories, kinds and tracts.

    ``None`` means no filter; an empty list selects nothing (unticking every kind shows no events).
    """
    cond = pl.lit(True)
    if since is not None:
        cond &= pl.col("ts") >= since
    if until is not None:
        cond &= pl.col("ts") < until
    if categories is not None:
        cond &= pl.col("category").is_in(list(categories))
    if kinds is not None:
        cond &= pl.col("kind").is_in(list(kinds))
    if tract_ids is not None:
        cond &= pl.col("tract_id").is_in(list(tract_ids))
    return events.filter(cond)


def with_unit(events: pl.DataFrame, parents: pl.DataFrame, level: str) -> pl.DataFrame:
    """Add ``unit_id`` (the event's unit at ``level``) using the tract -> parents table.

    Unlocated events (no tract) belong to no unit below the city, so they only count at ``city``.
    """
    if level == "tract":
        return events.with_columns(unit_id=pl.col("tract_id")).filter(pl.col("unit_id").is_not_null())
    if level == "city":
        city = parents["city_id"].drop_nulls().first() if parents.height else None
        return events.with_columns(unit_id=pl.lit(city, pl.String))
    col = f"{level}_id"
    mapped = events.join(parents.select("tract_id", pl.col(col).alias("unit_id")), on="tract_id", how="left")
    return mapped.filter(pl.col("unit_id").is_not_null())


def bin_counts(events: pl.DataFrame, parents: pl.DataFrame, level: str, time_bin: str, by_category: bool = True) -> pl.DataFrame:
    """Sparse counts per ``unit_id`` (, ``category``) and ``bin_start``; absent rows mean zero."""
    keys = ["unit_id", "category", "bin_start"] if by_category else ["unit_id", "bin_start"]
    binned = with_unit(events, parents, level).with_columns(bin_start=pl.col("ts").dt.truncate(TIME_BINS[time_bin]))
    return binned.group_by(keys).agg(count=pl.len().cast(pl.Int64)).sort(keys)


def unit_counts(events: pl.DataFrame, parents: pl.DataFrame, level: str) -> pl.DataFrame:
    """Window totals per ``unit_id`` (the spatial heat behind ``/heat``)."""
    return with_unit(events, parents, level).group_by("unit_id").agg(count=pl.len().cast(pl.Int64)).sort("unit_id")
