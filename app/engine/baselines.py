"""Seasonal baselines: what each (unit, category, bin) cell is expected to hold, and how uncertain
that expectation is, from the trailing window before it.

Why this model rather than a per-series mean and standard deviation:

* **Level from the series, shape from the category.** A tract x category series has a handful of
  events a month, far too few to estimate a weekday (or hour-of-week) profile on its own. The
  level (events per bin) comes from the series' own trailing window; the seasonal shape comes from
  the whole city's events of that category in the pre-window, shrunk towards the all-category
  shape when the category is rare.
* **Gamma-Poisson shrinkage.** A series that was silent for four weeks has an estimated rate of 0,
  and one event would then be "infinitely" unusual. The rate gets a Gamma prior centred on what
  the unit's overall activity and the category's city share predict, worth ``prior_weight`` of
  the baseline's bins; the posterior predictive is negative binomial, so the uncertainty of a
  rate estimated from few events widens the variance instead of being ignored.
* **Over-dispersion per category** (quasi-Poisson ``phi``, Pearson statistic over the pre-window)
  widens the variance where counts are burstier than Poisson.

The current bin never leaks into its own baseline: trailing sums stop strictly before it and the
profile, dispersion and prior come from the pre-window ``[since - baseline, since)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray

from app.engine.bins import TIME_BINS

__all__ = ["BASELINE", "BIN_LENGTH", "BaselineModel", "dispersion", "expectations", "fit_baseline", "seasonal_profile", "slot_expr"]

BASELINE = timedelta(days=28)
BIN_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
_SLOTS = {"hour": 168, "day": 7, "week": 1}
_KEYS = ["unit_id", "category"]
_MIN_FACTOR = 0.05


def slot_expr(time_bin: str, col: str = "bin_start") -> pl.Expr:
    """Seasonal slot of a bin: hour-of-week for hourly bins, day-of-week for daily, none for weekly."""
    if time_bin == "hour":
        return (pl.col(col).dt.weekday().cast(pl.Int32) - 1) * 24 + pl.col(col).dt.hour().cast(pl.Int32)
    if time_bin == "day":
        return (pl.col(col).dt.weekday() - 1).cast(pl.Int32)
    return pl.lit(0, pl.Int32)


def seasonal_profile(counts: pl.DataFrame, time_bin: str, since: datetime, until: datetime, smoothing: float = 20.0) -> pl.DataFrame:
    """Per category and slot, the factor by which a bin in that slot exceeds the category's mean bin.

    ``counts`` holds the cells (any level) of the pre-window ``[since, until)``. Factors average 1
    over the slots. A rare category borrows the all-category shape, with weight ``smoothing``
    events spread over the slots.
    """
    slots = _SLOTS[time_bin]
    if counts.height == 0 or slots == 1:
        return pl.DataFrame(
            {"category": [], "slot": [], "factor": []}, schema={"category": pl.String, "slot": pl.Int32, "factor": pl.Float64}
        )
    binned = counts.with_columns(slot=slot_expr(time_bin))
    # Bins per slot of the grid, empty ones included (a window that is not whole weeks has unequal slots).
    grid = pl.DataFrame({"bin_start": pl.datetime_range(since, until, BIN_LENGTH[time_bin], closed="left", eager=True, time_zone="UTC")})
    bins_per_slot = grid.with_columns(slot=slot_expr(time_bin)).group_by("slot").len("n_bins")
    by_slot = bins_per_slot.join(binned.group_by("slot").agg(n=pl.col("count").sum()), on="slot", how="left").fill_null(0)
    by_slot = by_slot.with_columns(rate=pl.col("n") / pl.col("n_bins"))
    f_all = by_slot.select("slot", f_all=pl.col("rate") / pl.col("rate").mean())
    grid = binned.select("category").unique().join(f_all, how="cross").join(bins_per_slot, on="slot")
    per_cat = binned.group_by("category", "slot").agg(n_cs=pl.col("count").sum())
    grid = grid.join(per_cat, on=["category", "slot"], how="left").with_columns(pl.col("n_cs").fill_null(0))
    grid = grid.with_columns(rate=pl.col("n_cs") / pl.col("n_bins"))
    mean_rate = pl.col("rate").mean().over("category")
    factor = (pl.col("rate") + smoothing / slots * pl.col("f_all")) / (mean_rate + smoothing / slots)
    # A slot the whole city never saw in the pre-window would expect exactly 0 and make one event
    # infinitely unusual: floor each factor at 5 % of an average slot before renormalising.
    out = grid.with_columns(factor=factor.clip(lower_bound=_MIN_FACTOR)).with_columns(
        pl.col("factor") / pl.col("factor").mean().over("category")
    )
    return out.select("category", "slot", "factor").sort("category", "slot")


def dispersion(counts: pl.DataFrame, time_bin: str, n_bins: int, profile: pl.DataFrame, cap: float = 10.0) -> pl.DataFrame:
    """Quasi-Poisson over-dispersion ``phi`` per category from the pre-window cells.

    Pearson's statistic against each series' own seasonal mean, computed from the non-zero cells
    only: zero cells contribute their expectation, and expectations sum to the observed total, so
    ``X2 = sum(x^2 / mu) - N``; degrees of freedom are cells minus fitted series levels.
    """
    if counts.height == 0:
        return pl.DataFrame({"category": [], "phi": []}, schema={"category": pl.String, "phi": pl.Float64})
    cells = _with_factor(counts.with_columns(slot=slot_expr(time_bin)), profile)
    series = cells.group_by(_KEYS).agg(total=pl.col("count").sum())
    cells = cells.join(series, on=_KEYS).with_columns(mu=pl.col("total") / n_bins * pl.col("factor"))
    stat = (
        cells.group_by("category")
        .agg(x2=(pl.col("count").cast(pl.Float64).pow(2) / pl.col("mu")).sum() - pl.col("count").sum())
        .join(series.group_by("category").agg(n_series=pl.len()), on="category")
    )
    df = pl.col("n_series") * (n_bins - 1)
    phi = pl.when(df > 0).then(pl.col("x2") / df).otherwise(1.0).clip(1.0, cap)
    return stat.select("category", phi=phi).sort("category")


@dataclass(frozen=True)
class BaselineModel:
    """Everything fitted on the pre-window that the scores need (pure data, picklable)."""

    time_bin: str
    baseline: timedelta
    n_bins: int
    profile: pl.DataFrame  # category, slot, factor
    phi: pl.DataFrame  # category, phi
    prior: pl.DataFrame  # unit_id, category, prior_rate (events per bin, before seasonality)
    prior_floor: float
    prior_weight: float  # pseudo-bins the prior is worth


def fit_baseline(
    counts: pl.DataFrame, time_bin: str, since: datetime, baseline: timedelta = BASELINE, prior_weight: float = 0.25
) -> BaselineModel:
    """Fit profile, dispersion and the Gamma prior on the pre-window ``[since - baseline, since)``.

    ``counts`` are sparse cells (``unit_id, category, bin_start, count``) of one level. The prior
    rate of a series is its unit's total rate times the category's city share; ``prior_weight`` is
    a fraction of the baseline's bins.
    """
    n_bins = int(baseline / BIN_LENGTH[time_bin])
    pre = counts.filter((pl.col("bin_start") >= since - baseline) & (pl.col("bin_start") < since))
    profile = seasonal_profile(pre, time_bin, since - baseline, since)
    phi = dispersion(pre, time_bin, n_bins, profile)
    total = max(int(pre["count"].sum()), 1) if pre.height else 1
    unit_rate = pre.group_by("unit_id").agg(u=pl.col("count").sum() / n_bins)
    cat_share = pre.group_by("category").agg(s=pl.col("count").sum() / total)
    prior = unit_rate.join(cat_share, how="cross").select("unit_id", "category", prior_rate=pl.col("u") * pl.col("s"))
    n_units = max(unit_rate.height, 1)
    floor = 0.1 * total / n_bins / n_units / max(cat_share.height, 1)
    return BaselineModel(time_bin, baseline, n_bins, profile, phi, prior, floor, prior_weight * n_bins)


def _with_factor(cells: pl.DataFrame, profile: pl.DataFrame) -> pl.DataFrame:
    if profile.height == 0:
        return cells.with_columns(factor=pl.lit(1.0))
    return cells.join(profile, on=["category", "slot"], how="left").with_columns(pl.col("factor").fill_null(1.0))


def expectations(keys: pl.DataFrame, counts: pl.DataFrame, model: BaselineModel) -> pl.DataFrame:
    """Expected value and variance of each cell in ``keys`` (``unit_id, category, bin_start``).

    ``counts`` are the sparse cells of the same level covering at least ``[min(bin) - baseline,
    max(bin))``. Adds ``observed`` (0 where the cell is absent), ``trailing`` (events in the
    series' trailing window), ``expected``, ``variance`` and ``phi``. Keys may be cells with no
    events (attribution needs the categories that went quiet).
    """
    if keys.height == 0:
        return (
            keys.select(*_KEYS, "bin_start")
            .with_columns([pl.lit(None, pl.Float64).alias(c) for c in ("trailing", "expected", "variance", "phi")])
            .with_columns(observed=pl.lit(0, pl.Int64))
        )
    lo, hi = keys["bin_start"].min(), keys["bin_start"].max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    # Only the span the trailing windows need; differences of running sums do not care where they start.
    span = counts.filter((pl.col("bin_start") >= lo - model.baseline) & (pl.col("bin_start") <= hi))
    trailing, observed = _trailing_sums(keys, span, lo - model.baseline, model)
    base = keys.lazy().select(*_KEYS, "bin_start").with_columns(trailing=pl.Series(trailing), observed=pl.Series(observed))
    base = base.with_columns(slot=slot_expr(model.time_bin))
    if model.profile.height:
        base = base.join(model.profile.lazy(), on=["category", "slot"], how="left").with_columns(pl.col("factor").fill_null(1.0))
    else:
        base = base.with_columns(factor=pl.lit(1.0))
    base = base.join(model.prior.lazy(), on=_KEYS, how="left").join(model.phi.lazy(), on="category", how="left")
    m0 = pl.max_horizontal(pl.col("prior_rate").fill_null(0.0), pl.lit(model.prior_floor))
    a = model.prior_weight * m0 + pl.col("trailing")  # Gamma posterior shape
    b = model.prior_weight + model.n_bins  # ... and rate (bins)
    f = pl.col("factor")
    phi = pl.col("phi").fill_null(1.0)
    out = base.with_columns(expected=f * a / b, variance=phi * f * a / b + f.pow(2) * a / b**2, phi=phi).collect()
    return out.select(*_KEYS, "bin_start", "observed", "trailing", "expected", "variance", "phi")


def _trailing_sums(
    keys: pl.DataFrame, span: pl.DataFrame, origin: datetime, model: BaselineModel
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per key: events of its series in ``[t - baseline, t)`` and in ``t`` itself.

    Series and bins become integers, ``series * T + bin`` one sorted key, and a running sum over it
    answers both questions with two binary searches per key: the difference of running sums at
    ``t`` and ``t - baseline`` only spans rows of the key's own series.
    """

    # Series ids from a 64-bit hash of (unit, category): cheaper than joining on two strings; a
    # collision among a few hundred thousand series has odds of about 1e-9.
    def hashed(frame: pl.DataFrame) -> NDArray[np.uint64]:
        return frame.select(pl.struct(_KEYS).hash().alias("h"))["h"].to_numpy()

    def bin_index(frame: pl.DataFrame) -> NDArray[np.int64]:
        return ((frame["bin_start"].dt.epoch("us") - origin_us) // step_us).to_numpy().astype(np.int64)

    step_us = int(BIN_LENGTH[model.time_bin] / timedelta(microseconds=1))
    origin_us = int(origin.timestamp() * 1_000_000)
    sid = pl.Series(np.concatenate([hashed(span), hashed(keys)])).rank("dense").to_numpy().astype(np.int64)
    sid_cells, sid_keys = sid[: span.height], sid[span.height :]
    t_cells, t_keys = bin_index(span), bin_index(keys)
    width = int(max(t_cells.max(initial=0), t_keys.max(initial=0))) + 1 + model.n_bins
    code = sid_cells * width + t_cells
    order = pl.Series(code).arg_sort().to_numpy()  # polars sorts in parallel
    code = code[order]
    cum = np.concatenate([[0], np.cumsum(span["count"].to_numpy()[order])])
    q = sid_keys * width + t_keys
    at_t = np.searchsorted(code, q, side="left")
    after_t = np.searchsorted(code, q, side="right")
    at_lo = np.searchsorted(code, q - model.n_bins, side="left")
    return (cum[at_t] - cum[at_lo]).astype(np.float64), (cum[after_t] - cum[at_t]).astype(np.int64)


def bins_in(since: datetime, until: datetime, time_bin: str) -> int:
    """Number of grid bins in ``[since, until)`` (both on the grid)."""
    return max(int((until - since) / BIN_LENGTH[time_bin]), 0)


assert set(BIN_LENGTH) == set(TIME_BINS)
