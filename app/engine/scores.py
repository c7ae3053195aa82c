"""Score helpers shared by the publish-time scorer (:mod:`app.engine.scoring`) and the evaluation.

* :func:`nb_upper_p` is the exact upper-tail probability of the negative binomial with a given mean
  and variance (Poisson when the variance equals the mean), which stays honest at low counts.
* :data:`DEFAULT_Q` and :data:`DEFAULT_MIN_Z` are the product's listing thresholds.
* :func:`rolling_zscores` is the plain 28-day rolling z detector, kept as the reference the
  evaluation (:mod:`app.engine.evaluate`) compares the engine against.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy import stats

__all__ = ["BASELINE", "BIN_LENGTH", "DEFAULT_MIN_Z", "DEFAULT_Q", "nb_upper_p", "rolling_zscores"]

DEFAULT_Q = 0.05
DEFAULT_MIN_Z = 3.0
#: Trailing window of the rolling z reference.
BASELINE = timedelta(days=28)
#: Nominal length of one bin of each grain.
BIN_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


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
