"""The demo city: deterministic, consistent in pieces, geographically sound, rhythmic, and with a
planted-anomaly ground truth that means what it says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import shapely
from polars.testing import assert_frame_equal

from app.data import demo as demo_module
from app.data.demo import DemoCity, DemoSpec
from app.data.demo_feed import DemoSource
from app.data.demo_mix import CRIME_PATH, MIX_PATH
from app.data.geography import CityGeography, load_geography
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.pipeline import PLANTED_FILE, build_demo
from conftest import snapshot_sql

SMALL = DemoSpec(seed=11, end=datetime(2026, 10, 1, tzinfo=UTC), days=30, size=20_000)
#: Default-size city (1.2 M events over 35 days); tests only generate a few of its days.
DENSE = DemoSpec(seed=7, end=datetime(2026, 11, 1, tzinfo=UTC), days=35)
ALL_TABLES = ("request", "incident", "closure", "geo_unit", "anomaly", "ingest_state", "snapshot_meta")
#: Columns/keys that legitimately differ between two builds of the same spec (wall-clock stamps).
_VOLATILE_META = ("snapshot_id", "created_at")


@pytest.fixture(scope="module")
def geo() -> CityGeography:
    return load_geography("nyc")


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three builds: SMALL twice (in different dirs) and SMALL with another seed."""
    dirs = {}
    for name, spec in (("a", SMALL), ("a_again", SMALL), ("other_seed", DemoSpec(12, SMALL.end, SMALL.days, SMALL.size))):
        dirs[name] = tmp_path_factory.mktemp(f"demo_{name}")
        build_demo(Store(dirs[name]), spec)
    return dirs


def _table(path: Path, table: str) -> pl.DataFrame:
    frame = snapshot_sql(path, f"SELECT * FROM {table} ORDER BY ALL")
    if table == "snapshot_meta":
        frame = frame.filter(~pl.col("key").is_in(_VOLATILE_META))
    if table == "ingest_state":
        frame = frame.drop("last_success")
    return frame


def _snapshot_path(data_dir: Path) -> Path:
    snap = Store(data_dir).current()
    assert snap is not None
    return snap.path


# ---- determinism -------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ALL_TABLES)
def test_same_spec_gives_identical_snapshot_tables(small_builds: dict[str, Path], table: str) -> None:
    a = _table(_snapshot_path(small_builds["a"]), table)
    b = _table(_snapshot_path(small_builds["a_again"]), table)
    assert a.height > 0
    assert_frame_equal(a, b)


@pytest.mark.parametrize("table", ["request", "incident", "closure"])
def test_other_seed_gives_other_events(small_builds: dict[str, Path], table: str) -> None:
    a = _table(_snapshot_path(small_builds["a"]), table)
    other = _table(_snapshot_path(small_builds["other_seed"]), table)
    assert not a.equals(other)
    # Ids are positional per day, so they overlap; what they carry must not.
    joined = a.join(other, on="id", suffix="_o")
    assert (joined["lon"] != joined["lon_o"]).any()


def test_other_seed_keeps_geography(small_builds: dict[str, Path]) -> None:
    assert_frame_equal(
        _table(_snapshot_path(small_builds["a"]), "geo_unit"), _table(_snapshot_path(small_builds["other_seed"]), "geo_unit")
    )


def test_same_spec_gives_identical_ground_truth(small_builds: dict[str, Path]) -> None:
    a = pl.read_csv(small_builds["a"] / PLANTED_FILE)
    assert_frame_equal(a, pl.read_csv(small_builds["a_again"] / PLANTED_FILE))
    assert not a.equals(pl.read_csv(small_builds["other_seed"] / PLANTED_FILE))


@pytest.mark.parametrize(
    ("since", "until", "step"),
    [
        # Across a day boundary and through planted anomalies (they start 28 days in).
        (SMALL.end - timedelta(hours=36), SMALL.end, timedelta(hours=1)),
        (SMALL.start, SMALL.start + timedelta(days=3), timedelta(days=1)),
        # Uneven chunks that do not align with hours or days.
        (SMALL.end - timedelta(days=2, minutes=17), SMALL.end - timedelta(minutes=5), timedelta(hours=7, minutes=13)),
    ],
)
def test_generating_in_pieces_equals_one_go(geo: CityGeography, since: datetime, until: datetime, step: timedelta) -> None:
    city = DemoCity(SMALL, geo)
    whole = city.generate(since, until)
    pieces: dict[str, list[pl.DataFrame]] = {k: [] for k in whole}
    t = since
    while t < until:
        part = DemoCity(SMALL, geo).generate(t, min(t + step, until))  # a fresh process-like city each poll
        for kind, frame in part.items():
            pieces[kind].append(frame)
        t += step
    for kind, frame in whole.items():
        assert frame.height > 0 or kind == "closure"
        assert_frame_equal(pl.concat(pieces[kind]), frame)
        assert frame["id"].is_unique().all()


# ---- geography ---------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["request", "incident", "closure"])
def test_located_points_lie_in_their_tract(tiny_snap: Snapshot, geo: CityGeography, table: str) -> None:
    rows = snapshot_sql(tiny_snap.path, f"SELECT tract_id, lon, lat FROM {table}")
    located = rows.filter(pl.col("tract_id").is_not_null())
    # Located means all three are set; unlocated means none is.
    assert located["lon"].null_count() == located["lat"].null_count() == 0
    unlocated = rows.filter(pl.col("tract_id").is_null())
    assert unlocated["lon"].null_count() == unlocated["lat"].null_count() == unlocated.height
    index = {tid: i for i, tid in enumerate(geo.tract_ids)}
    polys = geo.tract_geoms[[index[t] for t in located["tract_id"]]]
    inside = shapely.contains_xy(polys, located["lon"].to_numpy(), located["lat"].to_numpy())
    assert inside.all(), f"{(~inside).sum()} {table} points outside their tract"


def test_about_one_percent_of_events_are_unlocated(tiny_snap: Snapshot) -> None:
    events = tiny_snap.events("nyc")
    share = events["tract_id"].null_count() / events.height
    # ~60k events at 1 %: the binomial standard deviation is ~0.04 percentage points.
    assert 0.007 < share < 0.013
    assert events.filter(pl.col("tract_id").is_null())["lon"].null_count() == events["tract_id"].null_count()


@pytest.mark.parametrize(("level", "count"), [("tract", 2325), ("neighborhood", 262), ("borough", 5), ("city", 1)])
def test_geography_unit_counts(geo: CityGeography, tiny_snap: Snapshot, level: str, count: int) -> None:
    assert geo.units.filter(pl.col("level") == level).height == count
    assert tiny_snap.units("nyc", level).height == count


@pytest.mark.parametrize(("level", "parent_level"), [("tract", "neighborhood"), ("neighborhood", "borough"), ("borough", "city")])
def test_every_unit_has_a_parent_one_level_up(geo: CityGeography, level: str, parent_level: str) -> None:
    units = geo.units.filter(pl.col("level") == level)
    parents = set(geo.units.filter(pl.col("level") == parent_level)["unit_id"])
    assert units["parent_id"].null_count() == 0
    assert set(units["parent_id"]) <= parents
    assert units["unit_id"].is_unique().all()


def test_city_has_no_parent_and_tract_ids_align(geo: CityGeography) -> None:
    assert geo.units.filter(pl.col("level") == "city")["parent_id"].to_list() == [None]
    assert list(geo.tract_ids) == geo.units.filter(pl.col("level") == "tract")["unit_id"].to_list()
    assert len(geo.tract_geoms) == len(geo.tract_ids)


# ---- catalogue ---------------------------------------------------------------------------------
def test_requests_cover_many_complaint_types(tiny_snap: Snapshot) -> None:
    types = snapshot_sql(tiny_snap.path, "SELECT DISTINCT category FROM request")["category"]
    assert types.n_unique() >= 40
    assert set(types) <= set(pl.read_csv(MIX_PATH)["complaint_type"])


def test_incidents_have_offence_types_with_severity(tiny_snap: Snapshot) -> None:
    rows = snapshot_sql(tiny_snap.path, "SELECT type, severity FROM incident")
    assert rows["type"].n_unique() >= 15
    assert rows["severity"].null_count() == 0
    # Each offence keeps the one severity of the committed table.
    table = dict(pl.read_csv(CRIME_PATH).select("offence", "severity").iter_rows())
    assert all(table[t] == s for t, s in rows.unique().iter_rows())


def test_closures_end_after_they_start(tiny_snap: Snapshot) -> None:
    rows = snapshot_sql(tiny_snap.path, "SELECT start_ts, end_ts FROM closure")
    assert rows.height > 100
    assert rows["end_ts"].null_count() == 0
    assert (rows["end_ts"] > rows["start_ts"]).all()


# ---- planted anomalies -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def truth(tiny_dir: Path) -> pl.DataFrame:
    return pl.read_csv(tiny_dir / PLANTED_FILE, try_parse_dates=True)


def test_planted_file_sits_next_to_the_snapshot(tiny_dir: Path, truth: pl.DataFrame) -> None:
    assert (tiny_dir / "snapshots").is_dir()
    assert truth.height >= 20
    assert truth["anomaly_id"].is_unique().all()


@pytest.mark.parametrize(
    ("column", "required"),
    [("level", {"tract", "neighborhood"}), ("kind", {"spike", "mix_shift"}), ("size_class", {"small", "medium", "large"})],
)
def test_planted_anomalies_cover_the_design(truth: pl.DataFrame, column: str, required: set[str]) -> None:
    assert set(truth[column]) >= required


def test_planted_windows_range_from_hours_to_days(truth: pl.DataFrame, tiny_snap: Snapshot) -> None:
    source = DemoSource.from_meta(tiny_snap.meta)
    assert source is not None
    hours = ((truth["end"] - truth["start"]).dt.total_seconds() / 3600).to_numpy()
    assert hours.min() >= 1
    assert hours.min() <= 12
    assert hours.max() >= 48
    # All planted anomalies come after a clean 28-day baseline and before the end.
    assert (truth["start"] >= source.spec.start + timedelta(days=28)).all()
    assert (truth["end"] <= source.spec.end).all()


def test_each_spike_realises_its_intensity(truth: pl.DataFrame) -> None:
    spikes = truth.filter(pl.col("kind") == "spike")
    assert spikes.height >= 15
    assert (spikes["intensity"] >= 1).all()
    assert spikes["events"].to_list() == spikes["intensity"].cast(pl.Int64).to_list()


def _tracts_of(geo: CityGeography, level: str, unit_id: str) -> set[str]:
    if level == "tract":
        return {unit_id}
    return set(geo.tract_parents().filter(pl.col("neighborhood_id") == unit_id)["tract_id"])


def _dense_window(geo: CityGeography, plan: pl.DataFrame | None, monkeypatch: pytest.MonkeyPatch) -> pl.DataFrame:
    """DENSE requests over every planted window, every event located, with ``plan`` instead of the real one."""
    monkeypatch.setattr(demo_module, "_UNLOCATED", 0.0)
    city = DemoCity(DENSE, geo)
    full = city.planted
    if plan is not None:
        city.planted = plan  # replaces the cached plan on this instance only
    since = full.filter(pl.col("source_kind") == "request")["start"].min()
    until = full.filter(pl.col("source_kind") == "request")["end"].max()
    assert isinstance(since, datetime)
    assert isinstance(until, datetime)
    frame = city.generate(since, until)["request"]
    assert frame["tract_id"].null_count() == 0
    return frame.with_columns(hour=pl.col("ts").dt.truncate("1h"))


def test_spike_events_land_in_unit_window_and_category(geo: CityGeography, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = DemoCity(DENSE, geo).planted
    spikes = plan.filter(pl.col("kind") == "spike")
    events = _dense_window(geo, spikes, monkeypatch)
    for row in spikes.filter(pl.col("source_kind") == "request").iter_rows(named=True):
        mine = events.filter(pl.col("planted") == row["anomaly_id"])
        assert mine.height == int(row["intensity"])
        assert set(mine["tract_id"]) <= _tracts_of(geo, row["level"], row["unit_id"])
        assert set(mine["category"]) == {row["category"]}
        assert mine["ts"].min() >= row["start"]
        assert mine["ts"].max() < row["end"]


def test_spikes_only_add_events(geo: CityGeography, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = DemoCity(DENSE, geo).planted
    keys = ["tract_id", "hour", "category"]
    with_spikes = _dense_window(geo, plan.filter(pl.col("kind") == "spike"), monkeypatch)
    clean = _dense_window(geo, plan.clear(), monkeypatch)
    organic = with_spikes.filter(pl.col("planted").is_null()).group_by(keys).len().sort(keys)
    assert_frame_equal(organic, clean.group_by(keys).len().sort(keys))
    assert with_spikes.height - clean.height == int(
        plan.filter((pl.col("kind") == "spike") & (pl.col("source_kind") == "request"))["intensity"].sum()
    )


def test_mix_shifts_only_relabel(geo: CityGeography, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = DemoCity(DENSE, geo).planted
    shifts = plan.filter(pl.col("kind") == "mix_shift")
    assert shifts.height >= 4
    shifted = _dense_window(geo, plan, monkeypatch)
    unshifted = _dense_window(geo, plan.filter(pl.col("kind") != "mix_shift"), monkeypatch)
    # Totals per tract and hour, hence per unit and window, are exactly those without the shifts.
    keys = ["tract_id", "hour"]
    assert_frame_equal(shifted.group_by(keys).len().sort(keys), unshifted.group_by(keys).len().sort(keys))
    touched = pl.lit(False)
    for row in shifts.iter_rows(named=True):
        tracts = _tracts_of(geo, row["level"], row["unit_id"])
        in_region = pl.col("tract_id").is_in(list(tracts)) & (pl.col("ts") >= row["start"]) & (pl.col("ts") < row["end"])
        touched |= in_region
        relabelled = shifted.filter(pl.col("planted") == row["anomaly_id"])
        assert relabelled.height > 0, f"mix shift {row['anomaly_id']} relabelled nothing"
        assert relabelled.filter(~in_region).height == 0
        assert set(relabelled["category"]) == {row["category"]}
        assert shifted.filter(in_region).height == unshifted.filter(in_region).height
    # Outside the shifted regions the category mix is untouched.
    cat_keys = [*keys, "category"]
    outside = [f.filter(~touched).group_by(cat_keys).len().sort(cat_keys) for f in (shifted, unshifted)]
    assert_frame_equal(*outside)


# ---- rhythm and spatial variation ---------------------------------------------------------------
def _requests_with_profile(snap: Snapshot) -> pl.DataFrame:
    profiles = pl.read_csv(MIX_PATH).select(pl.col("complaint_type").alias("category"), "profile").unique()
    events = snap.events("nyc").filter(pl.col("kind") == "request")
    return events.join(profiles, on="category", how="left").with_columns(hour=pl.col("ts").dt.hour(), weekday=pl.col("ts").dt.weekday())


@pytest.mark.parametrize(
    ("profile", "peak_hours", "quiet_hours", "min_ratio"),
    [
        # Noise, parties, fireworks: late evening and night, almost nothing in the morning.
        ("night", [21, 22, 23, 0, 1, 2], [6, 7, 8, 9, 10, 11], 3.0),
        # Heat, plumbing, leaks: reported from the early morning on, rarely at night.
        ("morning", [6, 7, 8, 9, 10, 11], [0, 1, 2, 3, 4, 5], 2.0),
        ("day", [9, 10, 11, 12, 13, 14], [0, 1, 2, 3, 4, 5], 3.0),
    ],
)
def test_daily_rhythm(tiny_snap: Snapshot, profile: str, peak_hours: list[int], quiet_hours: list[int], min_ratio: float) -> None:
    rows = _requests_with_profile(tiny_snap).filter(pl.col("profile") == profile)
    peak = rows.filter(pl.col("hour").is_in(peak_hours)).height
    quiet = rows.filter(pl.col("hour").is_in(quiet_hours)).height
    assert rows.height > 1000
    assert peak > min_ratio * quiet


@pytest.mark.parametrize(
    ("profile", "weekend_days", "weekday_days", "relation"),
    [("day", [6, 7], [1, 2, 3, 4], "lower"), ("night", [5, 6], [1, 2, 3], "higher")],
)
def test_weekly_rhythm(tiny_snap: Snapshot, profile: str, weekend_days: list[int], weekday_days: list[int], relation: str) -> None:
    rows = _requests_with_profile(tiny_snap).filter(pl.col("profile") == profile)
    per_day = rows.group_by(pl.col("ts").dt.date().alias("date"), "weekday").len()

    def mean_of(days: list[int]) -> float:
        return float(per_day.filter(pl.col("weekday").is_in(days))["len"].mean())

    ratio = mean_of(weekend_days) / mean_of(weekday_days)
    assert ratio < 0.85 if relation == "lower" else ratio > 1.2


@pytest.mark.parametrize("kind", ["request", "incident"])
def test_tract_base_rates_vary_beyond_noise(tiny_snap: Snapshot, geo: CityGeography, kind: str) -> None:
    counts = tiny_snap.events("nyc").filter((pl.col("kind") == kind) & pl.col("tract_id").is_not_null()).group_by("tract_id").len()
    per_tract = np.zeros(len(geo.tract_ids))
    index = {tid: i for i, tid in enumerate(geo.tract_ids)}
    per_tract[[index[t] for t in counts["tract_id"]]] = counts["len"].to_numpy()
    # Equal rates would give Poisson counts: variance ~ mean. Distinct base rates inflate it.
    assert per_tract.var() / per_tract.mean() > 3
    assert per_tract.std() / per_tract.mean() > 0.5
