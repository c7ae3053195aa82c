"""A first, simple detector: z-score of each bin against the trailing baseline of its own series.

Deliberately plain (the full engine replaces it with seasonal baselines, exact tail p-values and
FDR). Baselines come from sparse counts: sums of x and x² over the trailing window divided by the
number of bins in it, so zero bins count without ever being materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import polars as pl

from app.engine.bins import bin_counts, filter_events

__all__ = ["BASELINE", "score_window", "trailing_zscores"]

BASELINE = timedelta(days=28)

_BIN_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def trailing_zscores(
    counts: pl.DataFrame, time_bin: str, baseline: timedelta = timedelta(days=28), group: tuple[str, ...] = ("unit_id", "category")
) -> pl.DataFrame:
    """Score every non-empty bin of ``counts`` (``bin_start``, ``count`` and ``group`` columns).

    Adds ``expected`` (trailing mean), ``std`` and ``zscore = (count - expected) / sqrt(max(var,
    expected, 1))``; the floor of 1 keeps a lone event in a silent series from scoring as extreme.
    The bin itself is never part of its own baseline (``closed="left"``).
    """
    n_bins = baseline / _BIN_LENGTH[time_bin]
    period = f"{int(baseline.total_seconds())}s"
    keys = [*group, "bin_start"]
    rolled = (
        counts.sort(keys)
        .with_columns(x2=pl.col("count").pow(2))
        .rolling(index_column="bin_start", period=period, closed="left", group_by=list(group))
        .agg(s1=pl.col("count").sum(), s2=pl.col("x2").sum())
    )
    base = counts.join(rolled, on=keys, how="left").with_columns(pl.col("s1").fill_null(0), pl.col("s2").fill_null(0)).sort(keys)
    mean = pl.col("s1") / n_bins
    var = (pl.col("s2") / n_bins - mean.pow(2)).clip(lower_bound=0.0)
    scored = base.with_columns(expected=mean, std=var.sqrt())
    denom = pl.max_horizontal(pl.col("std").pow(2), pl.col("expected"), pl.lit(1.0)).sqrt()
    return scored.with_columns(zscore=(pl.col("count") - pl.col("expected")) / denom).drop("s1", "s2")


def score_window(
    events: pl.DataFrame,
    parents: pl.DataFrame,
    level: str,
    time_bin: str,
    since: datetime,
    until: datetime,
    categories: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    baseline: timedelta = BASELINE,
) -> pl.DataFrame:
    """Scores of every non-empty (unit, category, bin) in ``[since, until)`` whose trailing
    baseline lies entirely inside the event history (earlier bins would be scored on gaps)."""
    if events.height == 0:
        return pl.DataFrame()
    history_start = events["ts"].min()
    assert isinstance(history_start, datetime)
    window = filter_events(events, since - baseline, until, categories, kinds)
    scored = trailing_zscores(bin_counts(window, parents, level, time_bin), time_bin, baseline)
    earliest = max(since, history_start.astimezone(UTC) + baseline)
    return scored.filter((pl.col("bin_start") >= earliest) & (pl.col("bin_start") < until))
