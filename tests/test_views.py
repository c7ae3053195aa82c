"""Headless view tests: build the real page over the tiny snapshot, change the lens or a widget,
and check that the panes (table rows, summary line, heat raster) follow."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import holoviews as hv
import lxml.html
import numpy as np
import pandas as pd
import panel as pn
import polars as pl
import pytest
from holoviews.operation.datashader import rasterize
from panel.layout.base import ListLike

from app.config import Settings, get_settings
from app.data.demo import DemoSpec
from app.data.registry import load_registry
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.lens import ALL, Lens
from app.pipeline import build_demo, refresh
from app.views.anomaly_table import COLUMNS, AnomalyTable
from app.views.base import level_words
from app.views.export import ANOMALY_COLUMNS, UNIT_COLUMNS, anomalies_csv, export_filename, unit_counts_csv
from app.views.heat import HeatView, outline_xy, points_element
from app.views.page import (
    NO_DATA,
    TITLE,
    Controls,
    build_dashboard,
    dashboard_page,
    downloads,
    follow_store,
)
from app.views.provenance import UNKNOWN, ProvenancePanel, age_text, privacy_text, source_lines, sources_markdown
from app.views.url_state import (
    NO_KINDS,
    URL_KEYS,
    URL_PARAMS,
    apply_url_state,
    restore_url_state,
    url_notice,
    url_query,
    url_state,
    window_problem,
)
from conftest import TINY_GRAINS

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


def html_rows(markup: str) -> pd.DataFrame:
    """The data rows of an HTML table as the browser shows them (headings as columns; numbers
    parsed, "—" as missing; the "more rows" and "no rows" notes left out)."""
    root = lxml.html.fromstring(markup)
    headings = [th.text_content() for th in root.xpath("//thead/tr/th")]
    rows = [[td.text_content() for td in tr.xpath("./td")] for tr in root.xpath("//tbody/tr[not(@class='more')]")]
    frame = pd.DataFrame(rows, columns=headings)
    for column in frame.columns:
        numbers = pd.to_numeric(frame[column].replace("—", None), errors="coerce")
        if len(frame) and numbers.notna().sum() == frame[column].ne("—").sum():
            frame[column] = numbers
    return frame


def _table(layout: Any) -> pd.DataFrame:
    panes = [p for p in layout.select(pn.pane.HTML) if "csh-anomalies" in str(p.object)]
    assert len(panes) == 1, f"expected one anomaly table, found {len(panes)}"
    return html_rows(str(panes[0].object))


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


def test_the_page_shows_the_snapshots_release_rule(tiny_store: Store, tiny_dir: Path, open_dir: Path) -> None:
    """One release per snapshot: the page says the rule the snapshot was published with, whatever
    the server's settings say now."""
    page = build_dashboard(Store(open_dir), Settings(data_dir=open_dir, scheduler_enabled=False))
    summary = _summary(AnomalyTable(lens=Lens(snapshot=Store(open_dir).current())).__panel__())
    assert "**0** cells of the window withheld" in summary
    assert "*none*" in summary
    assert any("Privacy: none" in str(m.object) for m in _area(page.main)[0].select(pn.pane.Markdown))
    asked = build_dashboard(tiny_store, Settings(data_dir=tiny_dir, scheduler_enabled=False, privacy_mode="none"))
    texts = [str(m.object) for m in _area(asked.main)[0].select(pn.pane.Markdown)]
    assert any("cells of the window withheld by the privacy rule *suppress, k = 11*" in t for t in texts)
    assert not any("*none*" in t for t in texts)


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
    assert f"**{withheld}** cells of the window withheld" in _summary(layout)
    assert withheld > 0  # the tiny demo has small cells, so the rule is exercised


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
    assert f"at {level_words(lens)} level" in _summary(layout)
    assert level_words(lens) == {"tract": "census tract", "borough": "borough", "city": "city"}[level]  # NYC's names
    assert names != before
    assert lens.snapshot is not None
    assert names <= set(lens.snapshot.units(lens.city, level)["name"])  # anomalies are listed at the level they are published at


def test_privacy_none_withholds_nothing_and_shows_more(lens: Lens, open_snap: Snapshot) -> None:
    layout = AnomalyTable(lens=lens).__panel__()
    suppressed = len(_table(layout))
    lens.privacy_mode = "none"  # the rule is the snapshot's: asking for another changes nothing
    assert len(_table(layout)) == suppressed
    lens.snapshot = open_snap  # the same demo published without a rule
    assert lens.privacy_mode == "none"
    assert len(_table(layout)) > suppressed
    assert "**0** cells of the window withheld" in _summary(layout)


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
    since = _only(_area(page.sidebar)[0], pn.widgets.DatetimeInput, "Since (UTC)")
    until = _only(_area(page.sidebar)[0], pn.widgets.DatetimeInput, "Until (UTC, exclusive)")
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


def test_open_pages_follow_newly_published_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small city published without a rule, at pinned grains, so the two publishes are quick.
    monkeypatch.setenv("CSH_PRIVACY_MODE", "none")
    monkeypatch.setenv("CSH_GRAINS", TINY_GRAINS)
    get_settings.cache_clear()
    monkeypatch.setattr("app.pipeline.get_settings", get_settings)
    store = Store(tmp_path)
    spec = DemoSpec(seed=5, end=datetime(2026, 11, 1, tzinfo=UTC), days=30, size=15_000)
    try:
        first = build_demo(store, spec)
    finally:
        get_settings.cache_clear()
    assert first.release_meta("nyc")["mode"] == "none"
    lens = Lens(snapshot=first)
    assert follow_store(store, lens) is False  # nothing new yet
    try:
        newer = refresh(store, now=spec.end + timedelta(hours=6))
    finally:
        get_settings.cache_clear()
    assert newer is not None
    assert newer.id != first.id
    assert follow_store(store, lens) is True
    assert lens.snapshot is newer
    assert lens.snapshot.row_counts()["request"] > first.row_counts()["request"]
    assert lens.published_until("city") == spec.end + timedelta(hours=6)  # the new hours are published


# ---- shareable state in the URL ----------------------------------------------------------------
def _as_link(lens: Lens) -> dict[str, str]:
    """The lens state through a real query string and back (encoding included)."""
    return dict(parse_qsl(url_query(url_state(lens))))


def test_url_state_reopens_the_same_view(tiny_store: Store, lens: Lens) -> None:
    assert lens.until is not None
    lens.param.update(
        level="tract",
        category="HEAT/HOT WATER",
        kinds=["request", "closure"],
        time_bin="hour",
        min_z=2.5,
        q=0.0123456789,
        since=lens.until - timedelta(days=2, hours=6),
        until=lens.until - timedelta(hours=1),
    )
    lens.selection = ["36061000201", "36005000100"]  # tracts, as picked (not sorted)
    link = _as_link(lens)
    assert set(link) == set(URL_KEYS) - {"epsilon"}  # epsilon only matters in 'dp' mode
    assert link["since"] == "2026-10-29T22:00:00Z"  # ISO, UTC: 6 pm in New York (EDT)
    assert link["sel"] == "36005000100,36061000201"  # stable order
    assert (link["privacy"], link["privacy_k"]) == ("suppress", "11")
    fresh = Lens(snapshot=tiny_store.current())
    assert apply_url_state(fresh, link) == []
    for name in URL_PARAMS:
        assert getattr(fresh, name) == (sorted(lens.selection) if name == "selection" else getattr(lens, name)), name


def test_url_dates_are_iso_and_a_bare_date_means_midnight_utc(lens: Lens) -> None:
    # The default window is whole New York days: its ends are local midnights, 04:00 UTC in October.
    assert (url_state(lens)["since"], url_state(lens)["until"]) == ("2026-10-25T04:00:00Z", "2026-11-01T04:00:00Z")
    assert apply_url_state(lens, {"since": "2026-10-27"}) == []
    assert lens.since == datetime(2026, 10, 27, tzinfo=UTC)
    grid = lens.grid_window()
    assert grid is not None
    assert grid[0] == datetime(2026, 10, 26, 4, tzinfo=UTC)  # snapped out to the New York day holding it
    assert url_state(lens)["since"] == "2026-10-27"  # a UTC midnight is written as the bare date
    assert apply_url_state(lens, {"since": "2026-10-27T09:30"}) == []  # no offset: UTC, as the pickers are
    assert lens.since == datetime(2026, 10, 27, 9, 30, tzinfo=UTC)


def test_no_kinds_round_trips(tiny_store: Store, lens: Lens) -> None:
    lens.kinds = []
    assert url_state(lens)["kinds"] == NO_KINDS
    fresh = Lens(snapshot=tiny_store.current())
    assert apply_url_state(fresh, _as_link(lens)) == []
    assert fresh.kinds == []


def test_bad_url_values_keep_their_defaults_and_are_reported(tiny_store: Store) -> None:
    lens = Lens(snapshot=tiny_store.current())
    defaults = {name: getattr(lens, name) for name in URL_PARAMS}
    query = {
        "level": "county",
        "category": "No Such Category",
        "kinds": "request,parade",
        "min_z": "abc",
        "q": "5",
        "since": "last tuesday",
        "time_bin": "hour",  # the one good value is applied
        "utm_source": "mail",  # not lens state: ignored, not reported
    }
    problems = apply_url_state(lens, query)
    assert len(problems) == 6, problems
    for name in ("level", "category", "kinds", "min_z", "q", "since"):
        assert any(p.startswith(f"{name} = ") for p in problems), name
    assert lens.time_bin == "hour"
    for name in set(URL_PARAMS) - {"time_bin"}:
        assert getattr(lens, name) == defaults[name], name


@pytest.mark.parametrize(
    "query",
    [{"since": "0001-01-01"}, {"until": "9999-12-31"}, {"since": "0001-01-01T00:00+05:00"}, {"since": "1899-12-31", "until": "1900-01-02"}],
)
def test_url_dates_out_of_range_are_reported_not_raised(tiny_store: Store, query: dict[str, str]) -> None:
    """A link naming a date no city can have (year 1, year 9999) keeps the default window and says
    why, as the API's 422 does; it never reaches the views (it overflowed there)."""
    lens = Lens(snapshot=tiny_store.current())
    before = lens.window()
    problems = apply_url_state(lens, query)
    assert len(problems) >= 1, problems
    assert any("1900-01-01 to 2200-01-01" in p for p in problems), problems
    assert lens.window() == before


def test_typed_dates_out_of_range_are_refused_with_a_message() -> None:
    assert "1900-01-01 to 2200-01-01" in window_problem(datetime(1, 1, 1), datetime(2026, 1, 1))
    assert "1900-01-01 to 2200-01-01" in window_problem(datetime(2026, 1, 1), datetime(9999, 12, 31))
    assert window_problem(datetime(2026, 1, 1), datetime(2026, 1, 2)) == ""


def test_a_link_selection_is_applied_after_its_level_and_unknown_ids_are_reported(lens: Lens) -> None:
    # The lens starts at neighborhood level with a selection the level change would carry over.
    lens.selection = ["MN0101"]
    problems = apply_url_state(lens, {"level": "borough", "sel": "QN,BK,Atlantis,BK"})
    assert lens.level == "borough"
    assert lens.selection == ["BK", "QN"]  # the link's, not the one carried from MN0101 (MN)
    assert problems == ["sel = “Atlantis” (no such borough in nyc)"]
    assert url_query(url_state(lens)).count("sel=BK,QN") == 1  # commas stay literal: a short link


def test_a_link_selection_at_another_level_than_its_ids_is_reported_not_applied(lens: Lens) -> None:
    problems = apply_url_state(lens, {"sel": "BK,QN"})  # borough ids, but the link has no level: neighborhood
    assert lens.selection == []
    assert len(problems) == 1
    assert problems[0].startswith("sel = ")
    assert "no such neighborhood" in problems[0]


def test_a_new_city_in_a_link_does_not_drop_its_selection(lens: Lens) -> None:
    # Setting the city resets the selection; a link's selection is applied after it.
    problems = apply_url_state(lens, {"city": "nyc", "level": "borough", "sel": "MN"})
    assert problems == []
    assert lens.selection == ["MN"]


@pytest.mark.parametrize(
    ("query", "reported"),
    [
        ({"privacy": "none"}, "privacy = “none” (this server publishes with suppress, k = 11)"),
        ({"privacy": "suppress", "privacy_k": "2"}, "privacy\\_k = “2” (this server publishes with suppress, k = 11)"),
        ({"privacy": "dp", "epsilon": "5"}, "privacy = “dp” (this server publishes with suppress, k = 11)"),
        ({"privacy": "suppress", "epsilon": "5"}, "epsilon = “5” (this server publishes with suppress, k = 11)"),
    ],
)
def test_a_link_never_changes_the_privacy_rule(lens: Lens, query: dict[str, str], reported: str) -> None:
    before = lens.unit_counts()
    problems = apply_url_state(lens, query)
    assert (lens.privacy_mode, lens.privacy_k) == ("suppress", 11)
    assert [p.replace("privacy_k", "privacy\\_k") for p in problems] == [reported]
    assert lens.unit_counts().equals(before)  # the same cells, still withheld
    assert "this server publishes with suppress, k = 11" in url_notice(problems)


def test_the_servers_own_rule_in_a_link_is_not_a_problem(open_snap: Snapshot, lens: Lens) -> None:
    assert apply_url_state(lens, {"privacy": "suppress", "privacy_k": "11"}) == []
    open_lens = Lens(snapshot=open_snap)
    assert url_state(open_lens)["privacy"] == "none"
    assert "privacy_k" not in url_state(open_lens)
    assert apply_url_state(open_lens, {"privacy": "none"}) == []
    assert apply_url_state(open_lens, {"privacy": "suppress", "privacy_k": "11"}) == [
        "privacy = “suppress” (this server publishes with none)"  # a stricter link is reported too: one rule per server
    ]


def test_back_to_an_entry_shows_exactly_its_view(tiny_store: Store, lens: Lens) -> None:
    entry = url_state(lens)  # the view the browser's history entry was written for
    lens.param.update(level="borough", category="HEAT/HOT WATER", min_z=5.0)
    lens.selection = ["BK"]
    restore_url_state(lens, entry)
    assert url_state(lens) == entry
    assert lens.selection == []
    lens.param.update(category="HEAT/HOT WATER", until=lens.until - timedelta(days=1))
    restore_url_state(lens, {})  # the bare link the page was opened with: every default
    assert url_state(lens) == url_state(Lens(snapshot=tiny_store.current()))


def test_an_inverted_window_in_a_link_keeps_the_default_window(lens: Lens) -> None:
    window = lens.window()
    problems = apply_url_state(lens, {"since": "2026-10-30", "until": "2026-10-20"})
    assert len(problems) == 1
    assert "start must be before the end" in problems[0]
    assert lens.window() == window


def test_the_page_shows_why_link_values_were_ignored_without_running_them(lens: Lens) -> None:
    assert _only(_area(dashboard_page(lens).main)[0], pn.pane.Alert).visible is False
    problems = apply_url_state(lens, {"level": "<img src=x onerror=alert(1)>", "city": "atlantis"})
    alert = _only(_area(dashboard_page(lens, notice=url_notice(problems)).main)[0], pn.pane.Alert)
    assert alert.visible
    assert "defaults are shown" in alert.object
    assert "atlantis" in alert.object
    assert "<img" not in alert.object  # anyone can craft a link: its text is escaped, never markup


# ---- CSV exports -------------------------------------------------------------------------------
def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_anomalies_csv_is_exactly_the_released_table(lens: Lens) -> None:
    released, _ = lens.anomalies()
    data = anomalies_csv(released)
    text = data.decode("utf-8")  # strict: the file is UTF-8
    assert not text.startswith("\ufeff")
    assert text.splitlines()[0] == ",".join(ANOMALY_COLUMNS)
    rows = _rows(data)
    assert len(rows) == released.height > 0
    assert [r["narrative"] for r in rows] == released["narrative"].to_list()
    assert [int(r["observed"]) for r in rows] == released["observed"].to_list()
    assert all(int(r["observed"]) >= lens.privacy_k for r in rows)  # withheld cells never appear
    assert rows[0]["window_start"].endswith("Z")
    assert "\N{MULTIPLICATION SIGN}" in text  # narratives keep their non-ASCII signs
    internal = {"variance", "baseline_days", "scored", "reason", "p", "p_low", "z_low", "q_low", "share", "drivers", "grain"}
    assert internal <= set(released.columns)
    assert not internal & set(rows[0])  # engine-internal columns are never exported


def test_unit_counts_csv_leaves_withheld_counts_empty(lens: Lens, open_snap: Snapshot) -> None:
    units = lens.unit_counts()
    rows = _rows(unit_counts_csv(units))
    assert list(rows[0]) == list(UNIT_COLUMNS)
    assert len(rows) == units.height
    withheld = [r for r in rows if r["suppressed"] == "true"]
    shown = [r for r in rows if r["suppressed"] == "false"]
    assert withheld
    assert shown
    assert all(r["count"] == "" for r in withheld)
    assert all(int(r["count"]) == 0 or int(r["count"]) >= lens.privacy_k for r in shown)
    exact = dict(Lens(snapshot=open_snap, level=lens.level).unit_counts().select("unit_id", "count").iter_rows())
    assert any(0 < exact[r["unit_id"]] < lens.privacy_k for r in withheld)  # the rule really hid small counts here
    assert all(r["rollup_count"] == "" or int(r["rollup_count"]) >= lens.privacy_k for r in withheld)


def test_exports_of_nothing_are_a_header_row(lens: Lens) -> None:
    assert lens.since is not None
    lens.until = lens.since - timedelta(days=1)  # no window: nothing released
    assert anomalies_csv(lens.anomalies()[0]).decode("utf-8") == ",".join(ANOMALY_COLUMNS) + "\n"
    assert unit_counts_csv(pl.DataFrame()).decode("utf-8") == ",".join(UNIT_COLUMNS) + "\n"


def test_csv_cells_that_look_like_formulas_open_as_text() -> None:
    units = pl.DataFrame(
        {
            "unit_id": ["A", "B"],
            "name": ['=HYPERLINK("http://x")', "Plain"],
            "count": [12, None],
            "suppressed": [False, True],
            "rollup_level": [None, "borough"],
            "rollup_unit_id": [None, "BK"],
            "rollup_count": [None, 40],
        }
    )
    rows = _rows(unit_counts_csv(units))
    assert rows[0]["name"] == '\'=HYPERLINK("http://x")'
    assert rows[1]["name"] == "Plain"


def test_page_downloads_follow_the_lens(lens: Lens) -> None:
    main = _area(dashboard_page(lens).main)[0]
    anomalies = _only(main, pn.widgets.FileDownload, "Download anomalies (CSV)")
    units = _only(main, pn.widgets.FileDownload, "Download unit counts (CSV)")
    assert anomalies.filename == "csh_anomalies_nyc_neighborhood_2026-10-25T0400_2026-11-01T0400.csv"
    lens.param.update(category="HEAT/HOT WATER")
    assert anomalies.callback().getvalue() == anomalies_csv(lens.anomalies()[0])  # built at click time, from the lens
    assert {r["category"] for r in _rows(anomalies.callback().getvalue())} == {"HEAT/HOT WATER"}
    lens.param.update(level="borough")
    assert units.filename == "csh_unit_counts_nyc_borough_2026-10-25T0400_2026-11-01T0400.csv"
    assert units.callback().getvalue() == unit_counts_csv(lens.unit_counts())
    assert len(_rows(units.callback().getvalue())) == 5


def test_view_png_button_names_its_file_and_caption_after_the_view(lens: Lens) -> None:
    png = downloads(lens)[-1]
    assert isinstance(png, pn.widgets.Button)
    assert png.label == "Download view (PNG)"
    assert png.tags[0] == "csh_view_nyc_neighborhood_2026-10-25T0400_2026-11-01T0400.png"
    assert "privacy: suppress, k = 11" in png.tags[1]
    lens.param.update(level="borough", category="HEAT/HOT WATER")
    filename, caption = png.tags
    assert filename == "csh_view_nyc_borough_2026-10-25T0400_2026-11-01T0400.png"
    assert caption == (
        "City Service Heat · New York City · borough · 2026-10-25T0400 to 2026-11-01T0400 (UTC, end exclusive) · category: HEAT/HOT WATER · privacy: suppress, k = 11"
    )


def test_export_filenames_name_city_level_and_window() -> None:
    since, until = datetime(2026, 10, 25, 6, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    assert export_filename("anomalies", "nyc", "tract", since, until) == "csh_anomalies_nyc_tract_2026-10-25T0600_2026-11-01.csv"
    assert export_filename("unit_counts", "nyc", "city", None, None) == "csh_unit_counts_nyc_city_open_open.csv"


# ---- provenance --------------------------------------------------------------------------------
def _provenance_texts(lens: Lens) -> list[str]:
    return [str(m.object) for m in ProvenancePanel(lens=lens).__panel__().select(pn.pane.Markdown)]


def test_provenance_panel_shows_snapshot_sources_and_rule(tiny_snap: Snapshot, lens: Lens) -> None:
    summary, sources = _provenance_texts(lens)
    counts = tiny_snap.row_counts()
    assert tiny_snap.id in summary
    assert f"{counts['request']:,} requests" in summary
    assert f"{counts['incident']:,} incidents" in summary
    assert "newest New York City event: 2026-10-31 23:" in summary  # the demo ends on 1 November (exclusive)
    assert "k = 11" in summary
    lines = sources.splitlines()
    assert lines[0].startswith("| Source | Publisher | Dataset | Licence | Last fetch | Age |")
    assert len(lines) == 3  # header, rule and the demo feed
    assert "| demo | simulated demo feed | demo seed 7, 35 days, size 60,000 | unknown |" in lines[2]
    state = tiny_snap.ingest_state()
    assert f"{state['last_success'][0]:%Y-%m-%d %H:%M} UTC" in lines[2]


def test_source_lines_come_from_the_registry_and_say_unknown_otherwise() -> None:
    now = datetime(2026, 11, 2, 12, tzinfo=UTC)
    state = pl.DataFrame(
        {
            "source": ["nyc311", "chicago311", "mystery", "nyc311_2010_2019"],
            "last_success": [now - timedelta(hours=2), now, None, now - timedelta(days=3)],
            "consecutive_failures": [0, 0, 0, 4],
            "breaker_opened_at": [None, None, None, now],
            "rows_total": [1234, 5, 0, 99],
        }
    )
    registry = load_registry()
    lines = {s.source: s for s in source_lines(state, {}, registry, now, city="nyc")}
    assert set(lines) == {"nyc311", "mystery", "nyc311_2010_2019"}  # Chicago's source is not this city's
    nyc = lines["nyc311"]
    spec = registry["nyc311"]
    assert (nyc.publisher, nyc.dataset, nyc.licence) == (spec.publisher, "erm2-nwe9", "NYC Open Data Terms of Use")
    assert (nyc.last_fetch, nyc.age, nyc.rows) == ("2026-11-02 10:00 UTC", "2 h", "1,234")
    unknown = lines["mystery"]
    assert (unknown.publisher, unknown.dataset, unknown.licence, unknown.last_fetch, unknown.age, unknown.rows) == (UNKNOWN,) * 6
    assert lines["nyc311_2010_2019"].age == "3 d (breaker open)"


def test_sources_markdown_is_a_table_that_survives_pipes() -> None:
    now = datetime(2026, 11, 2, tzinfo=UTC)
    state = pl.DataFrame({"source": ["odd|name"], "last_success": [now], "consecutive_failures": [2]})
    table = sources_markdown(source_lines(state, {}, {}, now))
    assert "odd\\|name" in table
    assert "0 s (2 failed polls)" in table
    assert "unknown" in sources_markdown([])


def test_age_and_privacy_texts() -> None:
    now = datetime(2026, 11, 2, tzinfo=UTC)
    assert [age_text(now - timedelta(seconds=s), now) for s in (5, 600, 7200, 3 * 86_400)] == ["5 s", "10 min", "2 h", "3 d"]
    assert age_text(None, now) == UNKNOWN
    assert privacy_text("none", 11, 1.0).startswith("Privacy: none")
    assert "ε spent: unknown" in privacy_text("dp", 11, 1.0)


def test_heat_hover_counts_follow_the_window_and_ignore_thresholds(lens: Lens) -> None:
    from app.views.heat_hover import HeatHover

    hover = HeatHover(lens)
    before = list(hover.source.data["events"])
    lens.min_z = 9.0  # thresholds do not change a unit's released total
    assert list(hover.source.data["events"]) == before
    assert lens.since is not None
    lens.since = lens.since + timedelta(days=3)  # a shorter window does
    assert list(hover.source.data["events"]) != before
