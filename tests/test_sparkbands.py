"""Sparkbands: which units are drawn, what each band holds, and the brush that sets the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import panel as pn
import polars as pl
import pytest

from app.data.snapshot import Snapshot
from app.engine.lens import Lens
from app.views.sparkbands import SparkbandFigures, Sparkbands, brush_window, multiples_data, pick_units

D = datetime(2026, 10, 20, tzinfo=UTC)


def test_pick_units_prefers_anomalous_then_busy() -> None:
    bands = pl.DataFrame(
        {
            "unit_id": ["a", "a", "b", "b", "c", "c"],
            "count": [5, 5, 50, 60, None, 1],
            "hi": [10.0, 10.0, 70.0, 70.0, 5.0, 5.0],
            "anomalous": [False, True, False, False, False, False],
        }
    )
    assert pick_units(bands, 2) == ["a", "b"]
    assert pick_units(bands, 10) == ["a", "b", "c"]


NY = "America/New_York"
L = datetime(2026, 10, 20, 4, tzinfo=UTC)  # New York's midnight starting 20 October (EDT)


@pytest.mark.parametrize(
    ("x0", "x1", "grain", "tz", "expected"),
    [
        (D + timedelta(hours=5), D + timedelta(days=2, hours=1), "day", "UTC", (D, D + timedelta(days=3))),
        (D + timedelta(hours=5), D + timedelta(hours=6), "day", "UTC", (D, D + timedelta(days=1))),
        (D + timedelta(days=2), D, "day", "UTC", (D, D + timedelta(days=2))),  # reversed brush
        (D.timestamp() * 1000, (D + timedelta(days=1)).timestamp() * 1000, "day", "UTC", (D, D + timedelta(days=1))),
        (D + timedelta(days=1), D + timedelta(days=2), "week", "UTC", (D - timedelta(days=1), D + timedelta(days=6))),
        # Local days and weeks: 01:00 UTC on the 20th is still the 19th in New York.
        (D + timedelta(hours=1), D + timedelta(days=1, hours=5), "day", NY, (L - timedelta(days=1), L + timedelta(days=2))),
        (L, L + timedelta(days=2), "day", NY, (L, L + timedelta(days=2))),  # already whole local days
        (L + timedelta(days=1), L + timedelta(days=2), "week", NY, (L - timedelta(days=1), L + timedelta(days=6))),
        # Across the end of daylight saving (1 November): the last day is 25 hours, the next starts at 05:00 UTC.
        (
            L + timedelta(days=11, hours=3),
            L + timedelta(days=12, hours=6),
            "day",
            NY,
            (L + timedelta(days=11), L + timedelta(days=13, hours=1)),
        ),
        (D + timedelta(minutes=30), D + timedelta(minutes=45), "hour", NY, (D, D + timedelta(hours=1))),
    ],
)
def test_brush_snaps_outwards_to_whole_local_bins(x0: object, x1: object, grain: str, tz: str, expected: tuple[datetime, datetime]) -> None:
    assert brush_window(x0, x1, grain, tz) == expected  # type: ignore[arg-type]  # the parametrised values mix the accepted types


def test_empty_brush_does_nothing() -> None:
    assert brush_window(None, None, "day", NY) is None


def test_band_holds_band_line_and_marks(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="borough", min_z=2.0, q=0.5)
    bands = lens.bands()
    unit = pick_units(bands, 1)[0]
    rows = bands.filter(pl.col("unit_id") == unit)
    n_rows, data = multiples_data(bands, [unit], {unit: "name"})
    assert n_rows == 1
    (line_y,) = data["line"]["ys"]
    assert len(line_y) == rows.height
    assert np.isnan(line_y).sum() == rows["count"].null_count()  # withheld counts are gaps, never numbers
    (band_y,) = data["band"]["ys"]
    assert len(band_y) == 2 * rows.height  # along the band's top, back along its bottom
    assert len(data["marks"]["x"]) == rows.filter(pl.col("anomalous") & pl.col("count").is_not_null()).height
    assert data["titles"]["text"] == ["name"]
    # Everything of the unit stays inside its cell, under its name.
    cell = {k: data["cells"][k][0] for k in ("x0", "x1", "y0", "y1")}
    for xs, ys in ((data["line"]["xs"][0], line_y), (data["band"]["xs"][0], band_y)):
        assert cell["x0"] <= np.nanmin(xs) <= np.nanmax(xs) <= cell["x1"]
        assert cell["y0"] <= np.nanmin(ys) <= np.nanmax(ys) < data["titles"]["y"][0] <= cell["y1"]


def test_multiples_fill_a_grid_row_by_row() -> None:
    bands = pl.DataFrame(
        {
            "unit_id": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "bin_start": [D, D + timedelta(days=1)] * 4,
            "count": [1, None, 4, 2, 0, 0, 3, 3],
            "lo": [0.0] * 8,
            "hi": [2.0] * 8,
            "anomalous": [False, False, True, False, False, False, False, False],
        }
    )
    rows, data = multiples_data(bands, ["b", "a", "d", "c"], {}, ncols=3)
    assert rows == 2
    assert data["cells"]["unit_id"] == ["b", "a", "d", "c"]  # in the order asked (most anomalous first)
    assert data["cells"]["x0"][3] == data["cells"]["x0"][0]  # the fourth starts the second row
    assert data["cells"]["y0"][3] < data["cells"]["y0"][0]
    assert data["titles"]["text"] == ["b", "a", "d", "c"]  # no name: the id
    assert len(data["marks"]["x"]) == 1


def _figures(lens: Lens, **params: object) -> SparkbandFigures:
    return SparkbandFigures(Sparkbands(lens=lens, **params))


def test_all_boroughs_drawn_and_fine_levels_capped(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="borough")
    figs = _figures(lens, top=4)
    assert len(figs.sources["line"].data["xs"]) == 4  # five boroughs, capped at top
    assert figs.multiples.y_range.end == 2  # two rows of three
    lens.level = "tract"
    assert len(figs.sources["line"].data["xs"]) == 4
    assert "4 of" in figs.caption.object


def test_figures_are_updated_in_place(tiny_snap: Snapshot) -> None:
    lens = Lens(snapshot=tiny_snap, level="borough")
    figs = _figures(lens)
    multiples, line, overview = figs.multiples, figs.sources["line"], figs.overview
    before = line.data
    lens.min_z = 2.0
    lens.q = 0.5
    lens.level = "neighborhood"
    assert (figs.multiples, figs.sources["line"], figs.overview) == (multiples, line, overview)  # same models, new data
    assert line.data is not before
    lens.since, lens.until = lens.until, lens.since  # no window
    assert figs.message.visible
    assert not figs.grid.visible


def test_brushing_the_overview_sets_the_lens_window(tiny_snap: Snapshot) -> None:
    from bokeh.events import SelectionGeometry

    lens = Lens(snapshot=tiny_snap, level="borough")
    figs = _figures(lens)
    assert len(figs.series.data["x"]) == lens.city_series().height
    lo, hi = ((t.timestamp() * 1000) for t in lens.grid_window() or (D, D))
    assert (figs.window.left, figs.window.right) == (lo, hi)
    view = figs.view
    view._brushed(boundsx=(L + timedelta(hours=3), L + timedelta(days=3, hours=2)))  # New York days
    assert (lens.since, lens.until) == (L, L + timedelta(days=4))
    assert lens.grid_window() == (L, L + timedelta(days=4))  # the brush's whole local days, not one more
    assert figs.window.left == L.timestamp() * 1000  # the overview shows the new window
    # What the browser sends at the end of a brush: the x-range in epoch milliseconds.
    x0, x1 = (L + timedelta(days=1)).timestamp() * 1000, (L + timedelta(days=1, hours=5)).timestamp() * 1000
    geometry = {"type": "rect", "x0": x0, "x1": x1, "y0": 0, "y1": 1}
    figs._selection_geometry(SelectionGeometry(figs.overview, geometry=geometry, final=False))
    assert lens.since == L  # not before the brush ends
    figs._selection_geometry(SelectionGeometry(figs.overview, geometry=geometry, final=True))
    assert (lens.since, lens.until) == (L + timedelta(days=1), L + timedelta(days=2))


def test_clicking_the_map_toggles_the_unit_in_the_selection(tiny_snap: Snapshot) -> None:
    from holoviews.util.transform import lon_lat_to_easting_northing

    from app.views.heat import HeatView

    lens = Lens(snapshot=tiny_snap, level="neighborhood")
    row = tiny_snap.units("nyc", "neighborhood").row(3, named=True)
    x, y = lon_lat_to_easting_northing(row["lon"], row["lat"])
    view = HeatView(lens=lens)
    view.tapped(x=float(x), y=float(y))
    assert lens.selection == [row["unit_id"]]
    view.tapped(x=float(x), y=float(y))
    assert lens.selection == []
    view.tapped(x=float(x), y=float(y))
    view.tapped(x=0.0, y=0.0)  # the sea off Africa: outside every unit clears
    assert lens.selection == []


def test_narratives_list_released_anomalies_and_activating_one_selects_and_zooms(tiny_snap: Snapshot) -> None:
    from app.views.heat import HeatView
    from app.views.narratives import NarrativeCards, Narratives, driver_bars_html

    lens = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5)
    view = Narratives(lens=lens, top=3)
    found, _ = lens.anomalies()
    rendered = NarrativeCards(view)
    cards = rendered.shown()
    texts = [o.object for card in cards for o in card.select(pn.pane.HTML)]
    assert len(texts) == min(3, found.height)
    assert found["narrative"][0].replace("'", "&#x27;") in texts[0]
    buttons = [b for card in cards for b in card.select(pn.widgets.Button)]
    assert len(buttons) == len(texts)
    assert buttons[0].label == f"Show {found['name'][0]}"
    heat = HeatView(lens=lens)
    assert heat.selection_frame() is None
    buttons[0].clicks += 1  # what a click (or Enter on the focused button) does
    assert lens.selection == [found["unit_id"][0]]
    (x0, x1), (y0, y1) = heat.selection_frame() or ((0.0, 0.0), (0.0, 0.0))
    assert 0 < x1 - x0 < 50_000  # metres: framed on one neighborhood, not the city
    assert 0 < y1 - y0 < 50_000
    # The cards are patched in place: the selection narrows them to the unit, a threshold nobody
    # reaches empties them and says so.
    assert rendered.cards[0] is cards[0]
    assert all(found.filter(pl.col("unit_id") == u).height for u in rendered.units)
    lens.min_z = 999.0
    assert rendered.shown() == []
    assert rendered.empty.visible
    assert "No anomaly published" in rendered.empty.object
    bars = driver_bars_html([{"category": "Noise <x>", "excess": 3.0, "share": 0.5}])
    assert "50%" in bars
    assert "Noise &lt;x&gt;" in bars


def test_live_region_sentence() -> None:
    from app.views.announce import announcement, anomaly_keys

    found = pl.DataFrame(
        {"level": ["borough"] * 2, "unit_id": ["BK", "QN"], "category": ["a", "b"], "bin_start": [D, D]},
        schema={"level": pl.String, "unit_id": pl.String, "category": pl.String, "bin_start": pl.Datetime("us", "UTC")},
    )
    assert announcement(found, 0, "New York City", None) == "2 anomalies in New York City."
    before = anomaly_keys(found.head(1))
    assert announcement(found, 5, "Brooklyn", before) == "2 anomalies in Brooklyn, 1 new; 5 cells withheld by the privacy rule."
    assert announcement(found, 1, "Brooklyn", None) == "2 anomalies in Brooklyn; 1 cell withheld by the privacy rule."
    assert announcement(found.head(1), 0, "Queens", anomaly_keys(found)) == "1 anomaly in Queens, 0 new."


def test_live_region_announces_changes_politely(tiny_snap: Snapshot) -> None:
    from app.views.announce import LiveRegion

    lens = Lens(snapshot=tiny_snap, level="neighborhood", min_z=2.0, q=0.5)
    region = LiveRegion(lens=lens)
    first = region._html()
    assert 'aria-live="polite"' in first
    assert 'role="status"' in first
    assert "New York City" in first
    assert "new" not in first  # nothing is "new" on first render
    found, _ = lens.anomalies()
    lens.selection = [found["unit_id"][0]]
    name = tiny_snap.units("nyc").filter(pl.col("unit_id") == found["unit_id"][0])["name"][0]
    second = region.sentence()
    assert name in second
    assert ", 0 new" in second  # the selected unit's anomalies were all listed before
