"""Filling withheld cells with a number computed from released cells only, so baselines (and all
that is scored from them) are post-processing of the release.

A withheld cell's stand-in is its share of what its parent's released (or filled) cell leaves
after the released siblings, split evenly among the withheld siblings; at the top, the unit's
``"*"`` total minus its released categories, split evenly. An attacker who differences published
expected values learns these stand-ins, which are functions of released numbers: nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from app.engine.bins import ALL_CATEGORIES
from app.engine.grains import bin_expr

__all__ = ["fill_withheld"]


def fill_withheld(released: pl.DataFrame, grains: Mapping[str, str], tz: str, levels: Sequence[str], k: int) -> pl.DataFrame:
    """``released`` (cells with ``count`` null where withheld, ``suppressed``) plus ``filled``
    (Float64): the count where released, the stand-in where withheld. Top level first."""
    out: list[pl.DataFrame] = []
    parent_filled: pl.DataFrame | None = None
    for level in reversed(list(levels)):
        cells = released.filter(pl.col("level") == level)
        if cells.height == 0:
            continue
        if parent_filled is None:
            filled = _fill_top(cells, k)
        else:
            up = (
                parent_filled.with_columns(bin_start=bin_expr("bin_start", grains[level], tz))
                .group_by(pl.col("unit_id").alias("parent_id"), "category", "bin_start")
                .agg(_parent=pl.col("filled").sum())
            )
            filled = _fill_children(cells, up)
        out.append(filled)
        parent_filled = filled
    return pl.concat(out, how="vertical_relaxed") if out else released.with_columns(filled=pl.lit(None, pl.Float64))


def _fill_top(cells: pl.DataFrame, k: int) -> pl.DataFrame:
    hid = pl.col("suppressed")
    star = cells.filter(pl.col("category") == ALL_CATEGORIES).select("unit_id", "bin_start", _star=pl.col("count"))
    rest = (
        cells.filter(pl.col("category") != ALL_CATEGORIES)
        .group_by("unit_id", "bin_start")
        .agg(_seen=pl.col("count").fill_null(0).sum(), _n=hid.sum())
        .join(star, on=["unit_id", "bin_start"], how="left")
    )
    cells = cells.join(rest, on=["unit_id", "bin_start"], how="left")
    share = ((pl.col("_star") - pl.col("_seen")).clip(lower_bound=0) / pl.col("_n").clip(lower_bound=1)).cast(pl.Float64)
    guess = pl.when(pl.col("_star").is_not_null() & (pl.col("category") != ALL_CATEGORIES)).then(share).otherwise((k - 1) / 2.0)
    filled = pl.when(hid).then(guess).otherwise(pl.col("count").cast(pl.Float64))
    return cells.with_columns(filled=filled).drop("_star", "_seen", "_n")


def _fill_children(cells: pl.DataFrame, up: pl.DataFrame) -> pl.DataFrame:
    hid = pl.col("suppressed")
    seen = cells.group_by("parent_id", "category", "bin_start").agg(_seen=pl.col("count").fill_null(0).sum(), _n=hid.sum())
    cells = cells.join(seen, on=["parent_id", "category", "bin_start"], how="left").join(
        up, on=["parent_id", "category", "bin_start"], how="left"
    )
    share = ((pl.col("_parent").fill_null(0.0) - pl.col("_seen")).clip(lower_bound=0.0) / pl.col("_n").clip(lower_bound=1)).cast(pl.Float64)
    filled = pl.when(hid).then(share).otherwise(pl.col("count").cast(pl.Float64))
    return cells.with_columns(filled=filled).drop("_seen", "_n", "_parent")
