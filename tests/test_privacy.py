"""The privacy gate: suppression golden cases, attacks by linear algebra, DP noise and the ledger.

Cubes are built by hand (no events): finest-level counts are aggregated here, independently of
:func:`app.engine.bins.cube_counts`. Derivability is decided by an attacker written here too (a
dense null-space test over *all* the cube's equations), not by the module's bridge audit.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.linalg import null_space

from app.engine.bins import CUBE_SCHEMA
from app.engine.privacy import (
    BudgetExceeded,
    BudgetLedger,
    Policy,
    dp_noise_variance,
    dp_release,
    snap_window,
    suppress_cube,
    window_totals,
)

DAY0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
Key = tuple[str, str, str, datetime]  # level, unit_id, category, bin_start


# ---- building cubes by hand ------------------------------------------------------------------------
def build_cube(
    leaves: dict[tuple[str, str, datetime], int],
    parents: list[dict[str, str]],
    levels: tuple[str, ...],
    unlocated: dict[tuple[str, datetime], int] | None = None,
) -> pl.DataFrame:
    """The sparse release cube of finest-level counts ``(unit, category, bin) -> count``.

    ``parents[i]`` maps units of ``levels[i]`` to their unit at ``levels[i + 1]``; the top level
    has no parent. ``unlocated`` events count at the top (single) unit only."""
    counts: dict[Key, int] = {}
    parent_of: dict[tuple[str, str], str | None] = {}
    for (unit, cat, b), n in leaves.items():
        if n <= 0:
            continue
        chain = [unit]
        for i in range(len(levels) - 1):
            chain.append(parents[i][chain[-1]])
        for i, u in enumerate(chain):
            parent_of[(levels[i], u)] = chain[i + 1] if i + 1 < len(chain) else None
            for c in (cat, "*"):
                counts[(levels[i], u, c, b)] = counts.get((levels[i], u, c, b), 0) + n
    top_units = {u for (lvl, u) in parent_of if lvl == levels[-1]} or set(parents[-1].values() if parents else [])
    for (cat, b), n in (unlocated or {}).items():
        if n <= 0:
            continue
        (top,) = top_units
        parent_of[(levels[-1], top)] = None
        for c in (cat, "*"):
            counts[(levels[-1], top, c, b)] = counts.get((levels[-1], top, c, b), 0) + n
    rows = [
        {"level": lvl, "unit_id": u, "parent_id": parent_of[(lvl, u)], "category": c, "bin_start": b, "count": n}
        for (lvl, u, c, b), n in counts.items()
    ]
    return pl.DataFrame(rows, schema=CUBE_SCHEMA).sort("level", "unit_id", "category", "bin_start")


def keys_of(frame: pl.DataFrame) -> set[Key]:
    return {(r["level"], r["unit_id"], r["category"], r["bin_start"]) for r in frame.iter_rows(named=True)}


def hidden_keys(released: pl.DataFrame) -> set[Key]:
    return keys_of(released.filter(pl.col("suppressed")))


# ---- the attacker ------------------------------------------------------------------------------------
def derivable(cube: pl.DataFrame, levels: tuple[str, ...], known: set[Key], sums: Iterable[list[Key]] = ()) -> set[Key]:
    """Cells of ``cube`` an attacker determines exactly from the cells in ``known`` (their values),
    the absent cells (zeros), the structure (every parent = sum of its children + an unknown
    non-negative rest when the children do not add up; every "*" = sum of its categories) and the
    published sums ``sums`` (lists of cells). Dense null-space test: x_i is determined iff every
    null vector of the unknowns' coefficient matrix vanishes at i."""
    value = {(r["level"], r["unit_id"], r["category"], r["bin_start"]): r["count"] for r in cube.iter_rows(named=True)}
    parent_of = {(r["level"], r["unit_id"]): r["parent_id"] for r in cube.iter_rows(named=True)}
    unknown = [k for k in value if k not in known]
    if not unknown:
        return set()
    equations: list[dict[object, float]] = []
    for (lvl, u, c, b), total in value.items():
        i = levels.index(lvl)
        if i > 0:
            kids = [(levels[i - 1], v, c, b) for (ll, v), p in parent_of.items() if ll == levels[i - 1] and p == u]
            kids = [kid for kid in kids if kid in value]
            eq: dict[object, float] = {(lvl, u, c, b): 1.0, **dict.fromkeys(kids, -1.0)}
            if total > sum(value[kid] for kid in kids):
                eq[("rest", lvl, u, c, b)] = -1.0  # events in no child: an unknown never published
            equations.append(eq)
        if c == "*":
            cats = [kk for kk in value if kk[0] == lvl and kk[1] == u and kk[3] == b and kk[2] != "*"]
            equations.append({(lvl, u, c, b): 1.0, **dict.fromkeys(cats, -1.0)})
    equations.extend(dict.fromkeys((kk for kk in cells if kk in value), 1.0) for cells in sums)
    rests = sorted({term for eq in equations for term in eq if isinstance(term, tuple) and term[0] == "rest"}, key=str)
    columns: dict[object, int] = {k: j for j, k in enumerate([*unknown, *rests])}
    matrix = np.zeros((len(equations), len(columns)))
    for row, eq in enumerate(equations):
        for term, coef in eq.items():
            if term in columns:
                matrix[row, columns[term]] += coef
    basis = null_space(matrix) if matrix.shape[0] else np.eye(matrix.shape[1])
    determined = np.abs(basis[: len(unknown)]).max(axis=1, initial=0.0) < 1e-8
    return {k for k, d in zip(unknown, determined, strict=True) if d}


# ---- snap_window ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("time_bin", "since", "until", "lo", "hi"),
    [
        ("hour", datetime(2026, 11, 4, 10, 30, tzinfo=UTC), datetime(2026, 11, 4, 12, 0, tzinfo=UTC), (4, 10), (4, 12)),
        ("day", datetime(2026, 11, 4, 10, 30, tzinfo=UTC), datetime(2026, 11, 6, 0, 1, tzinfo=UTC), (4, 0), (7, 0)),
        ("week", datetime(2026, 11, 4, 10, 30, tzinfo=UTC), datetime(2026, 11, 9, 0, 0, tzinfo=UTC), (2, 0), (9, 0)),
        ("week", datetime(2026, 11, 9, 0, 0, tzinfo=UTC), datetime(2026, 11, 9, 0, 0, 1, tzinfo=UTC), (9, 0), (16, 0)),
    ],
)
def test_snap_window_golden(time_bin: str, since: datetime, until: datetime, lo: tuple[int, int], hi: tuple[int, int]) -> None:
    assert snap_window(since, until, time_bin) == (
        datetime(2026, 11, lo[0], lo[1], tzinfo=UTC),
        datetime(2026, 11, hi[0], hi[1], tzinfo=UTC),
    )


@settings(max_examples=100, deadline=None)
@given(
    a=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    time_bin=st.sampled_from(["hour", "day", "week"]),
)
def test_snap_window_matches_the_polars_grid(a: datetime, span: timedelta, time_bin: str) -> None:
    lo, hi = snap_window(a, a + span, time_bin)
    every = {"hour": "1h", "day": "1d", "week": "1w"}[time_bin]
    grid = pl.Series([a, a + span], dtype=pl.Datetime("us", "UTC")).dt.truncate(every).to_list()
    assert lo == grid[0]
    assert hi == (
        grid[1]
        if grid[1] == a + span
        else grid[1] + {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[time_bin]
    )
    assert lo <= a
    assert hi >= a + span


def test_snap_window_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone"):
        snap_window(datetime(2026, 1, 1), datetime(2026, 1, 2), "day")


# ---- window totals -------------------------------------------------------------------------------------
def test_window_totals_hide_a_total_with_a_hidden_part() -> None:
    cells = pl.DataFrame(
        {
            "unit_id": ["a", "a", "b", "b"],
            "bin_start": [DAY0, DAY0 + timedelta(days=1)] * 2,
            "count": [20, None, 15, 30],
            "suppressed": [False, True, False, False],
        }
    )
    out = window_totals(cells, ["unit_id"])
    assert out.to_dicts() == [{"unit_id": "a", "count": None, "suppressed": True}, {"unit_id": "b", "count": 45, "suppressed": False}]


# ---- suppression: golden cases -------------------------------------------------------------------------
TWO_LEVELS = ("tract", "neighborhood")


def test_suppress_golden_primary_and_complementary() -> None:
    """4 tracts in 2 neighborhoods, categories A and B, k = 11. Primary: t1B=3, t2B=8, t4A=6.
    Round 1 hides t3A (only hidden A of n2), t1A, t2A, t4B (only hidden category of their tract);
    round 2 hides t3B (only hidden of t3 and of n2's B). Each neighborhood's tract x category
    block is then a 2x2 table with known margins: nothing derivable, tract totals stay visible."""
    leaves = {
        ("t1", "A", DAY0): 12,
        ("t1", "B", DAY0): 3,
        ("t2", "A", DAY0): 20,
        ("t2", "B", DAY0): 8,
        ("t3", "A", DAY0): 30,
        ("t3", "B", DAY0): 25,
        ("t4", "A", DAY0): 6,
        ("t4", "B", DAY0): 40,
    }
    cube = build_cube(leaves, [{"t1": "n1", "t2": "n1", "t3": "n2", "t4": "n2"}], TWO_LEVELS)
    out = suppress_cube(cube, 11, levels=TWO_LEVELS)
    expected = {("tract", t, c, DAY0) for t in ("t1", "t2", "t3", "t4") for c in ("A", "B")}
    assert hidden_keys(out) == expected
    assert out.filter(pl.col("suppressed"))["count"].null_count() == len(expected)
    assert out.filter(~pl.col("suppressed"))["count"].null_count() == 0
    assert out.select("level", "unit_id", "parent_id", "category", "bin_start").equals(cube.drop("count"))
    assert derivable(cube, TWO_LEVELS, keys_of(out.filter(~pl.col("suppressed")))) == set()
    # primary suppression alone would be solved at once
    primary = keys_of(cube.filter(pl.col("count") >= 11))
    assert ("tract", "t1", "B", DAY0) in derivable(cube, TWO_LEVELS, primary)


BRIDGE_LEAVES = {
    ("t1", "A", DAY0): 5,
    ("t1", "B", DAY0): 5,
    ("t1", "C", DAY0): 5,
    ("t2", "A", DAY0): 6,
    ("t2", "B", DAY0): 6,
    ("t3", "C", DAY0): 6,
    ("t3", "D", DAY0): 6,
    ("t4", "C", DAY0): 7,
    ("t4", "D", DAY0): 7,
    **{("t5", c, DAY0): 20 for c in "ABCD"},
}


def test_suppress_audit_catches_a_bridge() -> None:
    """Two cycles of hidden cells ({t1,t2} x {A,B} and {t3,t4} x {C,D}) joined by t1C: every
    group has >= 2 hidden cells summing to >= k, yet t1C = t1* + t2* - (nA - t5A) - (nB - t5B).
    The audit sees it and closes a cycle through t1C at the least cost: via the tract totals
    t2* (12) and t3* (12), i.e. t1C - t1A - t2A - t2* - t3* - t3C (t4* = 14, t1* = 15, t5 = 20)."""
    cube = build_cube(BRIDGE_LEAVES, [dict.fromkeys(("t1", "t2", "t3", "t4", "t5"), "n")], TWO_LEVELS)
    primary = {("tract", t, c, DAY0) for (t, c, _), n in BRIDGE_LEAVES.items() if n < 11}

    rule_only = suppress_cube(cube, 11, levels=TWO_LEVELS, audit=False)
    assert hidden_keys(rule_only) == primary  # the group rule is satisfied by the primaries alone
    assert derivable(cube, TWO_LEVELS, keys_of(rule_only.filter(~pl.col("suppressed")))) == {("tract", "t1", "C", DAY0)}

    audited = suppress_cube(cube, 11, levels=TWO_LEVELS)
    extra = {("tract", "t2", "*", DAY0), ("tract", "t3", "*", DAY0)}
    assert hidden_keys(audited) == primary | extra
    assert derivable(cube, TWO_LEVELS, keys_of(audited.filter(~pl.col("suppressed")))) == set()


def test_suppress_unlocated_rest_is_an_unknown() -> None:
    """Events counted at the top only (unlocated) make the top exceed its children. Category B has
    unlocated events only (XB = 4): XB is primary, XA its complement in X's category group, and
    the two unknown rests (A: 3, B: 4) keep both underivable."""
    levels = ("tract", "city")
    leaves = {("t1", "A", DAY0): 20, ("t2", "A", DAY0): 30}
    cube = build_cube(leaves, [{"t1": "X", "t2": "X"}], levels, unlocated={("A", DAY0): 3, ("B", DAY0): 4})
    out = suppress_cube(cube, 11, levels=levels)
    assert hidden_keys(out) == {("city", "X", "A", DAY0), ("city", "X", "B", DAY0)}
    assert derivable(cube, levels, keys_of(out.filter(~pl.col("suppressed")))) == set()


def test_suppress_rejects_inconsistent_cubes() -> None:
    cube = build_cube({("t1", "A", DAY0): 5}, [{"t1": "n"}], TWO_LEVELS)
    with pytest.raises(ValueError, match="inconsistent"):
        suppress_cube(cube.filter(pl.col("level") == "tract"), 11, levels=TWO_LEVELS)
    with pytest.raises(ValueError, match="top-level"):
        suppress_cube(cube.filter(pl.col("level") == "tract"), 11)
    with pytest.raises(ValueError, match="inconsistent"):
        suppress_cube(cube.with_columns(count=pl.when(pl.col("level") == "neighborhood").then(1).otherwise(pl.col("count"))), 11)


def test_suppress_empty_cube() -> None:
    cube = build_cube({}, [{}], TWO_LEVELS)
    out = suppress_cube(cube, 11)
    assert out.height == 0
    assert "suppressed" in out.columns


# ---- suppression: properties -----------------------------------------------------------------------------
THREE_LEVELS = ("tract", "neighborhood", "city")


@st.composite
def cubes(draw: st.DrawFn) -> tuple[pl.DataFrame, int]:
    """A random 3-level cube: 1-3 neighborhoods of 1-3 tracts, 1-3 categories, 1-4 day bins, many
    small counts, sometimes unlocated events at the city."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    tract_parent = {f"t{j}{i}": f"n{j}" for j, size in enumerate(sizes) for i in range(size)}
    nb_parent = {f"n{j}": "X" for j in range(len(sizes))}
    cats = ["A", "B", "C"][: draw(st.integers(1, 3))]
    bins = [DAY0 + timedelta(days=i) for i in range(draw(st.integers(1, 4)))]
    small = st.one_of(st.just(0), st.integers(1, 12), st.integers(13, 40))
    leaves = {(t, c, b): draw(small) for t in tract_parent for c in cats for b in bins}
    unlocated = {(c, b): draw(st.integers(0, 4)) for c in cats for b in bins} if draw(st.booleans()) else None
    k = draw(st.sampled_from([3, 5, 11]))
    return build_cube(leaves, [tract_parent, nb_parent], THREE_LEVELS, unlocated), k


def _window(cube: pl.DataFrame, lo: datetime, hi: datetime) -> pl.DataFrame:
    return cube.filter((pl.col("bin_start") >= lo) & (pl.col("bin_start") < hi))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cubes(), data=st.data())
def test_suppress_properties(case: tuple[pl.DataFrame, int], data: st.DataObject) -> None:
    """No released count in 1..k-1; per-bin results independent of the window; and an attacker
    holding two overlapping queries (window x unit subset, each with its cells, window totals and
    category-subset totals) derives no withheld cell."""
    cube, k = case
    bins = sorted(set(cube["bin_start"].to_list()))
    if not bins:
        return
    full = suppress_cube(cube, k)
    released = full.filter(~pl.col("suppressed"))
    assert released.filter(pl.col("count").is_between(1, k - 1)).height == 0
    assert derivable(cube, THREE_LEVELS, keys_of(released)) == set()

    units = sorted(set(cube["unit_id"].to_list()))
    cats = sorted(set(cube["category"].to_list()) - {"*"})
    known: set[Key] = set()
    sums: list[list[Key]] = []
    withheld: set[Key] = set()
    for _ in range(2):
        i = data.draw(st.integers(0, len(bins) - 1))
        j = data.draw(st.integers(i + 1, len(bins)))
        lo, hi = bins[i], bins[j - 1] + timedelta(days=1)
        subset = data.draw(st.sets(st.sampled_from(units), min_size=1))
        window = suppress_cube(_window(cube, lo, hi), k)
        # per-bin results do not depend on the window
        assert window.sort("level", "unit_id", "category", "bin_start").equals(
            _window(full, lo, hi).sort("level", "unit_id", "category", "bin_start")
        )
        query = window.filter(pl.col("unit_id").is_in(subset))
        known |= keys_of(query.filter(~pl.col("suppressed")))
        withheld |= hidden_keys(query)
        totals = window_totals(query, ["level", "unit_id", "category"]).filter(~pl.col("suppressed"))
        for r in totals.iter_rows(named=True):
            sums.append([(r["level"], r["unit_id"], r["category"], b) for b in bins if lo <= b < hi])
            assert r["count"] == 0 or r["count"] >= k
        chosen = data.draw(st.sets(st.sampled_from(cats), min_size=1)) if cats else set()
        picked = query.filter(pl.col("category").is_in(sorted(chosen)))
        for r in window_totals(picked, ["level", "unit_id", "bin_start"]).filter(~pl.col("suppressed")).iter_rows(named=True):
            sums.append([(r["level"], r["unit_id"], c, r["bin_start"]) for c in chosen])
    assert derivable(cube, THREE_LEVELS, known, sums) & withheld == set()


def test_suppress_is_fast_and_per_bin_on_a_city_sized_cube() -> None:
    """A synthetic city (2,000 tracts, 200 neighborhoods, 5 boroughs, 30 categories, 7 day bins,
    mostly small counts): windows agree per bin, no count 1..k-1 is released."""
    rng = np.random.default_rng(5)
    n_tracts, n_cats, n_bins = 2000, 30, 7
    tract = rng.integers(0, n_tracts, 120_000)
    cat = np.minimum(rng.geometric(0.15, tract.size) - 1, n_cats - 1)
    day = rng.integers(0, n_bins, tract.size)
    frame = pl.DataFrame({"t": tract, "c": cat, "d": day}).group_by("t", "c", "d").len()
    leaves = {(f"t{t:04d}", f"c{c:02d}", DAY0 + timedelta(days=int(d))): int(n) for t, c, d, n in frame.iter_rows()}
    tract_parent = {f"t{t:04d}": f"n{t // 10:03d}" for t in range(n_tracts)}
    nb_parent = {f"n{n:03d}": f"b{n // 40}" for n in range(n_tracts // 10)}
    borough_parent = {f"b{b}": "X" for b in range(5)}
    levels = ("tract", "neighborhood", "borough", "city")
    cube = build_cube(leaves, [tract_parent, nb_parent, borough_parent], levels)
    full = suppress_cube(cube, 11)
    assert full.filter(~pl.col("suppressed") & pl.col("count").is_between(1, 10)).height == 0
    lo, hi = DAY0 + timedelta(days=2), DAY0 + timedelta(days=5)
    part = suppress_cube(_window(cube, lo, hi), 11)
    assert part.sort("level", "unit_id", "category", "bin_start").equals(
        _window(full, lo, hi).sort("level", "unit_id", "category", "bin_start")
    )


# ---- the simple gate ---------------------------------------------------------------------------------------
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
