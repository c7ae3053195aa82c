"""Filling withheld cells with a number computed from released cells only, so baselines (and all
that is scored from them) are post-processing of the release.

Below the top, the withheld cells of one parent and bin form a table (child units x categories)
whose margins the release gives: a category's column holds what the parent's released (or filled)
cell leaves after the released siblings, a child's row what its ``"*"`` total leaves after its
released categories. The stand-ins are that table raked to both margins (iterative proportional
fitting, the classic estimate of a table from its margins), so a tract that is busy overall and a
category that is common in the neighborhood get the larger shares; an even split would give a
usually-withheld cell a baseline near zero and make it look anomalous the first time it is
released. ``"*"`` cells are split evenly by their column. At the top (no parent), the unit's ``"*"`` total
minus its released categories is split evenly. Every stand-in uses its own bin only, so it never
changes when later data arrive. An attacker who differences published expected values learns these
stand-ins, which are functions of released numbers: nothing new.
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


def _fill_children(cells: pl.DataFrame, up: pl.DataFrame, rounds: int = 20) -> pl.DataFrame:
    hid = pl.col("suppressed")
    block = ["parent_id", "category", "bin_start"]
    seen = cells.group_by(block).agg(_seen=pl.col("count").fill_null(0).sum(), _n=hid.sum())
    cells = cells.join(seen, on=block, how="left").join(up, on=block, how="left")
    col_rest = (pl.col("_parent").fill_null(0.0) - pl.col("_seen")).clip(lower_bound=0.0)
    even = (col_rest / pl.col("_n").clip(lower_bound=1)).cast(pl.Float64)
    cells = cells.with_columns(filled=pl.when(hid).then(even).otherwise(pl.col("count").cast(pl.Float64)), _col=col_rest)
    stars = cells.filter(pl.col("category") == ALL_CATEGORIES).select("unit_id", "bin_start", _star=pl.col("filled"))
    row_seen = (
        cells.filter(pl.col("category") != ALL_CATEGORIES)
        .group_by("unit_id", "bin_start")
        .agg(_row_seen=pl.col("count").fill_null(0).sum())
    )
    table = (
        cells.filter(hid & (pl.col("category") != ALL_CATEGORIES))
        .select("unit_id", *block, "_col")
        .join(stars, on=["unit_id", "bin_start"], how="left")
        .join(row_seen, on=["unit_id", "bin_start"], how="left")
        .with_columns(_row=(pl.col("_star").fill_null(0.0) - pl.col("_row_seen").fill_null(0)).clip(lower_bound=0.0), _x=pl.lit(1.0))
    )
    for _ in range(rounds):  # rows first, columns last: the parent's sums hold exactly
        table = table.with_columns(_x=_scaled("_x", "_row", ["unit_id", "bin_start"]))
        table = table.with_columns(_x=_scaled("_x", "_col", block))
    raked = table.select("unit_id", "category", "bin_start", _raked="_x")
    cells = cells.join(raked, on=["unit_id", "category", "bin_start"], how="left")
    filled = pl.when(hid & pl.col("_raked").is_not_null()).then(pl.col("_raked")).otherwise(pl.col("filled"))
    return cells.with_columns(filled=filled).drop("_seen", "_n", "_parent", "_col", "_raked")


def _scaled(x: str, target: str, by: list[str]) -> pl.Expr:
    """``x`` scaled so that its sum over ``by`` is ``target``; a group summing to 0 is spread evenly."""
    total = pl.col(x).sum().over(by)
    return pl.when(total > 0).then(pl.col(x) * pl.col(target) / total).otherwise(pl.col(target) / pl.len().over(by))
