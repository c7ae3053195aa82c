"""Golden cases of the volume-versus-mix verdict: a spike adds events on top of an ordinary mix, a
mix shift moves them between categories with the total unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from app.engine.bins import CUBE_SCHEMA
from app.engine.detect import DetectionSettings, detect
from app.engine.explain import OTHER, explain

T0 = datetime(2026, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
CATS = {"a": 20, "b": 20, "c": 20}  # a steady unit: 20 of each category every day


def cube(today: dict[str, int]) -> pl.DataFrame:
    rows = [(d, c, n) for d in range(28) for c, n in CATS.items()] + [(28, c, n) for c, n in today.items()]
    return pl.DataFrame(
        {
            "level": "tract",
            "unit_id": "u",
            "parent_id": "n",
            "category": [r[1] for r in rows],
            "bin_start": [T0 + r[0] * DAY for r in rows],
            "count": [r[2] for r in rows],
        },
        schema=CUBE_SCHEMA,
    )


def verdict(today: dict[str, int], hidden: pl.DataFrame | None = None) -> dict[str, object]:
    run = detect(cube(today), {"tract": 1}, ("tract",), T0 + 28 * DAY, T0 + 29 * DAY, DetectionSettings(q=1.0, min_z=3.0))
    found = run.anomalies.filter(pl.col("category") == "a")
    assert found.height == 1
    return explain(run, found, hidden=hidden).row(0, named=True)


def test_a_spike_on_top_of_an_ordinary_mix_is_volume() -> None:
    row = verdict({"a": 60, "b": 20, "c": 20})
    assert row["effect"] == "volume"
    assert row["others_z"] == pytest.approx(0.0, abs=0.3)
    assert row["share"] == pytest.approx(1.0, abs=0.02)  # all of the excess is category a


def test_relabelling_with_the_total_unchanged_is_mix() -> None:
    row = verdict({"a": 60, "b": 0, "c": 0})  # 60 events, as every day; all of them now "a"
    assert row["effect"] == "mix"
    assert row["volume_z"] == pytest.approx(0.0, abs=0.3)
    assert row["others_z"] < -3
    assert row["drivers"][0]["category"] == "a"


def test_more_events_and_a_shifted_mix_is_both() -> None:
    row = verdict({"a": 140, "b": 0, "c": 0})
    assert row["effect"] == "volume+mix"


def test_withheld_categories_are_merged_before_attribution() -> None:
    hidden = pl.DataFrame(
        {"level": ["tract"], "unit_id": ["u"], "category": ["c"], "bin_start": [T0 + 28 * DAY]},
        schema={"level": pl.String, "unit_id": pl.String, "category": pl.String, "bin_start": pl.Datetime("us", "UTC")},
    )
    row = verdict({"a": 60, "b": 20, "c": 31}, hidden=hidden)
    names = {d["category"] for d in row["drivers"]}
    assert "c" not in names
    assert OTHER in names  # c's excess is reported only inside the withheld remainder
