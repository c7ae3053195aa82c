"""Planting anomalies into real background (:mod:`bench.plant`), the background-aware score
(:func:`app.engine.evaluate.evaluate_against_background`) and a smoke run of the real-data
evaluation (:mod:`bench.real_planted`) on a slice of the shared Chicago crimes (skipped with the
reason when ``../shared/data`` is absent).

The planting tests run on a small synthetic city (4 community-area-like neighborhoods of 3 tracts)
so every property can be checked exactly and fast."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.data.geography import tract_parents
from app.data.snapshot import EVENT_SCHEMA
from app.engine.evaluate import evaluate_against_background
from bench.plant import SIZE_CLASSES, TRUTH_SCHEMA, PlantDesign, PlantGroup, Planting, plant
from conftest import SHARED_DATA

SINCE = datetime(2026, 3, 2, tzinfo=UTC)
UNTIL = SINCE + timedelta(days=14)
HISTORY = timedelta(days=28)
CATEGORIES = ("noise", "heat", "rodent", "graffiti", "parking")
HOODS = {"N1": "B1", "N2": "B1", "N3": "B2", "N4": "B2"}


def _units() -> pl.DataFrame:
    rows: list[tuple[str, str, str | None]] = [("tract", f"{n}-T{i}", n) for n in HOODS for i in range(3)]
    rows += [("neighborhood", n, b) for n, b in HOODS.items()] + [("borough", b, "city") for b in ("B1", "B2")] + [("city", "city", None)]
    return pl.DataFrame(rows, schema=["level", "unit_id", "parent_id"], orient="row")


def _events(seed: int = 1) -> pl.DataFrame:
    """Poisson background: about 3 events per tract, category and day (neighborhood-days of ~45)."""
    rng = np.random.default_rng(seed)
    tracts = [f"{n}-T{i}" for n in HOODS for i in range(3)]
    start = SINCE - HISTORY
    n_days = (UNTIL - start).days
    counts = rng.poisson(3.0, (len(tracts), len(CATEGORIES), n_days))
    t, c, d = np.nonzero(counts)
    reps = counts[t, c, d]
    t, c, d = np.repeat(t, reps), np.repeat(c, reps), np.repeat(d, reps)
    micros = int(start.timestamp()) * 1_000_000 + d * 86_400_000_000 + rng.integers(0, 86_400_000_000, len(d))
    return pl.DataFrame(
        {
            "kind": ["request"] * len(d),
            "category": np.asarray(CATEGORIES, dtype=object)[c].tolist(),
            "tract_id": np.asarray(tracts, dtype=object)[t].tolist(),
            "area_id": pl.Series([None] * len(d), dtype=pl.String),
            "ts": pl.Series(micros).cast(pl.Datetime("us", "UTC")),
            "lon": rng.uniform(-87.7, -87.6, len(d)),
            "lat": rng.uniform(41.8, 41.9, len(d)),
            "id": [f"real-{i}" for i in range(len(d))],
            "extra": ["kept"] * len(d),
        }
    )


def _design(seed: int = 0) -> PlantDesign:
    groups = (
        PlantGroup("spike", "tract", "at_k", SIZE_CLASSES["at_k"], 2),
        PlantGroup("spike", "neighborhood", "large", SIZE_CLASSES["large"], 1),
        PlantGroup("mix_shift", "neighborhood", "at_k", SIZE_CLASSES["at_k"], 2),
        PlantGroup("mix_shift", "tract", "small", (3, 4), 1),
    )
    return PlantDesign(SINCE, UNTIL, groups, seed=seed, top_categories=3)


@pytest.fixture(scope="module")
def planted() -> tuple[pl.DataFrame, Planting]:
    events = _events()
    assert {c: events.schema[c] for c in EVENT_SCHEMA} == EVENT_SCHEMA  # the engine's event frame
    return events, plant(events, _units(), _design())


def _unit_of(frame: pl.DataFrame, level: str) -> pl.DataFrame:
    parents = tract_parents(_units()).select("tract_id", "neighborhood_id")
    return frame.join(parents, on="tract_id", how="left").with_columns(unit=pl.col("tract_id" if level == "tract" else "neighborhood_id"))


def test_planting_is_seeded_and_deterministic(planted: tuple[pl.DataFrame, Planting]) -> None:
    events, first = planted
    again = plant(events, _units(), _design())
    assert again.events.equals(first.events)
    assert again.truth.equals(first.truth)
    other = plant(events, _units(), _design(seed=1))
    assert not other.truth.equals(first.truth)


def test_every_designed_plant_is_placed_with_its_designed_size(planted: tuple[pl.DataFrame, Planting]) -> None:
    _, planting = planted
    truth = planting.truth
    assert truth.schema == TRUTH_SCHEMA
    assert planting.skipped.height == 0
    assert truth.height == sum(g.count for g in _design().groups)
    groups = [g for g in _design().groups for _ in range(g.count)]
    for row, group in zip(truth.iter_rows(named=True), groups, strict=True):
        assert (row["kind"], row["level"], row["size_class"]) == (group.kind, group.level, group.size_class)
        assert group.per_day[0] <= row["per_day"] <= group.per_day[1]
        assert group.days[0] <= row["days"] <= group.days[1]
        assert row["end"] - row["start"] == timedelta(days=row["days"])
        assert row["start"] >= SINCE
        assert row["end"] <= UNTIL
        assert row["start"] == row["start"].replace(hour=0, minute=0, second=0, microsecond=0)
        assert row["events"] == row["per_day"] * row["days"]
    # Each plant touches exactly per_day rows on each of its days.
    per_day = planting.changed().group_by("plant_id", day=pl.col("ts").dt.truncate("1d")).len()
    expected = truth.select("anomaly_id", "per_day", "days")
    check = per_day.join(expected, left_on="plant_id", right_on="anomaly_id")
    assert (check["len"] == check["per_day"]).all()
    assert check.group_by("plant_id").len()["len"].sort().to_list() == truth.sort("anomaly_id")["days"].sort().to_list()


def test_the_truth_describes_the_planted_rows(planted: tuple[pl.DataFrame, Planting]) -> None:
    events, planting = planted
    for row in planting.truth.iter_rows(named=True):
        rows = _unit_of(planting.events.filter(pl.col("plant_id") == row["anomaly_id"]), row["level"])
        assert rows.height == row["events"]
        assert set(rows["category"]) == {row["category"]}
        assert set(rows["unit"]) == {row["unit_id"]}
        assert rows["ts"].min() >= row["start"]
        assert rows["ts"].max() < row["end"]
        originals = events.join(rows.select("id"), on="id", how="semi")
        if row["kind"] == "spike":
            assert originals.height == 0  # new rows, new ids
            assert set(rows["extra"]) == {"kept"}  # pass-through columns copied from a real event
        else:
            assert originals.height == row["events"]  # existing rows, relabelled from other categories
            assert (originals["category"] != row["category"]).all()
    untouched = planting.events.filter(pl.col("plant_id").is_null()).drop("plant_id")
    assert untouched.equals(events.join(planting.changed().select("id"), on="id", how="anti"))


def test_mix_shifts_leave_every_total_unchanged(planted: tuple[pl.DataFrame, Planting]) -> None:
    events, planting = planted
    spikes = planting.truth.filter(pl.col("kind") == "spike")
    assert planting.events.height == events.height + spikes["events"].sum()
    without_spikes = planting.events.filter(~pl.col("plant_id").is_in(spikes["anomaly_id"].implode()) | pl.col("plant_id").is_null())
    keys = ["tract_id", pl.col("ts").dt.truncate("1d").alias("day")]
    before = events.group_by(keys).len().sort("tract_id", "day")
    after = without_spikes.group_by(keys).len().sort("tract_id", "day")
    assert before.equals(after)
    # ... while the mix really moved: each mix shift's category grew by its size in its unit.
    for row in planting.truth.filter(pl.col("kind") == "mix_shift").iter_rows(named=True):
        share = _unit_of(without_spikes, row["level"]).filter(
            (pl.col("unit") == row["unit_id"]) & pl.col("ts").is_between(row["start"], row["end"], closed="left")
        )
        base = _unit_of(events, row["level"]).filter(
            (pl.col("unit") == row["unit_id"]) & pl.col("ts").is_between(row["start"], row["end"], closed="left")
        )
        grew = (share["category"] == row["category"]).sum() - (base["category"] == row["category"]).sum()
        assert grew == row["events"]


def test_plants_never_share_a_neighborhood_when_the_city_has_room() -> None:
    design = PlantDesign(SINCE, UNTIL, (PlantGroup("spike", "neighborhood", "at_k", (11, 11), 4),), top_categories=2)
    truth = plant(_events(), _units(), design).truth
    assert truth["unit_id"].n_unique() == 4
    # A fifth plant must reuse a neighborhood: then it keeps a free day from the others there.
    crowded = plant(_events(), _units(), PlantDesign(SINCE, UNTIL, (PlantGroup("spike", "neighborhood", "at_k", (11, 11), 6),)))
    assert crowded.truth.height == 6
    for _unit, rows in crowded.truth.group_by("unit_id"):
        starts, ends = rows.sort("start")["start"].to_list(), rows.sort("start")["end"].to_list()
        assert all(s >= e + timedelta(days=1) for s, e in zip(starts[1:], ends[:-1], strict=False))


def test_a_mix_shift_the_data_cannot_hold_is_skipped_and_said() -> None:
    design = PlantDesign(SINCE, UNTIL, (PlantGroup("mix_shift", "neighborhood", "huge", (500, 500), 1),))
    out = plant(_events(), _units(), design)
    assert out.truth.height == 0
    assert out.skipped.height == 1
    assert "500/day" in out.skipped["reason"][0]
    assert out.events.drop("plant_id").equals(_events())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PlantDesign(SINCE + timedelta(hours=5), UNTIL, ()), "UTC midnights"),
        (lambda: PlantDesign(SINCE, UNTIL, (), max_share=0.0), "max_share"),
        (lambda: PlantGroup("spike", "borough", "x", (1, 2), 1), "plants target"),
        (lambda: PlantGroup("spike", "tract", "x", (5, 2), 1), "bad plant group"),
    ],
)
def test_bad_designs_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]  # the parametrised factories


def test_plant_needs_the_event_frame_and_ids() -> None:
    with pytest.raises(ValueError, match="lack columns"):
        plant(_events().drop("id"), _units(), _design())
    with pytest.raises(ValueError, match="no events"):
        plant(_events().filter(pl.col("ts") < SINCE), _units(), _design())


# ---- precision against the real data's own anomalies -------------------------------------------
def test_unmatched_detections_count_against_precision_only_when_new() -> None:
    day = SINCE + timedelta(days=3)
    truth = pl.DataFrame(
        {
            "anomaly_id": [1, 2],
            "unit_id": ["N1", "N3-T0"],
            "category": ["noise", "heat"],
            "start": [day, day],
            "end": [day + timedelta(days=1)] * 2,
        }
    )

    def cells(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "level": [r[0] for r in rows],
                "unit_id": [r[1] for r in rows],
                "category": [r[2] for r in rows],
                "window_start": [day] * len(rows),
                "window_end": [day + timedelta(days=1)] * len(rows),
            }
        )

    found = cells([("tract", "N1-T2", "noise"), ("neighborhood", "N2", "rodent"), ("neighborhood", "N4", "heat")])
    background = cells([("neighborhood", "N2", "rodent")])  # the data's own: neither true nor false
    score = evaluate_against_background(found, background, truth, tract_parents(_units()))
    assert (score.true_detections, score.detections, score.found, score.planted) == (1, 2, 1, 2)
    assert score.precision == 0.5
    assert score.recall == 0.5


# ---- the real-data run on a slice of the shared Chicago crimes -----------------------------------
CRIMES = SHARED_DATA / "events" / "chicago" / "chicago_crimes_2022_slim.csv.gz"
needs_real = pytest.mark.skipif(
    not (CRIMES.exists() and (SHARED_DATA / "geo" / "chicago").is_dir()),
    reason=f"shared real data absent ({CRIMES.name} or geo/chicago under {SHARED_DATA}); see ../shared/data/README.md",
)


@needs_real
def test_real_slice_is_imported_by_community_area_and_evaluated(tmp_path: Path) -> None:
    from bench.real_planted import GEO, RealRun, city_geography, clean_store, export_slice, real_planted_figures

    since, until = datetime(2022, 10, 1, tzinfo=UTC), datetime(2022, 10, 15, tzinfo=UTC)
    design = PlantDesign(
        since,
        until,
        (
            PlantGroup("spike", "neighborhood", "large", SIZE_CLASSES["large"], 3),
            PlantGroup("mix_shift", "neighborhood", "at_k", (11, 11), 2),
        ),
    )
    run = RealRun(since, until, timedelta(days=29), timedelta(days=7), seeds=(0,), design=design, variants=("",))
    export = export_slice(CRIMES, tmp_path / "slice.csv", "2022-09-02", "2022-10-15")
    with gzip.open(CRIMES, "rt", encoding="utf-8", newline="") as fh:
        direct = Counter(r["Community Area"] for r in csv.DictReader(fh) if "2022-09-02" <= r["Date"] < "2022-10-15")

    with city_geography(SHARED_DATA / GEO):
        _store, snaps, _events = clean_store(SHARED_DATA, tmp_path / "check", run, export)
        snap = snaps[""]
        stored = snap.events("chicago").join(tract_parents(snap.units("chicago")), on="tract_id", how="left")
        stored = stored.with_columns(neighborhood_id=pl.coalesce("neighborhood_id", "area_id"))
    assert stored["neighborhood_id"].null_count() == 0  # every row counted in its community area (the user's import)
    assert Counter(dict(stored.group_by("neighborhood_id").len().iter_rows())) == direct
    assert snap.release_meta("chicago")["grains"]["neighborhood"] in ("day", "week")  # chosen from the data

    figures = real_planted_figures(SHARED_DATA, tmp_path / "run", run)
    assert figures["real_planted_plants"] == (5, "plants")
    ratios = [v for name, (v, unit) in figures.items() if unit == "ratio"]
    assert ratios
    assert all(0.0 <= v <= 1.0 for v in ratios)
    assert figures["real_background_anomalies_per_week_rolling_z"][0] >= 0
    assert figures["real_planted_recall_rolling_z"][0] > 0  # 50+ extra events a day are not invisible
    assert figures["window_invariance"] == (1.0, "ratio")  # published scores do not depend on the window
