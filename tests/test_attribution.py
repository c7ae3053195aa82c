"""Attribution: the volume/mix split of each unit-window's excess, checked on numbers small enough
to work out by hand, plus the identities it must keep on any input."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from app.engine.attribution import EFFECTS, KEY, contributions, decompose, top_drivers

T0 = datetime(2026, 11, 14, tzinfo=UTC)
SCHEMA = {
    "level": pl.String,
    "unit_id": pl.String,
    "bin_start": pl.Datetime("us", "UTC"),
    "category": pl.String,
    "observed": pl.Int64,
    "expected": pl.Float64,
    "variance": pl.Float64,
}


def cells(*rows: tuple[str, str, int, float, float], level: str = "tract") -> pl.DataFrame:
    """Cells from ``(unit_id, category, observed, expected, variance)`` tuples, all in bin ``T0``."""
    return pl.DataFrame(
        [
            {"level": level, "unit_id": u, "bin_start": T0, "category": c, "observed": o, "expected": e, "variance": v}
            for u, c, o, e, v in rows
        ],
        schema=SCHEMA,
    )


def one(frame: pl.DataFrame, unit: str) -> dict[str, object]:
    rows = frame.filter(pl.col("unit_id") == unit).to_dicts()
    assert len(rows) == 1
    return rows[0]


def column(frame: pl.DataFrame, name: str) -> list[object]:
    return frame.sort("category")[name].to_list()


# X = 15, M = 10: the window is 1.5x its baseline, so scaling the baseline mix gives 9, 4.5, 1.5.
UNEVEN = cells(("u", "x", 12, 6.0, 8.0), ("u", "y", 3, 3.0, 4.0), ("u", "z", 0, 1.0, 2.0))


def test_contributions_split_each_excess_into_volume_and_mix() -> None:
    c = contributions(UNEVEN)
    assert column(c, "excess") == [6.0, 0.0, -1.0]
    assert column(c, "volume_effect") == [3.0, 1.5, 0.5]  # 5 * expected / 10
    assert column(c, "mix_effect") == [3.0, -1.5, -1.5]  # observed - 1.5 * expected
    assert column(c, "share") == [1.0, 0.0, 0.0]  # only x is above its baseline
    assert c.columns == [*SCHEMA, "excess", "share", "volume_effect", "mix_effect"]
    assert c.schema["bin_start"] == pl.Datetime("us", "UTC")


def test_shares_are_of_the_positive_excess_only() -> None:
    c = contributions(cells(("u", "a", 4, 1.0, 1.0), ("u", "b", 2, 1.0, 1.0), ("u", "c", 0, 2.0, 2.0)))
    assert column(c, "share") == [0.75, 0.25, 0.0]  # excess 3 and 1 of 4; c's -2 does not count


def test_without_a_baseline_everything_is_volume() -> None:
    c = contributions(cells(("u", "x", 3, 0.0, 1.0), ("u", "y", 0, 0.0, 1.0)))
    assert column(c, "volume_effect") == [3.0, 0.0]
    assert column(c, "mix_effect") == [0.0, 0.0]
    d = one(decompose(c.select(list(SCHEMA))), "u")
    assert d["mix_index"] == 0.0
    assert d["mix_p"] == 1.0
    assert d["volume_z"] == pytest.approx(3 / math.sqrt(2))


def test_a_mix_shift_with_the_total_unchanged_is_mix() -> None:
    d = one(decompose(cells(("u", "x", 18, 10.0, 12.0), ("u", "y", 2, 10.0, 12.0))), "u")
    assert d["observed_total"] == 20
    assert d["expected_total"] == 20.0
    assert d["variance_total"] == 24.0
    assert d["excess"] == 0.0
    assert d["volume_z"] == 0.0
    assert d["mix_index"] == 8.0  # 8 events moved from y to x
    assert d["mix_share"] == pytest.approx(0.4)
    # Pearson: 8^2/10 + 8^2/10 = 12.8 on 1 df; the chi-square(1) tail is erfc(sqrt(x / 2)).
    assert d["mix_p"] == pytest.approx(math.erfc(math.sqrt(6.4)), rel=1e-9)
    assert d["effect"] == "mix"


def test_more_of_the_same_is_volume() -> None:
    d = one(decompose(cells(("u", "x", 30, 10.0, 10.0), ("u", "y", 30, 10.0, 10.0))), "u")
    assert d["excess"] == 40.0
    assert d["volume_z"] == pytest.approx(40 / math.sqrt(20))
    assert d["mix_index"] == 0.0
    assert d["mix_p"] == pytest.approx(1.0)
    assert d["effect"] == "volume"


def test_more_and_different_is_volume_plus_mix() -> None:
    d = one(decompose(cells(("u", "x", 30, 10.0, 10.0), ("u", "y", 10, 10.0, 10.0))), "u")
    assert d["volume_z"] == pytest.approx(20 / math.sqrt(20))
    assert d["mix_index"] == 10.0
    assert d["mix_share"] == 0.25
    assert d["mix_p"] == pytest.approx(math.erfc(math.sqrt(5.0)), rel=1e-9)  # 10^2/20 * 2 = 10
    assert d["effect"] == "volume+mix"


def test_uneven_window_by_hand() -> None:
    d = one(decompose(UNEVEN), "u")
    assert d["excess"] == 5.0
    assert d["volume_z"] == pytest.approx(5 / math.sqrt(14))
    assert d["mix_index"] == 3.0  # (3 + 1.5 + 1.5) / 2
    assert d["mix_share"] == pytest.approx(0.2)
    # 3^2/9 + 1.5^2/4.5 + 1.5^2/1.5 = 3 on 2 df, whose tail is exp(-x / 2).
    assert d["mix_p"] == pytest.approx(math.exp(-1.5), rel=1e-9)
    assert d["effect"] == "none"


def test_thresholds_are_keyword_arguments() -> None:
    assert one(decompose(UNEVEN, alpha=0.5), "u")["effect"] == "mix"
    assert one(decompose(UNEVEN, alpha=0.5, z_threshold=1.0), "u")["effect"] == "volume+mix"
    assert one(decompose(UNEVEN, alpha=0.5, z_threshold=1.0, min_mix_share=0.25), "u")["effect"] == "volume"


def test_a_small_relabelling_of_a_big_window_is_not_mix() -> None:
    # 50 of 1000 events moved: significant for the chi-square test (2 * 50^2/500 = 10), too small to send anyone.
    d = one(decompose(cells(("u", "x", 550, 500.0, 600.0), ("u", "y", 450, 500.0, 600.0))), "u")
    assert d["mix_p"] == pytest.approx(math.erfc(math.sqrt(5.0)), rel=1e-9)
    assert d["mix_share"] == pytest.approx(0.05)
    assert d["effect"] == "none"


def test_a_drop_is_not_volume() -> None:
    d = one(decompose(cells(("u", "x", 0, 10.0, 2.0), ("u", "y", 0, 10.0, 2.0))), "u")
    assert d["volume_z"] == -10.0
    assert d["mix_p"] == 1.0  # no events, nothing to test
    assert d["effect"] == "none"


def test_new_categories_are_pooled_under_a_floor_not_infinite() -> None:
    # n has no baseline: pooled into one cell with baseline 0.5, so the null is 25 * (10, 10, 0.5) / 20.5.
    # Pearson = sum o^2/e - X = 8.2 + 8.2 + 41 - 25 = 32.4 on 2 df.
    d = one(decompose(cells(("u", "x", 10, 10.0, 10.0), ("u", "y", 10, 10.0, 10.0), ("u", "n", 5, 0.0, 0.5))), "u")
    assert d["mix_p"] == pytest.approx(math.exp(-16.2), rel=1e-9)
    assert d["mix_index"] == 5.0  # x and y each lose 2.5 to n
    assert d["effect"] == "mix"
    # One stray event in a new category: 9.5454... + 1.9090... - 11 = 5/11 on 1 df, nowhere near significant.
    stray = one(decompose(cells(("u", "x", 10, 10.0, 10.0), ("u", "n", 1, 0.0, 0.5))), "u")
    assert stray["mix_p"] == pytest.approx(math.erfc(math.sqrt(5 / 22)), rel=1e-9)
    assert stray["effect"] == "none"


def test_several_keys_and_levels_are_kept_apart_and_sorted() -> None:
    frame = pl.concat(
        [
            cells(("b", "x", 30, 10.0, 10.0), ("b", "y", 30, 10.0, 10.0), level="neighborhood"),
            cells(("a", "x", 18, 10.0, 12.0), ("a", "y", 2, 10.0, 12.0)),
            cells(("a", "x", 1, 1.0, 1.0), level="borough"),
        ]
    )
    d = decompose(frame.reverse())
    assert d.select("level", "unit_id", "effect").rows() == [
        ("borough", "a", "none"),
        ("neighborhood", "b", "volume"),
        ("tract", "a", "mix"),
    ]
    assert d.columns == [
        *KEY,
        "observed_total",
        "expected_total",
        "variance_total",
        "excess",
        "volume_z",
        "mix_index",
        "mix_share",
        "mix_p",
        "effect",
    ]
    assert decompose(frame).equals(d)


def test_top_drivers_rank_by_excess_then_name() -> None:
    frame = pl.concat(
        [
            cells(
                ("u", "d", 0, 2.0, 2.0), ("u", "b", 6, 1.0, 1.0), ("u", "e", 2, 1.0, 1.0), ("u", "c", 8, 1.0, 1.0), ("u", "a", 6, 1.0, 1.0)
            ),
            cells(("v", "x", 0, 1.0, 1.0), ("v", "y", 1, 1.0, 1.0)),
        ]
    )
    drivers = top_drivers(contributions(frame))
    assert drivers.columns == [*KEY, "drivers"]
    assert drivers["unit_id"].to_list() == ["u", "v"]
    # Positive excess 7 + 5 + 5 + 1 = 18; a and b tie at 5 and a wins by name; e is fourth and cut.
    assert drivers["drivers"].to_list() == [
        [
            {"category": "c", "excess": 7.0, "share": 7 / 18},
            {"category": "a", "excess": 5.0, "share": 5 / 18},
            {"category": "b", "excess": 5.0, "share": 5 / 18},
        ],
        [],
    ]
    assert top_drivers(contributions(frame), n=1)["drivers"].to_list()[0] == [{"category": "c", "excess": 7.0, "share": 7 / 18}]


def test_empty_input_gives_empty_frames() -> None:
    empty = pl.DataFrame(schema=SCHEMA)
    assert contributions(empty).height == 0
    assert decompose(empty).height == 0
    assert top_drivers(contributions(empty)).height == 0


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="variance"):
        decompose(UNEVEN.drop("variance"))


counts = st.integers(min_value=0, max_value=60)
means = st.one_of(st.just(0.0), st.floats(min_value=0.01, max_value=50.0))
category_cells = st.lists(st.tuples(counts, means, st.floats(min_value=0.05, max_value=80.0)), min_size=1, max_size=6)


@st.composite
def windows(draw: st.DrawFn) -> pl.DataFrame:
    """One to three unit-windows of up to six categories each."""
    parts = []
    for unit in ("a", "b", "c")[: draw(st.integers(min_value=1, max_value=3))]:
        parts.append(cells(*[(unit, f"k{i}", o, e, v) for i, (o, e, v) in enumerate(draw(category_cells))]))
    return pl.concat(parts)


@settings(max_examples=200, deadline=None)
@given(windows())
def test_the_split_is_exact_on_any_input(frame: pl.DataFrame) -> None:
    c = contributions(frame)
    assert all(abs(r) < 1e-9 for r in (c["volume_effect"] + c["mix_effect"] - c["excess"]).to_list())
    sums = c.group_by(KEY).agg(
        mix=pl.col("mix_effect").sum(),
        volume=pl.col("volume_effect").sum(),
        excess=pl.col("excess").sum(),
        share=pl.col("share").sum(),
        positive=(pl.col("excess") > 0).any(),
    )
    for row in sums.iter_rows(named=True):
        assert row["mix"] == pytest.approx(0.0, abs=1e-9)
        assert row["volume"] == pytest.approx(row["excess"], abs=1e-9)
        assert row["share"] == pytest.approx(1.0 if row["positive"] else 0.0)


@settings(max_examples=200, deadline=None)
@given(windows())
def test_the_verdict_is_well_formed_and_order_free(frame: pl.DataFrame) -> None:
    d = decompose(frame)
    assert d.height == frame.select(KEY).n_unique()
    for row in d.iter_rows(named=True):
        assert 0.0 <= row["mix_p"] <= 1.0
        assert 0.0 <= row["mix_share"] <= 1.0 + 1e-12
        assert math.isfinite(row["volume_z"])
        assert row["effect"] in EFFECTS
    # Sums over shuffled rows may differ in the last bit, hence not exact.
    assert_frame_equal(decompose(frame.sample(fraction=1.0, shuffle=True, seed=len(frame))), d, check_exact=False)
