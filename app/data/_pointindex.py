"""A grid index over polygons for the point-in-tract join at ingest.

Most points fall in a grid cell that lies wholly inside one polygon or touches none, so they are
answered by array lookups alone; only points in cells a boundary crosses are tested exactly, and
only against the polygons that touch their cell. No ``Point`` objects are built.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["GridIndex"]

#: Cells are grown by this much (degrees, ~0.1 mm) when classified, so a point whose cell index is
#: rounded onto a neighbouring cell still lies inside the box its cell was classified with.
_EPS = 1e-9


class GridIndex:
    """The index of the polygon holding each point: boundary points included, the lowest polygon
    index winning where polygons touch or overlap; ``-1`` outside every polygon or not finite.

    >>> index = GridIndex(np.asarray([shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)]))
    >>> index.lookup(np.asarray([0.5, 1.0, 3.0]), np.asarray([0.5, 0.5, 0.5])).tolist()
    [0, 0, -1]
    """

    def __init__(self, geoms: NDArray[np.object_], cells_per_polygon: int = 64, max_cells: int = 1 << 18) -> None:
        self.geoms = geoms
        shapely.prepare(geoms)
        x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geoms))
        self.bounds = (x0, y0, x1, y1)
        w, h = max(x1 - x0, _EPS), max(y1 - y0, _EPS)
        # Square-ish cells, about ``cells_per_polygon`` per polygon (capped) over the bounding box.
        size = np.sqrt(w * h / min(max(cells_per_polygon * len(geoms), 1), max_cells))
        self.nx, self.ny = max(1, int(np.ceil(w / size))), max(1, int(np.ceil(h / size)))
        self.dx, self.dy = w / self.nx, h / self.ny
        ix, iy = np.tile(np.arange(self.nx), self.ny), np.repeat(np.arange(self.ny), self.nx)  # cell c = iy * nx + ix
        boxes = shapely.box(
            x0 + ix * self.dx - _EPS, y0 + iy * self.dy - _EPS, x0 + (ix + 1) * self.dx + _EPS, y0 + (iy + 1) * self.dy + _EPS
        )
        cell_i, poly_i = shapely.STRtree(geoms).query(boxes, predicate="intersects")
        order = np.lexsort((poly_i, cell_i))  # by cell, then polygon: the first hit is the lowest index
        self.candidates = poly_i[order]
        self.count = np.bincount(cell_i, minlength=len(boxes))
        self.start = np.concatenate([[0], np.cumsum(self.count)])[:-1]
        #: The one polygon covering a cell (no other touches it), else -1.
        self.sole = np.full(len(boxes), -1, dtype=np.int64)
        single = np.flatnonzero(self.count == 1)
        poly = self.candidates[self.start[single]]
        covered = shapely.covers(geoms[poly], boxes[single])
        self.sole[single[covered]] = poly[covered]
        # Build each prepared polygon's lazy point locator now, in one thread, so that lookups from
        # several threads (the ingest loop, the demo feed) only ever read it.
        inside = shapely.point_on_surface(geoms)
        shapely.intersects_xy(geoms, shapely.get_x(inside), shapely.get_y(inside))

    def lookup(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
        """Polygon index per point (see the class docstring)."""
        out = np.full(len(lon), -1, dtype=np.int64)
        x0, y0, x1, y1 = self.bounds
        with np.errstate(invalid="ignore"):
            idx = np.flatnonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1))  # NaN compares False
        ix = np.minimum(((lon[idx] - x0) / self.dx).astype(np.int64), self.nx - 1)
        iy = np.minimum(((lat[idx] - y0) / self.dy).astype(np.int64), self.ny - 1)
        cell = iy * self.nx + ix
        out[idx] = self.sole[cell]
        mixed = (self.sole[cell] < 0) & (self.count[cell] > 0)
        pts, cell = idx[mixed], cell[mixed]
        # Test each point against its cell's candidates in ascending order, one rank per round, and
        # drop it once it hits: the first hit is the lowest index, and most points stop early.
        todo = np.arange(len(pts))
        for rank in range(int(self.count.max(initial=0))):
            todo = todo[self.count[cell[todo]] > rank]
            if len(todo) == 0:
                break
            poly = self.candidates[self.start[cell[todo]] + rank]
            hit = shapely.intersects_xy(self.geoms[poly], lon[pts[todo]], lat[pts[todo]])
            out[pts[todo[hit]]] = poly[hit]
            todo = todo[~hit]
        return out
