"""Binning: filter the unified event frame, map tracts to any admin level and count per time bin.

Pure functions of frames and arguments, so a notebook can call them on any snapshot's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from app.data.geography import level_column

__all__ = ["ALL_CATEGORIES", "CUBE_SCHEMA", "TIME_BINS", "bin_counts", "cube_counts", "filter_events", "unit_counts", "with_unit"]

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
    mapped = events.join(parents.select("tract_id", pl.col(level_column(level)).alias("unit_id")), on="tract_id", how="left")
    return mapped.filter(pl.col("unit_id").is_not_null())


def bin_counts(events: pl.DataFrame, parents: pl.DataFrame, level: str, time_bin: str, by_category: bool = True) -> pl.DataFrame:
    """Sparse counts per ``unit_id`` (, ``category``) and ``bin_start``; absent rows mean zero."""
    keys = ["unit_id", "category", "bin_start"] if by_category else ["unit_id", "bin_start"]
    binned = with_unit(events, parents, level).with_columns(bin_start=pl.col("ts").dt.truncate(TIME_BINS[time_bin]))
    return binned.group_by(keys).agg(count=pl.len().cast(pl.Int64)).sort(keys)


def unit_counts(events: pl.DataFrame, parents: pl.DataFrame, level: str) -> pl.DataFrame:
    """Window totals per ``unit_id`` (the spatial heat behind ``/heat``)."""
    return with_unit(events, parents, level).group_by("unit_id").agg(count=pl.len().cast(pl.Int64)).sort("unit_id")


#: The fixed release cube's category value for "all categories" (a real category never starts with '*').
ALL_CATEGORIES = "*"

#: Columns and types of the fixed release cube (:func:`cube_counts`).
CUBE_SCHEMA = pl.Schema(
    {
        "level": pl.String(),
        "unit_id": pl.String(),
        "parent_id": pl.String(),
        "category": pl.String(),
        "bin_start": pl.Datetime("us", "UTC"),
        "count": pl.Int64(),
    }
)


def cube_counts(events: pl.DataFrame, parents: pl.DataFrame, time_bin: str, levels: Sequence[str]) -> pl.DataFrame:
    """The fixed grid every released count comes from: sparse counts per ``level``, ``unit_id``,
    ``category`` (plus ``"*"``, all categories) and ``bin_start``, with each unit's ``parent_id``
    at the next level of ``levels`` (null at the top).

    Absent rows are zero. Fixing the grid (levels x bins x categories) is what lets the privacy gate
    protect cells against differencing: every published number is a cell of this cube or a sum of them.
    Events are counted once per tract and bin; coarser levels sum those (unlocated events only
    count at ``city``).
    """
    cols = ["level", "unit_id", "parent_id", "category", "bin_start", "count"]
    base = events.group_by("tract_id", "category", bin_start=pl.col("ts").dt.truncate(TIME_BINS[time_bin])).agg(
        count=pl.len().cast(pl.Int64)
    )
    city = parents["city_id"].drop_nulls().first() if parents.height else None
    frames = []
    for i, level in enumerate(levels):
        if level == "tract":
            cells = base.filter(pl.col("tract_id").is_not_null()).rename({"tract_id": "unit_id"})
        elif level == "city":
            cells = base.with_columns(unit_id=pl.lit(city, pl.String))
        else:
            lookup = parents.select("tract_id", unit_id=pl.col(level_column(level)))
            cells = base.join(lookup, on="tract_id", how="inner").filter(pl.col("unit_id").is_not_null())
        by_cat = cells.group_by("unit_id", "category", "bin_start").agg(pl.col("count").sum())
        total = by_cat.group_by("unit_id", "bin_start").agg(pl.col("count").sum()).with_columns(category=pl.lit(ALL_CATEGORIES))
        cells = pl.concat([by_cat, total.select(by_cat.columns)])
        up = levels[i + 1] if i + 1 < len(levels) else None
        if up is None:
            cells = cells.with_columns(parent_id=pl.lit(None, pl.String))
        elif up == "city":
            cells = cells.with_columns(parent_id=pl.lit(city, pl.String))
        else:
            mapping = parents.select(unit_id=pl.col(level_column(level)), parent_id=pl.col(level_column(up))).unique("unit_id")
            cells = cells.join(mapping, on="unit_id", how="left")
        frames.append(cells.with_columns(level=pl.lit(level)).select(cols))
    return pl.concat(frames) if frames else pl.DataFrame(schema=CUBE_SCHEMA)
