"""The engine: binning and roll-ups, trailing z-scores, the privacy gate and the lens, on hand-made
frames with hand-computed answers and on the tiny demo snapshot."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import param
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from app.data.demo import DemoSpec
from app.data.snapshot import EVENT_SCHEMA, Snapshot
from app.data.store import Store
from app.engine.bins import bin_counts, filter_events, unit_counts, with_unit
from app.engine.lens import ALL, KINDS, Lens
from app.engine.scores import rolling_zscores
from app.pipeline import build_demo
from conftest import snapshot_sql

D0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


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
    """Events from (kind, category, tract_id, ts) tuples; located iff a tract is given."""
    return pl.DataFrame(
        {
            "kind": [r[0] for r in rows],
            "category": [r[1] for r in rows],
            "tract_id": [r[2] for r in rows],
            "ts": [r[3] for r in rows],
            "lon": [None if r[2] is None else -73.9 for r in rows],
            "lat": [None if r[2] is None else 40.7 for r in rows],
        },
        schema=EVENT_SCHEMA,
    )


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


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        # The unknown tract t9 still is a tract; unlocated events have none.
        ("tract", {0: "t1", 1: "t1", 2: "t2", 3: "t3", 5: "t3", 6: "t9"}),
        ("neighborhood", {0: "n1", 1: "n1", 2: "n1", 3: "n2", 5: "n2"}),
        ("borough", {0: "b1", 1: "b1", 2: "b1", 3: "b2", 5: "b2"}),
        # Only at city level do unlocated events (and unknown tracts) count.
        ("city", {0: "c", 1: "c", 2: "c", 3: "c", 4: "c", 5: "c", 6: "c"}),
    ],
)
def test_with_unit_rolls_tracts_up(level: str, expected: dict[int, str]) -> None:
    mapped = with_unit(EVENTS, PARENTS, level)
    got = {EVENTS["ts"].to_list().index(ts): unit for ts, unit in mapped.select("ts", "unit_id").iter_rows()}
    assert got == expected
    assert set(EVENTS.columns) < set(mapped.columns)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("tract", {"t1": 2, "t2": 1, "t3": 2, "t9": 1}),
        ("neighborhood", {"n1": 3, "n2": 2}),
        ("borough", {"b1": 3, "b2": 2}),
        ("city", {"c": 7}),
    ],
)
def test_unit_counts(level: str, expected: dict[str, int]) -> None:
    assert dict(unit_counts(EVENTS, PARENTS, level).iter_rows()) == expected


@pytest.mark.parametrize(
    ("level", "time_bin", "by_category", "expected"),
    [
        (
            "neighborhood",
            "day",
            True,
            [("n1", "Heat", day(1), 1), ("n1", "Noise", day(0), 2), ("n2", "Film Permit", day(6), 1), ("n2", "Larceny", day(1), 1)],
        ),
        ("neighborhood", "day", False, [("n1", day(0), 2), ("n1", day(1), 1), ("n2", day(1), 1), ("n2", day(6), 1)]),
        (
            "tract",
            "hour",
            False,
            [("t1", day(0), 1), ("t1", day(0.5), 1), ("t2", day(1), 1), ("t3", day(1.25), 1), ("t3", day(6), 1), ("t9", day(7), 1)],
        ),
        # Weeks start on Monday: Monday D0 .. Sunday day(6) share a bin; day(7) opens the next.
        ("city", "week", False, [("c", day(0), 6), ("c", day(7), 1)]),
        (
            "borough",
            "week",
            True,
            [("b1", "Heat", day(0), 1), ("b1", "Noise", day(0), 2), ("b2", "Film Permit", day(0), 1), ("b2", "Larceny", day(0), 1)],
        ),
    ],
)
def test_bin_counts(level: str, time_bin: str, by_category: bool, expected: list[tuple[object, ...]]) -> None:
    got = bin_counts(EVENTS, PARENTS, level, time_bin, by_category=by_category)
    assert got.columns == (["unit_id", "category", "bin_start", "count"] if by_category else ["unit_id", "bin_start", "count"])
    assert got.rows() == expected


def test_bin_counts_week_starts_on_monday_even_for_a_sunday_event() -> None:
    sunday = events([("request", "Noise", "t1", day(-1) + timedelta(hours=23))])
    assert bin_counts(sunday, PARENTS, "tract", "week", by_category=False)["bin_start"].to_list() == [day(-7)]


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
def test_lens_defaults_to_the_newest_week(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap)
    newest = snapshot_sql(
        tiny_snap.path,
        "SELECT max(t) AS m FROM (SELECT ts AS t FROM request UNION ALL SELECT ts FROM incident UNION ALL SELECT start_ts FROM closure)",
    )["m"].item()
    end_of_day = newest.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert lens.until == end_of_day
    assert lens.since == end_of_day - timedelta(days=7)
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


@pytest.mark.parametrize("category", [ALL, "Noise - Residential"])
def test_lens_unit_counts_roll_up_consistently(tiny_snap: Snapshot, category: str) -> None:
    counts = {
        level: Lens(snapshot=tiny_snap, level=level, privacy_mode="none", category=category).unit_counts()
        for level in ("tract", "neighborhood", "borough", "city")
    }
    lens = Lens(snapshot=tiny_snap, privacy_mode="none", category=category)
    window = lens.events()
    assert window.height > (1000 if category == ALL else 100)
    # Every unit of the level is listed once, zero or not, and nothing is suppressed.
    for level, frame in counts.items():
        assert frame.height == tiny_snap.units("nyc", level).height
        assert not frame["suppressed"].any()
    located = window["tract_id"].is_not_null().sum()
    assert counts["tract"]["count"].sum() == located
    assert counts["neighborhood"]["count"].sum() == located
    assert counts["borough"]["count"].sum() == located
    assert counts["city"]["count"].to_list() == [window.height]  # the city also counts unlocated events
    # Tract counts summed per parent equal the parent's count, unit by unit.
    units = tiny_snap.units("nyc")
    for child, parent in (("tract", "neighborhood"), ("neighborhood", "borough")):
        parent_of = units.filter(pl.col("level") == child).select("unit_id", "parent_id")
        rolled = (
            counts[child].join(parent_of, on="unit_id").group_by("parent_id").agg(pl.col("count").sum()).rename({"parent_id": "unit_id"})
        )
        assert_frame_equal(rolled.sort("unit_id"), counts[parent].select("unit_id", "count").sort("unit_id"), check_dtypes=False)


def test_lens_city_count_matches_sql(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="city", privacy_mode="none")
    lo, hi = f"TIMESTAMPTZ '{lens.since.isoformat()}'", f"TIMESTAMPTZ '{lens.until.isoformat()}'"
    n = snapshot_sql(
        tiny_snap.path,
        f"""SELECT (SELECT count(*) FROM request WHERE ts >= {lo} AND ts < {hi})
                 + (SELECT count(*) FROM incident WHERE ts >= {lo} AND ts < {hi})
                 + (SELECT count(*) FROM closure WHERE start_ts >= {lo} AND start_ts < {hi}) AS n""",
    )["n"].item()
    assert lens.unit_counts()["count"].to_list() == [n]


@pytest.mark.parametrize("level", ["tract", "neighborhood", "borough"])
@pytest.mark.parametrize("k", [3, 11])
def test_lens_suppress_mode_releases_no_small_counts(tiny_snap: Snapshot, level: str, k: int) -> None:
    released = Lens(snapshot=tiny_snap, level=level, privacy_k=k).unit_counts()
    raw = Lens(snapshot=tiny_snap, level=level, privacy_mode="none").unit_counts()
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


def test_lens_anomalies_hide_small_counts(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="tract", min_z=2.0, q=0.5)
    released, withheld = lens.anomalies()
    open_lens = Lens(snapshot=tiny_snap, level="tract", min_z=2.0, q=0.5, privacy_mode="none")
    everything, none_withheld = open_lens.anomalies()
    assert none_withheld == 0
    assert everything.height > 0
    keys = ["level", "unit_id", "category", "bin_start"]
    at_tract = released.filter(pl.col("rolled_up_from").is_null())
    assert at_tract.join(everything, on=keys, how="anti").height == 0  # nothing invented
    assert at_tract.height + withheld <= everything.height
    assert at_tract.height < everything.height  # the tiny city's tract anomalies are mostly small
    assert not released["observed"].is_between(1, lens.privacy_k - 1).any()
    rolled = released.filter(pl.col("rolled_up_from").is_not_null())
    assert set(rolled["level"]) <= {"neighborhood", "borough"}  # the nearest publishable ancestor
    assert (rolled["rolled_up_from"] == "tract").all()
    assert (everything["zscore"] >= 2.0).all()


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
    build_demo(store, DemoSpec(seed=5, end=datetime(2026, 11, 1, tzinfo=UTC), days=30, size=10_000))
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
    lens = Lens(snapshot=store.publish(), privacy_mode="none")
    assert lens.until == datetime(2026, 11, 1, tzinfo=UTC)
    lens.category = "Noise - Residential"
    lens.city = "uk"
    assert (lens.since, lens.until) == (datetime(2024, 4, 25, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
    assert lens.category == ALL  # a NYC complaint type means nothing in the UK
    assert lens.points().height == 2
    assert lens.unit_counts()["count"].sum() == 2


# ---- sparkbands -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["suppress", "none"])
def test_bands_cover_every_unit_and_bin_with_released_counts(tiny_snap: Snapshot, mode: str) -> None:
    lens = Lens(snapshot=tiny_snap, level="neighborhood", privacy_mode=mode, min_z=2.0, q=0.5)
    bands = lens.bands()
    grid = lens.grid_window()
    assert grid is not None
    n_bins = (grid[1] - grid[0]).days
    assert bands.height == tiny_snap.units("nyc", "neighborhood").height * n_bins
    assert (bands["count"].is_null() == bands["suppressed"]).all()
    if mode == "suppress":
        assert not bands["count"].drop_nulls().is_between(1, lens.privacy_k - 1).any()
    assert (bands["lo"] <= bands["expected"]).all()
    assert (bands["expected"] <= bands["hi"]).all()
    assert (bands["lo"] >= 0).all()
    shown = bands.join(lens.series(), on=["unit_id", "bin_start"], how="inner").filter(~pl.col("suppressed"))
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
