"""The published scores are trustworthy: a cell reads the same numbers in every window, history is
reported honestly (no score without 7 days, no zeros before the data begin), incomplete bins are
neither published nor scored, days and weeks are the city's own, z always agrees with p, and q is
Benjamini-Hochberg over the fixed family of the cell's level and bin.

Most checks read the tiny demo snapshot (``tiny_snap``: NYC, 35 days, k = 11); the history and
local-time checks publish small synthetic cities (:mod:`tests.release_fixtures`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from app.data.snapshot import Snapshot
from app.engine.grains import DEFAULT_GRAINS, GRAINS, bin_range, floor_bin, grain_rank, next_bin, slot_expr
from app.engine.lens import ALL, Lens
from app.engine.privacy import Policy
from app.engine.publish import Published, publish_city
from app.engine.scoring import BASELINE_DAYS, MIN_HISTORY_DAYS, ScoreSpec, score_layer
from tests.release_fixtures import CitySpec, city_events, city_units, floor_local

POLICY = Policy("suppress", 11)
KEY = ["unit_id", "category", "bin_start"]
Z_CAP = 37.5
LENS_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate],
)


def _meta(snap: Snapshot) -> dict:
    return snap.release_meta("nyc")


def _cutoff(snap: Snapshot, level: str, grain: str) -> datetime:
    meta = _meta(snap)
    return floor_bin(meta["complete_until"][level], grain, meta["timezone"])


def _lens(snap: Snapshot, **kw: object) -> Lens:
    return Lens(snapshot=snap, city="nyc", **kw)


# ---- 4. window independence ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def listed_cells(tiny_snap: Snapshot) -> pl.DataFrame:
    """Published anomalies at the default thresholds, a few per (level, grain), as the cells
    whose numbers every window must agree on."""
    sc = tiny_snap.scores("nyc").filter(pl.col("scored") & (pl.col("q") <= 0.05) & (pl.col("zscore") >= 3))
    picked = sc.sort("level", "grain", "zscore", "unit_id", "category", "bin_start", descending=[False, False, True, False, False, False])
    picked = picked.group_by("level", "grain", maintain_order=True).head(4)
    assert picked.height >= 8, picked.group_by("level", "grain").len()
    return picked


@LENS_SETTINGS
@given(data=st.data())
def test_a_cell_reads_the_same_in_every_window(tiny_snap: Snapshot, listed_cells: pl.DataFrame, data: st.DataObject) -> None:
    """For random windows that contain a published anomaly (start and end anywhere in the history,
    any shown bin that shows the cell's grain, its category or All), the lens lists it with the
    same observed, expected, variance, z, p and q: the numbers the snapshot published for it."""
    i = data.draw(st.integers(0, listed_cells.height - 1), label="cell")
    cell = listed_cells.row(i, named=True)
    meta = _meta(tiny_snap)
    lo, hi = meta["history_start"], meta["horizon"]
    b = cell["bin_start"]
    before = data.draw(st.integers(0, int((b - lo).total_seconds() // 3600)), label="hours before")
    after = data.draw(st.integers(1, max(1, int((hi - b).total_seconds() // 3600) + 24)), label="hours after")
    level_grain = DEFAULT_GRAINS[cell["level"]]
    bins = [g for g in GRAINS if grain_rank(g) <= grain_rank(cell["grain"])] if cell["grain"] == level_grain else [cell["grain"]]
    time_bin = data.draw(st.sampled_from(bins), label="time_bin")
    category = data.draw(st.sampled_from([ALL] if cell["category"] == "*" else [ALL, cell["category"]]), label="category")
    lens = _lens(
        tiny_snap,
        level=cell["level"],
        time_bin=time_bin,
        category=category,
        since=b - timedelta(hours=before),
        until=b + timedelta(hours=after),
    )
    assert lens.effective_bin() == cell["grain"]
    found, _ = lens.anomalies(everywhere=True)
    row = found.filter((pl.col("unit_id") == cell["unit_id"]) & (pl.col("category") == cell["category"]) & (pl.col("bin_start") == b))
    assert row.height == 1, f"{cell} not listed in window {lens.window()} ({time_bin}, {category})"
    got = row.row(0, named=True)
    assert got["count"] == cell["observed"]
    assert got["expected"] == round(cell["expected"], 2)
    assert got["variance"] == round(cell["variance"], 2)
    assert got["zscore"] == round(cell["zscore"], 2)
    assert got["p"] == pytest.approx(cell["p"], rel=1e-3)
    assert got["q"] == pytest.approx(cell["q"], rel=1e-3)


def _window_strategy(lo: datetime, hi: datetime) -> st.SearchStrategy[tuple[datetime, datetime]]:
    span = int((hi - lo).total_seconds() // 3600)
    return st.tuples(st.integers(0, span - 1), st.integers(1, 24 * 21)).map(
        lambda t: (lo + timedelta(hours=t[0]), lo + timedelta(hours=t[0] + t[1]))
    )


@LENS_SETTINGS
@given(data=st.data())
def test_overlapping_windows_agree_on_every_shared_cell(tiny_snap: Snapshot, data: st.DataObject) -> None:
    """Two overlapping windows (same level, shown bin, category, thresholds) list exactly the same
    anomalies with the same numbers in the bins they share, and their sparkbands agree cell by
    cell: the window_invariance share is 1.0."""
    meta = _meta(tiny_snap)
    lo, hi = meta["history_start"], meta["horizon"]
    level = data.draw(st.sampled_from(["tract", "neighborhood", "borough", "city"]), label="level")
    time_bin = data.draw(st.sampled_from(list(GRAINS)), label="time_bin")
    cats = sorted(tiny_snap.events("nyc")["category"].value_counts(sort=True)["category"].head(3).to_list())
    category = data.draw(st.sampled_from([ALL, *cats]), label="category")
    w1 = data.draw(_window_strategy(lo, hi), label="window 1")
    shift = data.draw(st.integers(-(w1[1] - w1[0]) // timedelta(hours=1) + 1, (w1[1] - w1[0]) // timedelta(hours=1) - 1), label="shift h")
    grow = data.draw(st.integers(-12, 24 * 7), label="grow h")
    w2 = (w1[0] + timedelta(hours=shift), max(w1[0] + timedelta(hours=shift + 1), w1[1] + timedelta(hours=shift + grow)))
    views = []
    for since, until in (w1, w2):
        lens = _lens(tiny_snap, level=level, time_bin=time_bin, category=category, since=since, until=until, q=1.0, min_z=1.0)
        found, _ = lens.anomalies(everywhere=True)
        views.append((lens.grid_window(), found, lens.bands()))
    (g1, f1, b1), (g2, f2, b2) = views
    shared_lo, shared_hi = max(g1[0], g2[0]), min(g1[1], g2[1])
    if shared_lo >= shared_hi:  # windows snapped to different whole bins may not overlap
        event("no shared bin")
        return
    cols = ["unit_id", "category", "bin_start", "count", "expected", "variance", "zscore", "p", "q"]

    def shared(frame: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
        if frame.height == 0:
            return pl.DataFrame()
        return frame.filter(pl.col("bin_start").is_between(shared_lo, shared_hi, closed="left")).select(cols).sort(cols[:3])

    a1, a2 = shared(f1, cols), shared(f2, cols)
    event(f"shared anomalies: {'some' if a1.height else 'none'}")
    assert a1.height == a2.height, f"anomalies differ in the shared bins:\n{a1}\n{a2}"
    assert a1.height == 0 or a1.equals(a2), f"anomalies differ in the shared bins:\n{a1}\n{a2}"
    band_cols = ["unit_id", "bin_start", "count", "suppressed", "partial", "expected", "lo", "hi", "anomalous"]
    s1, s2 = shared(b1, band_cols), shared(b2, band_cols)
    assert s1.height == s2.height > 0
    same = s1.join(s2, on=["unit_id", "bin_start"], suffix="_2", nulls_equal=True)
    agree = pl.all_horizontal(pl.col(c).eq_missing(pl.col(f"{c}_2")) for c in band_cols[2:])
    share = same.select(agree.mean()).item()
    assert share == 1.0, f"window_invariance share {share}:\n{same.filter(~agree).head()}"


# ---- 5. history honesty ------------------------------------------------------------------------------------
def test_history_is_reported_honestly(tiny_snap: Snapshot) -> None:
    """Cells with under 7 days of history are not scored and say so; cells with 7..27 days say
    "baseline of N days"; baseline_days is min(history, 28)."""
    sc = tiny_snap.scores("nyc")
    start = _meta(tiny_snap)["history_start"]
    sc = sc.with_columns(history=(pl.col("bin_start") - pl.lit(start)).dt.total_seconds() / 86_400)
    young = sc.filter(pl.col("history") < MIN_HISTORY_DAYS)
    assert young.height > 0
    assert not young["scored"].any()
    for col in ("p", "zscore", "q"):
        assert young[col].null_count() == young.height, col
    released_young = young.filter(pl.col("observed").is_not_null())
    assert released_young.height > 0
    assert (released_young["reason"] == f"under {MIN_HISTORY_DAYS} days of history: not scored").all()
    mid = sc.filter(pl.col("scored") & (pl.col("history") < BASELINE_DAYS))
    assert mid.height > 0
    expect = pl.format("baseline of {} days", pl.col("history").floor().cast(pl.Int64))
    assert mid.filter(pl.col("reason") != expect).height == 0
    old = sc.filter(pl.col("scored") & (pl.col("history") >= BASELINE_DAYS))
    assert old["reason"].null_count() == old.height
    assert sc.filter((pl.col("baseline_days") - pl.min_horizontal("history", pl.lit(float(BASELINE_DAYS)))).abs() > 0.006).height == 0


def _history_pair(offset_hours: int) -> tuple[CitySpec, Published, Published]:
    """One stationary synthetic city published from its 4th week on (data starting ``offset_hours``
    into a local Monday) and with its three earlier weeks too."""
    spec = CitySpec(seed=21, events=96_000, weeks=8, start=(2026, 3, 16))
    units = city_units(spec)
    events = city_events(spec, units)
    cut = spec.first_monday + timedelta(weeks=3, hours=offset_hours)
    short = publish_city(events.filter(pl.col("ts") >= cut), units, spec.tz, POLICY)
    long = publish_city(events, units, spec.tz, POLICY)
    return spec, short, long


@pytest.mark.parametrize(
    "offset_hours",
    [
        0,
        pytest.param(
            15,
            marks=pytest.mark.xfail(
                strict=True,
                reason="open: data starting mid-day now keep their expected values (the ratios pass), but the short publish "
                "still lists far more anomalies in its first weeks than the long one (419 vs 13 when measured)",
            ),
        ),
    ],
    ids=["data-from-midnight", "data-from-15h"],
)
def test_a_short_history_is_not_taken_for_zeros(offset_hours: int) -> None:
    """Published from the first day of data, a stationary city's cells are expected as if the
    earlier days were known: in the first 28 days their expected values match those of a publish
    with three more weeks of history (median ratio 0.9..1.1, overall and in the hour slots the
    first day is missing when the data begin mid-day), and the short publish lists at most a few
    more anomalies than the long one over the same bins (missing days or hours are not zeros)."""
    spec, short, long = _history_pair(offset_hours)
    keys = ["level", "grain", *KEY]
    both = short.scores.filter("scored").join(long.scores.filter("scored"), on=keys, suffix="_long")
    both = both.with_columns(
        days=(pl.col("bin_start") - pl.lit(short.history_start)).dt.total_seconds() / 86_400,
        ratio=pl.col("expected") / pl.col("expected_long"),
        local=pl.col("bin_start").dt.convert_time_zone(spec.tz),
    ).filter(pl.col("days") < BASELINE_DAYS)
    by = both.group_by("level", "grain").agg(pl.len(), median=pl.col("ratio").median()).sort("level", "grain")
    print(by)
    assert by.filter(~pl.col("median").is_between(0.9, 1.1)).height == 0, by
    if offset_hours:
        missing = both.filter(
            (pl.col("grain") == "hour") & (pl.col("local").dt.weekday() == 1) & (pl.col("local").dt.hour() < offset_hours)
        )
        ratio = missing.group_by("level").agg(pl.len(), median=pl.col("ratio").median())
        print("hour slots missing on the first day:", ratio)
        assert ratio.height > 0
        assert ratio.filter(pl.col("median") < 0.9).height == 0, f"the first day's missing hours are taken for zeros:\n{ratio}"

    def listed(p: Published) -> pl.DataFrame:
        out = p.scores.filter(pl.col("scored") & (pl.col("q") <= 0.05) & (pl.col("zscore") >= 3))
        return out.filter(pl.col("bin_start") >= short.history_start)

    n_short, n_long = listed(short).height, listed(long).height
    print(f"anomalies from the first day: short history {n_short}, long history {n_long}")
    assert n_short <= 3 * n_long + 10, f"a short history lists {n_short} anomalies where a long one lists {n_long}"


# ---- 6. partial bins ----------------------------------------------------------------------------------------
def test_incomplete_bins_are_neither_published_nor_scored(tiny_snap: Snapshot) -> None:
    """Cells of blocks still filling have no count, are not scored (reason says so), the lens'
    bands mark them partial, and no anomaly is listed for them even at the loosest thresholds."""
    release = tiny_snap.release("nyc")
    assert release.filter(pl.col("partial")).height > 0
    assert release.filter(pl.col("partial"))["count"].null_count() == release.filter(pl.col("partial")).height
    sc = tiny_snap.scores("nyc")
    meta = _meta(tiny_snap)
    late_rows = 0
    for (level, grain), rows in sc.group_by("level", "grain"):
        late = rows.filter(pl.col("bin_start") >= _cutoff(tiny_snap, level, grain))
        late_rows += late.height
        assert not late["scored"].any(), (level, grain)
        assert late["observed"].null_count() == late.height, (level, grain)
        assert (late["reason"] == "incomplete bin: not published yet").all(), (level, grain, late["reason"].unique().to_list())
    assert late_rows > 0
    until = next_bin(floor_bin(meta["horizon"], "day", meta["timezone"]), "day", meta["timezone"])
    for level in ("tract", "neighborhood", "borough", "city"):
        for time_bin in GRAINS:
            lens = _lens(tiny_snap, level=level, time_bin=time_bin, since=until - timedelta(days=10), until=until, q=1.0, min_z=0.0)
            cutoff = floor_bin(meta["complete_until"][level], lens.effective_bin(), meta["timezone"])
            bands = lens.bands()
            late = bands.filter(pl.col("bin_start") >= cutoff)
            assert late.height > 0, (level, time_bin)
            assert late["partial"].all(), (level, time_bin)
            assert late["count"].null_count() == late.height
            assert not bands.filter(pl.col("bin_start") < cutoff)["partial"].any(), (level, time_bin)
            found, _ = lens.anomalies(everywhere=True)
            if found.height:
                assert found.filter(pl.col("bin_start") >= cutoff).height == 0, (level, time_bin)


# ---- 7. local time ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tz", "spring", "fall"),
    [("America/Chicago", (2026, 3, 8), (2026, 11, 1)), ("America/New_York", (2026, 3, 8), (2026, 11, 1))],
)
def test_bins_are_local_days_and_weeks(tz: str, spring: tuple[int, int, int], fall: tuple[int, int, int]) -> None:
    """Days start at local midnight (so at 05:00/06:00 UTC in Chicago, 04:00/05:00 in New York),
    weeks on local Monday, a DST day has 23 or 25 hours, slots are local weekdays and hours."""
    zone = ZoneInfo(tz)
    rng = np.random.default_rng(5)
    base = datetime(2026, 2, 20, tzinfo=UTC)
    instants = [base + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 280, 400)]
    for ts in instants:
        for grain in GRAINS:
            assert floor_bin(ts, grain, tz) == floor_local(ts, grain, tz), (ts, grain)
    for day, hours in ((spring, 23), (fall, 25)):
        start = datetime(*day, tzinfo=zone).astimezone(UTC)
        assert floor_bin(start + timedelta(hours=1), "day", tz) == start
        assert (next_bin(start, "day", tz) - start) == timedelta(hours=hours)
        assert len(bin_range(start, next_bin(start, "day", tz), "hour", tz)) == hours
    days = bin_range(datetime(2026, 3, 1, 12, tzinfo=UTC), datetime(2026, 3, 16, tzinfo=UTC), "day", tz)
    offsets = {d.astimezone(zone).utcoffset() for d in days}
    assert {d.astimezone(zone).time().isoformat() for d in days} == {"00:00:00"}
    assert len(offsets) == 2  # standard and daylight time, both at local midnight
    weeks = bin_range(datetime(2026, 2, 20, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC), "week", tz)
    assert all(w.astimezone(zone).weekday() == 0 and w.astimezone(zone).hour == 0 for w in weeks)
    frame = pl.DataFrame({"bin_start": instants}, schema={"bin_start": pl.Datetime("us", "UTC")})
    slots = frame.with_columns(day=slot_expr("day", tz), hour=slot_expr("hour", tz))
    for ts, day_slot, hour_slot in slots.rows():
        local = ts.astimezone(zone)
        assert day_slot == local.weekday()
        assert hour_slot == local.weekday() * 24 + local.hour


@pytest.mark.parametrize("tz", ["America/Chicago", "America/New_York"])
def test_published_bins_and_hour_profiles_are_local(tz: str) -> None:
    """Published end to end across a DST change: neighborhood days start at local midnight, tract
    weeks on local Monday, the spring-forward day holds 23 hours of events; and a city whose
    events come at 09:00 local every day is expected busiest at 09:00 local after the change
    too (an hour-of-week profile in UTC would have moved the peak by an hour)."""
    zone = ZoneInfo(tz)
    units = city_units(CitySpec(tracts=((2, 2), (2, 2))))
    tracts = units.filter(pl.col("level") == "tract")["unit_id"].to_list()
    rng = np.random.default_rng(8)
    rows = []
    first = datetime(2026, 2, 9, tzinfo=zone)
    for d in range(42):
        day = first + timedelta(days=d)
        for h in range(24):
            n = 60 if h == 9 else 4
            at = datetime(day.year, day.month, day.day, h, tzinfo=zone).astimezone(UTC)
            for _ in range(int(rng.poisson(n))):
                rows.append((str(rng.choice(tracts)), f"C{int(rng.integers(0, 2))}", at + timedelta(seconds=int(rng.integers(0, 3600)))))
    events = pl.DataFrame(rows, schema={"tract_id": pl.String, "category": pl.String, "ts": pl.Datetime("us", "UTC")}, orient="row")
    pub = publish_city(events, units, tz, Policy("none"))
    rel = pub.release
    days = rel.filter(pl.col("level") == "neighborhood")["bin_start"].unique().to_list()
    assert days
    assert all(d.astimezone(zone).hour == 0 and d.astimezone(zone).minute == 0 for d in days)
    weeks = rel.filter(pl.col("level") == "tract")["bin_start"].unique().to_list()
    assert weeks
    assert all(w.astimezone(zone).weekday() == 0 and w.astimezone(zone).hour == 0 for w in weeks)
    spring = datetime(2026, 3, 8, tzinfo=zone).astimezone(UTC)
    on_spring = events.filter(pl.col("ts").is_between(spring, spring + timedelta(hours=23), closed="left")).height
    cell = rel.filter(
        (pl.col("level") == "city")
        & (pl.col("category") == "*")
        & pl.col("bin_start").is_between(spring, spring + timedelta(hours=23), closed="left")
    )
    assert cell["count"].sum() == on_spring
    sc = pub.scores.filter((pl.col("level") == "city") & (pl.col("grain") == "hour") & (pl.col("category") == "*") & pl.col("scored"))
    after = sc.with_columns(local=pl.col("bin_start").dt.convert_time_zone(tz)).filter(
        pl.col("bin_start").is_between(datetime(2026, 3, 9, 12, tzinfo=UTC), datetime(2026, 3, 16, tzinfo=UTC))
    )
    by_hour = after.group_by(hour=pl.col("local").dt.hour()).agg(pl.col("expected").mean()).sort("hour")
    peak = by_hour.sort("expected", descending=True)["hour"][0]
    at = dict(by_hour.rows())
    assert peak == 9, by_hour
    assert at[9] > 3 * max(at[8], at[10]), by_hour


# ---- 8. honest z ------------------------------------------------------------------------------------------------
def test_z_is_the_normal_quantile_of_p(tiny_snap: Snapshot) -> None:
    """Every scored cell: z = Phi^-1(1 - p) (capped at +-37.5 where p under/overflows), z_low =
    -Phi^-1(1 - p_low); z never increases as p grows."""
    sc = tiny_snap.scores("nyc").filter("scored")
    assert sc.height > 1000
    p = sc["p"].to_numpy()
    z = sc["zscore"].to_numpy()
    want = np.clip(stats.norm.isf(np.clip(p, 1e-300, 1.0)), -Z_CAP, Z_CAP)
    assert np.allclose(z, want, rtol=1e-9, atol=1e-9)
    want_low = -np.clip(stats.norm.isf(np.clip(sc["p_low"].to_numpy(), 1e-300, 1.0)), -Z_CAP, Z_CAP)
    assert np.allclose(sc["z_low"].to_numpy(), want_low, rtol=1e-9, atol=1e-9)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(z[order]) <= 1e-9)
    assert sc.filter(pl.col("p").is_null() | pl.col("zscore").is_null()).height == 0


def test_three_events_against_a_hundredth_get_the_z_of_their_p() -> None:
    """A cell with 3 events where about 0.01 was expected: its z is Phi^-1(1 - p), a few sigma,
    not the Gaussian (3 - 0.01) / sqrt(0.01) ~ 30 (or 126.8 with a tiny variance)."""
    tz = "America/New_York"
    start = datetime(2026, 9, 7, 4, tzinfo=UTC)
    hours = [start + timedelta(hours=i) for i in range(24 * 35)]
    busy = pl.DataFrame({"unit_id": "busy", "category": "a", "bin_start": hours, "count": 1}, schema_overrides={"count": pl.Int64})
    busy = pl.concat([busy, busy.with_columns(category=pl.lit("*"))])
    b = hours[-5]
    quiet = pl.DataFrame(
        {"unit_id": ["quiet", "quiet"], "category": ["b", "*"], "bin_start": [b, b], "count": [3, 3]}, schema_overrides={"count": pl.Int64}
    )
    cells = pl.concat([busy, quiet]).with_columns(
        pl.col("bin_start").cast(pl.Datetime("us", "UTC")),
        pl.col("count").cast(pl.Int64),
        suppressed=pl.lit(False),
        filled=pl.col("count").cast(pl.Float64),
    )
    spec = ScoreSpec("hour", tz, start, n_units=200, n_categories=3, complete_until=hours[-1] + timedelta(hours=1))
    out = score_layer(cells, spec).filter((pl.col("unit_id") == "quiet") & (pl.col("category") == "b") & (pl.col("bin_start") == b))
    assert out.height == 1
    row = out.row(0, named=True)
    print(row)
    assert row["scored"]
    assert row["expected"] < 0.05
    assert row["zscore"] == pytest.approx(float(stats.norm.isf(row["p"])), rel=1e-9)
    assert 3.0 < row["zscore"] < 10.0
    gaussian = (3 - row["expected"]) / math.sqrt(row["variance"])
    assert gaussian > 2 * row["zscore"]


# ---- 9. the q family --------------------------------------------------------------------------------------------
def test_q_is_benjamini_hochberg_over_the_fixed_family(tiny_snap: Snapshot) -> None:
    """q of a cell is BH over its (level, grain, bin) family of m = units x (categories + 1)
    hypotheses: the released scored p-values of that family, every other member (withheld,
    unscored, dropped as silent) entering as p = 1. Recomputed here from the scores alone."""
    sc = tiny_snap.scores("nyc")
    units = tiny_snap.units("nyc").group_by("level").len()
    n_units = dict(units.rows())
    n_cats = tiny_snap.events("nyc")["category"].n_unique() + 1
    assert sc.filter(~pl.col("scored") & (pl.col("p").is_not_null() | pl.col("q").is_not_null())).height == 0
    assert sc.filter(pl.col("observed").is_null() & pl.col("scored")).height == 0
    fam = ["level", "grain", "bin_start"]
    for p_col, q_col in (("p", "q"), ("p_low", "q_low")):
        scored = sc.filter("scored").with_columns(m=pl.col("level").replace_strict(n_units, return_dtype=pl.Float64) * n_cats)
        ranked = scored.sort([*fam, p_col]).with_columns(r=pl.int_range(1, pl.len() + 1).over(fam))
        ranked = ranked.with_columns(raw=(pl.col(p_col) * pl.col("m") / pl.col("r")).clip(upper_bound=1.0))
        ranked = ranked.with_columns(bh=pl.col("raw").reverse().cum_min().reverse().over(fam))
        off = ranked.filter((pl.col("bh") - pl.col(q_col)).abs() > 1e-9 * pl.max_horizontal(pl.col("bh"), pl.lit(1e-300)))
        assert off.height == 0, (
            f"{off.height} {q_col} differ from BH over m = units x (categories + 1):\n{off.select(*fam, 'unit_id', 'category', p_col, q_col, 'bh').head()}"
        )


def test_q_does_not_depend_on_the_window(tiny_snap: Snapshot) -> None:
    """The same cell listed in a one-day window and in the whole history carries the same q."""
    meta = _meta(tiny_snap)
    tz = meta["timezone"]
    for level in ("neighborhood", "borough"):
        whole = _lens(
            tiny_snap, level=level, time_bin=DEFAULT_GRAINS[level], since=meta["history_start"], until=meta["horizon"], q=0.2, min_z=2.0
        )
        found, _ = whole.anomalies(everywhere=True)
        assert found.height > 0
        for b in found.sort("zscore", descending=True)["bin_start"].unique().head(3).to_list():
            day = floor_bin(b, "day", tz)
            one = _lens(tiny_snap, level=level, time_bin=DEFAULT_GRAINS[level], since=day, until=next_bin(day, "day", tz), q=0.2, min_z=2.0)
            small, _ = one.anomalies(everywhere=True)
            cols = ["unit_id", "category", "bin_start", "q", "p", "zscore"]
            mine = found.filter(pl.col("bin_start").is_between(day, next_bin(day, "day", tz), closed="left")).select(cols).sort(cols[:3])
            assert small.select(cols).sort(cols[:3]).equals(mine), level
