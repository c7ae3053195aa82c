"""Headless view tests: build the real page over the tiny snapshot, change the lens or a widget,
and check that the panes (table rows, summary line, heat raster) follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
from holoviews.operation.datashader import rasterize
from panel.layout.base import ListLike

from app.config import Settings
from app.data.demo import DemoSpec
from app.data.store import Store
from app.engine.lens import ALL, Lens
from app.pipeline import build_demo, refresh
from app.views.anomaly_table import COLUMNS, AnomalyTable
from app.views.heat import HeatView, outline_xy, points_element
from app.views.page import NO_DATA, TITLE, Controls, build_dashboard, dashboard_page, follow_store

T = TypeVar("T")


@pytest.fixture
def lens(tiny_store: Store, tiny_settings: Settings) -> Lens:
    """A fresh lens per test, made the way ``build_dashboard`` makes one."""
    return Lens(snapshot=tiny_store.current(), privacy_mode=tiny_settings.privacy_mode, privacy_k=tiny_settings.privacy_k)


def _only(layout: Any, kind: type[T], name: str | None = None) -> T:
    """The single component of ``kind`` (optionally with widget ``name``) inside ``layout``."""
    found = [c for c in layout.select(kind) if name is None or getattr(c, "label", None) == name]
    assert len(found) == 1, f"expected one {kind.__name__} {name or ''}, found {len(found)}"
    assert isinstance(found[0], kind)
    return found[0]


def _area(area: ListLike | None) -> Any:
    """A template area (``main``/``sidebar``), asserted present; ``Any`` because Panel layouts are loosely typed."""
    assert area is not None
    return area


def _table(layout: Any) -> pd.DataFrame:
    value = _only(layout, pn.widgets.Tabulator).value
    assert isinstance(value, pd.DataFrame)
    return value


def _summary(layout: Any) -> str:
    texts = [str(m.object) for m in layout.select(pn.pane.Markdown) if "withheld" in str(m.object) or "No window" in str(m.object)]
    assert len(texts) == 1, texts
    return texts[0]


def _painted_pixels(view: HeatView) -> int:
    """Pixels the heat element the pane would draw now paints (it is RGB: no counts leave the server)."""
    pane = view.__panel__()
    assert isinstance(pane, pn.pane.HoloViews)
    assert isinstance(pane.object, hv.DynamicMap)
    overlay = pane.object[()]
    image = overlay.get(0)
    assert isinstance(image, hv.RGB)
    return int((image.dimension_values("A") > 0).sum())


def _raster_total(lens: Lens) -> float:
    """Sum of the counts datashader aggregates from the lens points (server side, never shown)."""
    image = rasterize(points_element(lens), dynamic=False)
    assert isinstance(image, hv.Image)
    return float(np.nansum(image.dimension_values(2)))


# ---- page ------------------------------------------------------------------------------------
def test_dashboard_builds_with_title_controls_and_provenance(tiny_store: Store, tiny_settings: Settings) -> None:
    page = build_dashboard(tiny_store, tiny_settings)
    assert page.title == TITLE
    snap = tiny_store.current()
    assert snap is not None
    provenance = [m.object for m in _area(page.main)[0].select(pn.pane.Markdown) if "Snapshot" in str(m.object)]
    assert len(provenance) == 1
    assert snap.id in provenance[0]
    assert "k = 11" in provenance[0]
    labels = {w.label for w in _area(page.sidebar)[0].select(pn.widgets.Widget)}
    assert {
        "City",
        "Admin level",
        "Since (UTC)",
        "Until (UTC, exclusive)",
        "Category",
        "Event kinds",
        "Time bin",
        "Minimum z-score",
        "Largest q-value (false-discovery rate)",
    } <= labels


def test_each_session_gets_its_own_lens(tiny_store: Store, tiny_settings: Settings) -> None:
    first, second = build_dashboard(tiny_store, tiny_settings), build_dashboard(tiny_store, tiny_settings)
    _only(_area(first.sidebar)[0], pn.widgets.Select, "Category").value = "HEAT/HOT WATER"
    assert set(_table(_area(first.main)[0])["category"]) == {"HEAT/HOT WATER"}
    assert _table(_area(second.main)[0])["category"].nunique() > 1


def test_settings_privacy_mode_reaches_the_page(tiny_store: Store, tiny_dir: Path) -> None:
    page = build_dashboard(tiny_store, Settings(data_dir=tiny_dir, scheduler_enabled=False, privacy_mode="none"))
    summary = _summary(_area(page.main)[0])
    assert "**0** withheld" in summary
    assert "*none*" in summary


def test_no_snapshot_shows_a_notice_instead_of_crashing(tmp_path: Path) -> None:
    page = build_dashboard(Store(tmp_path), Settings(data_dir=tmp_path, scheduler_enabled=False))
    alerts = [a for a in _area(page.main) if isinstance(a, pn.pane.Alert)]
    assert [a.object for a in alerts] == [NO_DATA]
    assert len(_area(page.sidebar)) == 0


# ---- anomaly table ---------------------------------------------------------------------------
def test_table_shows_released_anomalies_with_display_columns(lens: Lens) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    frame = _table(layout)
    released, withheld = lens.anomalies()
    assert list(frame.columns) == list(COLUMNS.values())
    assert len(frame) == released.height > 0
    assert frame["z"].is_monotonic_decreasing
    assert (frame["observed"] >= lens.privacy_k).all()  # suppressed counts never reach the table
    assert f"**{withheld}** withheld" in _summary(layout)
    assert withheld > 0  # the tiny demo has small anomalous cells, so the rule is exercised


def test_table_follows_category_and_threshold(lens: Lens) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    before = _table(layout)
    top_category = str(before["category"].iloc[0])
    lens.category = top_category
    filtered = _table(layout)
    assert 0 < len(filtered) < len(before)
    assert set(filtered["category"]) == {top_category}
    threshold = float(filtered["z"].max()) + 0.5  # just above the strongest anomaly shown
    lens.min_z = threshold
    assert _table(layout).empty
    assert _summary(layout).startswith(f"**0** anomalies with q ≤ {lens.q:g} and z ≥ {threshold:g}")


def test_q_control_drives_the_table(lens: Lens) -> None:
    controls = Controls(lens=lens).__panel__()
    q = _only(controls, pn.widgets.FloatInput, "Largest q-value (false-discovery rate)")
    layout = AnomalyTable(lens=lens).__panel__()
    loose = len(_table(layout))
    q.value = 1e-6
    assert lens.q == 1e-6
    assert len(_table(layout)) < loose
    assert "q ≤ 1e-06" in _summary(layout)


@pytest.mark.parametrize("level", ["tract", "borough", "city"])
def test_table_follows_level(lens: Lens, level: str) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    before = set(_table(layout)["name"])
    lens.level = level
    names = set(_table(layout)["name"])
    assert f"at {level} level" in _summary(layout)
    assert names != before
    assert lens.snapshot is not None
    # Rows of the level itself, plus ancestors shown where the level's cells are too small to publish.
    coarser = {"tract": ["neighborhood", "borough"], "neighborhood": ["borough"]}.get(level, [])
    allowed = set(lens.snapshot.units(lens.city, level)["name"]).union(*(set(lens.snapshot.units(lens.city, up)["name"]) for up in coarser))
    assert names <= allowed


def test_privacy_none_withholds_nothing_and_shows_more(lens: Lens) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    suppressed = len(_table(layout))
    lens.privacy_mode = "none"
    assert len(_table(layout)) > suppressed
    assert "**0** withheld" in _summary(layout)


# ---- heat ------------------------------------------------------------------------------------
def test_heat_raster_counts_every_located_point(lens: Lens) -> None:
    view = HeatView(lens=lens)
    assert _raster_total(lens) == lens.points().height > 0
    assert _painted_pixels(view) > 0


@pytest.mark.parametrize(("param", "value"), [("category", "HEAT/HOT WATER"), ("kinds", ["closure"])])
def test_heat_follows_filters(lens: Lens, param: str, value: object) -> None:
    view = HeatView(lens=lens)
    before, painted_before = _raster_total(lens), _painted_pixels(view)
    setattr(lens, param, value)
    after, painted_after = _raster_total(lens), _painted_pixels(view)
    assert 0 < after < before
    assert after == lens.points().height
    assert 0 < painted_after < painted_before


def test_heat_is_empty_not_broken_for_an_empty_window(lens: Lens) -> None:
    assert lens.until is not None
    lens.since = lens.until + timedelta(days=30)
    lens.until = lens.since + timedelta(days=1)
    pane = HeatView(lens=lens).__panel__()
    assert isinstance(pane, pn.pane.HoloViews)
    hv.render(pane.object)  # the Bokeh plot builds even with no points
    assert lens.points().is_empty()


def test_outlines_follow_the_level(lens: Lens) -> None:
    assert lens.snapshot is not None
    tracts = outline_xy(lens.snapshot, lens.city, "tract")
    boroughs = outline_xy(lens.snapshot, lens.city, "borough")
    n_tracts = lens.snapshot.units(lens.city, "tract").height
    assert np.isnan(tracts[:, 0]).sum() >= n_tracts - 1  # one NaN break between rings at least per unit
    assert len(boroughs) < len(tracts)
    x = tracts[~np.isnan(tracts[:, 0]), 0]
    assert -8.3e6 < x.min() < x.max() < -8.2e6  # NYC in Web Mercator metres


# ---- controls ------------------------------------------------------------------------------
def test_category_widget_offers_the_lens_categories(lens: Lens) -> None:
    page = dashboard_page(lens)
    select = _only(_area(page.sidebar)[0], pn.widgets.Select, "Category")
    assert list(select.options) == [ALL, *lens.categories()]
    select.value = "Illegal Parking"
    assert lens.category == "Illegal Parking"


def test_window_pickers_apply_valid_and_reject_inverted_windows(lens: Lens) -> None:
    page = dashboard_page(lens)
    since = _only(_area(page.sidebar)[0], pn.widgets.DatetimePicker, "Since (UTC)")
    until = _only(_area(page.sidebar)[0], pn.widgets.DatetimePicker, "Until (UTC, exclusive)")
    alert = _only(_area(page.sidebar)[0], pn.pane.Alert)
    start, end = lens.since, lens.until
    assert isinstance(start, datetime)
    assert isinstance(end, datetime)
    assert since.value == start.replace(tzinfo=None)

    since.value = until.value + timedelta(days=1)  # start after end
    assert alert.visible
    assert "start must be before the end" in alert.object
    assert (lens.since, lens.until) == (start, end)

    since.value = until.value - timedelta(days=3)
    assert not alert.visible
    assert lens.since == end - timedelta(days=3)  # applied, as tz-aware UTC
    assert lens.until == end

    lens.until = end - timedelta(days=1)  # lens -> picker direction
    assert until.value == (end - timedelta(days=1)).replace(tzinfo=None)


def test_table_explains_an_inverted_window_set_on_the_lens(lens: Lens) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    assert lens.since is not None
    lens.until = lens.since - timedelta(days=1)
    assert _summary(layout).startswith("**No window:**")
    assert _table(layout).empty


def test_open_pages_follow_newly_published_snapshots(tmp_path: Path) -> None:
    store = Store(tmp_path)
    spec = DemoSpec(seed=5, end=datetime(2026, 11, 1, tzinfo=UTC), days=30, size=15_000)
    first = build_demo(store, spec)
    lens = Lens(snapshot=first)
    assert follow_store(store, lens) is False  # nothing new yet
    newer = refresh(store, now=spec.end + timedelta(hours=6))
    assert newer is not None
    assert newer.id != first.id
    assert follow_store(store, lens) is True
    assert lens.snapshot is newer
    assert lens.snapshot.row_counts()["request"] > first.row_counts()["request"]
