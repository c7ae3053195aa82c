"""Narratives: golden sentences for hand-made anomaly rows, and the privacy property that a withheld
count cannot be read back from its sentence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.narratives import baseline_phrase, narrate, narrate_row, when_phrase

SATURDAY = datetime(2026, 11, 14, tzinfo=UTC)
LOUD = {"category": "Loud Music/Party", "excess": 23.4, "share": 0.71}
BASE: dict[str, Any] = {
    "unit_name": "Bushwick North",
    "category": "Noise - Residential",
    "observed": 48,
    "expected": 15.0,
    "zscore": 6.1,
    "q": 0.001,
    "time_bin": "day",
    "bin_start": SATURDAY,
    "baseline_days": 28,
    "effect": "volume",
    "drivers": [LOUD],
    "rolled_up_from": None,
}


def row(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


GOLDEN = [
    pytest.param(
        row(),
        "Noise - Residential in Bushwick North is 3.2\u00d7 its 4-week Saturday baseline (48 vs 15 expected, z = 6.1); Loud Music/Party is 71 % of the excess.",
        id="day",
    ),
    pytest.param(
        row(
            time_bin="hour", bin_start=SATURDAY + timedelta(hours=14), observed=9, expected=2.44, zscore=4.04, baseline_days=14, drivers=[]
        ),
        "Noise - Residential in Bushwick North is 3.7\u00d7 its 2-week Saturday 14:00\u201315:00 baseline (9 vs 2.4 expected, z = 4.0).",
        id="hour",
    ),
    pytest.param(
        row(
            category="*",
            unit_name="Midtown",
            time_bin="week",
            bin_start=datetime(2026, 11, 16, tzinfo=UTC),
            observed=412,
            expected=300.4,
            zscore=5.55,
            drivers=[
                {"category": "Illegal Parking", "excess": 60.2, "share": 0.5},
                {"category": "Noise - Street", "excess": 30.1, "share": 0.25},
            ],
        ),
        "All activity in Midtown is 1.4\u00d7 its 4-week baseline in the week of 16 Nov (412 vs 300 expected, z = 5.5); "
        "Illegal Parking is 50 % and Noise - Street 25 % of the excess.",
        id="week-all-categories",
    ),
    pytest.param(
        row(
            category="*",
            observed=40,
            expected=39.6,
            zscore=0.06,
            effect="mix",
            drivers=[{"category": "Loud Music/Party", "excess": 8.2, "share": 0.9}],
        ),
        "All activity in Bushwick North is 1.0\u00d7 its 4-week Saturday baseline (40 vs 40 expected, z = 0.1); "
        "total activity is normal; the mix shifted towards Loud Music/Party (+8.2).",
        id="mix",
    ),
    pytest.param(
        row(effect="volume+mix"),
        "Noise - Residential in Bushwick North is 3.2\u00d7 its 4-week Saturday baseline (48 vs 15 expected, z = 6.1); "
        "Loud Music/Party is 71 % of the excess; the mix also shifted towards Loud Music/Party.",
        id="volume-plus-mix",
    ),
    pytest.param(
        row(rolled_up_from="tract", drivers=[]),
        "Noise - Residential in Bushwick North is 3.2\u00d7 its 4-week Saturday baseline (48 vs 15 expected, z = 6.1) "
        "(shown at neighborhood level: tract counts are too small to publish).",
        id="rolled-up",
    ),
    pytest.param(
        row(rolled_up_from="tract", level="borough", drivers=[]),
        "Noise - Residential in Bushwick North is 3.2\u00d7 its 4-week Saturday baseline (48 vs 15 expected, z = 6.1) "
        "(shown at borough level: tract counts are too small to publish).",
        id="rolled-up-two-levels",
    ),
    pytest.param(
        row(observed=7, expected=1.2, zscore=5.0),
        "Noise - Residential in Bushwick North is 5.8\u00d7 its 4-week Saturday baseline (7 vs 1.2 expected, z = 5.0); Loud Music/Party is 71 % of the excess.",
        id="small-expected",
    ),
    pytest.param(
        row(observed=6, expected=0.04, zscore=29.8, drivers=[], baseline_days=10),
        "Noise - Residential in Bushwick North is far above its 10-day Saturday baseline (6 vs under 1 expected, z = 29.8).",
        id="near-zero-expected",
    ),
    pytest.param(
        row(observed=None, expected=1.2, zscore=5.0, rolled_up_from="tract"),
        "Noise - Residential in Bushwick North is flagged as unusual against its 4-week Saturday baseline "
        "(1.2 expected; the count is withheld because it is too small to publish); the excess is led by Loud Music/Party "
        "(shown at neighborhood level: tract counts are too small to publish).",
        id="withheld",
    ),
    pytest.param(
        row(observed=None, expected=3.0, zscore=0.5, effect="mix"),
        "Noise - Residential in Bushwick North is flagged as unusual against its 4-week Saturday baseline "
        "(3.0 expected; the count is withheld because it is too small to publish); total activity is normal; the mix shifted towards Loud Music/Party.",
        id="withheld-mix",
    ),
]


@pytest.mark.parametrize(("anomaly", "sentence"), GOLDEN)
def test_golden_sentences(anomaly: dict[str, Any], sentence: str) -> None:
    assert narrate_row(anomaly) == sentence


def test_when_phrases() -> None:
    assert when_phrase("hour", datetime(2026, 11, 15, 23, tzinfo=UTC)) == "Sunday 23:00\u201300:00"
    assert when_phrase("week", datetime(2026, 1, 5, tzinfo=UTC)) == "week of 5 Jan"
    # An aware time in another zone is labelled by its UTC bin, as the bins are cut.
    assert when_phrase("hour", datetime(2026, 11, 14, 9, tzinfo=timezone(timedelta(hours=-5)))) == "Saturday 14:00\u201315:00"
    with pytest.raises(ValueError, match="month"):
        when_phrase("month", SATURDAY)


@pytest.mark.parametrize(("days", "phrase"), [(28, "4-week"), (14, "2-week"), (21, "3-week"), (7, "7-day"), (10, "10-day")])
def test_baseline_phrases(days: int, phrase: str) -> None:
    assert baseline_phrase(days) == phrase


def test_narrate_a_frame_with_withheld_and_driverless_rows() -> None:
    frame = pl.DataFrame([row(), row(observed=None, drivers=[]), row(drivers=[])])
    assert frame.schema["drivers"] == pl.List(pl.Struct({"category": pl.String, "excess": pl.Float64, "share": pl.Float64}))
    out = narrate(frame)
    assert out.name == "narrative"
    assert out.dtype == pl.String
    assert out.to_list() == [
        narrate_row(row()),
        "Noise - Residential in Bushwick North is flagged as unusual against its 4-week Saturday baseline "
        "(15 expected; the count is withheld because it is too small to publish).",
        "Noise - Residential in Bushwick North is 3.2\u00d7 its 4-week Saturday baseline (48 vs 15 expected, z = 6.1).",
    ]


names = st.text(alphabet=st.characters(categories=["L", "Zs"]), min_size=1, max_size=12)
drivers = st.lists(st.fixed_dictionaries({"category": names, "excess": st.floats(0.1, 50.0), "share": st.floats(0.0, 1.0)}), max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    hidden=st.integers(min_value=1, max_value=10),
    other=st.integers(min_value=1, max_value=10),
    expected=st.floats(min_value=0.0, max_value=30.0),
    variance=st.floats(min_value=0.1, max_value=30.0),
    q=st.floats(min_value=0.0, max_value=0.05),
    time_bin=st.sampled_from(["hour", "day", "week"]),
    hours=st.integers(min_value=0, max_value=24 * 365),
    effect=st.sampled_from(["volume", "mix", "volume+mix", "none"]),
    found=drivers,
    rolled_up_from=st.sampled_from([None, "tract", "neighborhood"]),
)
def test_a_withheld_count_cannot_be_read_back(
    hidden: int,
    other: int,
    expected: float,
    variance: float,
    q: float,
    time_bin: str,
    hours: int,
    effect: str,
    found: list[dict[str, Any]],
    rolled_up_from: str | None,
) -> None:
    """Everything computed from the hidden count (z, q, driver shares and excesses) is still in a
    released row; the sentence must not change when they do, so it cannot reveal the count."""

    def released(count: int, q: float) -> dict[str, Any]:
        z = (count - expected) / variance**0.5
        shares = [{**d, "excess": d["excess"] * count, "share": d["share"] / count} for d in found]
        return row(
            observed=None,
            expected=expected,
            zscore=z,
            q=q,
            time_bin=time_bin,
            bin_start=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours),
            effect=effect,
            drivers=shares,
            rolled_up_from=rolled_up_from,
        )

    sentence = narrate_row(released(hidden, q))
    assert sentence == narrate_row(released(other, q / 2))
    assert "withheld" in sentence
    assert f"{hidden} vs" not in sentence
    assert "\u00d7" not in sentence
    assert "z =" not in sentence
    assert "%" not in sentence
