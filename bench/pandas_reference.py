"""The engine's scoring written the way an analyst would write it in pandas: one series at a time.

Why it exists: the bench's ``recompute_speedup_vs_pandas`` figure needs an honest "what would this
cost without the engine" reference, and the test suite needs an independent second implementation
of :func:`app.engine.scores.score_cells` to check the engine's numbers against. Both uses need the
*same* computation, so :func:`pandas_score_cells` takes the engine's fitted
:class:`~app.engine.baselines.BaselineModel` as input (profile, dispersion and prior are fitted
once per level, vectorised, in either style): what is compared is only the per-series part, i.e.
for every scored cell the trailing 28-day sum, the Gamma-Poisson expectation and variance, the
z-score, the negative-binomial upper tail ``p`` (scipy) and the Benjamini-Hochberg ``q`` over the
whole family (units x categories x bins).

How it is written: cells are grouped by ``(unit_id, category)`` and the groups are looped over in
Python; within a series every scored bin's trailing sum is a boolean mask over that series' rows.
It is deliberately *not* vectorised across series (that is the engine's job), but it is not made
slow either: each series' columns are taken out as NumPy arrays once and masked there, lookups are
dicts built once, and ``p`` and ``q`` are computed on the finished columns in one scipy/pandas call
each, as an analyst would. Each of those choices favours pandas, so the speedup is a conservative
figure.

Timing the full demo this way takes minutes (tens of thousands of series), so the bench times it on
a deterministic sample of series (:func:`sample_series`) and scales the per-series part linearly
by the number of scored series (:func:`extrapolated_seconds`); the one-off lookup tables are timed
once in full and added unscaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import polars as pl
from scipy import stats

from app.engine.baselines import BaselineModel, bins_in

__all__ = ["Lookups", "extrapolated_seconds", "lookups", "pandas_score_cells", "sample_series", "to_pandas_cells"]

_KEYS = ["unit_id", "category"]


@dataclass(frozen=True)
class Lookups:
    """The fitted model as plain dicts, built once per level (what the per-series loop reads)."""

    factor: dict[tuple[str, int], float]  # (category, slot) -> seasonal factor
    prior: dict[tuple[str, str], float]  # (unit_id, category) -> prior rate per bin
    phi: dict[str, float]  # category -> over-dispersion


def lookups(model: BaselineModel) -> Lookups:
    """Dict views of the model's profile, prior and dispersion tables (via pandas, as an analyst
    holding the model's frames would)."""
    profile = model.profile.to_pandas()
    prior = model.prior.to_pandas()
    phi = model.phi.to_pandas()
    return Lookups(
        factor=dict(zip(zip(profile["category"], profile["slot"].astype(int), strict=True), profile["factor"], strict=True)),
        prior=dict(zip(zip(prior["unit_id"], prior["category"], strict=True), prior["prior_rate"], strict=True)),
        phi=dict(zip(phi["category"], phi["phi"], strict=True)),
    )


def to_pandas_cells(counts: pl.DataFrame) -> pd.DataFrame:
    """The engine's sparse cells (``unit_id, category, bin_start, count``) as the pandas frame
    :func:`pandas_score_cells` reads: ``bin_start`` naive UTC ``datetime64``, so the per-series
    arrays are plain NumPy datetimes rather than object arrays of timestamps."""
    frame = counts.select("unit_id", "category", "bin_start", "count").to_pandas()
    if isinstance(frame["bin_start"].dtype, pd.DatetimeTZDtype):
        frame["bin_start"] = frame["bin_start"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _slot(t: pd.Timestamp, time_bin: str) -> int:
    """Same seasonal slot as :func:`app.engine.baselines.slot_expr` (Monday 0)."""
    if time_bin == "hour":
        return int(t.day_of_week) * 24 + int(t.hour)
    if time_bin == "day":
        return int(t.day_of_week)
    return 0


def _naive_utc(t: datetime) -> np.datetime64:
    """``t`` on the same naive-UTC clock as :func:`to_pandas_cells`' ``bin_start``."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_datetime64()


def pandas_score_cells(
    counts: pd.DataFrame,
    since: datetime,
    until: datetime,
    time_bin: str,
    n_units: int,
    model: BaselineModel,
    extra_variance: float = 0.0,
    n_categories: int | None = None,
    tables: Lookups | None = None,
) -> pd.DataFrame:
    """Per-series pandas version of :func:`app.engine.scores.score_cells` with a given ``model``.

    ``counts`` is :func:`to_pandas_cells` of one level's cells. Returns one row per non-empty cell
    with ``since <= bin_start < until``: ``unit_id, category, bin_start`` (UTC), ``observed,
    trailing, expected, variance, phi, zscore, p, q``. ``n_categories`` defaults to the categories
    in ``counts`` (pass the full level's number when ``counts`` is a sample of its series, so the
    FDR family stays the engine's); ``tables`` are :func:`lookups` of ``model`` when already built.
    """
    tables = tables or lookups(model)
    lo, hi = _naive_utc(since), _naive_utc(until)
    baseline = np.timedelta64(model.baseline)
    b = model.prior_weight + model.n_bins  # Gamma posterior rate (bins), the same for every series
    rows: list[tuple[str, str, np.datetime64, int, float, float, float, float]] = []
    for (unit, category), series in counts.groupby(_KEYS, sort=False):
        bins = series["bin_start"].to_numpy()
        values = series["count"].to_numpy()
        scored = np.flatnonzero((bins >= lo) & (bins < hi))
        if scored.size == 0:
            continue
        m0 = max(tables.prior.get((unit, category), 0.0), model.prior_floor)
        phi = tables.phi.get(category, 1.0)
        for i in scored:
            t = bins[i]
            trailing = float(values[(bins >= t - baseline) & (bins < t)].sum())
            f = tables.factor.get((category, _slot(pd.Timestamp(t), time_bin)), 1.0)
            a = model.prior_weight * m0 + trailing  # Gamma posterior shape
            expected = f * a / b
            variance = phi * f * a / b + f**2 * a / b**2 + extra_variance
            rows.append((unit, category, t, int(values[i]), trailing, expected, variance, phi))
    out = pd.DataFrame(rows, columns=[*_KEYS, "bin_start", "observed", "trailing", "expected", "variance", "phi"])
    out["bin_start"] = pd.to_datetime(out["bin_start"]).dt.tz_localize("UTC")
    out["zscore"] = (out["observed"] - out["expected"]) / np.sqrt(out["variance"])
    out["p"] = _upper_p(out["observed"], out["expected"], out["variance"])
    n_cat = n_categories if n_categories is not None else int(counts["category"].nunique())
    out["q"] = _bh(out["p"], n_units * n_cat * bins_in(since, until, time_bin))
    return out


def _upper_p(observed: pd.Series, mean: pd.Series, variance: pd.Series) -> pd.Series:
    """P(X >= observed): negative binomial with this mean and variance, Poisson when not over-dispersed."""
    mu = mean.clip(lower=1e-12)
    over = variance > mu * (1 + 1e-9)
    p = pd.Series(1.0, index=observed.index)
    pois = ~over & (observed > 0)
    p[pois] = stats.poisson.sf(observed[pois] - 1, mu[pois])
    nb = over & (observed > 0)
    size = mu[nb] ** 2 / (variance[nb] - mu[nb])
    p[nb] = stats.nbinom.sf(observed[nb] - 1, size, size / (size + mu[nb]))
    return p.clip(0.0, 1.0)


def _bh(p: pd.Series, m: int) -> pd.Series:
    """Benjamini-Hochberg q-values when ``m`` hypotheses were tested (the untested have p = 1)."""
    if p.empty:
        return p.copy()
    m = max(m, len(p))
    ranked = p.sort_values(kind="stable")
    ranked = ranked * m / np.arange(1, len(ranked) + 1)
    q = ranked[::-1].cummin()[::-1].clip(upper=1.0)
    return q.reindex(p.index)


def sample_series(counts: pl.DataFrame, since: datetime, until: datetime, n: int, seed: int = 0) -> pl.DataFrame:
    """A deterministic sample of ``n`` series (``unit_id, category``) among those with a cell in
    ``[since, until)`` (the series that are scored); all of them when there are at most ``n``."""
    window = counts.filter((pl.col("bin_start") >= since) & (pl.col("bin_start") < until))
    active = window.select(_KEYS).unique().sort(_KEYS)
    if active.height <= n:
        return active
    return active.sample(n, seed=seed).sort(_KEYS)


def extrapolated_seconds(sample_s: float, sample_series: int, total_series: int, fixed_s: float = 0.0) -> float:
    """Full-run time from a sample: the per-series time scaled linearly by ``total_series /
    sample_series``, plus the one-off ``fixed_s`` that does not grow with the series."""
    if sample_series <= 0 or total_series < 0 or sample_s < 0 or fixed_s < 0:
        raise ValueError(f"need a positive sample and non-negative times: {sample_s=}, {sample_series=}, {total_series=}, {fixed_s=}")
    return fixed_s + sample_s * total_series / sample_series
