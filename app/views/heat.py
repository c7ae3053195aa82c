"""The heat map: where events in the lens window cluster, over the outlines of the lens level.

Points are rasterized and shaded by datashader on the server (any number of events stays a
fixed-size image) and drawn in Web Mercator without tile sources, so the page works offline. Only
colours reach the browser, never per-pixel counts: those have not passed the privacy gate.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import polars as pl
import shapely
from holoviews.operation.datashader import rasterize, shade
from holoviews.util.transform import easting_northing_to_lon_lat, lon_lat_to_easting_northing
from numpy.typing import NDArray

from app.data.snapshot import Snapshot
from app.engine.lens import Lens
from app.views.base import LensView
from app.views.heat_hover import HeatHover

__all__ = ["HeatView", "outline_xy", "points_element"]

#: Outline simplification tolerance in metres (Web Mercator): invisible at city zoom, 5-10x fewer vertices.
_SIMPLIFY_M = 25.0
_CMAP = "fire"  # colorcet 'fire': monotonic in lightness, so it reads the same with colour-vision deficiency
_BG = "#101418"

hv.extension("bokeh", logo=False)


def outline_xy(snapshot: Snapshot, city: str, level: str) -> NDArray[np.float64]:
    """Boundary rings of every unit at ``level`` as one (n, 2) Web Mercator array, rings split by NaN rows.

    Memoised on the snapshot (snapshots never change); one NaN-separated path draws as a single glyph.
    """
    return snapshot.memo(("outline_xy", city, level), lambda: _outline_xy(snapshot, city, level))


def _outline_xy(snapshot: Snapshot, city: str, level: str) -> NDArray[np.float64]:
    frame = snapshot.unit_geometries(city, level)
    if frame.is_empty():
        return np.empty((0, 2))
    geoms = shapely.from_wkb(frame["geom_wkb"].to_numpy())
    rings = shapely.get_parts(shapely.boundary(geoms))
    coords, index = shapely.get_coordinates(rings, return_index=True)
    x, y = lon_lat_to_easting_northing(coords[:, 0], coords[:, 1])
    lines = shapely.simplify(shapely.linestrings(np.column_stack([x, y]), indices=index), _SIMPLIFY_M)
    coords, index = shapely.get_coordinates(lines, return_index=True)
    breaks = np.flatnonzero(np.diff(index)) + 1
    return np.insert(coords, breaks, np.nan, axis=0)


def points_element(lens: Lens) -> hv.Points:
    """The lens' located event points as ``hv.Points`` in Web Mercator (no counts attached)."""
    pts = lens.points() if lens.snapshot is not None else None
    if pts is None or pts.is_empty():
        return hv.Points(np.empty((0, 2)), kdims=["x", "y"])
    x, y = lon_lat_to_easting_northing(pts["lon"].to_numpy(), pts["lat"].to_numpy())
    return hv.Points((x, y), kdims=["x", "y"])


class HeatView(LensView):
    """Datashaded event density for the lens window, category and kinds, over unit outlines.

    >>> pn.panel(HeatView(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._hover_patches: HeatHover | None = None

    def _hover(self) -> HeatHover:
        """The session's hover patches (released counts per unit), made with the first map."""
        if self._hover_patches is None:
            self._hover_patches = HeatHover(self.bound)
        return self._hover_patches

    def _points(self, *_: Any) -> hv.Points:
        return points_element(self.bound)

    def _outlines(self, *_: Any) -> hv.Path:
        lens = self.bound
        if lens.snapshot is None:
            return hv.Path([], kdims=["x", "y"])
        return hv.Path([outline_xy(lens.snapshot, lens.city, lens.level)], kdims=["x", "y"])

    def _overlay(self, city: str, selection: list[str] | None = None) -> hv.DynamicMap:
        """The map for one city. Rebuilt when the city or the selection changes, so it frames the
        new city or zooms to the selected units: a datashaded map keeps its ranges across other
        updates (it re-aggregates on pan and zoom)."""
        p = self.bound.param
        points = hv.DynamicMap(pn.bind(self._points, p.snapshot, p.city, p.since, p.until, p.category, p.kinds, p.selection))
        outlines = hv.DynamicMap(pn.bind(self._outlines, p.snapshot, p.city, p.level))
        heat = shade(rasterize(points), cmap=_CMAP, cnorm="eq_hist").opts(
            tools=[],
            default_tools=["pan", "wheel_zoom", "box_zoom", "reset"],
            bgcolor=_BG,
            xaxis=None,
            yaxis=None,
            responsive=True,
            min_height=520,
            data_aspect=1,
            # Canvas, not HoloViews' default WebGL: without a GPU (headless, many VMs and older
            # laptops) WebGL is emulated and copying its canvas cost most of every frame while the
            # map was dragged; one image and one outline path draw fast on a 2D canvas.
            backend_opts={"plot.output_backend": "canvas"},
        )
        lines = outlines.opts(color="#8c96a0", line_width=0.6, alpha=0.55, tools=["tap"], hooks=[self._hover().attach])
        tap = hv.streams.Tap(source=lines, x=None, y=None)
        tap.add_subscriber(self.tapped)
        overlay: hv.DynamicMap = heat * lines
        frame = self.selection_frame()
        return overlay.opts(xlim=frame[0], ylim=frame[1]) if frame else overlay

    def selection_frame(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Web Mercator x and y ranges around the selected units (with a margin), or None."""
        lens = self.bound
        if not lens.selection or lens.snapshot is None:
            return None
        geoms = lens.snapshot.unit_geometries(lens.city, lens.level).filter(pl.col("unit_id").is_in(lens.selection))
        if geoms.is_empty():
            return None
        x0, y0, x1, y1 = shapely.total_bounds(shapely.from_wkb(geoms["geom_wkb"].to_numpy()))
        (ex0, ex1), (ny0, ny1) = lon_lat_to_easting_northing(np.array([x0, x1]), np.array([y0, y1]))
        pad = max(ex1 - ex0, ny1 - ny0, 400.0) * 0.25
        return (float(ex0 - pad), float(ex1 + pad)), (float(ny0 - pad), float(ny1 + pad))

    def tapped(self, x: float | None = None, y: float | None = None, **_: Any) -> None:
        """A click on the map toggles the unit under it in the shared selection (tiles, table and
        sparkbands follow); a click outside every unit clears the selection."""
        if x is None or y is None:
            return
        lon, lat = easting_northing_to_lon_lat(x, y)
        unit = self.bound.unit_at(float(lon), float(lat))
        # The tap arrives from HoloViews' stream task, outside the Bokeh document lock; the views
        # that follow the selection modify Bokeh models, so the change runs where the lock is held
        # (it raised "_pending_writes should be non-None" in the tilegram update otherwise).
        pn.state.execute(partial(self._toggle, unit), schedule=True)

    def _toggle(self, unit: str | None) -> None:
        lens = self.bound
        if unit is None:
            lens.selection = []
        elif unit in lens.selection:
            lens.selection = [u for u in lens.selection if u != unit]
        else:
            lens.selection = [*lens.selection, unit]

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.pane.HoloViews(
            pn.bind(self._overlay, self.bound.param.city, self.bound.param.selection),
            sizing_mode="stretch_both",
            min_height=520,
            linked_axes=False,
        )
