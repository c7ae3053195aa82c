"""The alerts page's map: the city's unit outlines from the served snapshot (Web Mercator, no tile
server, as :mod:`app.views.heat` draws them), where a click sets a radius rule's centre or picks an
area rule's unit, a polygon is drawn with Bokeh's ``PolyDrawTool``, and the preview's matches are
drawn as points over the rule's circle, polygon or unit.

Every place the map sets can also be typed in the form (centre, unit list), so the map is never
the only way: a canvas is not reachable by keyboard.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import panel as pn
import param
import shapely
from bokeh.events import Event, Tap
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool, PolyDrawTool
from bokeh.plotting import figure
from holoviews.util.transform import easting_northing_to_lon_lat, lon_lat_to_easting_northing
from shapely.geometry import shape

from app.alerts.preview import circle
from app.views.alerts_state import AlertsState
from app.views.base import edits_models
from app.views.heat import outline_xy

__all__ = ["MAP_HEIGHT", "MAP_NAME", "AlertsMap", "rings_xy"]

MAP_HEIGHT = 520
#: The map figure's model name (browser tests find its view by it).
MAP_NAME = "csh-alerts-map"


def rings_xy(geometry: dict[str, Any] | None) -> tuple[list[list[float]], list[list[float]]]:
    """The exterior rings of a GeoJSON (multi)polygon or collection of them, in Web Mercator, as
    Bokeh ``patches`` columns."""
    if not geometry:
        return [], []
    polygons = [g for g in shapely.get_parts(shape(geometry)) if g.geom_type in ("Polygon", "MultiPolygon")]
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    for polygon in polygons:
        for part in shapely.get_parts(polygon):
            ring = np.asarray(part.exterior.coords)
            x, y = lon_lat_to_easting_northing(ring[:, 0], ring[:, 1])
            xs.append(list(map(float, x)))
            ys.append(list(map(float, y)))
    return xs, ys


class AlertsMap(pn.viewable.Viewer):
    """The city map of one alerts session (a Bokeh figure; its sources follow the state)."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state this map shows and sets.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._outlines = ColumnDataSource({"x": [], "y": []})
        self._watched = ColumnDataSource({"xs": [], "ys": []})  # the rule's circle or unit
        self._drawn = ColumnDataSource({"xs": [], "ys": []})  # the polygon being drawn
        self._centre = ColumnDataSource({"x": [], "y": []})
        self._matches = ColumnDataSource({"x": [], "y": [], "label": []})
        self._view = ColumnDataSource({"x": [], "y": []})  # two corners the map frames (with the frame's own aspect)
        self._figure = self._make_figure()
        self._drawing = False
        state = self.bound
        state.param.watch(self._frame, ["city", "snapshot"])
        state.draft.param.watch(self._outline, "level")
        state.draft.param.watch(self._frame, "kind")  # a new kind of rule starts from the whole city
        state.draft.param.watch(self._place, ["kind", "lat", "lon", "radius_m", "unit_id", "level", "polygon"])
        state.param.watch(self._show_preview, "preview")
        self._drawn.on_change("data", self._polygon_drawn)
        self._frame()
        self._place()

    @property
    def bound(self) -> AlertsState:
        assert self.state is not None, "AlertsMap needs a state"
        return self.state

    def _make_figure(self) -> Any:
        fig = figure(
            name=MAP_NAME,
            height=MAP_HEIGHT,
            sizing_mode="stretch_width",
            match_aspect=True,
            x_range=DataRange1d(range_padding=0.04),
            y_range=DataRange1d(range_padding=0.04),
            tools="pan,wheel_zoom,reset",
            active_scroll="wheel_zoom",
            toolbar_location="above",
            background_fill_color="#f4f1ea",
            output_backend="canvas",
            title="Click to place a radius rule's centre or pick an area; draw a polygon with the polygon tool",
        )
        corners = fig.scatter("x", "y", name="corners", source=self._view, size=0, alpha=0)
        for span in (fig.x_range, fig.y_range):
            cast(Any, span).renderers = [corners]
        fig.axis.visible = False
        fig.grid.visible = False
        fig.line("x", "y", name="outlines", source=self._outlines, color="#6b7280", line_width=0.7, alpha=0.8)
        fig.patches(
            "xs", "ys", name="watched", source=self._watched, fill_color="#b2401e", fill_alpha=0.1, line_color="#b2401e", line_width=2.5
        )
        drawn = fig.patches(
            "xs", "ys", name="drawn", source=self._drawn, fill_color="#1a56db", fill_alpha=0.1, line_color="#1a56db", line_width=2.5
        )
        fig.scatter("x", "y", name="centre", source=self._centre, marker="cross", size=14, line_width=2, color="#b2401e")
        dots = fig.scatter("x", "y", name="matches", source=self._matches, size=5, color="#1a1a1a", alpha=0.6)
        fig.add_tools(
            PolyDrawTool(
                renderers=[cast(Any, drawn)],
                description="Draw a polygon (press and hold to start, click each corner, press and hold to finish)",
            )
        )
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("match", "@label")]))
        fig.on_event(Tap, self._tapped)
        return fig

    # -- following the state ----------------------------------------------------------------------

    @edits_models
    def _outline(self, *_: Any) -> None:
        """The city's units at the draft's level (area rules) or its neighborhoods (tracts where it has none)."""
        state = self.bound
        if state.snapshot is None or state.city is None:
            self._outlines.data = {"x": [], "y": []}
            return
        level = state.draft.level if state.draft.kind == "area" else "neighborhood"
        xy = outline_xy(state.snapshot, state.city, level)
        xy = xy if len(xy) else outline_xy(state.snapshot, state.city, "tract")
        self._outlines.data = {"x": xy[:, 0], "y": xy[:, 1]} if len(xy) else {"x": [], "y": []}

    @edits_models
    def _frame(self, *_: Any) -> None:
        """Frame the city (a new city or snapshot), then draw its outlines."""
        self._outline()
        state = self.bound
        if state.snapshot is None or state.city is None:
            return
        xy = outline_xy(state.snapshot, state.city, "tract")
        if not len(xy):
            return
        x0, y0 = np.nanmin(xy, axis=0)
        x1, y1 = np.nanmax(xy, axis=0)
        self._view.data = {"x": [float(x0), float(x1)], "y": [float(y0), float(y1)]}

    @edits_models
    def _place(self, *_: Any) -> None:
        """Draw what the draft watches now: the radius circle and centre, or the area's unit."""
        state, draft = self.bound, self.bound.draft
        watched: dict[str, Any] | None = None
        centre: dict[str, Any] = {"x": [], "y": []}
        if draft.kind == "radius" and draft.lat is not None and draft.lon is not None and draft.radius_m:
            watched = circle(draft.lat, draft.lon, draft.radius_m)
            x, y = lon_lat_to_easting_northing(np.array([draft.lon]), np.array([draft.lat]))
            centre = {"x": [float(x[0])], "y": [float(y[0])]}
        elif draft.kind == "area" and draft.unit_id and state.snapshot is not None and state.city:
            geoms = state.snapshot.unit_geometries(state.city, draft.level)
            wkb = geoms.filter(geoms["unit_id"] == draft.unit_id)["geom_wkb"].to_list()
            watched = shapely.geometry.mapping(shapely.from_wkb(wkb[0])) if wkb else None
        xs, ys = rings_xy(watched)
        self._watched.data = {"xs": xs, "ys": ys}
        self._centre.data = centre
        if draft.kind != "polygon" or not draft.polygon:
            if self._drawn.data["xs"]:
                self._set_drawn([], [])
        elif not self._drawing:
            ring = np.asarray(draft.polygon, dtype=float)
            x, y = lon_lat_to_easting_northing(ring[:, 0], ring[:, 1])
            self._set_drawn([list(map(float, x))], [list(map(float, y))])

    def _set_drawn(self, xs: list[list[float]], ys: list[list[float]]) -> None:
        self._drawing = True
        try:
            self._drawn.data = {"xs": xs, "ys": ys}
        finally:
            self._drawing = False

    @edits_models
    def _show_preview(self, *_: Any) -> None:
        """The preview's located matches as points, framed around what the rule watches."""
        preview = self.bound.preview
        frame = self.bound.matches_frame()
        x, y = lon_lat_to_easting_northing(frame["lon"].to_numpy(), frame["lat"].to_numpy())
        self._matches.data = {"x": list(map(float, x)), "y": list(map(float, y)), "label": frame["label"].to_list()}
        xs, ys = rings_xy(preview.geometry if preview is not None else None)
        if xs:  # zoom to the circle, polygon or unit, with as much around it again
            allx, ally = np.concatenate([np.asarray(v) for v in xs]), np.concatenate([np.asarray(v) for v in ys])
            cx, cy = (allx.min() + allx.max()) / 2, (ally.min() + ally.max()) / 2
            half = max(allx.max() - allx.min(), ally.max() - ally.min(), 500.0)
            self._view.data = {"x": [float(cx - half), float(cx + half)], "y": [float(cy - half), float(cy + half)]}

    # -- what the map sets ------------------------------------------------------------------------

    def _tapped(self, event: Event) -> None:
        """A click: a radius rule's centre, or the area rule's unit under it (polygons draw themselves)."""
        if not isinstance(event, Tap) or event.x is None or event.y is None:
            return
        draft = self.bound.draft
        lon, lat = (float(v) for v in easting_northing_to_lon_lat(event.x, event.y))
        if draft.kind == "radius":
            draft.param.update(lat=round(lat, 6), lon=round(lon, 6))
        elif draft.kind == "area":
            unit = self.bound.unit_at(draft.level, lon, lat)
            if unit is not None:
                draft.unit_id = unit

    def _polygon_drawn(self, _attr: str, _old: Any, new: dict[str, Any]) -> None:
        """The last polygon drawn becomes the draft's ring (one polygon per rule)."""
        if self._drawing:
            return
        xs, ys = list(new.get("xs", [])), list(new.get("ys", []))
        if not xs:
            self.bound.draft.polygon = []
            return
        if len(xs) > 1:  # a new polygon replaces the previous one
            self._set_drawn(xs[-1:], ys[-1:])
        lon, lat = easting_northing_to_lon_lat(np.asarray(xs[-1], dtype=float), np.asarray(ys[-1], dtype=float))
        self._drawing = True
        try:
            self.bound.draft.polygon = [[round(float(a), 6), round(float(b), 6)] for a, b in zip(lon, lat, strict=True)]
        finally:
            self._drawing = False

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.pane.Bokeh(self._figure, sizing_mode="stretch_width", height=MAP_HEIGHT + 40)
