"""Explain anomalies: the category contributions and volume-vs-mix verdict of each anomaly's
unit-window, computed with the same baseline model that flagged it.

Categories whose cells the privacy gate withholds are merged into one ``OTHER`` pseudo-category
before attribution, so shares and drivers are computed only from published cells plus a sum the
release already implies (the unit's total minus its published categories).
"""

from __future__ import annotations

import polars as pl

from app.engine.attribution import KEY, contributions, decompose, top_drivers
from app.engine.baselines import expectations
from app.engine.detect import Detection

__all__ = ["OTHER", "explain", "unit_window_cells"]

#: Pseudo-category standing for all withheld categories of a unit-window.
OTHER = "other categories (withheld)"
#: The other categories "lost" events when their total is this many standard deviations low.
OTHERS_DROP_Z = 1.0
#: The unit-window's total counts as up when it is this many standard deviations high.
TOTAL_UP_Z = 3.0


def unit_window_cells(detection: Detection, keys: pl.DataFrame) -> pl.DataFrame:
    """Every category cell of each ``(level, unit_id, bin_start)`` in ``keys`` that had events in
    the bin or in its trailing baseline, with ``observed, expected, variance`` from the detection's
    model of that level."""
    frames = []
    for level in keys["level"].unique().sort().to_list():
        counts, model = detection.counts[level], detection.models[level]
        ub = keys.filter(pl.col("level") == level).select("unit_id", "bin_start").unique()
        seen = (
            ub.join(counts.select("unit_id", "category", pl.col("bin_start").alias("t")), on="unit_id", how="inner")
            .filter((pl.col("t") >= pl.col("bin_start") - model.baseline) & (pl.col("t") <= pl.col("bin_start")))
            .select("unit_id", "category", "bin_start")
            .unique()
        )
        cells = expectations(seen, counts, model).with_columns(level=pl.lit(level))
        frames.append(cells.select(*KEY, "category", "observed", "expected", "variance"))
    return pl.concat(frames) if frames else pl.DataFrame(schema={**dict.fromkeys(KEY[:2], pl.String)})


def explain(detection: Detection, anomalies: pl.DataFrame, hidden: pl.DataFrame | None = None, n_drivers: int = 3) -> pl.DataFrame:
    """``anomalies`` plus ``effect, volume_z, others_z, mix_share, mix_p, share`` (the anomaly
    category's part of its unit-window's positive excess) and ``drivers`` (top categories by excess).

    ``effect`` of a category anomaly: ``"mix"`` when the other categories of the unit-window fell
    by at least half this category's excess (and ``others_z <= -1``) while its total did not rise
    significantly (a mix shift with the total unchanged); ``"volume+mix"`` when the total rose and
    the others fell (by half the excess, or by 3 standard deviations); else ``"volume"`` (events
    added on top of an ordinary mix). :func:`app.engine.attribution.decompose` gives the mix test.

    ``hidden``: withheld cells (``level, unit_id, category, bin_start``) to merge into :data:`OTHER`.
    """
    if anomalies.height == 0:
        return anomalies.with_columns(
            effect=pl.lit(None, pl.String),
            volume_z=pl.lit(None, pl.Float64),
            mix_share=pl.lit(None, pl.Float64),
            mix_p=pl.lit(None, pl.Float64),
            others_z=pl.lit(None, pl.Float64),
            share=pl.lit(None, pl.Float64),
            drivers=pl.lit(None, pl.List(pl.Struct({"category": pl.String, "excess": pl.Float64, "share": pl.Float64}))),
        )
    cells = unit_window_cells(detection, anomalies.select(KEY).unique())
    if hidden is not None and hidden.height:
        mark = hidden.select(*KEY, "category").with_columns(_hidden=pl.lit(True))
        cells = (
            cells.join(mark, on=[*KEY, "category"], how="left")
            .with_columns(category=pl.when(pl.col("_hidden")).then(pl.lit(OTHER)).otherwise(pl.col("category")))
            .group_by(*KEY, "category")
            .agg(pl.col("observed").sum(), pl.col("expected").sum(), pl.col("variance").sum())
        )
    contrib = contributions(cells)
    verdict = decompose(cells).select(*KEY, "volume_z", "mix_share", "mix_p")
    drivers = top_drivers(contrib, n_drivers)
    share = contrib.select(*KEY, "category", "share")
    # Did the rest of the unit-window lose what this category gained? A spike adds events on top
    # of an ordinary mix; a mix shift takes them from the other categories.
    others = (
        anomalies.select(*KEY, "category")
        .join(cells.rename({"category": "c"}), on=KEY, how="left")
        .filter(pl.col("c") != pl.col("category"))
        .group_by(*KEY, "category")
        .agg(
            others_z=(pl.col("observed").sum() - pl.col("expected").sum()) / pl.col("variance").sum().sqrt(),
            others_deficit=pl.col("expected").sum() - pl.col("observed").sum(),
        )
    )
    out = (
        anomalies.join(verdict, on=KEY, how="left")
        .join(others, on=[*KEY, "category"], how="left")
        .join(drivers, on=KEY, how="left")
        .join(share, on=[*KEY, "category"], how="left")
        .with_columns(pl.col("share").fill_null(0.0), pl.col("others_z").fill_null(0.0), pl.col("others_deficit").fill_null(0.0))
    )
    # Nearer to "the others lost all of it" than to "they lost nothing", and clearly below normal.
    took = (pl.col("others_deficit") >= 0.5 * (pl.col("observed") - pl.col("expected"))) & (pl.col("others_z") <= -OTHERS_DROP_Z)
    total_up = pl.col("volume_z") >= TOTAL_UP_Z
    # The total rose *and* the others clearly lost events (even if less than half the excess): both.
    both = total_up & (took | (pl.col("others_z") <= -TOTAL_UP_Z))
    effect = pl.when(both).then(pl.lit("volume+mix")).when(took).then(pl.lit("mix")).otherwise(pl.lit("volume"))
    return out.with_columns(effect=effect).drop("others_deficit")
