"""The dashboard page: sidebar controls, provenance, the heat map and the anomaly table (with its
CSV exports) over one session lens.

``build_dashboard`` is the factory the FastAPI mount calls per browser session, so every visitor
gets a fresh :class:`~app.engine.lens.Lens` over the shared, already-loaded snapshot. A live
session also keeps the lens state in the page URL, so a copied link reopens the same view.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import panel as pn
import structlog
from bokeh.models import CustomJS
from panel.template.base import BasicTemplate

from app.config import Settings
from app.data.store import Store
from app.engine.lens import KINDS, Lens
from app.engine.privacy import BudgetLedger
from app.views.announce import LiveRegion
from app.views.anomaly_table import AnomalyTable
from app.views.base import LensView
from app.views.export import VIEW_PNG_JS, anomalies_csv, export_filename, unit_counts_csv, view_caption
from app.views.heat import HeatView
from app.views.narratives import Narratives
from app.views.provenance import ProvenancePanel
from app.views.sparkbands import Sparkbands
from app.views.tables import BandTable, HeatTable, TileTable
from app.views.template import template
from app.views.tilegram import TILE_KEYS_JS, Tilegram

__all__ = [
    "FOLLOW_MS",
    "HISTORY_JS",
    "NO_DATA",
    "NO_KINDS",
    "TITLE",
    "URL_KEYS",
    "URL_PARAMS",
    "Controls",
    "apply_url_state",
    "build_dashboard",
    "dashboard_page",
    "downloads",
    "follow_store",
    "privacy_rule",
    "privacy_state",
    "restore_url_state",
    "selection_options",
    "url_notice",
    "url_query",
    "url_state",
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

pn.extension("tabulator", sizing_mode="stretch_width")


def _naive_utc(value: date | None) -> datetime | None:
    """Lens datetimes are tz-aware UTC; the pickers show naive wall-clock UTC."""
    return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else None


def _as_datetime(value: object) -> datetime | None:
    """A picker value as a naive datetime (a bare date means its midnight)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime(value.year, value.month, value.day) if isinstance(value, date) else None


def _window_problem(start: datetime | None, end: datetime | None) -> str:
    """Why a picked window cannot be applied ('' when it can)."""
    if start is None or end is None:
        return "Pick both a start and an end."
    if start >= end:
        return "The start must be before the end: the window was not changed."
    return ""


class Controls(LensView):
    """Sidebar widgets bound to the lens; invalid windows are reported and never reach the lens.

    >>> pn.panel(Controls(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    def _window(self) -> list[pn.viewable.Viewable]:
        """Since/until pickers kept in sync with the lens both ways, plus their error line."""
        lens = self._lens
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
            problem = _window_problem(start, end)
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
        lens = self._lens
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
            status.object = f"{n} {lens.level} unit{'s' if n != 1 else ''} selected." if n else "Nothing selected: every unit is shown."

        apply.on_click(lambda _: setattr(lens, "selection", sorted(picker.value)))
        clear.on_click(lambda _: setattr(lens, "selection", []))
        lens.param.watch(pull, ["snapshot", "city", "level", "selection"])
        pull()
        return [picker, pn.Row(apply, clear, sizing_mode="stretch_width"), status]

    @staticmethod
    def _kinds_note(kinds: list[str]) -> str:
        return "" if kinds else "*No kind ticked: nothing is shown.*"

    def __panel__(self) -> pn.viewable.Viewable:
        p = self._lens.param
        return pn.Column(
            pn.widgets.Select.from_param(p.city, label="City"),
            pn.widgets.Select.from_param(p.level, label="Admin level"),
            *self._window(),
            pn.widgets.Select.from_param(p.category, label="Category"),
            pn.pane.Markdown("Event kinds", margin=(5, 10, 0, 10)),
            pn.widgets.CheckBoxGroup.from_param(p.kinds, label="Event kinds", inline=False),
            pn.pane.Markdown(pn.bind(self._kinds_note, p.kinds), margin=(0, 10)),
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


# ---- the lens state in the URL ---------------------------------------------------------------
#: Query keys a shared link carries. Lens parameters keep their names; ``sel`` is the selection (unit
#: ids at the link's level, sorted, comma-separated; absent when nothing is selected) and
#: ``privacy`` the release rule the view was seen under, with its ``privacy_k`` (suppress) or
#: ``epsilon`` (dp). The server's rule always applies: a link can state it, never lower it.
URL_KEYS = ("city", "level", "since", "until", "category", "kinds", "time_bin", "min_z", "q", "sel", "privacy", "privacy_k", "epsilon")
#: Lens parameters whose change rewrites the URL.
URL_PARAMS = (*URL_KEYS[: URL_KEYS.index("sel")], "selection", "privacy_mode", "privacy_k", "epsilon")
#: ``kinds`` value of an empty selection (an empty query value would be dropped, i.e. read as "all").
NO_KINDS = "none"


def _iso(value: datetime) -> str:
    """A UTC instant as ISO 8601: the bare date at midnight (the common case), else with ``Z``."""
    value = value.astimezone(UTC)
    return (
        value.date().isoformat()
        if value == datetime(value.year, value.month, value.day, tzinfo=UTC)
        else value.isoformat().replace("+00:00", "Z")
    )


def _number(value: float) -> str:
    """Shortest text that reads back as exactly ``value``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def privacy_state(lens: Lens) -> dict[str, str]:
    """The release rule as query values: the mode, plus the one parameter that matters for it."""
    if lens.privacy_mode == "suppress":
        return {"privacy": "suppress", "privacy_k": str(lens.privacy_k)}
    if lens.privacy_mode == "dp":
        return {"privacy": "dp", "epsilon": _number(lens.epsilon)}
    return {"privacy": lens.privacy_mode}


def privacy_rule(lens: Lens) -> str:
    """The release rule in words, e.g. ``suppress, k = 11`` (for the link notice and PNG caption)."""
    if lens.privacy_mode == "suppress":
        return f"suppress, k = {lens.privacy_k}"
    if lens.privacy_mode == "dp":
        return f"dp, ε = {_number(lens.epsilon)}"
    return str(lens.privacy_mode)


def url_state(lens: Lens) -> dict[str, str]:
    """The lens state as query values: plain text, ISO dates, kinds and selection comma-separated.

    Panel's own parameter (de)serialisation is not used: it drops the UTC offset of dates, and a
    naive date read back into the lens breaks every comparison with the tz-aware events.
    """
    since, until = lens.window()
    kinds = ",".join(k for k in KINDS if k in lens.kinds) or NO_KINDS
    values = {
        "city": lens.city,
        "level": lens.level,
        "since": _iso(since) if since is not None else None,
        "until": _iso(until) if until is not None else None,
        "category": lens.category,
        "kinds": kinds,
        "time_bin": lens.time_bin,
        "min_z": _number(lens.min_z),
        "q": _number(lens.q),
        "sel": ",".join(sorted(lens.selection)) or None,
        **privacy_state(lens),
    }
    return {k: v for k, v in values.items() if v is not None}


def url_query(state: Mapping[str, str]) -> str:
    """Query values as a query string; commas stay literal (``sel=BK0101,BK0102``): a link stays
    short and readable, and a comma is legal in a query."""
    return urlencode(state, safe=",")


def _parse_instant(text: str) -> datetime:
    """ISO date or date-time; without an offset it is UTC (as the pickers are)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO date such as 2026-10-25 or 2026-10-25T06:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bounded(lens: Lens, name: str) -> Callable[[str], float]:
    """A parser of one numeric lens parameter that keeps to its bounds."""
    low, high = lens.param[name].bounds

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(value) or value < low or value > high:
            raise ValueError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _choice(options: list[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"not one of: {', '.join(options)}")
        return text

    return check


def _kinds(text: str) -> list[str]:
    chosen = [] if text == NO_KINDS else [k.strip() for k in text.split(",") if k.strip()]
    if text != NO_KINDS and (not chosen or any(k not in KINDS for k in chosen)):
        raise ValueError(f"kinds are {', '.join(KINDS)} (comma-separated) or {NO_KINDS!r}")
    return [k for k in KINDS if k in chosen]


def _quoted(text: str) -> str:
    """A value from the URL made inert for the Markdown notice: anyone can craft a link, so its
    text is shortened, HTML-escaped and its Markdown syntax escaped before it is shown."""
    short = text if len(text) <= 60 else text[:59] + "…"
    return "“" + re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", html.escape(short)) + "”"


def apply_url_state(lens: Lens, query: Mapping[str, str]) -> list[str]:
    """Set the lens from a link's query values; return one problem per value that was not applied.

    Each value is checked on its own, so one bad value (a typo, an edited link, a category another
    snapshot no longer has) keeps its default and cannot take the rest of the link down with it.
    The city goes first: it decides the categories on offer and resets the window; the selection
    goes last: a level change carries the old selection over to the new level and would overwrite
    it. The release rule is the server's whatever the link says (a difference is reported). Keys
    that are not lens state are left alone (they may belong to whoever shared the link).
    """
    problems: list[str] = []

    def parsed(name: str, parse: Callable[[str], Any]) -> Any:
        try:
            return parse(query[name])
        except ValueError as exc:
            problems.append(f"{name} = {_quoted(query[name])} ({exc})")
            return None

    if "city" in query and (city := parsed("city", _choice(list(lens.param.city.objects)))) is not None:
        lens.city = city
    checks: dict[str, Callable[[str], Any]] = {
        "level": _choice(list(lens.param.level.objects)),
        "category": _choice(list(lens.param.category.objects)),
        "kinds": _kinds,
        "time_bin": _choice(list(lens.param.time_bin.objects)),
        "min_z": _bounded(lens, "min_z"),
        "q": _bounded(lens, "q"),
    }
    updates = {name: value for name, check in checks.items() if name in query and (value := parsed(name, check)) is not None}
    since = parsed("since", _parse_instant) if "since" in query else None
    until = parsed("until", _parse_instant) if "until" in query else None
    if since is not None or until is not None:
        start, end = lens.window()
        start, end = since or start, until or end
        if _window_problem(start, end):
            window = f"since = {_quoted(query.get('since', ''))}, until = {_quoted(query.get('until', ''))}"
            problems.append(f"{window} (the start must be before the end)")
        else:
            updates.update(since=start, until=end)
    if updates:
        lens.param.update(**updates)
    problems.extend(_privacy_problems(lens, query))
    if "sel" in query:
        chosen, unknown = _selection(lens, query["sel"])
        if unknown:
            problems.append(f"sel = {_quoted(','.join(unknown))} (no such {lens.level} in {lens.city})")
        lens.selection = chosen
    return problems


def _selection(lens: Lens, text: str) -> tuple[list[str], list[str]]:
    """The ids of ``text`` that are units of the lens level (sorted, once each), and the others."""
    ids = list(dict.fromkeys(i.strip() for i in text.split(",") if i.strip()))
    known = set(lens.snapshot.units(lens.city, lens.level)["unit_id"].to_list()) if lens.snapshot is not None else set()
    return sorted(i for i in ids if i in known), [i for i in ids if i not in known]


def _privacy_problems(lens: Lens, query: Mapping[str, str]) -> list[str]:
    """A link's release rule that is not the server's, as problems (the server's rule stays).

    A link cannot lower privacy (``privacy=none`` on a server that suppresses), and neither can it
    raise it: the server publishes one rule, so two links never show the same cells differently.
    """
    rule = f"this server publishes with {privacy_rule(lens)}"
    if "privacy" in query and query["privacy"] != lens.privacy_mode:
        return [f"privacy = {_quoted(query['privacy'])} ({rule})"]
    ours = privacy_state(lens)
    problems = []
    for key in ("privacy_k", "epsilon"):
        if key not in query:
            continue
        try:
            same = key in ours and float(query[key]) == float(ours[key])
        except ValueError:
            same = False
        if not same:
            problems.append(f"{key} = {_quoted(query[key])} ({rule})")
    return problems


def url_notice(problems: list[str]) -> str:
    """The page's notice about ignored link values ('' when every value was applied)."""
    return "This link holds values the dashboard cannot use, so their defaults are shown: " + "; ".join(problems) + "." if problems else ""


def restore_url_state(lens: Lens, query: Mapping[str, str]) -> None:
    """Show exactly the view of a history entry's query: what it leaves out is the default (a fresh
    lens of the same snapshot and rule), not whatever the session shows now, so Back to a bare
    link also clears the category or selection chosen since."""
    target = Lens(
        snapshot=lens.snapshot, privacy_mode=lens.privacy_mode, privacy_k=lens.privacy_k, epsilon=lens.epsilon, ledger=lens.ledger
    )
    apply_url_state(target, query)
    apply_url_state(lens, url_state(target))
    lens.selection = list(target.selection)


#: Browser half of Back/Forward. Panel's Location model writes each server-side URL change with
#: ``history.pushState`` (one history entry per view) but never listens for ``popstate``, so Back
#: would change the address bar and leave the view as it was. This listener reports the URL the
#: browser went to through that Location model (the server then shows that entry's view), holding
#: ``pushState`` off meanwhile: the Location view would otherwise push the entry it is on again and
#: cut off Forward.
HISTORY_JS = r"""
if (window.__csh_history__) {
  return
}
window.__csh_history__ = true
window.addEventListener("popstate", () => {
  for (const doc of Bokeh.documents) {
    const location = doc.get_model_by_name("location")
    if (location == null || location.search === window.location.search) {
      continue
    }
    const push = window.history.pushState
    window.history.pushState = () => {}
    try {
      location.search = window.location.search
    } finally {
      window.history.pushState = push
    }
  }
})
"""


class _UrlFollower:
    """Keeps one session's URL and lens in step: the lens writes the URL on every change (a new
    history entry each time, Panel's doing) and Back/Forward (:data:`HISTORY_JS`) set the lens."""

    def __init__(self, lens: Lens, location: Any) -> None:
        self.lens, self.location = lens, location
        self.writing = False  # our own write: its echo on the ``search`` watcher is not a Back
        self.restoring = False  # showing a history entry: its URL is already right, write nothing
        self.listening = False  # browser reports before the page has loaded are its initial URL

    def push(self, *_: Any) -> None:
        if self.restoring:
            return
        # Other keys are kept as text after the lens state (``Location.update_query`` would re-parse
        # them into numbers and keep a stale key order).
        others = {k: v for k, v in parse_qsl(self.location.search.lstrip("?")) if k not in URL_KEYS}
        self.writing = True
        try:
            self.location.search = "?" + url_query({**url_state(self.lens), **others})
        finally:
            self.writing = False

    def loaded(self) -> None:
        # After the browser has reported its own URL: a link without (or with bad) values then
        # shows the full state at once, ready to be copied.
        self.push()
        self.listening = True

    def popped(self, event: Any) -> None:
        """The browser went Back or Forward: show that entry's view without writing the URL."""
        if self.writing or self.restoring or not self.listening:
            return
        self.restoring = True
        try:
            restore_url_state(self.lens, dict(parse_qsl(str(event.new).lstrip("?"))))
        finally:
            self.restoring = False


def _follow_url(lens: Lens) -> list[str]:
    """Apply the session's URL to the lens and keep the URL following the lens (full state each time).

    Deliberately not ``pn.state.location.sync(lens, ...)``: it re-applies the raw query through
    Panel's parameter deserialisation whenever the browser reports its URL (which it does once on
    connecting), setting naive datetimes and half-applying a link with one bad value. Here the
    query is read once, value by value; after that the URL is written, and read again only when
    the browser goes Back or Forward.
    """
    location = pn.state.location
    if location is None:
        return []
    problems = apply_url_state(lens, dict(parse_qsl(location.search.lstrip("?"))))
    follower = _UrlFollower(lens, location)
    lens.param.watch(follower.push, list(URL_PARAMS))
    location.param.watch(follower.popped, "search")
    pn.state.onload(follower.loaded)
    if pn.state.curdoc is not None:
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=HISTORY_JS))
    return problems


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
            view_caption(lens.city, lens.level, since, until, lens.category, privacy_rule(lens)),
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
    from app.views.base import LENS_STATE

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


def build_dashboard(store: Store, settings: Settings, ledger: BudgetLedger | None = None) -> BasicTemplate:
    """A fresh lens and page for one browser session; a clear notice when nothing is published yet.
    ``ledger`` is the server's 'dp' budget ledger (required in 'dp' mode)."""
    snapshot = store.current()
    if snapshot is None:
        return _template(main=[pn.pane.Alert(NO_DATA, alert_type="warning")])
    lens = Lens(
        snapshot=snapshot,
        privacy_mode=settings.privacy_mode,
        privacy_k=settings.privacy_k,
        epsilon=settings.privacy_epsilon,
        ledger=ledger,
    )
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:  # a live browser session

        def tick() -> None:
            if follow_store(store, lens):
                log.info("dashboard.followed", snapshot=lens.snapshot.id if lens.snapshot else None)

        pn.state.add_periodic_callback(tick, period=FOLLOW_MS)
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=TILE_KEYS_JS))  # the tiles by keyboard
        return dashboard_page(lens, notice=url_notice(_follow_url(lens)))
    return dashboard_page(lens)


def follow_store(store: Store, lens: Lens) -> bool:
    """Point ``lens`` at the store's newest snapshot when the scheduler published one (True if moved)."""
    newest = store.current()
    if newest is None or lens.snapshot is None or newest.id == lens.snapshot.id:
        return False
    lens.snapshot = newest
    return True
