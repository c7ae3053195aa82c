"""Scores: how unusual each cell is against its baseline, and how sure we are across many cells.

* ``z`` = (observed - expected) / sqrt(variance) is kept because people read it, but it is not the
  test: at 2 expected events a Gaussian z is meaningless.
* ``p`` is the exact upper-tail probability of the negative binomial with the baseline's mean and
  variance (Poisson when the variance equals the mean), which stays honest at low counts.
* ``q`` is the Benjamini-Hochberg adjusted p over *every* cell tested in the window: all units x
  categories x bins of the level, not only the cells that had events (cells with no events have
  p = 1 and are counted without being materialised).

``rolling_zscores`` is the plain 28-day rolling z detector, kept as the reference the evaluation
compares against.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy import stats

from app.engine.baselines import BASELINE, BIN_LENGTH, BaselineModel, bins_in, expectations, fit_baseline

__all__ = ["DEFAULT_MIN_Z", "DEFAULT_Q", "bh_qvalues", "nb_upper_p", "rolling_zscores", "score_cells"]

DEFAULT_Q = 0.05
DEFAULT_MIN_Z = 3.0


def nb_upper_p(observed: NDArray[np.float64], mean: NDArray[np.float64], variance: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(X >= observed) for X negative binomial with the given mean and variance (Poisson when
    ``variance <= mean``). Vectorised; observed 0 gives 1."""
    x = np.asarray(observed, dtype=np.float64)
    mu = np.maximum(np.asarray(mean, dtype=np.float64), 1e-12)
    var = np.asarray(variance, dtype=np.float64)
    over = var > mu * (1 + 1e-9)
    p = np.ones_like(x)
    pois = ~over & (x > 0)
    p[pois] = stats.poisson.sf(x[pois] - 1, mu[pois])
    nb = over & (x > 0)
    size = mu[nb] ** 2 / (var[nb] - mu[nb])
    p[nb] = stats.nbinom.sf(x[nb] - 1, size, size / (size + mu[nb]))
    return np.clip(p, 0.0, 1.0)


def bh_qvalues(p: NDArray[np.float64], m: int) -> NDArray[np.float64]:
    """Benjamini-Hochberg q-values of ``p`` when ``m >= len(p)`` hypotheses were tested in all
    (the untested rest have p = 1 and rank after these)."""
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    if n == 0:
        return p
    m = max(m, n)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, n + 1)
    q_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    q = np.empty(n)
    q[order] = q_sorted
    return q


def score_cells(
    counts: pl.DataFrame,
    since: datetime,
    until: datetime,
    time_bin: str,
    n_units: int,
    baseline: timedelta = BASELINE,
    model: BaselineModel | None = None,
    extra_variance: float = 0.0,
) -> pl.DataFrame:
    """Score every non-empty cell of ``counts`` (sparse ``unit_id, category, bin_start, count`` of
    one level) with ``since <= bin_start < until``.

    Adds ``observed, trailing, expected, variance, phi, zscore, p, q``. ``n_units`` is the number
    of units at the level (the FDR family is units x categories x bins). ``extra_variance`` is
    added to every cell's variance (the DP noise variance, so noise alone does not look unusual).
    """
    model = model or fit_baseline(counts, time_bin, since, baseline)
    window = counts.filter((pl.col("bin_start") >= since) & (pl.col("bin_start") < until))
    if window.height == 0:
        return window.with_columns(
            [pl.lit(None, pl.Float64).alias(c) for c in ("trailing", "expected", "variance", "phi", "zscore", "p", "q")]
        ).with_columns(observed=pl.col("count"))
    scored = expectations(window.select("unit_id", "category", "bin_start"), counts, model)
    scored = scored.with_columns(pl.col("variance") + extra_variance)
    p = nb_upper_p(scored["observed"].to_numpy(), scored["expected"].to_numpy(), scored["variance"].to_numpy())
    n_categories = counts["category"].n_unique()
    m = n_units * n_categories * bins_in(since, until, time_bin)
    return scored.with_columns(
        zscore=(pl.col("observed") - pl.col("expected")) / pl.col("variance").sqrt(),
        p=pl.Series(p),
        q=pl.Series(bh_qvalues(p, m)),
    )


def rolling_zscores(counts: pl.DataFrame, time_bin: str, baseline: timedelta = BASELINE) -> pl.DataFrame:
    """The plain detector: z of each non-empty bin against the trailing mean and standard deviation
    of its own series (zero bins included, floor of 1 on the variance); the reference in the bench.
    """
    n_bins = baseline / BIN_LENGTH[time_bin]
    keys = ["unit_id", "category", "bin_start"]
    rolled = (
        counts.sort(keys)
        .with_columns(x2=pl.col("count").pow(2))
        .rolling(index_column="bin_start", period=f"{int(baseline.total_seconds())}s", closed="left", group_by=keys[:2])
        .agg(s1=pl.col("count").sum(), s2=pl.col("x2").sum())
    )
    base = counts.join(rolled, on=keys, how="left").with_columns(pl.col("s1").fill_null(0), pl.col("s2").fill_null(0))
    mean = pl.col("s1") / n_bins
    var = (pl.col("s2") / n_bins - mean.pow(2)).clip(lower_bound=0.0)
    scored = base.with_columns(expected=mean, std=var.sqrt())
    denom = pl.max_horizontal(pl.col("std").pow(2), pl.col("expected"), pl.lit(1.0)).sqrt()
    return scored.with_columns(zscore=(pl.col("count") - pl.col("expected")) / denom).drop("s1", "s2").sort(keys)
