"""The HTML tables: the anomaly table's sort control and the data-table twin of each chart, read
back as a browser would (lxml), over the tiny demo."""

from __future__ import annotations

import lxml.html
import panel as pn
import polars as pl
import pytest

from app.config import Settings
from app.data.store import Store
from app.engine.lens import Lens
from app.views.anomaly_table import SORTS, AnomalyTable
from app.views.sparkbands import pick_units
from app.views.tables import BandTable, HeatTable, TileTable, html_table, table_card
from app.views.tilegram import unit_scores
from tests.test_views import html_rows


@pytest.fixture
def lens(tiny_store: Store, tiny_settings: Settings) -> Lens:
    return Lens(snapshot=tiny_store.current(), privacy_mode=tiny_settings.privacy_mode, privacy_k=tiny_settings.privacy_k)


def test_html_table_escapes_text_names_its_region_and_counts_the_rest() -> None:
    frame = pl.DataFrame({"name": ["<b>Bad</b> & co", "ok", "three"], "n": [1, None, 3]})
    markup = html_table(frame, "Caption <x>", css_class="t", numeric=["n"], max_rows=2, more="{n} more.")
    root = lxml.html.fromstring(markup)
    assert root.get("role") == "region"
    assert root.get("tabindex") == "0"  # a scrolling region keyboard users can scroll
    assert root.get("aria-label") == "Caption <x>"
    assert root.xpath("//caption")[0].text_content() == "Caption <x>"
    assert [th.get("scope") for th in root.xpath("//th")] == ["col", "col"]
    assert "<b>" not in markup
    rows = root.xpath("//tbody/tr")
    assert [r.text_content() for r in rows] == ["<b>Bad</b> & co1", "ok—", "1 more."]
    assert rows[0].xpath("./td")[1].get("class") == "num"


def test_an_empty_table_says_so() -> None:
    root = lxml.html.fromstring(html_table(pl.DataFrame({"a": []}), "Nothing", css_class="t"))
    assert root.xpath("//tbody/tr")[0].text_content() == "No rows."


def test_the_sort_control_orders_the_anomaly_table(lens: Lens) -> None:
    table = AnomalyTable(lens=lens)
    layout = table.__panel__()
    pane = next(p for p in layout.select(pn.pane.HTML) if "csh-anomalies" in str(p.object))
    by_z = html_rows(str(pane.object))
    assert by_z["z"].is_monotonic_decreasing
    table.sort = "newest first"
    newest = html_rows(str(pane.object))
    assert list(newest["day"]) == sorted(newest["day"], reverse=True)
    assert sorted(newest["z"]) == sorted(by_z["z"])  # the same rows, reordered
    table.sort = "name"
    assert list(html_rows(str(pane.object))["name"]) == sorted(by_z["name"])
    assert set(SORTS) == {"strongest first (z)", "newest first", "most events", "name"}


def test_heat_table_lists_released_counts_and_says_withheld(lens: Lens) -> None:
    # Neighborhood totals sum released days: in the tiny city most have a withheld day, so most are withheld.
    rows = html_rows(HeatTable(lens=lens).render())
    counts = lens.unit_counts()
    shown = counts.sort(["count", "name"], descending=[True, False], nulls_last=True).head(200)
    assert list(rows["neighborhood (NTA)"]) == shown["name"].to_list()  # the level as NYC calls it
    withheld = rows[rows["events"] == "withheld"]
    assert len(withheld) == shown["count"].null_count() > 0
    released = [int(v) for v in rows[rows["events"] != "withheld"]["events"]]
    assert released
    assert all(v == 0 or v >= lens.privacy_k for v in released)  # no released count in 1..k-1


def test_tile_table_ranks_units_by_strongest_z_and_marks_the_selection(lens: Lens) -> None:
    scores = unit_scores(lens.anomalies()[0], lens.level)
    assert scores.height > 0
    top = scores.sort("zscore", descending=True)["unit_id"][0]
    lens.selection = [top]
    rows = html_rows(TileTable(lens=lens).render())
    assert rows.iloc[0]["selection"] == "selected"
    assert (rows["selection"] == "selected").sum() == 1
    shown = unit_scores(lens.anomalies(everywhere=True)[0], lens.level)  # every tile keeps its colour
    units = lens.snapshot.units(lens.city, lens.level).height  # type: ignore[union-attr]  # the fixture has a snapshot
    assert (rows["strongest z"] == "none released").sum() == units - shown.height


def test_band_table_withholds_a_total_with_any_withheld_bin(lens: Lens) -> None:
    lens.level = "tract"
    bands = lens.bands()
    units = pick_units(bands, BandTable.top)
    rows = html_rows(BandTable(lens=lens).render())
    assert len(rows) == len(units)
    per_unit = bands.filter(pl.col("unit_id").is_in(units)).group_by("unit_id").agg(hidden=pl.col("count").is_null().any())
    assert (rows["observed total"] == "withheld").sum() == per_unit["hidden"].sum()


def test_chart_tables_render_only_while_open() -> None:
    calls: list[int] = []
    card, refresh = table_card("T", lambda: calls.append(1) or "<p>x</p>")  # type: ignore[func-returns-value]  # append returns None
    refresh()
    assert calls == []
    card.collapsed = False
    assert calls == [1]
    assert card[0].object == "<p>x</p>"
