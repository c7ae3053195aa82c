"""The engine: event filters, the release layers (roll-ups in the city's local time), the rolling z
reference and the lens over a published snapshot, on hand-made frames with hand-computed answers and
on the tiny demo snapshot (published with ``suppress``, and again with ``none`` for raw totals)."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import param
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy import stats

from app.config import Settings
from app.data.demo import DemoSpec
from app.data.snapshot import EVENT_SCHEMA, Snapshot
from app.data.store import Store
from app.engine.bins import filter_events
from app.engine.grains import floor_bin
from app.engine.layers import layer_cells
from app.engine.lens import ALL, KINDS, Lens
from app.engine.scores import rolling_zscores
from app.pipeline import build_demo, publish
from conftest import snapshot_sql

D0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday (in UTC; still Sunday evening in New York)
NY = ZoneInfo("America/New_York")  # the tiny demo's clock: EDT until 2026-11-01 02:00, then EST


def day(n: float) -> datetime:
    return D0 + timedelta(days=n)


# tract -> neighborhood -> borough -> city:  t1, t2 in n1 (b1);  t3 in n2 (b2);  all in city c.
PARENTS = pl.DataFrame(
    {
        "tract_id": ["t1", "t2", "t3"],
        "neighborhood_id": ["n1", "n1", "n2"],
        "borough_id": ["b1", "b1", "b2"],
        "city_id": ["c", "c", "c"],
    }
)


def events(rows: list[tuple[str, str, str | None, datetime]]) -> pl.DataFrame:
    """Events from (kind, category, tract_id, ts) tuples; located iff a tract is given (other
    columns of the event frame are null)."""
    given = {
        "kind": [r[0] for r in rows],
        "category": [r[1] for r in rows],
        "tract_id": [r[2] for r in rows],
        "ts": [r[3] for r in rows],
        "lon": [None if r[2] is None else -73.9 for r in rows],
        "lat": [None if r[2] is None else 40.7 for r in rows],
    }
    return pl.DataFrame({c: given.get(c, [None] * len(rows)) for c in EVENT_SCHEMA}, schema=EVENT_SCHEMA)


EVENTS = events(
    [
        ("request", "Noise", "t1", day(0)),  # 0
        ("request", "Noise", "t1", day(0.5)),  # 1
        ("request", "Heat", "t2", day(1)),  # 2
        ("incident", "Larceny", "t3", day(1.25)),  # 3
        ("request", "Noise", None, day(2)),  # 4 unlocated
        ("closure", "Film Permit", "t3", day(6)),  # 5  (Sunday)
        ("request", "Heat", "t9", day(7)),  # 6  tract unknown to the geography (next Monday)
    ]
)


def _rows(frame: pl.DataFrame) -> list[int]:
    """Indices (into EVENTS) of the rows of ``frame``, by their timestamps (all distinct)."""
    return sorted(EVENTS["ts"].to_list().index(t) for t in frame["ts"].to_list())


# ---- bins --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0, 1, 2, 3, 4, 5, 6]),
        ({"since": day(1)}, [2, 3, 4, 5, 6]),  # since is inclusive
        ({"until": day(1)}, [0, 1]),  # until is exclusive
        ({"since": day(0.5), "until": day(2)}, [1, 2, 3]),
        ({"categories": ["Noise"]}, [0, 1, 4]),
        ({"categories": ["Noise", "Heat"]}, [0, 1, 2, 4, 6]),
        ({"kinds": ["incident", "closure"]}, [3, 5]),
        ({"tract_ids": ["t1", "t3"]}, [0, 1, 3, 5]),
        ({"tract_ids": []}, []),  # an empty selection of tracts selects nothing
        ({"categories": ["Noise"], "kinds": ["request"], "since": day(0.25)}, [1, 4]),
        ({"categories": ["Nope"]}, []),
    ],
)
def test_filter_events(kwargs: dict[str, object], expected: list[int]) -> None:
    assert _rows(filter_events(EVENTS, **kwargs)) == expected


LEVELS4 = ("tract", "neighborhood", "borough", "city")


def _layer(tz: str, grains: dict[str, str], level: str, categories: bool = False) -> list[tuple[object, ...]]:
    """Cells of one level of the layers of EVENTS: (unit, bin, count) of ``"*"``, or (unit,
    category, bin, count) of the real categories."""
    cells = layer_cells(EVENTS, PARENTS, grains, tz, LEVELS4).filter(pl.col("level") == level)
    if categories:
        return (
            cells.filter(pl.col("category") != "*")
            .sort("unit_id", "category", "bin_start")
            .select("unit_id", "category", "bin_start", "count")
            .rows()
        )
    return cells.filter(pl.col("category") == "*").sort("unit_id", "bin_start").select("unit_id", "bin_start", "count").rows()


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        # The unknown tract t9 still is a tract; unlocated events have none.
        ("tract", {"t1": 2, "t2": 1, "t3": 2, "t9": 1}),
        ("neighborhood", {"n1": 3, "n2": 2}),
        ("borough", {"b1": 3, "b2": 2}),
        # Only at city level do unlocated events (and unknown tracts) count.
        ("city", {"c": 7}),
    ],
)
def test_layers_roll_tracts_up(level: str, expected: dict[str, int]) -> None:
    grains = {"tract": "week", "neighborhood": "week", "borough": "week", "city": "week"}
    totals: dict[str, int] = {}
    for unit, _, n in _layer("UTC", grains, level):
        totals[str(unit)] = totals.get(str(unit), 0) + int(n)  # type: ignore[call-overload]
    assert totals == expected


def test_layers_carry_each_units_parent_one_level_up() -> None:
    cells = layer_cells(EVENTS, PARENTS, dict.fromkeys(LEVELS4, "day"), "UTC", LEVELS4)
    parents = dict(cells.select(pl.concat_str("level", pl.lit(":"), "unit_id"), "parent_id").unique().iter_rows())
    assert parents == {
        "tract:t1": "n1", "tract:t2": "n1", "tract:t3": "n2", "tract:t9": None,
        "neighborhood:n1": "b1", "neighborhood:n2": "b2", "borough:b1": "c", "borough:b2": "c", "city:c": None,
    }  # fmt: skip


def test_layer_days_are_utc_days_in_a_utc_city() -> None:
    grains = {"tract": "week", "neighborhood": "day", "borough": "hour", "city": "hour"}
    assert _layer("UTC", grains, "neighborhood") == [("n1", day(0), 2), ("n1", day(1), 1), ("n2", day(1), 1), ("n2", day(6), 1)]
    assert _layer("UTC", grains, "neighborhood", categories=True) == [
        ("n1", "Heat", day(1), 1), ("n1", "Noise", day(0), 2), ("n2", "Film Permit", day(6), 1), ("n2", "Larceny", day(1), 1),
    ]  # fmt: skip
    # Weeks start on Monday: Monday D0 .. Sunday day(6) share a bin; day(7) opens the next.
    assert _layer("UTC", grains, "tract") == [("t1", day(0), 2), ("t2", day(0), 1), ("t3", day(0), 2), ("t9", day(7), 1)]
    assert [n for _, _, n in _layer("UTC", grains, "city")] == [1] * 7  # seven distinct hours


def test_layer_days_and_weeks_follow_the_local_clock() -> None:
    """New York: D0 (00:00 UTC Monday) is 19:00 on Sunday 1 November, the 25-hour day daylight
    saving ends on; that day starts at 04:00 UTC (EDT), the next ones at 05:00 UTC (EST)."""
    grains = {"tract": "week", "neighborhood": "day", "borough": "hour", "city": "hour"}
    nov1, nov2 = datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC)
    assert nov2 - nov1 == timedelta(hours=25)
    assert _layer(NY.key, grains, "neighborhood") == [
        ("n1", nov1, 1),  # event 0, Sunday evening
        ("n1", nov2, 2),  # events 1 and 2 (19:00 on Monday local)
        ("n2", nov2 + timedelta(days=1), 1),  # event 3, 01:00 on Tuesday local
        ("n2", nov2 + timedelta(days=5), 1),  # event 5, Saturday 7 November 19:00 local
    ]
    # Local weeks start on Monday at local midnight: event 0 still belongs to the week of 26 October.
    oct26 = datetime(2026, 10, 26, 4, tzinfo=UTC)
    assert _layer(NY.key, grains, "tract") == [("t1", oct26, 1), ("t1", nov2, 1), ("t2", nov2, 1), ("t3", nov2, 2), ("t9", nov2, 1)]
    # Hours are the same instants in every whole-hour zone.
    assert _layer(NY.key, grains, "city") == _layer("UTC", grains, "city")


# ---- scores ------------------------------------------------------------------------------------
def _counts(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    """Sparse daily counts from (unit_id, day, count); one category 'x'."""
    return pl.DataFrame(
        {"unit_id": [r[0] for r in rows], "category": "x", "bin_start": [day(r[1]) for r in rows], "count": [r[2] for r in rows]},
        schema={"unit_id": pl.String, "category": pl.String, "bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64},
    )


# Series A: 3, 6, (0), 9, (0), 3 over days 0..5; series B: (0), 1, (0), 1.  Baseline: 3 daily bins,
# the bin itself excluded, absent bins counting as zeros; z = (x - mean) / sqrt(max(var, mean, 1)).
_HAND = {
    ("A", 0): (3, 0.0, 0.0, 3.0),  # empty baseline: z uses the floor of 1
    ("A", 1): (6, 1.0, math.sqrt(2), 5 / math.sqrt(2)),  # {0, 0, 3}: mean 1, E[x²] 3, var 2
    ("A", 3): (9, 3.0, math.sqrt(6), 6 / math.sqrt(6)),  # {3, 6, 0}: mean 3, E[x²] 15, var 6
    ("A", 5): (3, 3.0, math.sqrt(18), 0.0),  # {0, 9, 0}: mean 3, E[x²] 27, var 18
    ("B", 1): (1, 0.0, 0.0, 1.0),
    ("B", 3): (1, 1 / 3, math.sqrt(2) / 3, 2 / 3),  # {0, 1, 0}: var 2/9 < mean 1/3 < 1: floor 1
}


@pytest.mark.parametrize("order", ["sorted", "shuffled", "reversed"])
def test_trailing_zscores_by_hand(order: str) -> None:
    rows = [(unit, d, c) for (unit, d), (c, *_) in _HAND.items()]
    if order == "shuffled":
        rows = [rows[i] for i in (4, 2, 0, 5, 1, 3)]
    elif order == "reversed":
        rows = rows[::-1]
    scored = rolling_zscores(_counts(rows), "day", baseline=timedelta(days=3))
    assert scored.height == len(_HAND)
    for unit, d, count, expected, std, z in scored.select("unit_id", "bin_start", "count", "expected", "std", "zscore").iter_rows():
        want = _HAND[(unit, (d - D0).days)]
        assert count == want[0]
        assert expected == pytest.approx(want[1])
        assert std == pytest.approx(want[2])
        assert z == pytest.approx(want[3])


@pytest.mark.parametrize(("last", "z"), [(4, 0.0), (8, 2.0), (0, -2.0), (12, 4.0)])
def test_trailing_zscores_floor_by_expected_for_a_flat_series(last: int, z: float) -> None:
    # A flat series of 4s has var 0 < mean 4, so the denominator is sqrt(4) = 2.
    rows = [("A", d, 4) for d in range(3)] + ([("A", 3, last)] if last else [])
    scored = rolling_zscores(_counts(rows), "day", baseline=timedelta(days=3)).filter(pl.col("bin_start") == day(3))
    if last == 0:
        assert scored.height == 0  # zero bins are not materialised, hence never scored
    else:
        assert scored["zscore"].to_list() == [pytest.approx(z)]
        assert scored["expected"].to_list() == [pytest.approx(4.0)]


def test_trailing_zscores_never_mix_groups() -> None:
    rows = [("A", d, 100) for d in range(3)] + [("B", 3, 5)]
    scored = rolling_zscores(_counts(rows), "day", baseline=timedelta(days=3)).filter(pl.col("unit_id") == "B")
    assert scored.select("expected", "zscore").row(0) == (0.0, 5.0)


# ---- lens --------------------------------------------------------------------------------------
def _local_midnight(d: object) -> datetime:
    """The UTC instant of local midnight in New York starting the date ``d``."""
    return datetime.combine(d, time(), NY).astimezone(UTC)  # type: ignore[arg-type]


def _raw(snap: Snapshot, lo: datetime, hi: datetime, located: bool = False, category: str = ALL) -> int:
    """Events of the snapshot in ``[lo, hi)`` (only located ones, or one category, when asked)."""
    events = filter_events(snap.events("nyc"), lo, hi, None if category == ALL else [category])
    return events.filter(pl.col("tract_id").is_not_null()).height if located else events.height


def test_lens_defaults_to_the_newest_local_week(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap)
    newest = snapshot_sql(
        tiny_snap.path,
        "SELECT max(t) AS m FROM (SELECT ts AS t FROM request UNION ALL SELECT ts FROM incident UNION ALL SELECT start_ts FROM closure)",
    )["m"].item()
    local_day = newest.astimezone(NY).date()
    assert lens.tz == "America/New_York"
    assert lens.until == _local_midnight(local_day + timedelta(days=1))  # the end of the newest event's local day
    assert lens.since == _local_midnight(local_day - timedelta(days=6))  # seven local days
    # The tiny demo ends on 31 October (EDT): its local days start at 04:00 UTC.
    assert (lens.since, lens.until) == (datetime(2026, 10, 25, 4, tzinfo=UTC), datetime(2026, 11, 1, 4, tzinfo=UTC))
    assert lens.level == "neighborhood"
    assert lens.category == ALL
    assert lens.kinds == list(KINDS)
    assert lens.privacy_mode == "suppress"


def test_lens_offers_the_snapshot_categories(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap)
    sql = "SELECT category AS c FROM request UNION SELECT type FROM incident UNION SELECT kind FROM closure"
    cats = snapshot_sql(tiny_snap.path, sql)["c"]
    assert lens.param.category.objects == [ALL, *sorted(cats)]
    assert lens.categories() == sorted(cats)
    assert lens.param.city.objects == ["nyc"]


def test_the_release_rule_is_the_snapshots(tiny_snap: Snapshot, open_snap: Snapshot) -> None:
    """One release per snapshot: asking a lens for another rule changes nothing it shows."""
    asked = Lens(snapshot=tiny_snap, level="tract", privacy_mode="none", privacy_k=3)
    default = Lens(snapshot=tiny_snap, level="tract")
    assert (asked.privacy_mode, asked.privacy_k) == ("suppress", 11)
    assert_frame_equal(asked.unit_counts(), default.unit_counts())
    assert asked.unit_counts()["suppressed"].any()
    assert Lens(snapshot=open_snap, privacy_mode="suppress").privacy_mode == "none"


@pytest.mark.parametrize(
    ("level", "time_bin", "grain", "shown"),
    [
        ("tract", "hour", "week", "week"),  # tracts are published by week: no finer bin exists
        ("tract", "day", "week", "week"),
        ("neighborhood", "hour", "day", "day"),
        ("neighborhood", "day", "day", "day"),
        ("neighborhood", "week", "day", "week"),  # a coarser view sums released days
        ("borough", "hour", "hour", "hour"),
        ("city", "day", "hour", "day"),
    ],
)
def test_a_level_shows_the_coarser_of_its_grain_and_the_time_bin(
    tiny_snap: Snapshot, level: str, time_bin: str, grain: str, shown: str
) -> None:
    lens = Lens(snapshot=tiny_snap, level=level, time_bin=time_bin)
    assert lens.grain_of() == grain
    assert lens.effective_bin() == shown
    bins = lens.series()["bin_start"].unique().sort().to_list()
    assert len(bins) >= 2
    steps = {b - a for a, b in itertools.pairwise(bins)}
    assert min(steps) == {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[shown]


@pytest.mark.parametrize(
    ("level", "time_bin", "since", "until", "grid"),
    [
        # 08:00 EDT on the 20th .. 21:00 EDT on the 21st -> the two whole local days
        ("neighborhood", "day", (10, 20, 12), (10, 22, 1), ((10, 20, 4), (10, 22, 4))),
        ("tract", "day", (10, 20, 12), (10, 22, 1), ((10, 19, 4), (10, 26, 4))),  # the local week, Monday to Monday
        ("borough", "hour", (10, 20, 12), (10, 22, 1), ((10, 20, 12), (10, 22, 1))),  # already whole hours
        ("borough", "day", (10, 20, 4), (10, 22, 4), ((10, 20, 4), (10, 22, 4))),  # already whole local days
        # Across the end of daylight saving: 1 November is 25 hours long, 2 November starts at 05:00 UTC.
        ("neighborhood", "day", (10, 31, 12), (11, 2, 12), ((10, 31, 4), (11, 3, 5))),
    ],
)
def test_grid_window_snaps_outwards_to_whole_local_bins(
    tiny_snap: Snapshot, level: str, time_bin: str, since: tuple[int, ...], until: tuple[int, ...], grid: tuple[tuple[int, ...], ...]
) -> None:
    def at(m: int, d: int, h: int) -> datetime:
        return datetime(2026, m, d, h, tzinfo=UTC)

    lens = Lens(snapshot=tiny_snap, level=level, time_bin=time_bin, since=at(*since), until=at(*until))
    assert lens.grid_window() == (at(*grid[0]), at(*grid[1]))


def test_bands_of_a_window_across_the_dst_change_have_one_row_per_local_day(tiny_snap: Snapshot) -> None:
    lens = Lens(
        snapshot=tiny_snap, level="borough", since=datetime(2026, 10, 31, 12, tzinfo=UTC), until=datetime(2026, 11, 2, 12, tzinfo=UTC)
    )
    bins = lens.bands()["bin_start"].unique().sort().to_list()
    assert bins == [datetime(2026, 10, 31, 4, tzinfo=UTC), datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC)]


#: Two whole local weeks (Monday 12 October .. Monday 26 October, EDT) that every level has published.
COMPLETE = (datetime(2026, 10, 12, 4, tzinfo=UTC), datetime(2026, 10, 26, 4, tzinfo=UTC))


@pytest.mark.parametrize("category", [ALL, "Noise - Residential"])
def test_lens_unit_counts_roll_up_consistently(open_snap: Snapshot, category: str) -> None:
    lo, hi = COMPLETE
    lenses = {level: Lens(snapshot=open_snap, level=level, category=category, since=lo, until=hi) for level in LEVELS4}
    for level, lens in lenses.items():
        assert lens.grid_window() == COMPLETE
        until = lens.published_until()
        assert until is not None
        assert until >= hi, f"{level} has not published the whole window"
    counts = {level: lens.unit_counts() for level, lens in lenses.items()}
    window = lenses["neighborhood"].events()
    assert window.height > (1000 if category == ALL else 100)
    # Every unit of the level is listed once, zero or not, and nothing is withheld.
    for level, frame in counts.items():
        assert frame.height == open_snap.units("nyc", level).height
        assert not frame["suppressed"].any()
    located = window["tract_id"].is_not_null().sum()
    assert located == _raw(open_snap, lo, hi, located=True, category=category)
    assert counts["tract"]["count"].sum() == located
    assert counts["neighborhood"]["count"].sum() == located
    assert counts["borough"]["count"].sum() == located
    assert counts["city"]["count"].to_list() == [window.height]  # the city also counts unlocated events
    # Tract counts summed per parent equal the parent's count, unit by unit.
    units = open_snap.units("nyc")
    for child, parent in (("tract", "neighborhood"), ("neighborhood", "borough")):
        parent_of = units.filter(pl.col("level") == child).select("unit_id", "parent_id")
        rolled = (
            counts[child].join(parent_of, on="unit_id").group_by("parent_id").agg(pl.col("count").sum()).rename({"parent_id": "unit_id"})
        )
        assert_frame_equal(rolled.sort("unit_id"), counts[parent].select("unit_id", "count").sort("unit_id"), check_dtypes=False)


@pytest.mark.parametrize("level", LEVELS4)
def test_window_totals_leave_out_unpublished_bins(open_snap: Snapshot, level: str) -> None:
    """The newest bins whose pair block is still filling are not published: a window total sums
    the published bins only, and ``published_until`` says where they end."""
    lens = Lens(snapshot=open_snap, level=level)
    grid, until = lens.grid_window(), lens.published_until()
    assert grid is not None
    assert until is not None
    meta = open_snap.release_meta("nyc")
    assert until <= meta["horizon"]
    end = min(grid[1], until)
    total = lens.unit_counts()["count"].sum()
    assert total == _raw(open_snap, grid[0], end, located=level != "city")
    if level == "tract":  # the tiny demo's last tract week is still filling: a total ends before the window
        assert until < lens.until
        assert total < _raw(open_snap, grid[0], grid[1], located=True)


@pytest.mark.parametrize("level", ["tract", "neighborhood", "borough"])
def test_series_marks_unpublished_bins_partial_and_shows_no_count(tiny_snap: Snapshot, level: str) -> None:
    lens = Lens(snapshot=tiny_snap, level=level)
    until = lens.published_until()
    assert until is not None
    series = lens.series()
    late = series["bin_start"] >= floor_bin(until, lens.effective_bin(), lens.tz)  # a shown bin reaching past it
    assert (series["partial"] == late).all()
    assert series.filter(pl.col("partial"))["count"].null_count() == series.filter(pl.col("partial")).height
    assert series.filter(pl.col("partial")).height > 0  # the tiny demo's newest block is filling at every level
    assert (series["count"].is_null() == (series["suppressed"] | series["partial"])).all()


def test_lens_city_count_matches_sql(open_snap: Snapshot) -> None:
    lens = Lens(snapshot=open_snap, level="city")
    grid, until = lens.grid_window(), lens.published_until()
    assert grid is not None
    assert until is not None
    lo, hi = f"TIMESTAMPTZ '{grid[0].isoformat()}'", f"TIMESTAMPTZ '{min(grid[1], until).isoformat()}'"
    n = snapshot_sql(
        open_snap.path,
        f"""SELECT (SELECT count(*) FROM request WHERE ts >= {lo} AND ts < {hi})
                 + (SELECT count(*) FROM incident WHERE ts >= {lo} AND ts < {hi})
                 + (SELECT count(*) FROM closure WHERE start_ts >= {lo} AND start_ts < {hi}) AS n""",
    )["n"].item()
    assert n > 1000
    assert lens.unit_counts()["count"].to_list() == [n]


@pytest.mark.parametrize("level", ["tract", "neighborhood", "borough"])
def test_lens_suppress_mode_releases_no_small_counts(tiny_snap: Snapshot, open_snap: Snapshot, level: str) -> None:
    lens = Lens(snapshot=tiny_snap, level=level)
    k = lens.privacy_k
    assert k == 11
    released = lens.unit_counts()
    raw = Lens(snapshot=open_snap, level=level).unit_counts()
    shown = released["count"].drop_nulls()
    assert not shown.is_between(1, k - 1).any()
    both = released.join(raw.select("unit_id", pl.col("count").alias("raw")), on="unit_id")
    # Every raw total 1..k-1 is withheld; whatever is shown is the raw count. (More may be withheld:
    # a window total hides when any of its bins does, so two windows never difference into a bin.)
    assert both.filter(pl.col("raw").is_between(1, k - 1))["suppressed"].all()
    assert (both.filter(~pl.col("suppressed"))["count"] == both.filter(~pl.col("suppressed"))["raw"]).all()
    # A withheld unit names its parent's released total when there is one.
    rolled = both.filter(pl.col("rollup_count").is_not_null())
    assert rolled["suppressed"].all()
    assert not rolled["rollup_count"].is_between(1, k - 1).any()
    if level == "tract":
        assert both["suppressed"].any()  # small tract counts exist in a week of the tiny city
        assert rolled.height > 0


def test_lens_anomalies_are_published_scores_of_released_cells(tiny_snap: Snapshot, open_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5)
    found, withheld = lens.anomalies()
    grid = lens.grid_window()
    assert grid is not None
    assert found.height > 0
    assert set(found["level"]) == {"neighborhood"}
    assert set(found["time_bin"]) == {"day"}
    assert found["rolled_up_from"].is_null().all()  # anomalies are found where they are published, never rolled up
    assert "*" in set(found["category"])  # all activity is a cell like any category
    assert found["bin_start"].is_between(*grid, closed="left").all()
    assert (found["zscore"] >= 2.0).all()
    assert (found["q"] <= 0.5).all()
    assert (found["p"] <= found["q"]).all()
    assert found["zscore"].to_list() == sorted(found["zscore"].to_list(), reverse=True)
    # z is the normal quantile of the exact tail p (not (x - mean) / sd).
    assert np.allclose(found["zscore"].to_numpy(), stats.norm.isf(found["p"].to_numpy()), atol=0.02)
    # A day bin ends at the next local midnight.
    assert (found["bin_end"] - found["bin_start"] == timedelta(days=1)).all()
    # Each count is the released count of that cell, which is the true count (never 1..k-1).
    keys = ["unit_id", "category", "bin_start"]
    cells = tiny_snap.release("nyc").filter(pl.col("level") == "neighborhood")
    raw = open_snap.release("nyc").filter(pl.col("level") == "neighborhood").select(*keys, raw="count")
    joined = (
        found.select(*keys, "observed").join(cells.select(*keys, "count", "suppressed"), on=keys, how="left").join(raw, on=keys, how="left")
    )
    assert not joined["suppressed"].any()
    assert (joined["observed"] == joined["count"]).all()
    assert (joined["observed"] == joined["raw"]).all()
    assert not found["observed"].is_between(1, lens.privacy_k - 1).any()
    # The withheld number is the window's withheld (unit, day) cells of the lens selection.
    star = cells.filter((pl.col("category") == "*") & pl.col("bin_start").is_between(*grid, closed="left"))
    assert withheld == star.filter(pl.col("suppressed")).height > 0
    assert Lens(snapshot=open_snap, level="neighborhood", min_z=2.0, q=0.5).anomalies()[1] == 0


def test_anomalies_do_not_depend_on_the_window(tiny_snap: Snapshot) -> None:
    """Scores are computed once at publish time: a bin reads the same in every window holding it."""
    week = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5)
    tail = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5, since=datetime(2026, 10, 28, 4, tzinfo=UTC), until=week.until)
    cols = ["unit_id", "category", "bin_start", "observed", "expected", "zscore", "p", "q"]
    wide, narrow = week.anomalies()[0], tail.anomalies()[0]
    assert narrow.height > 0
    assert wide.height > narrow.height
    late = wide.filter(pl.col("bin_start") >= datetime(2026, 10, 28, 4, tzinfo=UTC))
    assert_frame_equal(narrow.select(cols).sort(cols[:3]), late.select(cols).sort(cols[:3]))


def test_dips_list_the_lower_tail(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5, dips=True)
    found, _ = lens.anomalies()
    assert found.height > 0
    assert (found["zscore"] <= -2.0).all()
    assert (found["observed"] < found["expected"]).all()
    assert found["zscore"].to_list() == sorted(found["zscore"].to_list())  # deepest first
    assert np.allclose(found["zscore"].to_numpy(), -stats.norm.isf(found["p"].to_numpy()), atol=0.02)


# ---- documentation ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in Lens.param if n != "name"])
def test_every_lens_param_is_documented(name: str) -> None:
    doc = Lens.param[name].doc
    assert doc, f"Lens.{name} has no doc"
    assert len(doc.split()) >= 3, f"Lens.{name}'s doc is too short to explain anything: {doc!r}"


def test_lens_has_params_to_document() -> None:
    assert {"snapshot", "level", "since", "until", "category", "privacy_mode", "privacy_k"} <= set(Lens.param)
    assert isinstance(Lens.param["level"], param.Selector)


def test_switching_city_moves_the_window_to_that_citys_newest_week(tmp_path: Path) -> None:
    from app.data.h3grid import h3_locate

    store = Store(tmp_path)
    open_rule = Settings(
        data_dir=tmp_path, privacy_mode="none", grains="tract=week,neighborhood=day,borough=hour,city=hour"
    )  # pinned: two events would choose weeks
    build_demo(store, DemoSpec(seed=5, end=datetime(2026, 11, 1, tzinfo=UTC), days=30, size=10_000), settings=open_rule)
    lon, lat = np.array([-0.1276, -1.5491]), np.array([51.5072, 53.8008])  # London, Leeds
    cells, units = h3_locate("uk", lon, lat)
    t0 = datetime(2024, 5, 1, 9, tzinfo=UTC)
    closures = pl.DataFrame(
        {
            "id": ["uk:1", "uk:2"], "source": "uk", "source_id": ["1", "2"], "city": "uk",
            "start_ts": [t0, t0 + timedelta(hours=3)], "end_ts": [t0 + timedelta(days=2)] * 2, "kind": "Planned Works",
            "lon": lon, "lat": lat, "tract_id": list(cells), "valid_from": [t0, t0],
        }
    )  # fmt: skip
    with store.writer() as con:
        store.upsert(con, "geo_unit", units)
        store.upsert(con, "closure", closures)
    lens = Lens(snapshot=publish(store, {"uk"}, "test", settings=open_rule))
    assert lens.until == datetime(2026, 11, 1, 4, tzinfo=UTC)  # New York's midnight (EDT)
    lens.category = "Noise - Residential"
    lens.city = "uk"
    assert lens.tz == "Europe/London"
    # London's days: 2 May starts at 23:00 UTC on 1 May (BST).
    assert (lens.since, lens.until) == (datetime(2024, 4, 24, 23, tzinfo=UTC), datetime(2024, 5, 1, 23, tzinfo=UTC))
    assert lens.category == ALL  # a NYC complaint type means nothing in the UK
    assert lens.points().height == 2
    lens.level = "city"
    # The newest hour (that of the newest event) is still filling: only the earlier closure is published.
    assert lens.published_until() == t0 + timedelta(hours=3)
    assert lens.unit_counts()["count"].to_list() == [1]


# ---- sparkbands -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_snap", "open_snap"])
def test_bands_cover_every_unit_and_bin_with_released_counts(request: pytest.FixtureRequest, which: str) -> None:
    snap: Snapshot = request.getfixturevalue(which)
    lens = Lens(snapshot=snap, level="neighborhood", min_z=2.0, q=0.5)
    bands = lens.bands()
    grid, until = lens.grid_window(), lens.published_until()
    assert grid is not None
    assert until is not None
    n_bins = (grid[1] - grid[0]).days
    assert bands.height == snap.units("nyc", "neighborhood").height * n_bins
    assert (bands["partial"] == (bands["bin_start"] >= floor_bin(until, "day", lens.tz))).all()
    assert (bands["count"].is_null() == (bands["suppressed"] | bands["partial"])).all()
    if which == "tiny_snap":
        assert not bands["count"].drop_nulls().is_between(1, lens.privacy_k - 1).any()
        assert bands["suppressed"].any()
    else:
        assert not bands["suppressed"].any()
    assert (bands["lo"] <= bands["expected"]).all()
    assert (bands["expected"] <= bands["hi"]).all()
    assert (bands["lo"] >= 0).all()
    # Every released cell with events has its published expectation (a series silent for a whole
    # baseline has no score rows: nothing to expect, nothing to flag).
    assert bands.filter(pl.col("count") > 0)["expected"].null_count() == 0
    shown = bands.join(lens.series(), on=["unit_id", "bin_start"], how="inner").filter(~pl.col("suppressed") & ~pl.col("partial"))
    assert (shown["count"] == shown["count_right"]).all()
    found, _ = lens.anomalies()
    marks = found.filter(pl.col("level") == "neighborhood").select("unit_id", "bin_start").unique()
    assert set(bands.filter(pl.col("anomalous")).select("unit_id", "bin_start").iter_rows()) == set(marks.iter_rows())
    assert bands["anomalous"].any()


# ---- one shared selection -------------------------------------------------------------------------
def test_selection_filters_events_anomalies_and_bands(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5)
    everything, _ = lens.anomalies()
    assert everything.height >= 2
    pick = everything.filter(pl.col("rolled_up_from").is_null())["unit_id"][0]
    lens.selection = [pick]
    found, _ = lens.anomalies()
    assert 0 < found.height < everything.height
    assert set(found.filter(pl.col("level") == "neighborhood")["unit_id"]) == {pick}
    tracts = set(lens.selected_tracts() or [])
    assert tracts
    assert set(lens.events()["tract_id"].unique()) <= tracts
    assert set(lens.bands()["unit_id"]) == {pick}


def test_selection_follows_level_changes_and_resets_with_the_city(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="neighborhood")
    nta = str(tiny_snap.units("nyc", "neighborhood")["unit_id"][0])
    lens.selection = [nta]
    lens.level = "tract"  # finer: the tracts inside it
    inside = set(tiny_snap.units("nyc", "tract").filter(pl.col("parent_id") == nta)["unit_id"])
    assert set(lens.selection) == inside
    lens.level = "borough"  # coarser: its borough
    assert lens.selection == [str(tiny_snap.units("nyc", "neighborhood").filter(pl.col("unit_id") == nta)["parent_id"][0])]
    lens.level = "city"
    assert lens.selection == []


def test_unit_at_finds_the_unit_under_a_point(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="tract")
    row = tiny_snap.units("nyc", "tract").row(0, named=True)
    assert lens.unit_at(row["lon"], row["lat"]) == row["unit_id"]  # representative points lie inside
    assert lens.unit_at(0.0, 0.0) is None


# ---- the stored anomaly table ---------------------------------------------------------------------
def test_the_stored_anomaly_table_lists_the_default_threshold_anomalies_with_their_bins(tiny_snap: Snapshot) -> None:
    stored = snapshot_sql(tiny_snap.path, "SELECT * FROM anomaly").with_columns(
        pl.col("window_start", "window_end").dt.convert_time_zone("UTC")
    )
    scores = tiny_snap.scores("nyc").filter(pl.col("scored") & (pl.col("q") <= 0.05) & (pl.col("zscore") >= 3.0))
    assert stored.height == scores.height > 0
    grain = pl.col("evidence").str.json_path_match("$.grain")
    length = stored.with_columns(grain=grain, span=pl.col("window_end") - pl.col("window_start"))
    assert set(length["grain"]) <= {"hour", "day", "week"}
    spans = {
        g: set(length.filter(pl.col("grain") == g)["span"].to_list()) for g in set(length["grain"])
    }  # a local day or week of New York: 23/25 hours around daylight-saving changes
    allowed = {
        "hour": {timedelta(hours=1)},
        "day": {timedelta(hours=h) for h in (23, 24, 25)},
        "week": {timedelta(weeks=1, hours=h) for h in (-1, 0, 1)},
    }
    assert all(spans[g] <= allowed[g] for g in spans), spans
    local = length.with_columns(end=pl.col("window_end").dt.convert_time_zone(NY.key))
    assert (local.filter(pl.col("grain") != "hour")["end"].dt.hour() == 0).all()  # ends at local midnight
