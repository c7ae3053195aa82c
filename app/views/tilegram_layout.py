"""Tilegram layouts: one equal-size tile (hexagon or square) per unit, placed near the unit's
representative point by an optimal assignment to grid cells, as R's ``geogrid`` does.

Equal tiles give every unit the same visual weight (on a map, Staten Island's tracts would shout and
Manhattan's whisper), at the price of moving units off their true position. That price is reported
as :attr:`TileLayout.displacement`, so a layout that distorts too much is visible as a number.

How a layout is made:

1. Points are projected to a local plane in kilometres (longitude scaled by the cosine of the
   origin's latitude). The origin is passed by the caller so that every level of one geography
   shares one plane: the level morph moves tiles between two layouts, which must agree on where
   everything is.
2. A tile width ``s`` is chosen so that about ``fill x n`` grid cells lie within one tile width of
   some unit. Cells are counted only near units, not over the whole bounding box: by bounding box a
   city is mostly water and neighbouring counties, and a box-filling grid (tried: NYC tracts, mean
   displacement 5.5 tile widths, 5 s) swells the dense boroughs over the water and squeezes the
   sparse ones. The ``slack x n`` cells nearest to any unit are the candidates, so the assignment has
   room to spill dense areas (Manhattan) outwards without packing the whole tilegram solid.
3. ``scipy.optimize.linear_sum_assignment`` assigns units to candidates, minimising the total
   squared distance (squared, so one long jump costs more than several short ones).

Everything here is a pure function of its inputs; :func:`cached_layout` memoises per caller key.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

__all__ = [
    "KM_PER_DEGREE",
    "Shape",
    "TileLayout",
    "cached_layout",
    "clear_layout_cache",
    "footprint_area",
    "geography_key",
    "parent_positions",
    "project",
    "tile_layout",
]

Shape = Literal["hex", "square"]

#: Kilometres per degree of latitude on the mean-radius sphere (also per degree of longitude at the equator).
KM_PER_DEGREE = 6371.0088 * math.pi / 180.0
#: Cells near the units per unit, which sets the tile width. Near 1 the tilegram is compact but dense
#: areas are pushed far (NYC tracts at 1.0: mean displacement 2.0 tile widths); at 1.4 units sit half a
#: tile from home on average but sparse areas turn to lace. 1.15 reads as a solid city shape (1.1-1.2).
DEFAULT_FILL = 1.15
#: Candidate cells per unit: room for the assignment to keep neighbours together.
DEFAULT_SLACK = 1.4
#: Upper end of the cells-per-unit band in which the units' "natural" lattice spacing is used as is
#: (points that already lie on a grid then keep their positions exactly, not re-gridded at a near miss).
_NATURAL_MAX = 1.5
#: Cells more than this many tile widths from every unit do not count as near the geography.
_REACH = 1.0 + 1e-9
#: Hard cap on grid cells enumerated per unit while searching for the tile width (memory bound for
#: pathological inputs, e.g. two tight clusters far apart).
_MAX_CELLS_PER_UNIT = 200
_SQRT3 = math.sqrt(3.0)

_TILE_SCHEMA: dict[str, pl.DataType] = {
    "unit_id": pl.String(),
    "col": pl.Int32(),
    "row": pl.Int32(),
    "x": pl.Float64(),
    "y": pl.Float64(),
}


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Tiles of one level: ``tiles`` has ``unit_id, col, row, x, y`` (tile centres, km in the
    shared plane), one row per unit in the order given.

    ``size`` is the tile width (flat side to flat side for hexagons, which are pointy-topped on
    offset rows: odd rows shift half a tile right). ``displacement`` and ``max_displacement`` are the
    mean and largest distance between a unit's projected point and its tile centre, in tile widths.
    ``candidates`` is how many grid cells the assignment chose from.
    ``eq=False``: layouts compare (and hash) by identity, so the cache can hand out the same object.
    """

    tiles: pl.DataFrame
    size: float
    shape: Shape
    displacement: float
    max_displacement: float
    candidates: int

    @property
    def radius(self) -> float:
        """Circumradius of one tile (what Bokeh's ``ngon`` glyph takes)."""
        return self.size / _SQRT3 if self.shape == "hex" else self.size / math.sqrt(2.0)

    @property
    def sides(self) -> int:
        """Number of polygon sides (6 or 4)."""
        return 6 if self.shape == "hex" else 4

    @property
    def angle(self) -> float:
        """Rotation for Bokeh's ``ngon`` (radians): 0 puts a vertex on top (pointy-topped hexagons);
        pi/4 turns a 4-gon into an axis-aligned square."""
        return 0.0 if self.shape == "hex" else math.pi / 4.0

    def extent(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` covering every tile outline (NaNs when there are no tiles)."""
        if self.tiles.is_empty():
            return (math.nan, math.nan, math.nan, math.nan)
        x, y, r = self.tiles["x"], self.tiles["y"], self.radius
        return (float(x.min()) - r, float(x.max()) + r, float(y.min()) - r, float(y.max()) + r)  # type: ignore[arg-type]  # polars min/max of a Float64 series are floats


def project(lon: NDArray[np.float64], lat: NDArray[np.float64], origin: tuple[float, float]) -> NDArray[np.float64]:
    """Longitude/latitude (degrees) -> ``(n, 2)`` kilometres east and north of ``origin``.

    Equirectangular about the origin's latitude: within a city (tens of km) distances are off by
    well under 1%, far below what tile placement can resolve, and no projection library is needed.
    (An H3 region hundreds of km tall stretches east-west by a few per cent at its edges: still
    harmless for tiles that move by whole cells anyway.)
    """
    lon0, lat0 = origin
    x = (np.asarray(lon, dtype=np.float64) - lon0) * math.cos(math.radians(lat0)) * KM_PER_DEGREE
    y = (np.asarray(lat, dtype=np.float64) - lat0) * KM_PER_DEGREE
    return np.column_stack([x, y])


def _centres(shape: Shape, s: float, anchor: NDArray[np.float64], cols: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Cell centres of grid indices relative to ``anchor`` (row 0, col 0 at the anchor; odd rows of
    hexagons shifted half a tile right)."""
    if shape == "hex":
        x = anchor[0] + (cols + 0.5 * (rows & 1)) * s
        y = anchor[1] + rows * s * (_SQRT3 / 2.0)
    else:
        x = anchor[0] + cols * s
        y = anchor[1] + rows * s
    return np.column_stack([x, y]).astype(np.float64)


def _grid(
    shape: Shape, s: float, lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """All cells (cols, rows, centres) covering the box ``lo..hi`` plus two cells each side.

    The anchor is ``lo`` itself, so points on a lattice of spacing ``s`` starting at ``lo`` fall
    exactly on cell centres. The row margin is even, which keeps hexagon row parity (and so the
    odd-row shift) the same as relative to the anchor.
    """
    dy = s * (_SQRT3 / 2.0) if shape == "hex" else s
    pad = 2
    c = np.arange(-pad, math.ceil((hi[0] - lo[0]) / s) + pad + 1)
    r = np.arange(-pad, math.ceil((hi[1] - lo[1]) / dy) + pad + 1)
    cols, rows = (a.ravel() for a in np.meshgrid(c, r))
    return cols, rows, _centres(shape, s, lo, cols, rows)


def _near(tree: cKDTree, shape: Shape, s: float, lo: NDArray[np.float64], hi: NDArray[np.float64]) -> int:
    """How many grid cells of width ``s`` lie within one tile width of some unit."""
    _, _, centres = _grid(shape, s, lo, hi)
    dist, _ = tree.query(centres, k=1, distance_upper_bound=_REACH * s)
    return int(np.isfinite(dist).sum())


def _cell_area(shape: Shape, s: float) -> float:
    """Area of one tile of width ``s`` (km² when ``s`` is in km)."""
    return s * s * (_SQRT3 / 2.0 if shape == "hex" else 1.0)


def _tile_width(points: NDArray[np.float64], tree: cKDTree, shape: Shape, want: int) -> float:
    """The tile width offering about ``want`` cells near the units (see the module docstring).

    The near-cell count falls as the width grows, so a bisection on log width finds it; the widest
    width still offering ``want`` cells wins. The units' median nearest-neighbour distance is tried
    first and kept when it already offers a sensible number of cells, and it bounds the search at
    twice that: with a handful of units every width offers cells near them (each point has its own
    ring), and without the bound five boroughs would get tiles wider than the city.
    """
    n = len(points)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = hi - lo
    extent = float(span.max())
    if extent <= 0.0:  # one unit, or all units on one spot: any width does; 1 km reads well
        return 1.0
    nn, _ = tree.query(points, k=2)
    natural = float(np.median(nn[:, 1]))
    if natural > 0.0 and want <= _near(tree, shape, natural, lo, hi) <= _NATURAL_MAX * n:
        return natural
    box = max(float(span[0] * span[1]), (extent / n) ** 2)
    s_min = math.sqrt(box / (_MAX_CELLS_PER_UNIT * n + 1000))  # the grid never exceeds the cap
    s_max = max(2.0 * natural, s_min * 1.01) if natural > 0.0 else 2.0 * extent
    best = s_min
    a, b = math.log(s_min), math.log(s_max)
    if _near(tree, shape, s_max, lo, hi) >= want:
        return s_max
    for _ in range(40):
        mid = 0.5 * (a + b)
        if _near(tree, shape, math.exp(mid), lo, hi) >= want:
            best, a = math.exp(mid), mid
        else:
            b = mid
        if b - a < 1e-4:
            break
    return best


def _check(units: pl.DataFrame, shape: str, fill: float, slack: float) -> None:
    if shape not in ("hex", "square"):
        raise ValueError(f"shape must be 'hex' or 'square', not {shape!r}")
    if not 1.0 <= fill <= slack:
        raise ValueError("need 1 <= fill <= slack (at least one cell per unit)")
    if units.height and units.select(pl.any_horizontal(pl.col("lon", "lat").is_null().any())).item():
        raise ValueError("every unit needs a representative point (lon, lat)")


def _points(units: pl.DataFrame, origin: tuple[float, float] | None) -> NDArray[np.float64]:
    lon, lat = units["lon"].to_numpy(), units["lat"].to_numpy()
    return project(lon, lat, origin if origin is not None else (float(lon.mean()), float(lat.mean())))


def footprint_area(
    units: pl.DataFrame, shape: Shape = "hex", *, origin: tuple[float, float] | None = None, fill: float = DEFAULT_FILL
) -> float:
    """The area (km²) the tiles of ``units`` cover at the width :func:`tile_layout` would choose:
    ``fill x n`` tiles. Cheap (no assignment), so a caller can size coarse levels by the finest one.

    Pass it as ``area`` to the layouts of coarser levels of the same geography: a handful of
    boroughs cannot tell how big the city is, and sized alike the levels morph into each other.
    """
    _check(units, shape, fill, max(fill, DEFAULT_SLACK))
    if units.is_empty():
        return 0.0
    points = _points(units, origin)
    want = max(units.height, math.ceil(fill * units.height))
    return want * _cell_area(shape, _tile_width(points, cKDTree(points), shape, want))


def tile_layout(
    units: pl.DataFrame,
    shape: Shape = "hex",
    *,
    origin: tuple[float, float] | None = None,
    area: float | None = None,
    fill: float = DEFAULT_FILL,
    slack: float = DEFAULT_SLACK,
) -> TileLayout:
    """Assign each unit of ``units`` (``unit_id, lon, lat``) its own grid cell, near its point.

    ``origin`` (lon, lat) fixes the plane; pass the same one for every level of a geography so their
    layouts line up (default: the mean of these units). ``area`` (km², e.g. the finest level's
    :func:`footprint_area`) sets the tile width so that ``fill x n`` tiles cover it; without it the
    width is found from the units' own spacing. Deterministic: same input, same layout.
    """
    _check(units, shape, fill, slack)
    units = units.select("unit_id", "lon", "lat")
    n = units.height
    if n == 0:
        return TileLayout(pl.DataFrame(schema=_TILE_SCHEMA), 1.0, shape, 0.0, 0.0, 0)
    points = _points(units, origin)
    tree = cKDTree(points)
    fill_n = max(n, math.ceil(fill * n))
    s = _tile_width(points, tree, shape, fill_n) if area is None or area <= 0.0 else math.sqrt(area / (fill_n * _cell_area(shape, 1.0)))
    want = max(n, math.ceil(slack * n))

    lo, hi = points.min(axis=0), points.max(axis=0)
    cols, rows, centres = _grid(shape, s, lo, hi)
    while len(centres) < want:  # a single point, or a width far wider than the units' spread
        lo, hi = lo - 2 * s, hi + 2 * s
        cols, rows, centres = _grid(shape, s, lo, hi)
    dist, _ = tree.query(centres, k=1)
    pick = np.argsort(dist, kind="stable")[:want]
    cand = centres[pick]
    cost = cdist(points, cand, "sqeuclidean")
    unit_idx, cell_idx = linear_sum_assignment(cost)
    chosen = pick[cell_idx[np.argsort(unit_idx)]]
    xy = centres[chosen]
    # Report grid indices from 0; shift rows by an even amount so hexagon row parity still holds.
    c, r = cols[chosen], rows[chosen]
    c0, r0 = int(c.min()), int(r.min())
    r0 -= r0 % 2 if shape == "hex" else 0
    shift = np.hypot(*(points - xy).T) / s
    tiles = pl.DataFrame(
        {"unit_id": units["unit_id"], "col": (c - c0).astype(np.int32), "row": (r - r0).astype(np.int32), "x": xy[:, 0], "y": xy[:, 1]},
        schema=_TILE_SCHEMA,
    )
    return TileLayout(tiles, float(s), shape, float(shift.mean()), float(shift.max()), int(want))


#: Layouts by caller key (LRU). Process-wide on purpose: geography outlives snapshots (every refresh
#: publishes a new snapshot over the same units), so a key of geography, not snapshot, reuses layouts.
_CACHE: OrderedDict[Hashable, TileLayout] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def cached_layout(
    key: Hashable, units: pl.DataFrame, shape: Shape = "hex", *, origin: tuple[float, float] | None = None, area: float | None = None
) -> TileLayout:
    """:func:`tile_layout` memoised on ``(key, shape, origin, area)``: the caller's ``key`` must name
    the geography and level (e.g. ``(city, level, geography_key(units))``); the units are not hashed.

    The build runs outside the lock (a tract layout takes a moment), so two sessions asking for the
    same new layout at once may both build it; the first stored wins and both get that object.
    """
    full = (key, shape, origin, area)
    with _CACHE_LOCK:
        if full in _CACHE:
            _CACHE.move_to_end(full)
            return _CACHE[full]
    layout = tile_layout(units, shape, origin=origin, area=area)
    with _CACHE_LOCK:
        layout = _CACHE.setdefault(full, layout)
        _CACHE.move_to_end(full)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return layout


def clear_layout_cache() -> None:
    """Forget every cached layout (tests, or after a boundary change)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def geography_key(units: pl.DataFrame) -> int:
    """A content fingerprint of ``unit_id, lon, lat``: changes whenever a unit or its point does.

    Stable within one process (polars' row hash with a fixed seed), which is all a process-local cache needs.
    """
    if units.is_empty():
        return 0
    return int(units.select("unit_id", "lon", "lat").sort("unit_id").hash_rows(seed=0).sum())


def parent_positions(child_layout: TileLayout, parent_layout: TileLayout, parents: pl.DataFrame) -> pl.DataFrame:
    """For each child tile, the centre of its parent's tile: where a child glides when levels merge.

    ``parents`` maps ``unit_id`` (child) to ``parent_id`` (any coarser level, e.g. tract -> borough).
    Returns ``unit_id, parent_id, x, y`` in the child layout's row order. A child whose parent has no
    tile keeps its own centre (it stays put rather than flying to an arbitrary spot).
    """
    link = parents.select("unit_id", "parent_id").unique("unit_id", keep="first")
    target = parent_layout.tiles.select(pl.col("unit_id").alias("parent_id"), pl.col("x").alias("px"), pl.col("y").alias("py"))
    return (
        child_layout.tiles.select("unit_id", "x", "y")
        .join(link, on="unit_id", how="left", maintain_order="left")
        .join(target, on="parent_id", how="left", maintain_order="left")
        .select("unit_id", "parent_id", x=pl.coalesce("px", "x"), y=pl.coalesce("py", "y"))
    )
