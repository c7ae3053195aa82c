"""The dashboard page: sidebar controls, provenance, the heat map and the anomaly table (with its
CSV exports) over one session lens.

``build_dashboard`` is the factory the FastAPI mount calls per browser session, so every visitor
gets a fresh :class:`~app.engine.lens.Lens` over the shared, already-loaded snapshot. A live
session also keeps the lens state in the page URL (:mod:`app.views.url_state`), so a copied link
reopens the same view.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import panel as pn
import structlog
from bokeh.models import CustomJS
from panel.template.base import BasicTemplate

from app.config import Settings
from app.data.cities import city_kinds, city_name, default_city, level_names
from app.data.store import Store
from app.engine.lens import KINDS, Lens
from app.views.announce import LiveRegion
from app.views.anomaly_table import AnomalyTable
from app.views.base import KIND_LABELS, LENS_STATE, LensView, level_words
from app.views.export import VIEW_PNG_JS, anomalies_csv, export_filename, unit_counts_csv, view_caption
from app.views.heat import HeatView
from app.views.narratives import Narratives
from app.views.provenance import ProvenancePanel, privacy_rule
from app.views.sparkbands import Sparkbands
from app.views.tables import BandTable, HeatTable, TileTable
from app.views.template import template
from app.views.tilegram import TILE_KEYS_JS, Tilegram
from app.views.url_state import follow_url, url_notice, url_state, window_problem

__all__ = [
    "FOLLOW_MS",
    "NO_DATA",
    "TITLE",
    "Controls",
    "build_dashboard",
    "dashboard_page",
    "downloads",
    "follow_store",
    "selection_options",
    "view_png",
]

log = structlog.get_logger(__name__)
TITLE = "City Service Heat"
#: How often an open page checks for a newer snapshot (the scheduler publishes every few minutes).
FOLLOW_MS = 30_000
_ACCENT = "#b2401e"
_SMALL = {"font-size": "0.85em", "color": "#555"}
#: How the window inputs show and read instants (UTC wall clock, minutes).
DATETIME_FORMAT = "%Y-%m-%d %H:%M"
#: Number inputs without Bokeh's spin buttons: they have no accessible name and are 17 px high
#: (under the 24 px target size); the field takes typed values and Enter.
NUMBER_CSS = ".bk-spin-btn { display: none !important; }"
NO_DATA = (
    "**No data published yet.** Build the demo city with `python -m app.pipeline demo` "
    "or wait for the scheduler's first refresh, then reload this page."
)

pn.extension(sizing_mode="stretch_width")


def _naive_utc(value: date | None) -> datetime | None:
    """Lens datetimes are tz-aware UTC; the pickers show naive wall-clock UTC."""
    return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else None


def _as_datetime(value: object) -> datetime | None:
    """A picker value as a naive datetime (a bare date means its midnight)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime(value.year, value.month, value.day) if isinstance(value, date) else None


class Controls(LensView):
    """Sidebar widgets bound to the lens; invalid windows are reported and never reach the lens.

    >>> pn.panel(Controls(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    def _window(self) -> list[pn.viewable.Viewable]:
        """Since/until pickers kept in sync with the lens both ways, plus their error line."""
        lens = self.bound
        # Typed inputs, not the calendar picker: its popup traps keyboard focus (Tab cycles between
        # the field and the popup's seconds box forever, WCAG 2.1.2). A typo marks the label "(invalid)".
        since = pn.widgets.DatetimeInput(
            label="Since (UTC)", value=_naive_utc(lens.since), format=DATETIME_FORMAT, placeholder="YYYY-MM-DD HH:MM"
        )
        until = pn.widgets.DatetimeInput(
            label="Until (UTC, exclusive)", value=_naive_utc(lens.until), format=DATETIME_FORMAT, placeholder="YYYY-MM-DD HH:MM"
        )
        error = pn.pane.Alert("", alert_type="danger", visible=False, margin=(0, 10))

        def push(*_: Any) -> None:
            start, end = _as_datetime(since.value), _as_datetime(until.value)
            problem = window_problem(start, end)
            error.param.update(object=problem, visible=bool(problem))
            if start is not None and end is not None and not problem:
                lens.param.update(since=start.replace(tzinfo=UTC), until=end.replace(tzinfo=UTC))

        def pull(*_: Any) -> None:
            since.value, until.value = _naive_utc(lens.since), _naive_utc(lens.until)

        since.param.watch(push, "value")
        until.param.watch(push, "value")
        lens.param.watch(pull, ["since", "until"])
        return [since, until, error]

    def _selection(self) -> list[pn.viewable.Viewable]:
        """The shared selection by keyboard: a list of the level's units (the tilegram's tiles; a
        native list box, so arrow keys, Shift/Ctrl and typing a name's first letters work) applied
        with a button, so walking the list does not re-render every view at each step."""
        lens = self.bound
        picker = pn.widgets.MultiSelect(label="Units to select (tiles)", size=8, sizing_mode="stretch_width")
        apply = pn.widgets.Button(label="Select these units", color="primary", sizing_mode="stretch_width")
        clear = pn.widgets.Button(label="Clear the selection", sizing_mode="stretch_width")
        status = pn.pane.Markdown("", margin=(0, 10), styles={"font-size": "0.85em"})

        def pull(*_: Any) -> None:
            options = selection_options(lens)
            if picker.options != options:
                picker.options = options
            picker.value = [u for u in lens.selection if u in options.values()]
            n = len(lens.selection)
            status.object = (
                f"{n} {level_words(lens)} unit{'s' if n != 1 else ''} selected." if n else "Nothing selected: every unit is shown."
            )

        apply.on_click(lambda _: setattr(lens, "selection", sorted(picker.value)))
        clear.on_click(lambda _: setattr(lens, "selection", []))
        lens.param.watch(pull, ["snapshot", "city", "level", "selection"])
        pull()
        return [picker, pn.Row(apply, clear, sizing_mode="stretch_width"), status]

    @staticmethod
    def _kinds_note(kinds: list[str]) -> str:
        return "" if kinds else "*No kind ticked: nothing is shown.*"

    def _named(self, name: str, label: str, options: Callable[[], dict[str, str]]) -> pn.widgets.Select:
        """A select of one lens parameter showing display names (``options``: name -> value),
        renamed when the city or snapshot changes; values stay the lens' ids."""
        lens = self.bound
        widget = pn.widgets.Select(label=label, options=options(), value=getattr(lens, name))
        pulling = [False]

        def push(event: Any) -> None:
            if not pulling[0] and event.new is not None and event.new != getattr(lens, name):
                setattr(lens, name, event.new)

        def pull(*_: Any) -> None:
            pulling[0] = True
            try:
                fresh = options()
                if widget.options != fresh:
                    widget.options = fresh
                widget.value = getattr(lens, name)
            finally:
                pulling[0] = False

        widget.param.watch(push, "value")
        lens.param.watch(pull, list(dict.fromkeys([name, "city", "snapshot"])))
        return widget

    def _kinds(self) -> pn.widgets.CheckBoxGroup:
        """Checkboxes of the kinds the city has events of only. A kind the city lacks stays in the
        lens' kinds (it selects nothing there), so ticking all the city offers is "every kind"."""
        lens = self.bound

        def offered() -> tuple[str, ...]:
            return city_kinds(lens.snapshot, lens.city) if lens.snapshot is not None else KINDS

        widget = pn.widgets.CheckBoxGroup(label="Event kinds", inline=False)
        pulling = [False]

        def push(event: Any) -> None:
            if not pulling[0]:
                have = offered()
                lens.kinds = [k for k in KINDS if k in event.new or k not in have]

        def pull(*_: Any) -> None:
            pulling[0] = True
            try:
                have = offered()
                options = {KIND_LABELS[k]: k for k in have}
                if widget.options != options:
                    widget.options = options
                widget.value = [k for k in have if k in lens.kinds]
            finally:
                pulling[0] = False

        widget.param.watch(push, "value")
        lens.param.watch(pull, ["kinds", "city", "snapshot"])
        pull()
        return widget

    def __panel__(self) -> pn.viewable.Viewable:
        lens = self.bound
        p = lens.param
        kinds = self._kinds()
        return pn.Column(
            self._named("city", "City", lambda: {city_name(c): c for c in p.city.objects}),
            self._named("level", "Admin level", lambda: {name: key for key, name in level_names(lens.city).items()}),
            *self._window(),
            pn.widgets.Select.from_param(p.category, label="Category"),
            pn.pane.Markdown("Event kinds", margin=(5, 10, 0, 10)),
            kinds,
            pn.pane.Markdown(pn.bind(self._kinds_note, kinds.param.value), margin=(0, 10)),
            pn.widgets.Select.from_param(p.time_bin, label="Time bin"),
            pn.widgets.FloatInput.from_param(p.min_z, label="Minimum z-score", step=0.5, stylesheets=[NUMBER_CSS]),
            pn.widgets.FloatInput.from_param(p.q, label="Largest q-value (false-discovery rate)", step=0.01, stylesheets=[NUMBER_CSS]),
            *self._selection(),
            sizing_mode="stretch_width",
        )


def selection_options(lens: Lens) -> dict[str, str]:
    """Name -> unit id of the lens level's units, by name (names are unique within a level)."""
    if lens.snapshot is None:
        return {}
    units = lens.snapshot.units(lens.city, lens.level).select("name", "unit_id").sort("name")
    return dict(zip(units["name"].to_list(), units["unit_id"].to_list(), strict=True))


# ---- exports -----------------------------------------------------------------------------------
def downloads(lens: Lens) -> list[pn.widgets.Widget]:
    """CSV downloads of the released anomalies and unit totals; each built when clicked, so it is
    exactly what the lens releases at that moment, and named after city, level and window. Then
    :func:`view_png`, the picture of the map and tilegram as drawn."""

    def button(kind: str, label: str, make: Callable[[], bytes]) -> pn.widgets.FileDownload:
        def name() -> str:
            since, until = lens.window()
            return export_filename(kind, lens.city, lens.level, since, until)

        widget = pn.widgets.FileDownload(
            callback=lambda: io.BytesIO(make()), filename=name(), label=label, color="light", sizing_mode="stretch_width"
        )
        lens.param.watch(lambda *_: setattr(widget, "filename", name()), ["city", "level", "since", "until"])
        return widget

    return [
        button("anomalies", "Download anomalies (CSV)", lambda: anomalies_csv(lens.anomalies()[0])),
        button("unit_counts", "Download unit counts (CSV)", lambda: unit_counts_csv(lens.unit_counts())),
        view_png(lens),
    ]


def view_png(lens: Lens) -> pn.widgets.Button:
    """The "Download view (PNG)" button: the browser draws the heat map and tilegram as shown, with a caption
    line, into one PNG (:data:`~app.views.export.VIEW_PNG_JS`). The file name and caption live in
    the button's ``tags``, kept current from the lens, so a click needs no server round trip."""
    widget = pn.widgets.Button(label="Download view (PNG)", color="light", sizing_mode="stretch_width")

    def tags(*_: Any) -> None:
        since, until = lens.window()
        widget.tags = [
            export_filename("view", lens.city, lens.level, since, until, ext="png"),
            view_caption(city_name(lens.city), level_words(lens), since, until, lens.category, privacy_rule(lens)),
        ]

    tags()
    lens.param.watch(tags, ["city", "level", "since", "until", "category", "privacy_mode", "privacy_k", "epsilon"])
    widget.js_on_click(args={"button": widget}, code=VIEW_PNG_JS)
    return widget


def _template(main: list[Any], sidebar: list[Any] | None = None) -> BasicTemplate:
    return template(TITLE, main=main, sidebar=sidebar or [], accent=_ACCENT)


def dashboard_page(lens: Lens, notice: str = "") -> BasicTemplate:
    """The page over one lens: controls in the sidebar; provenance, a live summary, the heat map
    beside the tilegram, the narratives beside the anomaly table (with its exports) and the
    sparkbands. Every view reads the same lens, so a brush, a tile pick or a control change moves
    them all; ``notice`` (why parts of the page's link were ignored) is shown above them."""
    alert = pn.pane.Alert(notice, alert_type="warning", visible=bool(notice), margin=(0, 10))
    caption = pn.pane.Markdown(
        "Brighter = more events in the window (equalised colour scale). Hover a unit for its released count; click it to select it.",
        styles=_SMALL,
    )
    # Fixed-height rows: stretching rows in a scrolling page let the map overflow onto the next row.
    heat = pn.Column("## Where events cluster", HeatView(lens=lens), caption, sizing_mode="stretch_width", height=660, min_width=420)
    tiles = pn.Column(Tilegram(lens=lens), sizing_mode="stretch_width", height=660, min_width=420)
    exports = pn.Row(*downloads(lens), sizing_mode="stretch_width")
    table = pn.Column(AnomalyTable(lens=lens), exports, sizing_mode="stretch_width", min_width=520)
    stories = pn.Column(
        "## What stands out", Narratives(lens=lens), sizing_mode="stretch_width", min_width=420, max_height=700, scroll=True
    )
    bands = pn.Column("## Against the baseline", Sparkbands(lens=lens), sizing_mode="stretch_width")
    body = pn.Column(
        alert,
        ProvenancePanel(lens=lens),
        LiveRegion(lens=lens),
        pn.Row(heat, tiles, sizing_mode="stretch_width", height=670),
        HeatTable(lens=lens),  # each chart's data-table twin, closed until asked for
        TileTable(lens=lens),
        pn.Row(stories, table, sizing_mode="stretch_width"),
        bands,
        BandTable(lens=lens),
        sizing_mode="stretch_both",
    )
    # A hidden ``<div data-csh-rendered="n" data-csh-state="query">``: the n-th render and the lens
    # state it shows, written by a watcher registered after every view's and at the highest
    # precedence, so it changes only once every view has taken a change (the browser applies
    # server messages in order). The browser bench waits on it rather than on one view.
    # Every view is built before the page is sent: sending the shell first and the views after
    # load was measured slower to the last view (each late view re-lays out the whole Bokeh page
    # and re-renders the map) for a first paint only ~0.2 s earlier on a warm server.
    stamp = pn.pane.HTML("", visible=False, margin=0)
    changes = [0]

    def mark(*_: Any) -> None:
        state = html.escape(urlencode(url_state(lens)))
        stamp.object = f'<div data-csh-rendered="{changes[0]}" data-csh-state="{state}"></div>'
        changes[0] += 1

    mark()
    lens.param.watch(mark, list(LENS_STATE), precedence=1_000)
    body.append(stamp)
    return _template(main=[body], sidebar=[Controls(lens=lens)])


def build_dashboard(store: Store, settings: Settings) -> BasicTemplate:
    """A fresh lens and page for one browser session; a clear notice when nothing is published yet."""
    snapshot = store.current()
    city = default_city(snapshot, Lens.param["city"].default) if snapshot is not None else None
    if snapshot is None or city is None:
        return _template(main=[pn.pane.Alert(NO_DATA, alert_type="warning")])
    lens = Lens(
        snapshot=snapshot,
        privacy_mode=settings.privacy_mode,
        privacy_k=settings.privacy_k,
        epsilon=settings.privacy_epsilon,
    )
    lens.city = city  # after the snapshot: the lens offers the snapshot's cities once it has one
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:  # a live browser session

        def tick() -> None:
            if follow_store(store, lens):
                log.info("dashboard.followed", snapshot=lens.snapshot.id if lens.snapshot else None)

        pn.state.add_periodic_callback(tick, period=FOLLOW_MS)
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=TILE_KEYS_JS))  # the tiles by keyboard
        return dashboard_page(lens, notice=url_notice(follow_url(lens)))
    return dashboard_page(lens)


def follow_store(store: Store, lens: Lens) -> bool:
    """Point ``lens`` at the store's newest snapshot when the scheduler published one (True if moved)."""
    newest = store.current()
    if newest is None or lens.snapshot is None or newest.id == lens.snapshot.id:
        return False
    lens.snapshot = newest
    return True
