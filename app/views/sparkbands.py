"""Sparkbands: small multiples of released counts against their baseline band, one per unit (all
units at coarse levels, the most anomalous at fine ones), and an overview timeline whose brush
sets the lens window, so every linked view follows.

The band is expected +- 2 standard deviations of the same seasonal baseline the scores use
(:meth:`app.engine.lens.Lens.bands`); withheld counts are gaps, never numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import polars as pl

from app.views.base import LENS_STATE, LensView

__all__ = ["Sparkbands", "brush_window", "pick_units"]

_BAND = "#9ecae1"  # light blue band, dark orange line and marks: distinct for common colour-vision deficiencies
_LINE = "#08519c"
_MARK = "#d95f02"
hv.extension("bokeh", logo=False)

_DEPENDS_ON = LENS_STATE


def pick_units(bands: pl.DataFrame, top: int) -> list[str]:
    """Units to draw: every unit when there are at most ``top``, else the ``top`` with published
    anomalies first (most anomalous bins), then the largest released totals."""
    per_unit = bands.group_by("unit_id").agg(marks=pl.col("anomalous").sum(), total=pl.col("count").fill_null(0).sum())
    ranked = per_unit.sort(["marks", "total", "unit_id"], descending=[True, True, False])
    return ranked["unit_id"].head(top).to_list()


def brush_window(x0: float | datetime | None, x1: float | datetime | None, step: timedelta) -> tuple[datetime, datetime] | None:
    """A brushed x-range (Bokeh gives datetimes or epoch milliseconds) snapped outwards to whole bins
    of ``step`` (at least one bin), or None for an empty brush."""
    if x0 is None or x1 is None:
        return None
    lo, hi = (_as_utc(x) for x in (x0, x1))
    if hi < lo:
        lo, hi = hi, lo
    epoch = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday, so week bins snap to Mondays
    start = epoch + ((lo - epoch) // step) * step
    end = epoch + -((epoch - hi) // step) * step
    return start, max(end, start + step)


def _as_utc(x: float | datetime) -> datetime:
    if isinstance(x, datetime):
        return x.replace(tzinfo=UTC) if x.tzinfo is None else x.astimezone(UTC)
    if isinstance(x, np.datetime64):
        return datetime.fromtimestamp(x.astype("datetime64[ms]").astype(np.int64) / 1000, UTC)
    return datetime.fromtimestamp(float(x) / 1000, UTC)


class Sparkbands(LensView):
    """Small multiples of the lens level plus a brushable overview.

    >>> pn.panel(Sparkbands(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    top = param.Integer(default=12, bounds=(1, 60), doc="Most units drawn at fine levels.")

    def band(self, bands: pl.DataFrame, unit_id: str, name: str) -> hv.Overlay:
        """One sparkband: the baseline band, the released counts (gaps where withheld), anomaly marks."""
        rows = bands.filter(pl.col("unit_id") == unit_id).sort("bin_start")
        data = rows.with_columns(pl.col("bin_start").dt.replace_time_zone(None)).to_pandas()
        area = hv.Area(data, "bin_start", ["lo", "hi"]).opts(color=_BAND, line_alpha=0, alpha=0.6)
        line = hv.Curve(data, "bin_start", "count").opts(color=_LINE, line_width=2)
        marks = hv.Scatter(data[data["anomalous"]], "bin_start", "count").opts(color=_MARK, size=7, marker="diamond")
        return (area * line * marks).opts(
            title=name[:40], width=230, height=90, xaxis=None, yaxis=None, toolbar=None, show_legend=False, fontsize={"title": 9}
        )

    def _multiples(self, *_: Any) -> pn.viewable.Viewable:
        lens = self._lens
        if lens.snapshot is None or lens.grid_window() is None:
            return pn.pane.Markdown("*No window.*")
        bands = lens.bands()
        units = pick_units(bands, self.top)
        names = dict(lens.snapshot.units(lens.city, lens.level).select("unit_id", "name").iter_rows())
        if not units:
            return pn.pane.Markdown("*Nothing to draw in this window.*")
        panes = [pn.pane.HoloViews(self.band(bands, u, str(names.get(u, u))), linked_axes=False) for u in units]
        caption = pn.pane.Markdown(
            f"{len(units)} of {bands['unit_id'].n_unique()} units: observed (line), baseline expected ± 2 sd (band), "
            "published anomalies (◆). Gaps: counts too small to publish.",
            styles={"font-size": "12px"},
        )
        return pn.Column(caption, pn.GridBox(*panes, ncols=3))

    def overview(self) -> hv.Overlay:
        """The selection's city-wide released series over the baseline and the window, with a brush."""
        lens = self._lens
        series = lens.city_series()
        data = series.with_columns(pl.col("bin_start").dt.replace_time_zone(None)).to_pandas()
        curve = hv.Curve(data, "bin_start", "count", label="all units").opts(
            color=_LINE, width=700, height=110, tools=["xbox_select"], active_tools=["xbox_select"], xlabel="", ylabel="released count"
        )
        brush = hv.streams.BoundsX(source=curve, boundsx=(None, None))
        brush.add_subscriber(self._brushed)
        grid = lens.grid_window()
        window = hv.VSpan(*(pd_naive(t) for t in grid)).opts(color=_MARK, alpha=0.15) if grid else hv.VSpan(None, None)
        return curve * window

    def _brushed(self, boundsx: tuple[Any, Any] | None = None, **_: Any) -> None:
        """Brush end -> the lens window (snapped to whole bins), which every linked view follows."""
        if not boundsx:
            return
        snapped = brush_window(boundsx[0], boundsx[1], self._lens.bin_length)
        if snapped is not None:
            self._lens.param.update(since=snapped[0], until=snapped[1])

    def __panel__(self) -> pn.viewable.Viewable:
        p = self._lens.param
        deps = [p[name] for name in _DEPENDS_ON]
        return pn.Column(
            pn.pane.Markdown("Brush the timeline to set the window:", styles={"font-size": "12px"}, margin=(0, 10)),
            pn.pane.HoloViews(pn.bind(lambda *_: self.overview(), *deps), linked_axes=False),
            pn.panel(pn.bind(self._multiples, *deps)),
            sizing_mode="stretch_width",
        )


def pd_naive(ts: datetime) -> datetime:
    """UTC datetime as the naive value Bokeh's datetime axis plots."""
    return ts.astimezone(UTC).replace(tzinfo=None)
