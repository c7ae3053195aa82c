"""The published layers: raw counts of every level at its own grain, the input of the release.

A *layer* is one level at one grain (tract by week, neighborhood by day, ...). Counting once per
tract and UTC hour and summing upwards keeps every layer consistent with the others: a
neighborhood-day is exactly the sum of its tracts' hours of that local day. Events without a tract
count at ``city`` only (they are the "rest" of the city's cells: located nowhere finer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from app.data.geography import LEVELS, level_column
from app.engine.bins import ALL_CATEGORIES
from app.engine.grains import bin_expr

__all__ = ["LAYER_SCHEMA", "aggregate", "hourly_base", "layer_cells"]

#: Columns of a layer frame (absent rows are zeros).
LAYER_SCHEMA = pl.Schema(
    {
        "level": pl.String(),
        "unit_id": pl.String(),
        "parent_id": pl.String(),
        "category": pl.String(),
        "bin_start": pl.Datetime("us", "UTC"),
        "count": pl.Int64(),
    }
)
_COLS = list(LAYER_SCHEMA.names())


def hourly_base(events: pl.DataFrame) -> pl.DataFrame:
    """Events counted per ``tract_id`` (null: in no tract), ``area_id`` (the neighborhood of a row
    in no tract, when its source names one), ``category`` and UTC hour ``hour``."""
    if "area_id" not in events.columns:
        events = events.with_columns(area_id=pl.lit(None, pl.String))
    return events.group_by("tract_id", "area_id", "category", hour=pl.col("ts").dt.truncate("1h")).agg(count=pl.len().cast(pl.Int64))


def _units_of(base: pl.DataFrame, parents: pl.DataFrame, level: str) -> pl.DataFrame:
    """``base`` with ``unit_id`` at ``level``: rows in a tract climb from it, rows known only by
    their neighborhood (``area_id``) count from the neighborhood up, the rest only at the city."""
    if level == "tract":
        return base.filter(pl.col("tract_id").is_not_null()).with_columns(unit_id=pl.col("tract_id"))
    if level == "city":
        city = parents["city_id"].drop_nulls().first() if parents.height else None
        return base.with_columns(unit_id=pl.lit(city, pl.String))
    lookup = parents.select("tract_id", unit_id=pl.col(level_column(level)))
    in_tract = base.join(lookup, on="tract_id", how="inner")
    areas = parents.select(area_id=pl.col("neighborhood_id"), unit_id=pl.col(level_column(level))).unique("area_id")
    in_area = base.filter(pl.col("tract_id").is_null()).join(areas, on="area_id", how="inner")
    return pl.concat([in_tract, in_area.select(in_tract.columns)]).filter(pl.col("unit_id").is_not_null())


def _parent_map(parents: pl.DataFrame, level: str, up: str | None) -> pl.DataFrame | str | None:
    if up is None:
        return None
    if up == "city":
        city = parents["city_id"].drop_nulls().first() if parents.height else None
        return str(city) if city is not None else None
    return parents.select(unit_id=pl.col(level_column(level)), parent_id=pl.col(level_column(up))).unique("unit_id")


def layer_cells(
    events: pl.DataFrame, parents: pl.DataFrame, grains: Mapping[str, str], tz: str, levels: Sequence[str] = LEVELS
) -> pl.DataFrame:
    """Counts of every level of ``levels`` at its grain ``grains[level]`` in local time ``tz``:
    :data:`LAYER_SCHEMA`, categories plus ``"*"`` (all categories), ``parent_id`` the unit one
    level up (null at the top)."""
    base = hourly_base(events)
    frames = []
    for i, level in enumerate(levels):
        up = levels[i + 1] if i + 1 < len(levels) else None
        frames.append(level_layer(base, parents, level, grains[level], tz, up))
    return pl.concat(frames) if frames else pl.DataFrame(schema=LAYER_SCHEMA)


def level_layer(base: pl.DataFrame, parents: pl.DataFrame, level: str, grain: str, tz: str, up: str | None) -> pl.DataFrame:
    """One level's cells at ``grain`` from the hourly base (see :func:`layer_cells`)."""
    cells = _units_of(base, parents, level).with_columns(bin_start=bin_expr("hour", grain, tz))
    by_cat = cells.group_by("unit_id", "category", "bin_start").agg(pl.col("count").sum())
    total = by_cat.group_by("unit_id", "bin_start").agg(pl.col("count").sum()).with_columns(category=pl.lit(ALL_CATEGORIES))
    out = pl.concat([by_cat, total.select(by_cat.columns)])
    mapping = _parent_map(parents, level, up)
    if isinstance(mapping, pl.DataFrame):
        out = out.join(mapping, on="unit_id", how="left")
    else:
        out = out.with_columns(parent_id=pl.lit(mapping, pl.String))
    return out.with_columns(level=pl.lit(level)).select(_COLS)


def aggregate(cells: pl.DataFrame, grain: str, tz: str) -> pl.DataFrame:
    """Cells summed to a coarser ``grain`` (same columns); a sum with a withheld part is withheld
    when the frame carries ``suppressed`` (then ``count`` is null and ``suppressed`` true)."""
    keys = ["level", "unit_id", "parent_id", "category"]
    binned = cells.with_columns(bin_start=bin_expr("bin_start", grain, tz))
    if "suppressed" not in cells.columns:
        return binned.group_by([*keys, "bin_start"]).agg(pl.col("count").sum()).select(_COLS)
    out = binned.group_by([*keys, "bin_start"]).agg(count=pl.col("count").sum(), suppressed=pl.col("suppressed").any())
    return out.with_columns(count=pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count"))).select(*_COLS, "suppressed")
