"""The dashboard page: sidebar controls, the heat map and the anomaly table over one session lens.

``build_dashboard`` is the factory the FastAPI mount calls per browser session, so every visitor
gets a fresh :class:`~app.engine.lens.Lens` over the shared, already-loaded snapshot.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import panel as pn
import structlog
from panel.template.base import BasicTemplate

from app.config import Settings
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.lens import Lens
from app.engine.privacy import BudgetLedger
from app.views.anomaly_table import AnomalyTable
from app.views.base import LensView
from app.views.heat import HeatView

__all__ = ["FOLLOW_MS", "NO_DATA", "TITLE", "Controls", "build_dashboard", "dashboard_page", "follow_store"]

log = structlog.get_logger(__name__)
TITLE = "City Service Heat"
#: How often an open page checks for a newer snapshot (the scheduler publishes every few minutes).
FOLLOW_MS = 30_000
_ACCENT = "#b2401e"
_SMALL = {"font-size": "0.85em", "color": "#555"}
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
        since = pn.widgets.DatetimePicker(label="Since (UTC)", value=_naive_utc(lens.since))
        until = pn.widgets.DatetimePicker(label="Until (UTC, exclusive)", value=_naive_utc(lens.until))
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
            pn.widgets.FloatInput.from_param(p.min_z, label="Minimum z-score", step=0.5),
            pn.widgets.FloatInput.from_param(p.q, label="Largest q-value (false-discovery rate)", step=0.01),
            sizing_mode="stretch_width",
        )


def _provenance(snap: Snapshot | None, privacy_mode: str, privacy_k: int) -> str:
    """Which snapshot and which release rule produced the numbers on screen."""
    assert snap is not None
    rules = {
        "suppress": f"suppress (counts 1 to {privacy_k - 1} withheld, with complements, k = {privacy_k})",
        "dp": "differential privacy (noisy counts, budgeted)",
    }
    rule = rules.get(privacy_mode, "none (internal use)")
    return f"Snapshot `{snap.id}` · built {snap.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC · privacy: {rule}"


def _template(main: list[Any], sidebar: list[Any] | None = None) -> BasicTemplate:
    # Bootstrap rather than Fast: the Fast design links Google Fonts, which fails (a console error) offline.
    return pn.template.BootstrapTemplate(title=TITLE, header_background=_ACCENT, sidebar_width=260, main=main, sidebar=sidebar or [])


def dashboard_page(lens: Lens) -> BasicTemplate:
    """The page over one lens: controls in the sidebar, provenance, heat map and anomaly table."""
    provenance = pn.pane.Markdown(pn.bind(_provenance, lens.param.snapshot, lens.param.privacy_mode, lens.param.privacy_k), styles=_SMALL)
    caption = pn.pane.Markdown("Brighter = more events in the window (equalised colour scale; no counts are shown).", styles=_SMALL)
    heat = pn.Column("### Where events cluster", HeatView(lens=lens), caption, sizing_mode="stretch_both", min_height=600, min_width=420)
    table = pn.Column(AnomalyTable(lens=lens), sizing_mode="stretch_width", min_width=520)
    body = pn.Column(provenance, pn.Row(heat, table, sizing_mode="stretch_both"), sizing_mode="stretch_both")
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
    return dashboard_page(lens)


def follow_store(store: Store, lens: Lens) -> bool:
    """Point ``lens`` at the store's newest snapshot when the scheduler published one (True if moved)."""
    newest = store.current()
    if newest is None or lens.snapshot is None or newest.id == lens.snapshot.id:
        return False
    lens.snapshot = newest
    return True
