"""Golden cases of why a published anomaly stands out (:func:`app.engine.drivers.explain_published`):
hand-made published scores of one unit and bin whose drivers, effect and share can be checked by
hand."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from app.engine.drivers import explain_published

B = datetime(2026, 10, 20, 4, tzinfo=UTC)


def scores(rows: list[tuple[str, int | None, float]], unit: str = "u") -> pl.DataFrame:
    """Published scores of one unit and bin from (category, observed, expected); observed None is withheld."""
    return pl.DataFrame(
        {
            "unit_id": [unit] * len(rows),
            "category": [r[0] for r in rows],
            "bin_start": [B] * len(rows),
            "observed": [r[1] for r in rows],
            "expected": [r[2] for r in rows],
        },
        schema={
            "unit_id": pl.String,
            "category": pl.String,
            "bin_start": pl.Datetime("us", "UTC"),
            "observed": pl.Int64,
            "expected": pl.Float64,
        },
    )


def explained(table: pl.DataFrame, category: str) -> dict[str, object]:
    found = table.filter(pl.col("category") == category)
    return explain_published(found, table).row(0, named=True)


def test_an_all_activity_anomaly_is_driven_by_the_categories_with_the_largest_excess() -> None:
    # Excess: a +10, b +8, c +2, d -3 (not a driver); the top three share their summed excess 20.
    table = scores([("*", 50, 33.0), ("a", 15, 5.0), ("b", 10, 2.0), ("c", 5, 3.0), ("d", 20, 23.0)])
    out = explained(table, "*")
    assert out["effect"] == "volume"
    assert out["share"] == 1.0
    assert out["drivers"] == [
        {"category": "a", "excess": 10.0, "share": 0.5},
        {"category": "b", "excess": 8.0, "share": 0.4},
        {"category": "c", "excess": 2.0, "share": 0.1},
    ]


def test_driver_shares_are_of_the_summed_positive_excess() -> None:
    """Four categories rose (10, 5, 3, 2): the top three are listed, each with its share of all 20."""
    table = scores([("*", 60, 40.0), ("a", 20, 10.0), ("b", 15, 10.0), ("c", 13, 10.0), ("e", 12, 10.0)])
    drivers = explained(table, "*")["drivers"]
    assert [d["category"] for d in drivers] == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert [d["share"] for d in drivers] == [0.5, 0.25, 0.15]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("total", "effect"),
    [
        # The category rose by 20 over its expectation; the effect depends on how much its unit rose.
        ((120, 100.0), "volume"),  # total +20: the rise is extra activity
        ((112, 100.0), "volume+mix"),  # total +12: partly at the others' expense
        ((105, 100.0), "mix"),  # total +5 < half of 20: the other categories gave way
        ((None, 100.0), "volume"),  # withheld total: not known, plain volume
    ],
)
def test_a_category_anomaly_is_volume_or_mix_by_its_units_total(total: tuple[int | None, float], effect: str) -> None:
    table = scores([("*", total[0], total[1]), ("noise", 30, 10.0), ("heat", 20, 25.0)])
    out = explained(table, "noise")
    assert out["effect"] == effect
    assert out["drivers"] == [{"category": "noise", "excess": 20.0, "share": 1.0}]
    assert out["share"] == (round(30 / total[0], 4) if total[0] is not None else None)


def test_units_and_bins_are_explained_separately() -> None:
    # Unit v's rise is its own; u's categories do not drive it.
    table = pl.concat([scores([("*", 50, 30.0), ("a", 30, 10.0)]), scores([("*", 40, 20.0), ("b", 25, 5.0)], unit="v")])
    found = table.filter(pl.col("category") == "*")
    out = {r["unit_id"]: r["drivers"] for r in explain_published(found, table).iter_rows(named=True)}
    assert out == {"u": [{"category": "a", "excess": 20.0, "share": 1.0}], "v": [{"category": "b", "excess": 20.0, "share": 1.0}]}


def test_nothing_found_explains_nothing() -> None:
    table = scores([("*", 50, 30.0)])
    out = explain_published(table.clear(), table)
    assert out.height == 0
    assert {"effect", "share", "drivers"} <= set(out.columns)


def test_a_rise_mostly_in_withheld_categories_is_not_credited_to_the_one_released() -> None:
    """The unit rose by 9; the one released category that rose gives 1 of it (the rest is in
    withheld categories): its share is of the 9, not 100 %."""
    table = scores([("*", 49, 40.0), ("a", 21, 20.0), ("b", None, 5.0), ("c", 12, 15.0)])
    drivers = explained(table, "*")["drivers"]
    assert drivers == [{"category": "a", "excess": 1.0, "share": 0.1111}]
