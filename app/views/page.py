"""The dashboard page: sidebar controls, the heat map and the anomaly table over one session lens.

``build_dashboard`` is the factory the FastAPI mount calls per browser session, so every visitor
gets a fresh :class:`~app.engine.lens.Lens` over the shared, already-loaded snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import panel as pn
import param

from app.config import Settings
from app.data.store import Store
from app.engine.lens import Lens
from app.views.anomaly_table import AnomalyTable
from app.views.heat import HeatView

__all__ = ["Controls", "build_dashboard", "TITLE"]

TITLE = "City Service Heat"
_ACCENT = "#b2401e"

pn.extension("tabulator", sizing_mode="stretch_width")


def _naive_utc(value: datetime | None) -> datetime | None:
    """Lens datetimes are tz-aware UTC; the pickers show naive wall-clock UTC."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class Controls(pn.viewable.Viewer):
    """Sidebar widgets bound to the lens; invalid windows are reported and never reach the lens.

    >>> pn.panel(Controls(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    lens = param.ClassSelector(class_=Lens, doc="The session lens the widgets edit.")

    def _window(self) -> tuple[pn.widgets.DatetimePicker, pn.widgets.DatetimePicker, pn.pane.Alert]:
        """Since/until pickers kept in sync with the lens both ways, plus their error line."""
        lens = self.lens
        since = pn.widgets.DatetimePicker(name="Since (UTC)", value=_naive_utc(lens.since))
        until = pn.widgets.DatetimePicker(name="Until (UTC, exclusive)", value=_naive_utc(lens.until))
        error = pn.pane.Alert("", alert_type="danger", visible=False, margin=(0, 10))

        def push(*_: Any) -> None:
            start, end = since.value, until.value
            problem = "Pick both a start and an end." if start is None or end is None else ""
            if not problem and start >= end:
                problem = "The start must be before the end: the window was not changed."
            error.param.update(object=problem, visible=bool(problem))
            if not problem:
                lens.param.update(since=start.replace(tzinfo=UTC), until=end.replace(tzinfo=UTC))

        def pull(*_: Any) -> None:
            since.value, until.value = _naive_utc(lens.since), _naive_utc(lens.until)

        since.param.watch(push, "value")
        until.param.watch(push, "value")
        lens.param.watch(pull, ["since", "until"])
        return since, until, error

    def _kinds_note(self, kinds: list[str]) -> str:
        return "" if kinds else "*No kind ticked: all kinds are shown.*"

    def __panel__(self) -> pn.viewable.Viewable:
        p = self.lens.param
        since, until, error = self._window()
        return pn.Column(
            pn.widgets.Select.from_param(p.city, name="City"),
            pn.widgets.Select.from_param(p.level, name="Admin level"),
            since,
            until,
            error,
            pn.widgets.Select.from_param(p.category, name="Category"),
            pn.pane.Markdown("Event kinds", margin=(5, 10, 0, 10)),
            pn.widgets.CheckBoxGroup.from_param(p.kinds, name="Event kinds", inline=False),
            pn.pane.Markdown(pn.bind(self._kinds_note, p.kinds), margin=(0, 10)),
            pn.widgets.Select.from_param(p.time_bin, name="Time bin"),
            pn.widgets.FloatInput.from_param(p.min_z, name="Minimum z-score", step=0.5),
            sizing_mode="stretch_width",
        )


def _provenance(lens: Lens, privacy_mode: str, privacy_k: int) -> str:
    """Which snapshot and which release rule produced the numbers on screen."""
    assert lens.snapshot is not None
    snap = lens.snapshot
    rule = f"suppress (counts 1–{privacy_k - 1} withheld, k = {privacy_k})" if privacy_mode == "suppress" else "none (internal use)"
    return f"Snapshot `{snap.id}` · built {snap.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC · privacy: {rule}"


def build_dashboard(store: Store, settings: Settings) -> pn.viewable.Viewable:
    """A fresh page and lens for one session; a clear notice when nothing is published yet."""
    template = pn.template.BootstrapTemplate(title=TITLE, header_background=_ACCENT, theme_toggle=False, sidebar_width=300)
    snapshot = store.current()
    if snapshot is None:
        template.main.append(
            pn.pane.Alert(
                "**No data published yet.** Build the demo city with `python -m app.pipeline demo` "
                "or wait for the scheduler's first refresh, then reload this page.",
                alert_type="warning",
            )
        )
        return template
    lens = Lens(snapshot=snapshot, privacy_mode=settings.privacy_mode, privacy_k=settings.privacy_k)
    template.sidebar.append(Controls(lens=lens))
    provenance = pn.pane.Markdown(pn.bind(_provenance, lens, lens.param.privacy_mode, lens.param.privacy_k), styles={"font-size": "0.85em", "color": "#555"})
    template.main.append(
        pn.Column(
            provenance,
            pn.Row(
                pn.Column("### Where events cluster", HeatView(lens=lens), sizing_mode="stretch_both", min_height=560),
                pn.Column(AnomalyTable(lens=lens), sizing_mode="stretch_width", max_width=620),
                sizing_mode="stretch_both",
            ),
            sizing_mode="stretch_both",
        )
    )
    return template
