"""Hover on the heat map: the unit under the pointer and its privacy-released event count.

The raster cannot carry the count (its pixels are unreleased aggregates), so the map gets one
invisible patch per unit of the lens level, with a hover tool, added to the HoloViews figure by a
plot hook. The patches are never drawn (zero alpha: no canvas work while panning) and their source
is this session's own: the geometry is sent when the level or city changes, the count text is
patched in place on every other lens change, so a window change moves a column of strings, not
the polygons. The numbers are ``Lens.unit_counts()``: released totals, or "withheld" with the
parent's released total where the unit's own is hidden.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import shapely
from bokeh.models import ColumnDataSource, HoverTool
from holoviews.util.transform import lon_lat_to_easting_northing

from app.data.snapshot import Snapshot
from app.engine.lens import Lens
from app.views.base import LENS_STATE, edits_models

__all__ = ["COUNT_STATE", "HeatHover", "count_texts", "unit_patches"]

#: The lens parameters a unit's released window total depends on: thresholds, the baseline and the
#: selection do not change it, so moving them costs the hover nothing.
COUNT_STATE = tuple(name for name in LENS_STATE if name not in ("min_z", "q", "baseline_days", "selection"))


def unit_patches(snapshot: Snapshot, city: str, level: str) -> dict[str, list[Any]]:
    """``unit_id, xs, ys``: one row per polygon part of every unit (exterior ring, Web Mercator,
    simplified); memoised on the snapshot, which never changes."""

    def build() -> dict[str, list[Any]]:
        frame = snapshot.unit_geometries(city, level)
        if frame.is_empty():
            return {"unit_id": [], "xs": [], "ys": []}
        geoms = shapely.from_wkb(frame["geom_wkb"].to_numpy())
        parts, owner = shapely.get_parts(geoms, return_index=True)
        rings = shapely.simplify(shapely.get_exterior_ring(parts), 0.0002)  # ~20 m in degrees, before projecting
        ids = frame["unit_id"].to_list()
        xs, ys = [], []
        for ring in rings:
            coords = shapely.get_coordinates(ring)
            x, y = lon_lat_to_easting_northing(coords[:, 0], coords[:, 1])
            xs.append(np.asarray(x))
            ys.append(np.asarray(y))
        return {"unit_id": [ids[i] for i in owner.tolist()], "xs": xs, "ys": ys}

    return snapshot.memo(("heat-hover-patches", city, level), build)


def count_texts(counts: pl.DataFrame, names: pl.DataFrame) -> dict[str, str]:
    """unit_id -> what the hover says of its released count: "1,234 events", "withheld by the
    privacy rule; Brooklyn: 5,678 events" (the parent's released total), or "withheld ..."."""
    parents = names.select(pl.col("unit_id").alias("rollup_unit_id"), pl.col("name").alias("parent"))
    rows = counts.join(parents, on="rollup_unit_id", how="left").select("unit_id", "count", "parent", "rollup_count")
    out: dict[str, str] = {}
    for unit, count, parent, rollup in rows.iter_rows():
        if count is not None:
            out[unit] = f"{count:,} events"
        elif rollup is not None:
            out[unit] = f"withheld by the privacy rule; {parent}: {rollup:,} events"
        else:
            out[unit] = "withheld by the privacy rule"
    return out


class HeatHover:
    """The invisible hover patches of one heat view (one per session)."""

    def __init__(self, lens: Lens) -> None:
        self.lens = lens
        self.source = ColumnDataSource(data={"unit_id": [], "xs": [], "ys": [], "name": [], "events": []}, name="heat-hover")
        self._shape: tuple[str, str] | None = None
        lens.param.watch(self.update, list(COUNT_STATE))
        self.update()

    def attach(self, plot: Any, _element: Any) -> None:
        """HoloViews plot hook: add the patches and their hover tool to the map figure (once per figure)."""
        fig = plot.state
        if any(getattr(r, "data_source", None) is self.source for r in fig.renderers):
            return
        patches = fig.patches("xs", "ys", source=self.source, fill_alpha=0.0, line_alpha=0.0)
        hover = HoverTool(renderers=[patches], tooltips=[("unit", "@name"), ("in the window", "@events")], point_policy="follow_mouse")
        fig.add_tools(hover)

    @edits_models
    def update(self, *_: Any) -> None:
        """New polygons when the level or city changed, else only the count text."""
        lens = self.lens
        if lens.snapshot is None:
            return
        shape = (lens.city, lens.level)
        units = lens.snapshot.units(lens.city)
        texts = count_texts(lens.unit_counts(), units)
        if shape != self._shape:
            patches = unit_patches(lens.snapshot, lens.city, lens.level)
            names = dict(zip(units["unit_id"].to_list(), units["name"].to_list(), strict=True))
            ids = patches["unit_id"]
            self.source.data = {
                **patches,
                "name": [names.get(u, u) for u in ids],
                "events": [texts.get(u, "no data") for u in ids],
            }
            self._shape = shape
        else:
            ids = [str(u) for u in self.source.data["unit_id"]]
            events = [texts.get(u, "no data") for u in ids]
            if events != list(self.source.data["events"]):
                self.source.patch({"events": [(slice(0, len(events)), events)]})
