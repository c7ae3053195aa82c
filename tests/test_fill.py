"""Stand-ins of withheld cells (:func:`app.engine.fill.fill_withheld`): functions of released numbers
only, raked to the margins the release gives, so a busy unit and a common category get the larger
shares."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from app.engine.fill import fill_withheld

B = datetime(2026, 10, 19, 4, tzinfo=UTC)
GRAINS = {"tract": "week", "neighborhood": "week"}
TZ = "America/New_York"


def _cell(level: str, unit: str, parent: str | None, category: str, count: int | None) -> dict[str, object]:
    return {
        "level": level,
        "unit_id": unit,
        "parent_id": parent,
        "category": category,
        "bin_start": B,
        "count": count,
        "suppressed": count is None,
    }


def _released(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "level": pl.String,
            "unit_id": pl.String,
            "parent_id": pl.String,
            "category": pl.String,
            "bin_start": pl.Datetime("us", "UTC"),
            "count": pl.Int64,
            "suppressed": pl.Boolean,
        },
    )


def _filled(rows: list[dict[str, object]]) -> dict[tuple[str, str], float]:
    out = fill_withheld(_released(rows), GRAINS, TZ, ["tract", "neighborhood"], 11)
    return {(r["unit_id"], r["category"]): r["filled"] for r in out.iter_rows(named=True)}


# A neighborhood of three tracts: a is busy (40 events, 30 of them released), b and c are quiet.
# Categories x and y are withheld in every tract; the neighborhood releases x = 12 and y = 6 (after
# the released tract cells there is nothing else to subtract).
TABLE = [
    _cell("neighborhood", "n", None, "*", 62),
    _cell("neighborhood", "n", None, "x", 12),
    _cell("neighborhood", "n", None, "y", 6),
    _cell("neighborhood", "n", None, "z", 44),
    _cell("tract", "a", "n", "*", 40),
    _cell("tract", "a", "n", "z", 30),
    _cell("tract", "a", "n", "x", None),
    _cell("tract", "a", "n", "y", None),
    _cell("tract", "b", "n", "*", 11),
    _cell("tract", "b", "n", "z", None),
    _cell("tract", "b", "n", "x", None),
    _cell("tract", "b", "n", "y", None),
    _cell("tract", "c", "n", "*", 11),
    _cell("tract", "c", "n", "z", None),
    _cell("tract", "c", "n", "x", None),
    _cell("tract", "c", "n", "y", None),
]


def test_stand_ins_add_up_to_what_each_parent_cell_leaves() -> None:
    filled = _filled(TABLE)
    for cat, parent in (("x", 12), ("y", 6), ("z", 44)):
        assert sum(filled[(t, cat)] for t in "abc") == pytest.approx(parent)
    assert filled[("a", "z")] == 30  # released cells keep their count


def test_a_busy_tract_and_a_common_category_get_the_larger_shares() -> None:
    filled = _filled(TABLE)
    # Tract a has 10 withheld events (40 - 30) over x and y, b and c have 11 each but mostly in z
    # (the neighborhood's z leaves 14 for them): a takes the larger share of x and y.
    assert filled[("a", "x")] > filled[("b", "x")] == pytest.approx(filled[("c", "x")])
    assert filled[("a", "x")] + filled[("a", "y")] == pytest.approx(10, abs=0.5)  # a's own row margin, nearly
    assert filled[("a", "x")] > filled[("a", "y")]  # x is the more common of the two in n
    # An even split would give every tract 4 of x whatever its size.
    assert filled[("a", "x")] > 4.0


def test_stand_ins_of_a_bin_use_that_bin_only() -> None:
    later = [{**row, "bin_start": datetime(2026, 10, 26, 4, tzinfo=UTC)} for row in TABLE]
    busy_later = [{**r, "count": 400} if r["unit_id"] == "n" and r["category"] == "z" else r for r in later]
    alone = _filled(TABLE)
    out = fill_withheld(_released(TABLE + busy_later), GRAINS, TZ, ["tract", "neighborhood"], 11).filter(pl.col("bin_start") == B)
    with_later = {(r["unit_id"], r["category"]): r["filled"] for r in out.iter_rows(named=True)}
    assert with_later == pytest.approx(alone)
