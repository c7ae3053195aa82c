"""Sparkbands: small multiples of released counts against their baseline band, one per unit (all
units at coarse levels, the most anomalous at fine ones), and an overview timeline whose brush
sets the lens window, so every linked view follows.

The band is expected +- 2 standard deviations of the same seasonal baseline the scores use
(:meth:`app.engine.lens.Lens.bands`); withheld counts are gaps, never numbers.

Both are plain Bokeh figures built once per page and updated in place (new column data for fixed
glyphs): the small multiples share one figure, each unit in its own cell. Building a dozen
HoloViews plots on every change cost seconds on the server and as long again in the browser.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import panel as pn
import param
import polars as pl
from bokeh.events import Event, SelectionGeometry
from bokeh.models import BoxSelectTool, ColumnDataSource, Range1d
from bokeh.models.annotations import BoxAnnotation
from bokeh.plotting import figure

from app.engine.grains import floor_bin, next_bin
from app.views.base import LENS_STATE, LensView, edits_models

__all__ = ["NCOLS", "Sparkbands", "brush_window", "multiples_data", "pick_units"]

_BAND = "#9ecae1"  # light blue band, dark orange line and marks: distinct for common colour-vision deficiencies
_LINE = "#08519c"
_MARK = "#d95f02"
_CELL = "#f5f7f9"  # faint cell background, so each multiple reads as its own plot
_TEXT = "#333333"
#: Small multiples per row, and the height of one row in pixels.
NCOLS = 3
_ROW_PX = 92
#: Within a cell (1 x 1 plot units): side margins, bottom margin and the strip kept for the name.
_PAD_X, _PAD_Y, _TITLE = 0.03, 0.06, 0.26


def pick_units(bands: pl.DataFrame, top: int) -> list[str]:
    """Units to draw: every unit when there are at most ``top``, else the ``top`` with published
    anomalies first (most anomalous bins), then the largest released totals."""
    per_unit = bands.group_by("unit_id").agg(marks=pl.col("anomalous").sum(), total=pl.col("count").fill_null(0).sum())
    ranked = per_unit.sort(["marks", "total", "unit_id"], descending=[True, True, False])
    return ranked["unit_id"].head(top).to_list()


def brush_window(x0: float | datetime | None, x1: float | datetime | None, grain: str, tz: str) -> tuple[datetime, datetime] | None:
    """A brushed x-range (Bokeh gives datetimes or epoch milliseconds) snapped outwards to whole
    ``grain`` bins of the city's local time ``tz`` (at least one bin), as the lens snaps its window;
    None for an empty brush."""
    if x0 is None or x1 is None:
        return None
    lo, hi = (_as_utc(x) for x in (x0, x1))
    if hi < lo:
        lo, hi = hi, lo
    start, last = floor_bin(lo, grain, tz), floor_bin(hi, grain, tz)
    end = last if last == hi else next_bin(last, grain, tz)
    return start, max(end, next_bin(start, grain, tz))


def _as_utc(x: float | datetime) -> datetime:
    if isinstance(x, datetime):
        return x.replace(tzinfo=UTC) if x.tzinfo is None else x.astimezone(UTC)
    if isinstance(x, np.datetime64):
        return datetime.fromtimestamp(x.astype("datetime64[ms]").astype(np.int64) / 1000, UTC)
    return datetime.fromtimestamp(float(x) / 1000, UTC)


def multiples_data(
    bands: pl.DataFrame, units: list[str], names: dict[str, str], ncols: int = NCOLS
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Rows of the grid and the glyph columns of the small multiples of ``units`` in one plane.

    Unit ``i`` sits in cell ``(i % ncols, i // ncols)`` (rows counted from the top; a cell is 1 x 1).
    Within its cell x is the bin's place in the window and y the value over the unit's own largest
    (band top or count), as a plot of its own would scale it; the name sits above. Withheld counts
    are NaN (gaps in the line, no mark); marks are the published anomalies.
    """
    rows = max(1, math.ceil(len(units) / ncols))
    cells: dict[str, list[Any]] = {"x0": [], "x1": [], "y0": [], "y1": [], "unit_id": []}
    band: dict[str, list[Any]] = {"xs": [], "ys": []}
    line: dict[str, list[Any]] = {"xs": [], "ys": []}
    marks: dict[str, list[Any]] = {"x": [], "y": []}
    titles: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
    frames = bands.filter(pl.col("unit_id").is_in(units)).sort("unit_id", "bin_start").partition_by("unit_id", as_dict=True)
    for i, unit in enumerate(units):
        col, row = i % ncols, i // ncols
        base = rows - row - 1  # bottom of the cell
        left, width = col + _PAD_X, 1 - 2 * _PAD_X
        bottom, height = base + _PAD_Y, 1 - _PAD_Y - _TITLE
        cells["x0"].append(col + 0.01)
        cells["x1"].append(col + 0.99)
        cells["y0"].append(base + 0.02)
        cells["y1"].append(base + 0.98)
        cells["unit_id"].append(unit)
        titles["x"].append(left)
        titles["y"].append(base + 0.95)
        titles["text"].append(str(names.get(unit, unit))[:40])
        frame = frames.get((unit,))
        if frame is None or frame.height == 0:
            band["xs"].append(np.empty(0))
            band["ys"].append(np.empty(0))
            line["xs"].append(np.empty(0))
            line["ys"].append(np.empty(0))
            continue
        count = frame["count"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        lo = frame["lo"].fill_null(0.0).to_numpy()
        hi = frame["hi"].fill_null(0.0).to_numpy()
        n = frame.height
        x = left + width * (np.arange(n) / (n - 1) if n > 1 else np.array([0.5]))
        tallest = max(float(np.nanmax(np.concatenate([hi, count, [0.0]]))), 1e-9)

        def y(
            values: np.ndarray[Any, Any], bottom: float = bottom, height: float = height, tallest: float = tallest
        ) -> np.ndarray[Any, Any]:
            return bottom + height * values / tallest

        band["xs"].append(np.concatenate([x, x[::-1]]))
        band["ys"].append(np.concatenate([y(hi), y(lo)[::-1]]))
        line["xs"].append(x)
        line["ys"].append(y(count))
        marked = frame["anomalous"].to_numpy() & ~np.isnan(count)
        marks["x"].extend(x[marked].tolist())
        marks["y"].extend(y(count)[marked].tolist())
    return rows, {"cells": cells, "band": band, "line": line, "marks": marks, "titles": titles}


class Sparkbands(LensView):
    """Small multiples of the lens level plus a brushable overview.

    >>> pn.panel(Sparkbands(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    top = param.Integer(default=12, bounds=(1, 60), doc="Most units drawn at fine levels.")

    def _brushed(self, boundsx: tuple[Any, Any] | None = None, **_: Any) -> None:
        """Brush end -> the lens window (snapped to whole bins), which every linked view follows."""
        if not boundsx:
            return
        snapped = brush_window(boundsx[0], boundsx[1], self.bound.effective_bin(), self.bound.tz)
        if snapped is not None:
            self.bound.param.update(since=snapped[0], until=snapped[1])

    def __panel__(self) -> pn.viewable.Viewable:
        return SparkbandFigures(self).panel


class SparkbandFigures:
    """One rendering of :class:`Sparkbands`: the overview and the small multiples as two Bokeh
    figures kept for the page's lifetime; a lens change replaces their column data (only when it
    differs from what is shown, so a threshold change that moves no mark sends nothing)."""

    def __init__(self, view: Sparkbands) -> None:
        self.view = view
        self.sources = {name: ColumnDataSource(name=f"sparkbands-{name}") for name in ("cells", "band", "line", "marks", "titles")}
        self.series = ColumnDataSource(name="sparkbands-series", data={"x": [], "count": []})
        self._shown: tuple[Any, ...] | None = None
        self._shown_series: tuple[Any, ...] | None = None
        self.multiples = self._multiples_figure()
        self.overview, self.window = self._overview_figure()
        self.message = pn.pane.Markdown("", visible=False, margin=(0, 10))
        self.caption = pn.pane.Markdown("", styles={"font-size": "12px"}, margin=(0, 10))
        # Visibility is toggled on a wrapper: a Bokeh pane's own ``visible`` reverts to its figure's
        # (Panel 1.9 syncs pane and model layout properties both ways).
        self.grid = pn.Column(
            self.caption, pn.pane.Bokeh(self.multiples, sizing_mode="stretch_width"), margin=0, sizing_mode="stretch_width"
        )
        self.panel = pn.Column(
            pn.pane.Markdown("Brush the timeline to set the window:", styles={"font-size": "12px"}, margin=(0, 10)),
            pn.pane.Bokeh(self.overview, sizing_mode="stretch_width"),
            self.message,
            self.grid,
            sizing_mode="stretch_width",
        )
        view.bound.param.watch(self.update, list(LENS_STATE))
        view.param.watch(self.update, ["top"])
        self.update()

    def _multiples_figure(self) -> Any:
        fig = figure(
            height=_ROW_PX,
            sizing_mode="stretch_width",
            x_range=Range1d(start=0, end=NCOLS),
            y_range=Range1d(start=0, end=1),
            tools="",
            toolbar_location=None,
            min_border=2,
            outline_line_color=None,
            name="sparkbands",
        )
        fig.axis.visible = False
        fig.grid.visible = False
        src = self.sources
        fig.quad(left="x0", right="x1", bottom="y0", top="y1", source=src["cells"], fill_color=_CELL, line_color=None)
        fig.patches("xs", "ys", source=src["band"], fill_color=_BAND, fill_alpha=0.6, line_alpha=0)
        fig.multi_line("xs", "ys", source=src["line"], line_color=_LINE, line_width=2)
        fig.scatter("x", "y", source=src["marks"], marker="diamond", size=11, color=_MARK)
        fig.text("x", "y", text="text", source=src["titles"], text_font_size="11px", text_baseline="top", text_color=_TEXT)
        return fig

    def _overview_figure(self) -> tuple[Any, BoxAnnotation]:
        brush = BoxSelectTool(dimensions="width", renderers=[])  # no glyph to select: only the brushed range matters
        fig = figure(
            height=120,
            sizing_mode="stretch_width",
            x_axis_type="datetime",
            tools=[brush],
            active_drag=brush,
            toolbar_location=None,
            y_axis_label="released count",
            min_border_left=50,
            name="sparkbands-overview",
        )
        fig.line("x", "count", source=self.series, line_color=_LINE, line_width=2)
        window = BoxAnnotation(fill_color=_MARK, fill_alpha=0.15, line_alpha=0)
        fig.add_layout(window)
        fig.on_event(SelectionGeometry, self._selection_geometry)
        return fig, window

    def _selection_geometry(self, event: Event) -> None:
        """The brush's final x-range (epoch milliseconds on the datetime axis) -> the lens window."""
        if not isinstance(event, SelectionGeometry):
            return
        geometry: dict[str, Any] = dict(event.geometry or {})
        if event.final and geometry.get("type") == "rect":
            self.view._brushed(boundsx=(geometry.get("x0"), geometry.get("x1")))

    @edits_models
    def update(self, *_: Any) -> None:
        """Redraw for the current lens: the overview's series and window, then the multiples."""
        lens = self.view.bound
        grid = lens.grid_window() if lens.snapshot is not None else None
        if lens.snapshot is None or grid is None:
            self._show_message("*No window.*")
            return
        series = lens.city_series()
        if self._shown_series is None or not (self._shown_series[0].equals(series)):
            self.series.data = {
                "x": series["bin_start"].dt.epoch("ms").cast(pl.Float64).to_numpy(),
                "count": series["count"].cast(pl.Float64).fill_null(float("nan")).to_numpy(),
            }
            self._shown_series = (series,)
        left, right = (t.timestamp() * 1000 for t in grid)
        if (self.window.left, self.window.right) != (left, right):
            self.window.update(left=left, right=right)
        bands = lens.bands()
        units = pick_units(bands, self.view.top)
        if not units:
            self._show_message("*Nothing to draw in this window.*")
            return
        names = dict(lens.snapshot.units(lens.city, lens.level).select("unit_id", "name").iter_rows())
        drawn = bands.filter(pl.col("unit_id").is_in(units))
        key = (units, [names.get(u) for u in units])
        if self._shown is None or self._shown[0] != key or not self._shown[1].equals(drawn):
            rows, data = multiples_data(drawn, units, names)
            for name, columns in data.items():
                self.sources[name].data = columns
            self.multiples.y_range.update(start=0, end=rows)
            self.multiples.height = rows * _ROW_PX
            self._shown = (key, drawn)
        self.caption.object = (
            f"{len(units)} of {bands['unit_id'].n_unique()} units: observed (line), baseline expected ± 2 sd (band), "
            "published anomalies (◆). Gaps: counts too small to publish."
        )
        self.message.visible, self.grid.visible = False, True

    def _show_message(self, text: str) -> None:
        self.message.object, self.message.visible, self.grid.visible = text, True, False
        self._shown = None
