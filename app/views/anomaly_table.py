"""The anomaly table: the released unusual (unit, category, bin) cells of the lens window, and how
many the privacy rule withheld, so a short list is never mistaken for a quiet city."""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import param
import polars as pl

from app.engine.lens import Lens

__all__ = ["AnomalyTable", "anomaly_frame", "COLUMNS"]

#: Lens column -> table heading, in display order.
COLUMNS = {"name": "name", "category": "category", "bin_start": "day", "count": "observed", "expected": "expected", "zscore": "z"}


def anomaly_frame(released: pl.DataFrame) -> pd.DataFrame:
    """Released anomalies reshaped for display: the :data:`COLUMNS` only, times as naive UTC."""
    if released.is_empty() or not set(COLUMNS).issubset(released.columns):
        return pd.DataFrame({label: pd.Series(dtype=object) for label in COLUMNS.values()})
    frame = released.select(list(COLUMNS)).rename(COLUMNS).with_columns(pl.col("day").dt.replace_time_zone(None))
    return frame.to_pandas()


class AnomalyTable(pn.viewable.Viewer):
    """A read-only table of ``lens.anomalies()`` with a line counting the withheld ones.

    >>> pn.panel(AnomalyTable(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    lens = param.ClassSelector(class_=Lens, doc="The session lens whose anomalies are listed.")

    def _released(self, **_: Any) -> tuple[pd.DataFrame, int]:
        released, withheld = self.lens.anomalies()
        return anomaly_frame(released), withheld

    def _summary(self, **deps: Any) -> str:
        frame, withheld = self._released(**deps)
        lens = self.lens
        if lens.since is not None and lens.until is not None and lens.since >= lens.until:
            return "**No window:** the start must be before the end."
        rule = f"privacy rule *suppress*, k = {lens.privacy_k}" if lens.privacy_mode == "suppress" else "privacy rule *none* (internal)"
        shown = f"**{len(frame)}** anomalies with z ≥ {lens.min_z:g} at {lens.level} level"
        return f"{shown}; **{withheld}** withheld by the {rule}."

    def _table(self, **deps: Any) -> pd.DataFrame:
        return self._released(**deps)[0]

    def __panel__(self) -> pn.viewable.Viewable:
        p = self.lens.param
        deps = {name: p[name] for name in ("snapshot", "city", "level", "since", "until", "category", "kinds", "time_bin", "min_z", "privacy_mode", "privacy_k")}
        table = pn.widgets.Tabulator(
            pn.bind(self._table, **deps),
            disabled=True, show_index=False, layout="fit_data_stretch", pagination="local", page_size=12,
            formatters={"day": {"type": "datetime", "outputFormat": "yyyy-MM-dd HH:mm"}},
            text_align={"observed": "right", "expected": "right", "z": "right"},
            sizing_mode="stretch_width", name="Anomalies",
        )
        summary = pn.pane.Markdown(pn.bind(self._summary, **deps), sizing_mode="stretch_width", margin=(0, 10))
        return pn.Column("### Anomalies", summary, table, sizing_mode="stretch_width")
