"""Why a published anomaly stands out: its category drivers and whether it is volume or mix, from
published scores only (released counts and their expected values).

* An all-activity (``"*"``) anomaly's drivers are the categories of the same unit and bin with the
  largest released excess (observed minus expected), each with its share of the unit's rise: the
  summed positive excess of its released categories, or the total's own excess when that is larger
  (a category is not "100 % of the excess" when most of the rise sits in withheld categories).
* A category anomaly is **mix** when the unit's total rose by less than half of the category's
  excess (the other categories gave way), **volume+mix** when by less than all of it, else
  **volume**; its driver is itself. A withheld total counts as "not known": plain volume.
"""

from __future__ import annotations

import polars as pl

from app.engine.bins import ALL_CATEGORIES

__all__ = ["DRIVER_DTYPE", "explain_published"]

DRIVER_DTYPE = pl.List(pl.Struct({"category": pl.String, "excess": pl.Float64, "share": pl.Float64}))
_TOP = 3
_KEY = ["unit_id", "bin_start"]


def explain_published(found: pl.DataFrame, scores: pl.DataFrame) -> pl.DataFrame:
    """``found`` (anomalies: ``unit_id, category, bin_start, observed, expected``) with ``effect``,
    ``share`` (the category's share of its unit's released total) and ``drivers``; ``scores`` are
    the published scores of the same level and grain (released cells only are used)."""
    if found.height == 0:
        return found.with_columns(effect=pl.lit(None, pl.String), share=pl.lit(None, pl.Float64), drivers=pl.lit(None, DRIVER_DTYPE))
    keys = found.select(_KEY).unique()
    near = scores.join(keys, on=_KEY, how="semi").filter(pl.col("observed").is_not_null())
    excess = near.with_columns(excess=pl.col("observed") - pl.col("expected"))
    totals = excess.filter(pl.col("category") == ALL_CATEGORIES).select(*_KEY, total=pl.col("observed"), total_excess=pl.col("excess"))
    cats = excess.filter((pl.col("category") != ALL_CATEGORIES) & (pl.col("excess") > 0))
    # Shares of the unit's rise: the summed positive excess of its released categories, or its own
    # released total's excess when larger (the rest of the rise is in withheld categories).
    cats = cats.join(totals.select(*_KEY, "total_excess"), on=_KEY, how="left")
    whole = pl.max_horizontal(pl.col("excess").sum().over(_KEY), pl.col("total_excess").fill_null(0.0))
    cats = cats.with_columns(share=(pl.col("excess") / whole).round(4), excess=pl.col("excess").round(2)).drop("total_excess")
    ranked = (
        cats.sort("excess", descending=True)
        .group_by(_KEY, maintain_order=True)
        .agg(pl.struct("category", "excess", "share").head(_TOP).alias("_top"))
    )
    out = found.join(totals, on=_KEY, how="left").join(ranked, on=_KEY, how="left")
    own = pl.col("observed") - pl.col("expected")
    star = pl.col("category") == ALL_CATEGORIES
    effect = (
        pl.when(star | pl.col("total_excess").is_null())
        .then(pl.lit("volume"))
        .when(pl.col("total_excess") < 0.5 * own)
        .then(pl.lit("mix"))
        .when(pl.col("total_excess") < own)
        .then(pl.lit("volume+mix"))
        .otherwise(pl.lit("volume"))
    )
    top = pl.col("_top")
    itself = pl.concat_list(pl.struct(pl.col("category"), own.round(2).alias("excess"), pl.lit(1.0).alias("share")))
    drivers = pl.when(star).then(top).otherwise(itself)
    share = pl.when(star).then(pl.lit(1.0)).otherwise(pl.col("observed") / pl.col("total")).round(4)
    return out.with_columns(effect=effect, share=share, drivers=drivers.cast(DRIVER_DTYPE)).drop("total", "total_excess", "_top")
