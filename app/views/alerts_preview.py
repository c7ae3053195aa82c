"""The draft rule's 30-day preview: how many events it would have matched, the alerts to expect per
day (with the daily cap), a bar chart of matches per local day with its table twin, and the newest
matches as a table (the map shows them as points)."""

from __future__ import annotations

import html
from datetime import datetime, time
from typing import Any

import panel as pn
import param
import polars as pl
from bokeh.models import ColumnDataSource, DataRange1d
from bokeh.plotting import figure

from app.alerts.preview import Preview
from app.views.alerts_state import AlertsState
from app.views.base import edits_models
from app.views.tables import TABLE_CSS, html_table, table_card

__all__ = ["DAYS_NAME", "PreviewView", "summary"]

_LISTED = 20
#: The bar chart's model name (its canvas is named by ``js/alerts_canvas.js``).
DAYS_NAME = "csh-alerts-days"


def summary(preview: Preview | None) -> str:
    """The preview in a sentence (HTML; the count in ``.csh-preview-count``)."""
    if preview is None:
        return "<p>No preview yet: fill in the rule and press “Preview the last 30 days”.</p>"
    if preview.since is None or preview.until is None:
        return f"<p>{html.escape(preview.city)} has no data in the served snapshot yet.</p>"
    noun = "match" if preview.total == 1 else "matches"
    text = (
        f'<p><strong><span class="csh-preview-count">{preview.total}</span> {noun}</strong> in the last {preview.window_days} days '
        f"({preview.since:%Y-%m-%d} to {preview.until:%Y-%m-%d}), about {preview.expected_per_day:g} a day"
    )
    if preview.daily_cap is not None:
        text += f"; with the daily cap of {preview.daily_cap}, about {preview.expected_alerts_per_day:g} alerts a day"
    else:
        text += f", so about {preview.expected_alerts_per_day:g} alerts a day"
    text += "."
    if preview.truncated:
        text += f" The map shows the newest {len(preview.matches)}."
    return text + "</p>"


def _live_summary(preview: Preview | None) -> str:
    return f'<div role="status" aria-live="polite">{summary(preview)}</div>'


def _is_set(value: object) -> bool:
    return value is not None


class PreviewView(pn.viewable.Viewer):
    """The session's preview: summary, per-day bars and their table, the newest matches."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state whose preview this shows.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._days = ColumnDataSource({"day": [], "matches": [], "alerts": []})
        self._chart = figure(
            name=DAYS_NAME,
            height=160,
            sizing_mode="stretch_width",
            x_axis_type="datetime",
            tools="",
            toolbar_location=None,
            title="Matches per local day (dark: alerts sent with the daily cap)",
            output_backend="canvas",
            y_range=DataRange1d(start=0),
        )
        self._chart.vbar(x="day", top="matches", width=20 * 3_600_000, source=self._days, color="#e0b4a4")
        self._chart.vbar(x="day", top="alerts", width=20 * 3_600_000, source=self._days, color="#b2401e")
        self._chart.yaxis.axis_label = "matches"
        assert self.state is not None, "PreviewView needs a state"
        self.state.param.watch(self._bars, "preview")
        self._bars()

    @edits_models
    def _bars(self, *_: Any) -> None:
        preview = self.state.preview if self.state is not None else None
        days = preview.days if preview is not None else []
        self._days.data = {
            "day": [datetime.combine(d.date, time()) for d in days],
            "matches": [d.matches for d in days],
            "alerts": [d.alerts for d in days],
        }

    def _days_card(self) -> pn.viewable.Viewable:
        """The bars' table twin, in a closed card (rendered while open)."""
        assert self.state is not None
        state = self.state
        card, refresh = table_card("Table of the daily counts", lambda: self._days_table(state.preview))
        state.param.watch(refresh, "preview")
        card.visible = pn.bind(_is_set, state.param.preview)
        return card

    @staticmethod
    def _days_table(preview: Preview | None) -> str:
        if preview is None or not preview.days:
            return ""
        frame = pl.DataFrame({"Day": [str(d.date) for d in preview.days], "Matches": [d.matches for d in preview.days]})
        frame = frame.with_columns(Alerts=pl.Series([d.alerts for d in preview.days]))
        return html_table(frame, "Matches and alerts per local day", css_class="csh-preview-days", numeric=["Matches", "Alerts"])

    @staticmethod
    def _matches_table(preview: Preview | None) -> str:
        if preview is None:
            return ""
        if preview.kind == "anomaly":
            frame = pl.DataFrame(
                {
                    "When": [f"{a.bin_start:%Y-%m-%d %H:%M}" for a in preview.anomalies[:_LISTED]],
                    "Where": [a.unit_name or a.unit_id for a in preview.anomalies[:_LISTED]],
                    "What": [a.narrative for a in preview.anomalies[:_LISTED]],
                },
                schema={"When": pl.String, "Where": pl.String, "What": pl.String},
            )
            return html_table(frame, f"Newest anomalies fired on (of {preview.total})", css_class="csh-preview-matches")
        frame = pl.DataFrame(
            {
                "When (UTC)": [f"{m.time:%Y-%m-%d %H:%M}" for m in preview.matches[:_LISTED]],
                "Category": [m.category or m.kind for m in preview.matches[:_LISTED]],
                "Address": [m.address or "—" for m in preview.matches[:_LISTED]],
            },
            schema={"When (UTC)": pl.String, "Category": pl.String, "Address": pl.String},
        )
        return html_table(frame, f"Newest matches (of {preview.total})", css_class="csh-preview-matches")

    def __panel__(self) -> pn.viewable.Viewable:
        assert self.state is not None
        p = self.state.param
        shown = pn.bind(_is_set, p.preview)
        return pn.Column(
            "## Preview",
            pn.pane.HTML(
                pn.bind(_live_summary, p.preview),
                sizing_mode="stretch_width",
                margin=(0, 10),
            ),
            pn.Column(pn.pane.Bokeh(self._chart, sizing_mode="stretch_width"), visible=shown, sizing_mode="stretch_width"),
            self._days_card(),
            pn.pane.HTML(pn.bind(self._matches_table, p.preview), stylesheets=[TABLE_CSS], sizing_mode="stretch_width", visible=shown),
            sizing_mode="stretch_width",
        )
