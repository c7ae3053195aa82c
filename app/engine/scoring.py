"""Causal scores of every cell of one level at one grain, computed once at publish time.

A cell's expected value, variance, p, z and q depend only on that cell and the history before it:

* **Level** from the series' own trailing window ``[b - 28 days, b)``, clipped to the data's
  start (days before the data begin are never zeros); a cell with less than 7 days of history is
  not scored (``reason`` says so) and one with less than 28 says "baseline of N days".
* **Shape, dispersion and prior** (Gamma-Poisson shrinkage towards unit activity x category
  share; weekday or hour-of-week profile in local time; quasi-Poisson ``phi``) are fitted per
  local week on the 28 days before the week starts, so every cell of a week uses the same fit and
  none of it comes from the cell's own week or later.
* **Variance**: quasi-Poisson noise, the level's own estimation error (Gamma-Poisson), the
  seasonal factor's (about one over the events of its slot in the fit window, so a slot seen once
  in a short history counts for less) and the stand-ins' (below).
* **p** is the exact negative-binomial tail (under ``dp``, where a count carries noise of known
  variance, a normal tail with continuity correction); **z = Phi^-1(1 - p)**, so z and p always agree (a
  Gaussian z at 0.01 expected events is meaningless); ``p_low``/``z_low`` give the lower tail
  (dips).
* **q** is Benjamini-Hochberg over the fixed family of that level and bin: every unit x category
  (with ``"*"``) of the level, whatever window a user looks at; withheld and unscored cells count
  as p = 1, so q is a function of released cells only.

The input counts are the release with withheld cells filled from released numbers
(:func:`app.engine.fill.fill_withheld`), so every number here is post-processing of the release;
the stand-ins in a cell's trailing window widen its variance by the spread of a withheld count
around its stand-in (``ScoreSpec.fill_variance`` per stand-in event), so a cell whose past was
mostly withheld needs more to stand out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy import stats

from app.engine.grains import bin_expr, bin_range, slot_expr, slots
from app.engine.scores import nb_upper_p

__all__ = ["BASELINE_DAYS", "MIN_HISTORY_DAYS", "ScoreSpec", "score_layer"]

BASELINE_DAYS = 28
MIN_HISTORY_DAYS = 7
_Z_CAP = 37.5  # Phi^-1(1 - 1e-300): p underflows past this
_PRIOR_WEIGHT = 0.25
_MIN_FACTOR = 0.05
_SMOOTHING = 20.0


@dataclass(frozen=True)
class ScoreSpec:
    """Where one layer's scores come from: its grain, the city's clock and history, the family."""

    grain: str
    tz: str
    history_start: datetime  # local midnight of the first event's day
    n_units: int  # units of the level (the FDR family is units x categories per bin)
    n_categories: int  # categories of the city plus "*"
    complete_until: datetime  # bins from here on are incomplete (their block is still filling)
    baseline_days: int = BASELINE_DAYS
    #: Variance of a withheld cell's true count around its stand-in, per event of the stand-in
    #: (the release only says it is small): the stand-ins of a trailing window add it, times their
    #: sum, to the uncertainty of the level. 0 when nothing is withheld.
    fill_variance: float = 0.0
    #: Variance of the noise in every released cell (``dp``; 0 otherwise): the observed cell carries
    #: it once and the expected value, a mean of trailing cells, shrunk by the weight of the window.
    noise_variance: float = 0.0


def _norm_isf(p: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.clip(stats.norm.isf(np.clip(p, 1e-300, 1.0)), -_Z_CAP, _Z_CAP)
    return out


def _nb_lower_p(x: NDArray[np.float64], mean: NDArray[np.float64], var: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(X <= x) for the negative binomial with this mean and variance (Poisson when not over)."""
    mu = np.maximum(mean, 1e-12)
    over = var > mu * (1 + 1e-9)
    p = np.empty_like(x)
    p[~over] = stats.poisson.cdf(x[~over], mu[~over])
    size = mu[over] ** 2 / (var[over] - mu[over])
    p[over] = stats.nbinom.cdf(x[over], size, size / (size + mu[over]))
    out: NDArray[np.float64] = np.clip(p, 0.0, 1.0)
    return out


def score_layer(cells: pl.DataFrame, spec: ScoreSpec) -> pl.DataFrame:
    """Scores of one level at one grain.

    ``cells``: ``unit_id, category, bin_start, count`` (null where withheld), ``suppressed``,
    ``filled`` (the release with withheld cells filled); absent cells are released zeros. Output, per
    active series and calendar bin: ``observed`` (published count or null), ``expected,
    variance, baseline_days, scored, reason, p, zscore, p_low, z_low, q, q_low``; rows of no
    interest (nothing observed, under half an event expected) are dropped."""
    if cells.height == 0:
        return _empty()
    lo = spec.history_start
    last = cells["bin_start"].max()
    assert isinstance(last, datetime)
    calendar = bin_range(lo, last + timedelta(seconds=1), spec.grain, spec.tz)
    cal = pl.DataFrame({"bin_start": calendar}, schema={"bin_start": pl.Datetime("us", "UTC")}).with_row_index("idx")
    cal = cal.with_columns(pl.col("idx").cast(pl.Int64))
    starts = np.array([int(b.timestamp() * 1e6) for b in calendar], np.int64)
    base = spec.baseline_days
    lo_us = np.maximum(starts - base * 86_400_000_000, int(lo.timestamp() * 1e6))
    lo_idx = np.searchsorted(starts, lo_us, side="left")
    history = (starts - int(lo.timestamp() * 1e6)) / 86_400e6  # days of history before each bin
    n_base = np.arange(len(calendar)) - lo_idx  # bins in each trailing window

    # Integer codes for units, categories and series: every join below is on integers.
    data = cells.join(cal, on="bin_start", how="inner").with_columns(
        sid=pl.struct("unit_id", "category").rank("dense").cast(pl.Int64) - 1,
        unit_id=pl.col("unit_id").rank("dense").cast(pl.Int64),
        category=pl.col("category").rank("dense").cast(pl.Int64),
        _unit=pl.col("unit_id"),
        _cat=pl.col("category"),
    )
    names = data.select("sid", unit_id="_unit", category="_cat").unique("sid")
    star = data.filter(pl.col("_cat") == "*")["category"]
    star_code = int(star[0]) if star.len() else -1
    data = data.drop("_unit", "_cat")
    series = data.group_by("sid", "unit_id", "category").agg(first=pl.col("idx").min(), last=pl.col("idx").max())
    reach = int(np.max(n_base)) + 1 if n_base.size else 1
    grid = series.with_columns(idx=pl.int_ranges("first", pl.min_horizontal(pl.col("last") + reach, len(calendar)))).explode("idx")
    grid = grid.select("sid", "unit_id", "category", pl.col("idx").cast(pl.Int64))
    grid = grid.join(data.select("sid", "idx", "count", "suppressed", "filled"), on=["sid", "idx"], how="left").join(cal, on="idx")
    hid = pl.col("suppressed").fill_null(False)
    grid = grid.with_columns(
        pl.col("filled").fill_null(0.0),
        count=pl.when(hid).then(None).otherwise(pl.col("count").fill_null(0)),
        publishable=pl.col("bin_start") < spec.complete_until,
    ).sort("sid", "idx")

    sid = grid["sid"].to_numpy()
    idx = grid["idx"].to_numpy()
    val = grid["filled"].to_numpy()
    cum = np.concatenate([[0.0], np.cumsum(val)])
    code = sid * (len(calendar) + 1) + idx
    at = np.searchsorted(code, code, side="left")
    at_lo = np.searchsorted(code, sid * (len(calendar) + 1) + lo_idx[idx], side="left")
    trailing = cum[at] - cum[at_lo]
    stand_in = np.where(grid["suppressed"].fill_null(False).to_numpy(), val, 0.0)
    hid_cum = np.concatenate([[0.0], np.cumsum(stand_in)])
    grid = grid.with_columns(
        trailing=pl.Series(trailing),
        stand_ins=pl.Series(hid_cum[at] - hid_cum[at_lo]),
        n_base=pl.Series(n_base[idx]),
        history=pl.Series(history[idx]),
    )
    # Silent series (nothing observed, nothing in the trailing window) hold no news, dips included.
    grid = grid.filter((pl.col("trailing") > 0) | (pl.col("filled") > 0) | pl.col("count").is_null() | (pl.col("category") == star_code))
    grid = _expectations(grid, data, spec)
    out = _test(grid, spec, star_code)
    return out.drop("unit_id", "category").join(names, on="sid").drop("sid").select(_empty().columns)


def _expectations(grid: pl.DataFrame, cells: pl.DataFrame, spec: ScoreSpec) -> pl.DataFrame:
    """Expected value and variance of every grid row: one fit per local week ``e`` on the filled
    cells of ``[max(start, e - 28 days), e)`` (see the module docstring), all weeks at once.

    A cell belongs to the fit windows of the four weeks after its own, so the cells are repeated
    four times and every statistic is one group-by keyed by the week."""
    h0, tz, grain = spec.history_start, spec.tz, spec.grain
    n_slots = slots(grain)
    grid = grid.with_columns(epoch=bin_expr("bin_start", "week", tz), slot=slot_expr(grain, tz))
    epochs = sorted(set(grid["epoch"].unique().to_list()))
    bins_rows: list[tuple[datetime, datetime]] = []
    ok: list[datetime] = []
    for e in epochs:
        lo = max(h0, e - timedelta(days=spec.baseline_days))
        if e - lo >= timedelta(days=MIN_HISTORY_DAYS):
            ok.append(e)
            bins_rows.extend((e, b) for b in bin_range(lo, e, grain, tz))
    dt = pl.Datetime("us", "UTC")
    wbins = pl.DataFrame(bins_rows, schema={"epoch": dt, "bin_start": dt}, orient="row").with_columns(slot=slot_expr(grain, tz))
    n_bins = wbins.group_by("epoch").agg(n_bins=pl.len().cast(pl.Float64))
    per_slot = wbins.group_by("epoch", "slot").agg(n_slot=pl.len().cast(pl.Float64))
    obs = cells.select("unit_id", "category", "bin_start", "filled").filter(pl.col("filled") > 0)
    obs = pl.concat([obs.with_columns(epoch=bin_expr(pl.col("bin_start") + pl.duration(days=7 * j), "week", tz)) for j in range(1, 5)])
    obs = obs.filter(pl.col("epoch").is_in(pl.Series(ok, dtype=dt).implode()) & (pl.col("bin_start") >= h0))
    obs = obs.join(n_bins, on="epoch").with_columns(slot=slot_expr(grain, tz))
    if n_slots > 1:
        by = per_slot.join(obs.group_by("epoch", "slot").agg(n=pl.col("filled").sum()), on=["epoch", "slot"], how="left")
        by = by.with_columns(pl.col("n").fill_null(0.0))
        by = by.with_columns(rate=pl.col("n") / pl.col("n_slot"))
        f_all = by.select("epoch", "slot", "n_slot", f_all=pl.col("rate") / pl.col("rate").mean().over("epoch").clip(lower_bound=1e-12))
        cats = obs.select("epoch", "category").unique().join(f_all, on="epoch")
        cats = cats.join(
            obs.group_by("epoch", "category", "slot").agg(n_cs=pl.col("filled").sum()), on=["epoch", "category", "slot"], how="left"
        )
        cats = cats.with_columns(rate=pl.col("n_cs").fill_null(0.0) / pl.col("n_slot"))
        smooth = _SMOOTHING / n_slots
        factor = (pl.col("rate") + smooth * pl.col("f_all")) / (pl.col("rate").mean().over("epoch", "category") + smooth)
        # The factor is estimated from the slot's n events of the fit window, smoothed by m
        # pseudo-events: its relative variance is n / (n + m)^2 (Poisson n; a slot seen once in a
        # short history is far less certain than one seen four times).
        n_ev, pseudo = pl.col("n_cs").fill_null(0.0), smooth * pl.col("f_all") * pl.col("n_slot")
        profile = (
            cats.with_columns(factor=factor.clip(lower_bound=_MIN_FACTOR), rel_var=n_ev / (n_ev + pseudo).pow(2).clip(lower_bound=1.0))
            .with_columns(pl.col("factor") / pl.col("factor").mean().over("epoch", "category"))
            .select("epoch", "category", "slot", "factor", "rel_var")
        )
    else:
        profile = pl.DataFrame(
            schema={"epoch": dt, "category": obs.schema["category"], "slot": pl.Int32, "factor": pl.Float64, "rel_var": pl.Float64}
        )
    series = obs.group_by("epoch", "unit_id", "category").agg(total=pl.col("filled").sum())
    withf = obs.join(profile.drop("rel_var"), on=["epoch", "category", "slot"], how="left").with_columns(pl.col("factor").fill_null(1.0))
    withf = withf.join(series, on=["epoch", "unit_id", "category"]).with_columns(mu=pl.col("total") / pl.col("n_bins") * pl.col("factor"))
    stat = withf.group_by("epoch", "category").agg(
        x2=(pl.col("filled").pow(2) / pl.col("mu")).sum() - pl.col("filled").sum(), n_bins=pl.col("n_bins").first()
    )
    stat = stat.join(series.group_by("epoch", "category").agg(n_series=pl.len()), on=["epoch", "category"])
    dof = pl.col("n_series") * (pl.col("n_bins") - 1)
    phi = stat.select("epoch", "category", phi=pl.when(dof > 0).then(pl.col("x2") / dof).otherwise(1.0).clip(1.0, 10.0))
    total = obs.group_by("epoch").agg(
        total=pl.col("filled").sum(), n_units=pl.col("unit_id").n_unique(), n_cats=pl.col("category").n_unique()
    )
    total = total.join(n_bins, on="epoch").with_columns(
        floor=0.1 * pl.col("total") / pl.col("n_bins") / pl.col("n_units") / pl.col("n_cats")
    )
    unit_rate = (
        obs.group_by("epoch", "unit_id")
        .agg(u=pl.col("filled").sum())
        .join(n_bins, on="epoch")
        .select("epoch", "unit_id", u=pl.col("u") / pl.col("n_bins"))
    )
    share = (
        obs.group_by("epoch", "category")
        .agg(c=pl.col("filled").sum())
        .join(total, on="epoch")
        .select("epoch", "category", s=pl.col("c") / pl.col("total"))
    )
    rows = grid.join(profile, on=["epoch", "category", "slot"], how="left").join(phi, on=["epoch", "category"], how="left")
    rows = rows.join(unit_rate, on=["epoch", "unit_id"], how="left").join(share, on=["epoch", "category"], how="left")
    rows = rows.join(total.select("epoch", "floor"), on="epoch", how="left")
    nb = pl.col("n_base").cast(pl.Float64)
    w = _PRIOR_WEIGHT * nb
    m0 = pl.max_horizontal((pl.col("u") * pl.col("s")).fill_null(0.0), pl.col("floor").fill_null(1e-3))
    a = w * m0 + pl.col("trailing")
    b = w + nb
    f = pl.col("factor").fill_null(1.0)
    ph = pl.col("phi").fill_null(1.0)
    stand_ins = f.pow(2) * pl.col("stand_ins") * spec.fill_variance / b.pow(2)
    shape = (f * a / b).pow(2) * ph * pl.col("rel_var").fill_null(0.0)  # the seasonal factor's own uncertainty
    noise = spec.noise_variance * (1.0 + f.pow(2) * nb / b.pow(2))
    return rows.with_columns(
        expected=pl.when(nb > 0).then(f * a / b),
        variance=pl.when(nb > 0).then(ph * f * a / b + f.pow(2) * a / b.pow(2) + stand_ins + shape + noise),
    ).drop("slot", "factor", "rel_var", "u", "s", "phi", "epoch", "floor", "stand_ins")


def _test(grid: pl.DataFrame, spec: ScoreSpec, star_code: int) -> pl.DataFrame:
    """Tail probabilities, honest z and the per-bin FDR of the published cells."""
    enough = pl.col("history") >= MIN_HISTORY_DAYS
    published = pl.col("count").is_not_null() & pl.col("publishable")
    grid = grid.with_columns(
        observed=pl.when(published).then(pl.col("count")),
        baseline_days=pl.min_horizontal(pl.col("history"), pl.lit(float(spec.baseline_days))).round(2),
        scored=enough & published,
        reason=pl.when(~pl.col("publishable"))
        .then(pl.lit("incomplete bin: not published yet"))
        .when(pl.col("count").is_null())
        .then(pl.lit("withheld by the privacy rule"))
        .when(~enough)
        .then(pl.lit(f"under {MIN_HISTORY_DAYS} days of history: not scored"))
        .when(pl.col("history") < spec.baseline_days)
        .then(pl.format("baseline of {} days", pl.col("history").floor().cast(pl.Int64)))
        .otherwise(pl.lit(None, pl.String)),
    )
    keep = pl.col("observed").fill_null(0).gt(0) | pl.col("expected").fill_null(0.0).ge(0.5) | (pl.col("category") == star_code)
    grid = grid.filter(keep & (pl.col("history") >= 0))
    scored = grid["scored"].to_numpy()
    x = grid["observed"].fill_null(0).to_numpy().astype(np.float64)
    mu = grid["expected"].fill_null(1.0).to_numpy()
    var = grid["variance"].fill_null(1.0).to_numpy()
    p = np.full(grid.height, np.nan)
    p_low = np.full(grid.height, np.nan)
    if spec.noise_variance > 0:
        # dp: the count is a true count plus noise of known variance, not a negative binomial (whose
        # tail thins at a small mean as its variance grows): a normal tail with continuity correction.
        sd = np.sqrt(var[scored])
        p[scored] = stats.norm.sf((x[scored] - 0.5 - mu[scored]) / sd)
        p_low[scored] = stats.norm.cdf((x[scored] + 0.5 - mu[scored]) / sd)
    else:
        p[scored] = nb_upper_p(x[scored], mu[scored], var[scored])
        p_low[scored] = _nb_lower_p(x[scored], mu[scored], var[scored])
    grid = grid.with_columns(
        p=pl.Series(p).fill_nan(None),
        p_low=pl.Series(p_low).fill_nan(None),
        zscore=pl.Series(_norm_isf(np.where(scored, p, 1.0))),
        z_low=pl.Series(-_norm_isf(np.where(scored, p_low, 1.0))),
    )
    grid = grid.with_columns(zscore=pl.when(pl.col("scored")).then(pl.col("zscore")), z_low=pl.when(pl.col("scored")).then(pl.col("z_low")))
    m = float(spec.n_units * spec.n_categories)
    return _bh(_bh(grid, "p", "q", m), "p_low", "q_low", m).select(
        "sid",
        "unit_id",
        "category",
        "bin_start",
        "observed",
        "expected",
        "variance",
        "baseline_days",
        "scored",
        "reason",
        "p",
        "zscore",
        "q",
        "p_low",
        "z_low",
        "q_low",
    )


def _bh(frame: pl.DataFrame, p: str, q: str, m: float) -> pl.DataFrame:
    """Benjamini-Hochberg ``q`` of column ``p`` per bin over ``m`` hypotheses (untested: p = 1)."""
    ranked = frame.with_row_index("_row").sort("bin_start", pl.col(p).fill_null(2.0))
    r = pl.int_range(1, pl.len() + 1).over("bin_start")
    raw = (pl.col(p) * m / r).clip(upper_bound=1.0)
    ranked = ranked.with_columns(_raw=raw).with_columns(pl.col("_raw").reverse().cum_min().reverse().over("bin_start").alias(q))
    return ranked.with_columns(pl.when(pl.col(p).is_not_null()).then(pl.col(q)).alias(q)).sort("_row").drop("_row", "_raw")


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "unit_id": pl.String,
            "category": pl.String,
            "bin_start": pl.Datetime("us", "UTC"),
            "observed": pl.Int64,
            "expected": pl.Float64,
            "variance": pl.Float64,
            "baseline_days": pl.Float64,
            "scored": pl.Boolean,
            "reason": pl.String,
            "p": pl.Float64,
            "zscore": pl.Float64,
            "q": pl.Float64,
            "p_low": pl.Float64,
            "z_low": pl.Float64,
            "q_low": pl.Float64,
        }
    )
