"""The anomaly table: the released unusual (unit, category, bin) cells of the lens window, and how
many of the window's cells the privacy rule withheld (they are not scored), so a short list is
never mistaken for a quiet city."""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import param
import polars as pl

from app.views.base import LENS_STATE, LensView, level_words
from app.views.provenance import privacy_rule
from app.views.tables import TABLE_CSS, html_table

__all__ = ["COLUMNS", "MAX_ROWS", "SORTS", "AnomalyTable", "anomaly_frame"]

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

#: Sort choices of the table: label -> (column of the display frame, descending).
SORTS = {
    "strongest first (z)": ("z", True),
    "newest first": ("day", True),
    "most events": ("observed", True),
    "name": ("name", False),
}
#: Rows drawn; the CSV export holds them all.
MAX_ROWS = 200


def anomaly_frame(released: pl.DataFrame, tz: str = "UTC") -> pd.DataFrame:
    """Released anomalies reshaped for display: the :data:`COLUMNS` only, bins as text in the
    city's local time ``tz`` (a Chicago day starts at local midnight).

    Bins are formatted here (date only when every bin starts at midnight) so the browser needs no
    date library and shows exactly what the server released.
    """
    if released.is_empty() or not set(COLUMNS).issubset(released.columns):
        return pd.DataFrame({label: pd.Series(dtype=object) for label in COLUMNS.values()})
    frame = released.select(list(COLUMNS)).rename(COLUMNS).with_columns(pl.col("day").dt.convert_time_zone(tz))
    midnight = frame.select((pl.col("day").dt.time() == pl.time(0)).all()).item()
    return frame.with_columns(pl.col("day").dt.strftime("%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M")).to_pandas()


class AnomalyTable(LensView):
    """A read-only table of ``lens.anomalies()`` with a line counting the window's withheld cells.

    A semantic HTML table (see :mod:`app.views.tables`) with a sort control, rather than a grid
    widget: it is read by screen readers as a table and scrolls by keyboard.

    >>> pn.panel(AnomalyTable(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    sort = param.Selector[str](default=next(iter(SORTS)), objects=list(SORTS), doc="Row order of the table.")

    def _released(self) -> tuple[pd.DataFrame, int]:
        released, withheld = self.bound.anomalies()
        return anomaly_frame(released, self.bound.tz), withheld

    def _summary(self, *_: Any) -> str:
        lens = self.bound
        if lens.since is not None and lens.until is not None and lens.since >= lens.until:
            return "**No window:** the start must be before the end."
        frame, withheld = self._released()
        shown = f"**{len(frame)}** anomalies with q ≤ {lens.q:g} and z ≥ {lens.min_z:g} at {level_words(lens)} level"
        return f"{shown}; **{withheld}** cells of the window withheld by the privacy rule *{privacy_rule(lens)}* (not scored)."

    def _table(self, *_: Any) -> pd.DataFrame:
        """The displayed rows in the chosen order."""
        frame = self._released()[0]
        column, descending = SORTS[self.sort]
        return frame.sort_values(column, ascending=not descending, kind="stable") if len(frame) else frame

    def _html(self, *_: Any) -> str:
        return html_table(
            pl.from_pandas(self._table()),
            f"Released anomalies at {level_words(self.bound)} level, {self.sort}",
            css_class="csh-anomalies",
            numeric=["observed", "expected", "z"],
            max_rows=MAX_ROWS,
            more="{n} more anomalies are in the CSV export.",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        p = self.bound.param
        deps = [p[name] for name in LENS_STATE]
        order = pn.widgets.Select.from_param(self.param.sort, label="Sort the table", width=220)
        table = pn.pane.HTML(pn.bind(self._html, *deps, self.param.sort), sizing_mode="stretch_width", stylesheets=[TABLE_CSS])
        summary = pn.pane.Markdown(pn.bind(self._summary, *deps), sizing_mode="stretch_width", margin=(0, 10))
        return pn.Column("## Anomalies", summary, order, table, sizing_mode="stretch_width")
