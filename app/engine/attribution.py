"""Attribution: which categories make up an anomaly, and whether it is *more* activity or *different*
activity.

A unit-window (``level, unit_id, bin_start``) can be unusual in two ways that call for different
responses: its total is too high (volume), or its total is ordinary but the events moved between
categories (mix: the same number of calls, but noise complaints replaced parking ones). The usual
per-category z-scores blur the two, because every category of a busy window is high at once. So the
excess of each category is split exactly into

* ``volume_effect = (X - M) * expected / M``: what the category would add if the whole window were
  scaled up with its baseline mix kept, and
* ``mix_effect = observed - X * expected / M``: what is left, the events relabelled between
  categories at the observed total (it sums to 0 over the window),

with ``X`` and ``M`` the observed and expected totals of the window. The window's verdict compares the
total against its baseline variance (``volume_z``) and the category counts against the baseline mix
with a chi-square goodness-of-fit test (``mix_p``).

Pure functions of polars frames; the cells come from the baseline model (``expected`` is the
baseline mean, ``variance`` its predictive variance).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

__all__ = ["EFFECTS", "KEY", "contributions", "decompose", "rounded_drivers", "top_drivers"]

#: A unit-window: the rows that share it are its categories.
KEY = ["level", "unit_id", "bin_start"]
#: Possible values of ``decompose(...)["effect"]``.
EFFECTS = ("volume", "mix", "volume+mix", "none")

_CELL_COLUMNS = [*KEY, "category", "observed", "expected", "variance"]


def _check(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    """Fail with the missing names rather than a polars ColumnNotFound deep inside an expression."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def contributions(cells: pl.DataFrame) -> pl.DataFrame:
    """Per key and category: the input columns plus ``excess, share, volume_effect, mix_effect``.

    ``share`` is the category's part of the window's *positive* excess (categories below their
    baseline get 0 rather than a negative share, so the shares of a window sum to 1, or to 0 when
    nothing is above baseline). ``volume_effect + mix_effect == excess`` for every row. A window with
    no baseline at all (``M = 0``) has nothing to compare a mix against: all of its excess is volume.
    Rows are sorted by key and category.
    """
    _check(cells, _CELL_COLUMNS, "cells")
    x = pl.col("observed").sum().over(KEY).cast(pl.Float64)
    m = pl.col("expected").sum().over(KEY)
    positive = pl.max_horizontal(pl.col("excess"), pl.lit(0.0))
    positive_total = positive.sum().over(KEY)
    observed = pl.col("observed").cast(pl.Float64)
    return (
        cells.with_columns(excess=observed - pl.col("expected"))
        .with_columns(
            share=pl.when(positive_total > 0).then(positive / positive_total).otherwise(0.0),
            volume_effect=pl.when(m > 0).then((x - m) * pl.col("expected") / m).otherwise(observed),
            mix_effect=pl.when(m > 0).then(observed - x * pl.col("expected") / m).otherwise(0.0),
        )
        .sort([*KEY, "category"])
    )


def _mix_test(cells: pl.DataFrame, novel_floor: float) -> pl.DataFrame:
    """Per key: ``mix_p``, the Pearson chi-square goodness-of-fit p of the category counts against
    the baseline mix scaled to the observed total.

    Categories with no baseline (``expected == 0``) but events would have a null expectation of 0
    and an infinite statistic, while a single stray event in a new category is not evidence of a
    shift. They are pooled into one extra cell whose baseline mean is ``novel_floor`` events (the
    baseline "nearly never" saw any of them), and that cell counts towards the degrees of freedom
    like any other. Categories with neither baseline nor events carry no information and are left
    out. A key with fewer than two cells, or no events, has nothing to test: ``mix_p = 1``.
    The test assumes multinomial counts given the total; bursty (over-dispersed) categories make it
    liberal, which is why :func:`decompose` also asks for a minimum ``mix_share``.
    """
    live = cells.filter((pl.col("expected") > 0) | (pl.col("observed") > 0))
    cell = pl.when(pl.col("expected") > 0).then(pl.col("category")).otherwise(pl.lit(None, pl.String))
    grouped = (
        live.with_columns(cell=cell)
        .group_by([*KEY, "cell"])
        .agg(o=pl.col("observed").sum().cast(pl.Float64), b=pl.col("expected").sum())
        .with_columns(b=pl.when(pl.col("cell").is_null()).then(pl.lit(novel_floor)).otherwise(pl.col("b")))
    )
    e = pl.col("o").sum().over(KEY) * pl.col("b") / pl.col("b").sum().over(KEY)
    per_key = (
        grouped.with_columns(e=e)
        .group_by(KEY)
        .agg(stat=pl.when(pl.col("e") > 0).then((pl.col("o") - pl.col("e")) ** 2 / pl.col("e")).otherwise(0.0).sum(), k=pl.len())
        .sort(KEY)
    )
    stat = per_key["stat"].to_numpy()
    df = per_key["k"].to_numpy().astype(np.float64) - 1.0
    testable = df >= 1
    p = np.ones(per_key.height)
    p[testable] = stats.chi2.sf(stat[testable], df[testable])
    return per_key.select(KEY).with_columns(mix_p=pl.Series(np.clip(p, 0.0, 1.0), dtype=pl.Float64))


def decompose(
    cells: pl.DataFrame,
    alpha: float = 0.01,
    *,
    z_threshold: float = 3.0,
    min_mix_share: float = 0.1,
    novel_floor: float = 0.5,
) -> pl.DataFrame:
    """One row per key: ``observed_total, expected_total, variance_total, excess, volume_z,
    mix_index, mix_share, mix_p, effect``, sorted by key.

    ``mix_index`` is the number of events that would have to change category for the window to
    have its baseline mix (half the summed absolute ``mix_effect``, i.e. the dissimilarity index
    times ``X``); ``mix_share`` is that as a fraction of ``X``.

    ``effect``: ``"volume"`` when the total is high (``volume_z >= z_threshold``) and the mix is
    not significant; ``"mix"`` when the total is ordinary (``|volume_z| < z_threshold``) but the mix
    is significant; ``"volume+mix"`` when both; ``"none"`` otherwise. The mix counts as significant
    only when ``mix_p < alpha`` *and* ``mix_share >= min_mix_share``: with hundreds of events a
    chi-square test finds a 2 % relabelling "significant", and nobody should be sent to look at
    that. A drop in the total is never labelled ``"volume"`` (the lens looks for heat, not quiet).
    ``variance`` must be positive, as the baseline model guarantees.
    """
    _check(cells, _CELL_COLUMNS, "cells")
    contrib = contributions(cells)
    totals = (
        contrib.group_by(KEY)
        .agg(
            observed_total=pl.col("observed").sum(),
            expected_total=pl.col("expected").sum(),
            variance_total=pl.col("variance").sum(),
            mix_index=pl.col("mix_effect").abs().sum() / 2,
        )
        .sort(KEY)
    )
    out = totals.join(_mix_test(cells, novel_floor), on=KEY, how="left").with_columns(
        excess=pl.col("observed_total").cast(pl.Float64) - pl.col("expected_total"),
        mix_p=pl.col("mix_p").fill_null(1.0),
    )
    out = out.with_columns(
        volume_z=pl.col("excess") / pl.col("variance_total").sqrt(),
        mix_share=pl.when(pl.col("observed_total") > 0).then(pl.col("mix_index") / pl.col("observed_total")).otherwise(0.0),
    )
    high = pl.col("volume_z") >= z_threshold
    ordinary = pl.col("volume_z").abs() < z_threshold
    mixed = (pl.col("mix_p") < alpha) & (pl.col("mix_share") >= min_mix_share)
    effect = (
        pl.when(high & mixed)
        .then(pl.lit("volume+mix"))
        .when(high)
        .then(pl.lit("volume"))
        .when(ordinary & mixed)
        .then(pl.lit("mix"))
        .otherwise(pl.lit("none"))
    )
    return out.with_columns(effect=effect).select(
        *KEY, "observed_total", "expected_total", "variance_total", "excess", "volume_z", "mix_index", "mix_share", "mix_p", "effect"
    )


def top_drivers(contrib: pl.DataFrame, n: int = 3) -> pl.DataFrame:
    """Per key of ``contrib`` (the output of :func:`contributions`): ``drivers``, a list of up to
    ``n`` structs ``{category, excess, share}`` for the categories with the largest positive excess,
    largest first, ties broken by category name so the same data always names the same drivers.

    Every key appears, with an empty list when no category is above its baseline, so the result can
    be joined onto anomalies without losing rows. Sorted by key.
    """
    _check(contrib, [*KEY, "category", "excess", "share"], "contributions")
    driver = pl.struct("category", "excess", "share")
    ranked = contrib.sort([*KEY, "excess", "category"], descending=[False, False, False, True, False])
    # group_by keeps the row order within each group, so the pre-sort ranks the drivers.
    return ranked.group_by(KEY).agg(drivers=driver.filter(pl.col("excess") > 0).head(n)).sort(KEY).select(*KEY, "drivers")


def rounded_drivers(column: str = "drivers", excess_digits: int = 2, share_digits: int = 4) -> pl.Expr:
    """``column`` (lists of driver structs) with excess and share rounded: parallel float sums may
    differ in their last digits between runs, and published or stored numbers should not."""
    return pl.col(column).list.eval(
        pl.struct(
            pl.element().struct.field("category"),
            pl.element().struct.field("excess").round(excess_digits),
            pl.element().struct.field("share").round(share_digits),
        )
    )
