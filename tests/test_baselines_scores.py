"""Golden tests of baselines, exact tail p-values, FDR and detection: small fixtures whose numbers
can be checked by hand (the arithmetic is in the comments)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from app.engine.baselines import BaselineModel, dispersion, expectations, fit_baseline, seasonal_profile
from app.engine.detect import DetectionSettings, detect
from app.engine.scores import bh_qvalues, nb_upper_p, score_cells

T0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
EMPTY_PROFILE = pl.DataFrame(schema={"category": pl.String, "slot": pl.Int32, "factor": pl.Float64})


def cells(rows: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    """(unit, category, day offset from T0, count) -> sparse cells."""
    return pl.DataFrame(
        {
            "unit_id": [r[0] for r in rows],
            "category": [r[1] for r in rows],
            "bin_start": [T0 + r[2] * DAY for r in rows],
            "count": [r[3] for r in rows],
        },
        schema={"unit_id": pl.String, "category": pl.String, "bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64},
    )


def flat_model(prior_rate: float = 1.0, phi: float = 1.0, prior_weight: float = 7.0) -> BaselineModel:
    return BaselineModel(
        time_bin="day",
        baseline=timedelta(days=28),
        n_bins=28,
        profile=EMPTY_PROFILE,
        phi=pl.DataFrame({"category": ["a"], "phi": [phi]}),
        prior=pl.DataFrame({"unit_id": ["u"], "category": ["a"], "prior_rate": [prior_rate]}),
        prior_floor=1e-3,
        prior_weight=prior_weight,
    )


# ---- exact tails and FDR ------------------------------------------------------------------------
def test_poisson_tail_by_hand() -> None:
    # P(X >= 5 | Poisson(1)) = 1 - e^-1 (1 + 1 + 1/2 + 1/6 + 1/24)
    expected = 1 - np.exp(-1) * (1 + 1 + 1 / 2 + 1 / 6 + 1 / 24)
    assert nb_upper_p(np.array([5.0]), np.array([1.0]), np.array([1.0]))[0] == pytest.approx(expected, rel=1e-12)


def test_negative_binomial_tail_by_hand() -> None:
    # mean 2, variance 4 -> size r = 2^2 / (4 - 2) = 2, p = 1/2: P(k) = (k + 1) / 2^(k + 2);
    # P(X >= 3) = 1 - (1/4 + 2/8 + 3/16) = 5/16
    assert nb_upper_p(np.array([3.0]), np.array([2.0]), np.array([4.0]))[0] == pytest.approx(5 / 16, rel=1e-12)


def test_zero_observed_has_p_one() -> None:
    assert nb_upper_p(np.array([0.0, 0.0]), np.array([3.0, 3.0]), np.array([3.0, 9.0])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        # sorted .01 .03 .04 -> p*m/rank: .03 .045 .04 -> running min from the top: .03 .04 .04
        (3, [0.03, 0.04, 0.04]),
        # ten cells tested, seven of them empty (p = 1): .1 .15 .1333 -> .1 .1333 .1333
        (10, [0.1, 0.4 / 3, 0.4 / 3]),
    ],
)
def test_benjamini_hochberg_by_hand(m: int, expected: list[float]) -> None:
    assert bh_qvalues(np.array([0.01, 0.04, 0.03]), m).tolist() == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 100))
def test_qvalues_are_monotone_in_p_and_never_below_p(ps: list[float], extra: int) -> None:
    p = np.array(ps)
    q = bh_qvalues(p, len(p) + extra)
    assert np.all(q >= p - 1e-12)
    assert np.all(q <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(q[order]) >= -1e-12)


# ---- baselines ------------------------------------------------------------------------------------
def test_seasonal_profile_without_smoothing_is_the_weekday_rate_over_the_mean() -> None:
    # Four weeks: 2 a day Monday-Friday, 4 on Saturdays, none on Sundays -> rates 2 2 2 2 2 4 0, mean 2.
    rows = [("u", "a", d, 4 if d % 7 == 5 else 2) for d in range(28) if d % 7 != 6]
    profile = seasonal_profile(cells(rows), "day", T0, T0 + 28 * DAY, smoothing=0.0)
    # Sunday's 0 is floored at 0.05 (never "impossible"), then the factors are renormalised to mean 1.
    floored = [1, 1, 1, 1, 1, 2, 0.05]
    assert profile["factor"].to_list() == pytest.approx([f / (sum(floored) / 7) for f in floored])


def test_dispersion_by_hand() -> None:
    # One series, four weekly bins 0 4 0 4: mu = 2 each; X2 = 16/2 + 16/2 - 8 = 8 on 1 x (4 - 1) df.
    weekly = cells([("u", "a", 7, 4), ("u", "a", 21, 4)])
    assert dispersion(weekly, "week", 4, EMPTY_PROFILE)["phi"].to_list() == pytest.approx([8 / 3])


def test_expectation_by_hand_and_the_bin_never_in_its_own_baseline() -> None:
    # 56 events in the 28 days before day 28, prior rate 1/day worth 7 bins:
    # Gamma(7*1 + 56, 7 + 28) -> mu = 63/35 = 1.8; variance = 1.8 + 63/35^2.
    history = [("u", "a", d, 2) for d in range(28)]
    today = [("u", "a", 28, 9)]
    key = pl.DataFrame({"unit_id": ["u"], "category": ["a"], "bin_start": [T0 + 28 * DAY]})
    out = expectations(key, cells(history + today), flat_model()).row(0, named=True)
    assert out["observed"] == 9
    assert out["trailing"] == 56
    assert out["expected"] == pytest.approx(1.8)
    assert out["variance"] == pytest.approx(1.8 + 63 / 35**2)
    # A much bigger count today, or events 29 days back, leave the baseline alone.
    other = expectations(key, cells([*history, ("u", "a", -1, 50), ("u", "a", 28, 900)]), flat_model()).row(0, named=True)
    assert other["expected"] == pytest.approx(1.8)


def test_silent_series_falls_back_on_the_prior_instead_of_zero() -> None:
    # Nothing in 28 days, prior 0.5/day worth 7 bins: mu = 3.5/35 = 0.1 (not 0), so one event is not "infinite".
    key = pl.DataFrame({"unit_id": ["u"], "category": ["a"], "bin_start": [T0 + 28 * DAY]})
    out = expectations(key, cells([("u", "a", 28, 1)]), flat_model(prior_rate=0.5)).row(0, named=True)
    assert out["expected"] == pytest.approx(0.1)
    p = nb_upper_p(np.array([1.0]), np.array([out["expected"]]), np.array([out["variance"]]))[0]
    assert 0.05 < p < 0.2


def test_overdispersion_widens_the_variance() -> None:
    history = [("u", "a", d, 2) for d in range(28)]
    key = pl.DataFrame({"unit_id": ["u"], "category": ["a"], "bin_start": [T0 + 28 * DAY]})
    plain = expectations(key, cells(history), flat_model()).row(0, named=True)
    wide = expectations(key, cells(history), flat_model(phi=3.0)).row(0, named=True)
    assert wide["expected"] == pytest.approx(plain["expected"])
    assert wide["variance"] == pytest.approx(3 * 1.8 + 63 / 35**2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=35, max_size=35), st.integers(0, 10_000))
def test_a_bins_own_count_never_moves_its_baseline(counts: list[int], today: int) -> None:
    rows = [("u", "a", d, c) for d, c in enumerate(counts) if c]
    base = cells(rows).filter(pl.col("bin_start") != T0 + 34 * DAY)
    model = fit_baseline(base, "day", T0 + 34 * DAY)
    key = pl.DataFrame({"unit_id": ["u"], "category": ["a"], "bin_start": [T0 + 34 * DAY]})
    a = expectations(key, base, model)["expected"][0]
    b = expectations(key, pl.concat([base, cells([("u", "a", 34, today)])]) if today else base, model)["expected"][0]
    assert a == pytest.approx(b)


# ---- scoring and detection ------------------------------------------------------------------------
def quiet_city(spike: int, seed: int = 3) -> pl.DataFrame:
    """Five units x two categories of Poisson(4) days for 35 days, plus ``spike`` events in unit u0,
    category a, on day 33."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", c, d, int(rng.poisson(4))) for u in range(5) for c in ("a", "b") for d in range(35)]
    rows = [(u, c, d, n + (spike if (u, c, d) == ("u0", "a", 33) else 0)) for u, c, d, n in rows]
    return cells([r for r in rows if r[3]])


def test_score_cells_reports_z_p_q_against_the_seasonal_baseline() -> None:
    scored = score_cells(quiet_city(spike=20), T0 + 28 * DAY, T0 + 35 * DAY, "day", n_units=5)
    top = scored.sort("p").row(0, named=True)
    assert (top["unit_id"], top["category"], top["bin_start"]) == ("u0", "a", T0 + 33 * DAY)
    assert top["p"] == pytest.approx(
        float(nb_upper_p(np.array([top["observed"]]), np.array([top["expected"]]), np.array([top["variance"]]))[0])
    )
    assert top["zscore"] == pytest.approx((top["observed"] - top["expected"]) / np.sqrt(top["variance"]))
    # The family is 5 units x 2 categories x 7 days = 70 cells.
    assert top["q"] == pytest.approx(min(1.0, top["p"] * 70), rel=1e-9)


@pytest.mark.parametrize(("spike", "found"), [(0, False), (25, True)])
def test_detect_finds_a_spike_and_nothing_in_noise(spike: int, found: bool) -> None:
    city = quiet_city(spike)
    cube = city.with_columns(level=pl.lit("tract"), parent_id=pl.lit("n"))
    run = detect(cube, {"tract": 5}, ("tract",), T0 + 28 * DAY, T0 + 35 * DAY, DetectionSettings())
    keys = {(r["unit_id"], r["category"], r["bin_start"]) for r in run.anomalies.iter_rows(named=True)}
    assert keys == ({("u0", "a", T0 + 33 * DAY)} if found else set())
    assert run.scored["q"].min() >= run.scored["p"].min()


def test_poisson_noise_at_low_counts_gives_few_false_alarms() -> None:
    """500 sparse series of Poisson(0.3)/day: a plain z >= 3 flags dozens of single-digit counts, the
    exact tail with FDR flags (almost) none."""
    rng = np.random.default_rng(11)
    rows = [(f"u{u}", "a", d, int(n)) for u in range(500) for d, n in enumerate(rng.poisson(0.3, 35)) if n]
    sparse = cells(rows)
    scored = score_cells(sparse, T0 + 28 * DAY, T0 + 35 * DAY, "day", n_units=500)
    assert scored.filter((pl.col("q") <= 0.01) & (pl.col("zscore") >= 3)).height == 0
    assert scored.filter(pl.col("zscore") >= 3).height > 10  # what a z-only rule would have listed


def test_scipy_agrees_with_the_poisson_limit_of_the_nb_tail() -> None:
    x = np.array([7.0])
    near_poisson = nb_upper_p(x, np.array([2.0]), np.array([2.0 + 1e-6]))[0]
    assert near_poisson == pytest.approx(stats.poisson.sf(6, 2.0), rel=1e-4)
