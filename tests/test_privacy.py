"""The privacy pieces outside the publish-time release: the suppression audit's bridge finder,
DP noise and the dp release's post-processing, and the budget ledger. (The release itself is
attacked in tests/test_release.py.)
"""

from __future__ import annotations

import math
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.ledger import BudgetExceeded, BudgetLedger
from app.engine.privacy import Policy, _bridges, dp_noise_variance, dp_release

DAY0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


# ---- the audit's bridge finder ---------------------------------------------------------------------------
def naive_bridges(n_nodes: int, edges: list[tuple[int, int]]) -> list[bool]:
    """Edge i is a bridge iff removing it (alone) disconnects its two endpoints (union-find)."""

    def connected(skip: int) -> bool:
        root = list(range(n_nodes))

        def find(x: int) -> int:
            while root[x] != x:
                root[x] = root[root[x]]
                x = root[x]
            return x

        for j, (u, v) in enumerate(edges):
            if j != skip:
                root[find(u)] = find(v)
        u, v = edges[skip]
        return find(u) == find(v)

    return [not connected(i) for i in range(len(edges))]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=24))
    )
)
def test_bridges_match_a_naive_cut_test(case: tuple[int, list[tuple[int, int]]]) -> None:
    """The suppression audit's derivability test is a bridge search (see app/engine/privacy.py):
    it must agree with deleting each edge in turn, parallel edges and forests included."""
    n, raw = case
    edges = [(u, v) for u, v in raw if u != v]  # the audit graph has no self-loops
    eu = np.array([u for u, _ in edges], np.int64)
    ev = np.array([v for _, v in edges], np.int64)
    assert _bridges(n, eu, ev).tolist() == naive_bridges(n, edges)


def test_bridges_golden() -> None:
    # A triangle 0-1-2 with a tail 2-3 and a doubled edge 3-4: only the tail is a bridge.
    eu, ev = np.array([0, 1, 2, 2, 3, 4]), np.array([1, 2, 0, 3, 4, 3])
    assert _bridges(5, eu, ev).tolist() == [False, False, False, True, False, False]
    assert _bridges(3, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []


# ---- differential privacy ---------------------------------------------------------------------------------------
def discrete_laplace_moments(scale: float) -> tuple[float, float]:
    """Variance and fourth central moment of the discrete Laplace law, summed from its pmf."""
    p = math.exp(-1.0 / scale)
    x = np.arange(-2000, 2001, dtype=np.float64)
    pmf = (1 - p) / (1 + p) * p ** np.abs(x)
    return float((pmf * x**2).sum()), float((pmf * x**4).sum())


def test_noise_variance_formula() -> None:
    var, _ = discrete_laplace_moments(4.0)
    assert dp_noise_variance(4.0) == pytest.approx(var, rel=1e-9)
    assert Policy("dp", epsilon=1.0).noise_variance(4) == pytest.approx(var, rel=1e-9)
    assert Policy("suppress").noise_variance(4) == 0.0
    assert Policy("none").noise_variance(4) == 0.0


@pytest.mark.parametrize("seed", [None, 7])
def test_dp_noise_variance_matches_theory(seed: int | None) -> None:
    """A 4-level hierarchy of single units over 20,000 bins, true count 10,000 everywhere: the top
    level's released values are count + noise (no clipping can bite), scale 4/epsilon. Sample
    mean and variance must lie within 5 standard errors of theory (false alarm ~1e-6)."""
    eps, n = 0.8, 20_000
    units = pl.DataFrame({"tract_id": ["t"], "neighborhood_id": ["n"], "borough_id": ["b"], "city_id": ["c"]})
    bins = [DAY0 + timedelta(hours=i) for i in range(n)]
    counts = pl.DataFrame(
        {"unit_id": ["t"] * n, "bin_start": bins, "count": [10_000] * n}, schema_overrides={"bin_start": pl.Datetime("us", "UTC")}
    )
    out = dp_release(counts, units, bins, Policy("dp", epsilon=eps), rng_seed=seed)
    noise = out.filter(pl.col("level") == "city")["count"].to_numpy().astype(np.float64) - 10_000
    assert noise.size == n
    var, mu4 = discrete_laplace_moments(4 / eps)
    assert Policy("dp", epsilon=eps).noise_variance(4) == pytest.approx(var)
    assert abs(noise.mean()) < 5 * math.sqrt(var / n)
    se_var = math.sqrt((mu4 - var**2 * (n - 3) / (n - 1)) / n)
    assert abs(noise.var(ddof=1) - var) < 5 * se_var
    # and each level below adds up to its parent exactly
    assert (out.filter(pl.col("level") == "tract")["count"].to_numpy() == out.filter(pl.col("level") == "city")["count"].to_numpy()).all()


def check_hierarchy(out: pl.DataFrame, levels: list[str], units: pl.DataFrame, bins: list[datetime], threshold: int) -> None:
    """Non-negative integers, dense over units x bins at every level, parents = sum of children."""
    assert out.schema["count"] == pl.Int64
    assert out["count"].null_count() == 0
    assert int(out["count"].min() or 0) >= 0
    for i, lvl in enumerate(levels):
        mine = out.filter(pl.col("level") == lvl)
        assert mine.height == units[f"{lvl}_id"].n_unique() * len(bins)
        assert mine.select("unit_id", "bin_start").is_unique().all()
        if i + 1 < len(levels):
            sums = mine.group_by("parent_id", "bin_start").agg(s=pl.col("count").sum())
            up = out.filter(pl.col("level") == levels[i + 1]).select(parent_id="unit_id", bin_start="bin_start", c="count")
            joined = up.join(sums, on=["parent_id", "bin_start"], how="left").with_columns(pl.col("s").fill_null(0))
            assert (joined["s"] == joined["c"]).all(), lvl
    if threshold >= 1:
        assert out.filter(pl.col("count").is_between(1, threshold - 1)).height == 0
        assert out.filter(pl.col("thresholded"))["count"].to_list() == [0] * int(out["thresholded"].sum())
    else:
        assert not out["thresholded"].any()


@st.composite
def hierarchies(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, list[datetime]]:
    n_boroughs = draw(st.integers(1, 2))
    rows = []
    for b in range(n_boroughs):
        for n in range(draw(st.integers(1, 3))):
            for t in range(draw(st.integers(1, 4))):
                rows.append({"tract_id": f"t{b}{n}{t}", "neighborhood_id": f"n{b}{n}", "borough_id": f"b{b}", "city_id": "X"})
    units = pl.DataFrame(rows)
    bins = [DAY0 + timedelta(days=i) for i in range(draw(st.integers(1, 3)))]
    cells = [(t, b, draw(st.integers(0, 60))) for t in units["tract_id"] for b in bins]
    counts = pl.DataFrame(
        {"unit_id": [c[0] for c in cells], "bin_start": [c[1] for c in cells], "count": [c[2] for c in cells]},
        schema_overrides={"bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64},
    ).filter(pl.col("count") > 0)
    return units, counts, bins


@settings(max_examples=60, deadline=None)
@given(
    case=hierarchies(),
    eps=st.sampled_from([0.1, 0.5, 1.0, 4.0]),
    threshold=st.sampled_from([None, 0, 1, 5, 11]),
    seed=st.integers(0, 2**32),
)
def test_dp_release_adds_up(case: tuple[pl.DataFrame, pl.DataFrame, list[datetime]], eps: float, threshold: int | None, seed: int) -> None:
    units, counts, bins = case
    policy = Policy("dp", k=11, epsilon=eps, threshold=threshold)
    out = dp_release(counts, units, bins, policy, rng_seed=seed)
    assert out.columns == ["level", "unit_id", "parent_id", "bin_start", "count", "thresholded"]
    check_hierarchy(out, ["tract", "neighborhood", "borough", "city"], units, bins, policy.dp_threshold)
    assert out.equals(dp_release(counts, units, bins, policy, rng_seed=seed))  # seeded runs reproduce


def test_dp_release_with_opendp_adds_up_and_fills_missing_ancestors() -> None:
    units = pl.DataFrame({"tract_id": ["a", "b", "c"], "neighborhood_id": ["n1", "n1", None], "city_id": ["X", "X", "X"]})
    counts = pl.DataFrame({"unit_id": ["a", "c", "zz"], "bin_start": [DAY0] * 3, "count": [40, 7, 99]})
    out = dp_release(counts, units, [DAY0, DAY0 + timedelta(days=1)], Policy("dp", epsilon=1.0, threshold=11))
    assert set(out.filter(pl.col("level") == "neighborhood")["unit_id"]) == {"n1", "~X"}
    check_hierarchy(
        out,
        ["tract", "neighborhood", "city"],
        units.with_columns(pl.col("neighborhood_id").fill_null("~X")),
        [DAY0, DAY0 + timedelta(days=1)],
        11,
    )


# ---- the budget ledger ---------------------------------------------------------------------------------------
LEDGER_UNITS = pl.DataFrame({"tract_id": ["t1", "t2"], "neighborhood_id": ["n", "n"], "city_id": ["X", "X"]})
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def ledger_counts(bins: list[datetime]) -> pl.DataFrame:
    return pl.DataFrame(
        {"unit_id": ["t1"] * len(bins), "bin_start": bins, "count": [25] * len(bins)},
        schema_overrides={"bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64},
    )


def test_ledger_reserves_refuses_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    ledger = BudgetLedger(path, budget=2.5)
    policy = Policy("dp", epsilon=1.0)
    days = [DAY0 + timedelta(days=i) for i in range(4)]
    first = ledger.release("nyc", "*", "day", ledger_counts(days), LEDGER_UNITS, days[:2], policy)
    assert ledger.spent("nyc") == pytest.approx(2.0)
    again = ledger.release("nyc", "*", "day", ledger_counts(days), LEDGER_UNITS, days[:2], policy)
    assert again.equals(first)  # the same noisy values, for free
    assert ledger.spent("nyc") == pytest.approx(2.0)
    more = ledger.release("nyc", "*", "day", ledger_counts(days), LEDGER_UNITS, days[1:3], policy)
    assert ledger.spent("nyc") == pytest.approx(3.0)  # only the new day was charged
    assert more.filter(pl.col("bin_start") == days[1]).equals(first.filter(pl.col("bin_start") == days[1]))
    # a week over days 0..6 costs 1 per instant on top of the days' 1: fits 2.5
    ledger.release("nyc", "*", "week", ledger_counts([DAY0]), LEDGER_UNITS, [DAY0], policy)
    assert ledger.spent("nyc", at=DAY0 + timedelta(hours=5)) == pytest.approx(2.0)
    assert ledger.spent("nyc", at=DAY0 + timedelta(days=5)) == pytest.approx(1.0)
    # another series over days 2..3: day 2 would reach 3 > 2.5, so nothing is recorded, not even day 3
    with pytest.raises(BudgetExceeded, match=r"'nyc'.*2026-11-04.*spent 2.*budget 2\.5") as err:
        ledger.release("nyc", "Noise", "day", ledger_counts(days), LEDGER_UNITS, days[2:4], policy)
    assert (err.value.city, err.value.spent, err.value.budget) == ("nyc", pytest.approx(2.0), 2.5)
    assert ledger.stored("nyc", "Noise", "day").height == 0
    assert ledger.spent("nyc") == pytest.approx(4.0)
    assert ledger.peak("nyc") == pytest.approx(2.0)
    assert ledger.spent("other") == 0.0
    assert ledger.peak("other") == 0.0
    # persisted: a new ledger over the file re-serves the same values
    reopened = BudgetLedger(path, budget=2.5)
    assert reopened.release("nyc", "*", "day", ledger_counts(days), LEDGER_UNITS, days[:2], policy).equals(first)
    assert reopened.spent("nyc") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="dp"):
        reopened.release("nyc", "*", "day", ledger_counts(days), LEDGER_UNITS, days[:2], Policy("suppress"))


@settings(max_examples=30, deadline=None)
@given(
    budget=st.sampled_from([1.0, 2.0, 3.5]),
    ops=st.lists(
        st.tuples(st.sampled_from(["*", "A"]), st.sampled_from(["hour", "day", "week"]), st.integers(0, 20), st.integers(1, 3)),
        min_size=1,
        max_size=6,
    ),
)
def test_ledger_matches_a_per_hour_model(budget: float, ops: list[tuple[str, str, int, int]]) -> None:
    """Against a per-hour model of the loss: a release is accepted iff every new bin fits, a
    refused release changes nothing, stored bins are re-served unchanged and never re-charged."""
    policy = Policy("dp", epsilon=1.0)
    hours = np.zeros(24 * 7 * 7)
    served: dict[tuple[str, str, datetime], pl.DataFrame] = {}
    charged = 0.0
    with tempfile.TemporaryDirectory() as tmp, BudgetLedger(Path(tmp) / "l.duckdb", budget=budget) as ledger:
        for cat, time_bin, offset, n in ops:
            step = STEP[time_bin]
            first = DAY0 + (offset % 4) * step if time_bin == "week" else DAY0 + offset * step
            bins = [first + i * step for i in range(n)]
            new = [b for b in bins if (cat, time_bin, b) not in served]
            span = [(int((b - DAY0) / timedelta(hours=1)), int((b + step - DAY0) / timedelta(hours=1))) for b in new]
            fits = all(hours[a:z].max() + 1.0 <= budget + 1e-9 for a, z in span)
            if fits:
                out = ledger.release("X", cat, time_bin, ledger_counts(bins), LEDGER_UNITS, bins, policy)
                for a, z in span:
                    hours[a:z] += 1.0
                charged += len(new)
                for b in bins:
                    part = out.filter(pl.col("bin_start") == b)
                    assert part.height == 4  # 2 tracts, 1 neighborhood, 1 city
                    if (cat, time_bin, b) in served:
                        assert part.equals(served[(cat, time_bin, b)])
                    served[(cat, time_bin, b)] = part
            else:
                with pytest.raises(BudgetExceeded):
                    ledger.release("X", cat, time_bin, ledger_counts(bins), LEDGER_UNITS, bins, policy)
                assert ledger.stored("X", cat, time_bin, new).height == 0
            assert ledger.spent("X") == pytest.approx(charged)
        for h in (5, 30, 200):
            assert ledger.spent("X", at=DAY0 + timedelta(hours=h)) == pytest.approx(hours[h])
        assert ledger.peak("X") == pytest.approx(hours.max())
        assert ledger.peak("X") <= budget + 1e-9
