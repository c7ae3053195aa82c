"""The anomaly table: the released unusual (unit, category, bin) cells of the lens window, and how
many the privacy rule withheld, so a short list is never mistaken for a quiet city."""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import polars as pl
from bokeh.models.widgets.tables import NumberFormatter

from app.views.base import LENS_STATE, LensView

__all__ = ["COLUMNS", "AnomalyTable", "anomaly_frame"]

#: Lens column -> table heading, in display order.
COLUMNS = {
    "name": "name",
    "category": "category",
    "bin_start": "day",
    "count": "observed",
    "expected": "expected",
    "zscore": "z",
    "effect": "effect",
    "narrative": "narrative",
}

_DEPENDS_ON = LENS_STATE

_TABLE_CSS = """
.tabulator .tabulator-cell, .tabulator .tabulator-col-title { font-size: 13px; }
.tabulator .tabulator-header .tabulator-col .tabulator-col-content .tabulator-col-title { white-space: normal !important; text-overflow: clip !important; overflow: visible !important; }
"""


def anomaly_frame(released: pl.DataFrame) -> pd.DataFrame:
    """Released anomalies reshaped for display: the :data:`COLUMNS` only, bins as UTC text.

    Bins are formatted here (date only when every bin starts at midnight) so the browser needs no
    date library and shows exactly what the server released.
    """
    if released.is_empty() or not set(COLUMNS).issubset(released.columns):
        return pd.DataFrame({label: pd.Series(dtype=object) for label in COLUMNS.values()})
    frame = released.select(list(COLUMNS)).rename(COLUMNS)
    midnight = frame.select((pl.col("day").dt.time() == pl.time(0)).all()).item()
    return frame.with_columns(pl.col("day").dt.strftime("%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M")).to_pandas()


class AnomalyTable(LensView):
    """A read-only table of ``lens.anomalies()`` with a line counting the withheld ones.

    >>> pn.panel(AnomalyTable(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    def _released(self) -> tuple[pd.DataFrame, int]:
        released, withheld = self._lens.anomalies()
        return anomaly_frame(released), withheld

    def _summary(self, *_: Any) -> str:
        lens = self._lens
        if lens.since is not None and lens.until is not None and lens.since >= lens.until:
            return "**No window:** the start must be before the end."
        frame, withheld = self._released()
        rules = {"suppress": f"privacy rule *suppress*, k = {lens.privacy_k}", "dp": f"privacy rule *dp*, ε = {lens.epsilon:g}"}
        rule = rules.get(lens.privacy_mode, "privacy rule *none* (internal)")
        shown = f"**{len(frame)}** anomalies with q ≤ {lens.q:g} and z ≥ {lens.min_z:g} at {lens.level} level"
        return f"{shown}; **{withheld}** withheld by the {rule}."

    def _table(self, *_: Any) -> pd.DataFrame:
        return self._released()[0]

    def __panel__(self) -> pn.viewable.Viewable:
        p = self._lens.param
        deps = [p[name] for name in _DEPENDS_ON]
        table = pn.widgets.Tabulator(
            pn.bind(self._table, *deps),
            disabled=True,
            show_index=False,
            layout="fit_columns",
            pagination="local",
            page_size=10,
            configuration={"columnDefaults": {"headerSort": False}},
            widths={
                "name": "14%",
                "category": "13%",
                "day": "9%",
                "observed": "7%",
                "expected": "7%",
                "z": "5%",
                "effect": "7%",
                "narrative": "38%",
            },
            formatters={
                "name": {"type": "textarea"},
                "category": {"type": "textarea"},
                "narrative": {"type": "textarea"},
                "expected": NumberFormatter(format="0.0"),
                "z": NumberFormatter(format="0.0"),
            },
            text_align={"observed": "right", "expected": "right", "z": "right"},
            header_align={"observed": "right", "expected": "right", "z": "right"},
            stylesheets=[_TABLE_CSS],
            sizing_mode="stretch_width",
            label="Anomalies",
        )
        summary = pn.pane.Markdown(pn.bind(self._summary, *deps), sizing_mode="stretch_width", margin=(0, 10))
        return pn.Column("### Anomalies", summary, table, sizing_mode="stretch_width")
