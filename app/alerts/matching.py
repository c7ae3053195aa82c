"""Which rules new events match: pure, vectorised functions (polars and shapely; no loop over
events, and none over rules inside a kind).

``events`` carries one row per new event: ``event_id, source, kind, category, lon, lat, text,
address`` and the unit ids of every level (``tract``, ``neighborhood``, ``borough``; null when
unknown). ``rules`` is a list of ``(rule_id, spec, filters)``. The result lists each
``(rule_id, event_id)`` match once, in no particular order.

Each kind yields ``(rule, event)`` pairs, the rule by its position in ``rules``, the event by its row:

* radius and polygon share one grid of the located events, built once per call (longitude strips,
  each sorted by latitude, so the events in any box are a few runs found by binary search, no point
  geometries made): a circle's bounding box gives its candidates and the haversine distance
  decides; a polygon's bounding box gives its candidates and the prepared polygon decides
  (``shapely.intersects_xy``);
* keyword and plate: one Aho-Corasick pass over all patterns (``str.extract_many``), then a join;
* address and area: joins on the normalised address and on the unit id.

The text kinds run in one parallel ``collect_all``. The filters then keep or drop every pair by one
lookup in a table of rule x allowed value, in the same lazy query that names the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import polars as pl
import shapely
from shapely.geometry import shape

from app.alerts.rules import (
    AddressRule,
    AreaRule,
    Filters,
    KeywordRule,
    PlateRule,
    PolygonRule,
    RadiusRule,
    normalize_address,
)

__all__ = ["EARTH_RADIUS_M", "MATCH_SCHEMA", "match_events"]

EARTH_RADIUS_M = 6_371_008.8
MATCH_SCHEMA = {"rule_id": pl.Int64, "event_id": pl.String}
Rules = Sequence[tuple[int, object, Filters]]
#: Pairs of one kind: positions in ``rules`` and rows of ``events``.
_PAIRS = {"_r": pl.Int64, "_e": pl.UInt32}
Pairs = tuple[np.ndarray, np.ndarray]
_S = TypeVar("_S")
_FILTERS = {"category": "categories", "kind": "kinds", "source": "sources"}
#: Cells of a rule x value filter table above which the filter compares sorted keys instead.
_MAX_TABLE = 1 << 25


def match_events(rules: Rules, events: pl.DataFrame) -> pl.DataFrame:
    """Every ``(rule_id, event_id)`` where the event satisfies the rule and its filters."""
    if not rules or events.height == 0:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    events = events.with_row_index("_e")

    radius, polygon = _of(rules, RadiusRule), _of(rules, PolygonRule)
    shapes = np.array([shape(s.geometry) for _, s in polygon], dtype=object)
    circles, outlines = _circle_boxes(radius), shapely.bounds(shapes).reshape(-1, 4)
    grid = _Grid(events, np.concatenate([circles, outlines])) if radius or polygon else None
    located = [_radius(radius, circles, grid), _polygon([p for p, _ in polygon], shapes, outlines, grid)]
    texts = [
        _patterns([(p, s.keyword.lower()) for p, s in _of(rules, KeywordRule)], events, _keyword_text()),
        _patterns([(p, s.plate) for p, s in _of(rules, PlateRule)], events, _plate_text()),
        _address(_of(rules, AddressRule), events),
        _area(_of(rules, AreaRule), events),
    ]
    # the text kinds run side by side; then every pair is filtered and named
    pairs = pl.concat([*located, *pl.collect_all(texts)])  # each kind yields a (rule, event) pair at most once
    ids = pl.Series(np.fromiter((rule_id for rule_id, _, _ in rules), dtype=np.int64, count=len(rules)))
    named = (
        pairs.lazy()
        .filter(_allowed(rules, events))
        .select(rule_id=pl.lit(ids).gather("_r"), event_id=pl.lit(events["event_id"]).gather("_e"))
    )
    return named.collect()


def _of(rules: Rules, kind: type[_S]) -> list[tuple[int, _S]]:
    """The rules of one kind, each with its position in ``rules``."""
    return [(pos, spec) for pos, (_, spec, _) in enumerate(rules) if isinstance(spec, kind)]


def _allowed(rules: Rules, events: pl.DataFrame) -> pl.Expr:
    """Whether every filter of a pair's rule lets its event through. A rule with a filter on a
    column keeps an event whose value is one it lists (a null value never): one lookup per pair in
    a table of rule x value."""
    keep = pl.lit(True)
    for column, field in _FILTERS.items():
        narrowed = [(pos, getattr(f, field)) for pos, (_, _, f) in enumerate(rules) if getattr(f, field)]
        if not narrowed:
            continue
        present = set(events[column].drop_nulls().unique().to_list())
        values = sorted({v for _, vs in narrowed for v in vs} & present)
        index = {v: i for i, v in enumerate(values)}
        # each event's value as a column of the table; "none of them" (or null) is the last column
        width = len(values) + 1
        code = events[column].replace_strict(values, range(len(values)), default=len(values), return_dtype=pl.Int64)
        row_of = np.zeros(len(rules), dtype=np.int64)  # row 0: rules without this filter, all allowed
        row_of[[pos for pos, _ in narrowed]] = np.arange(1, len(narrowed) + 1)
        cells = np.array([(j + 1) * width + index[v] for j, (_, vs) in enumerate(narrowed) for v in vs if v in index], dtype=np.int64)
        cell = pl.lit(pl.Series(row_of)).gather("_r") * width + pl.lit(code).gather("_e")
        if (len(narrowed) + 1) * width <= _MAX_TABLE:
            table = np.zeros((len(narrowed) + 1) * width, dtype=bool)
            table[:width] = True
            table[cells] = True
            keep = keep & pl.lit(pl.Series(table)).gather(cell)
        else:  # a huge filter set: the allowed cells as a set instead of a table
            keep = keep & ((cell < width) | cell.is_in(pl.Series(cells).implode()))
    return keep


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=_PAIRS)


def _pairs(rpos: np.ndarray, rows: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"_r": rpos, "_e": rows}, schema=_PAIRS)


class _Grid:
    """The located events (longitude and latitude both known) sorted into a grid of narrow
    longitude strips, each ordered by a fine latitude cell, so the events inside any box are a few
    contiguous runs found by binary search. Shared by the radius and polygon rules of one call."""

    #: Latitude cells per strip, and at most this many strips.
    CELLS, STRIPS = 1 << 16, 4096

    def __init__(self, events: pl.DataFrame, boxes: np.ndarray) -> None:
        located = events.filter(pl.col("lon").is_not_null() & pl.col("lat").is_not_null())
        self.rows = located["_e"].to_numpy().astype(np.int64)
        self.lon, self.lat = located["lon"].to_numpy(), located["lat"].to_numpy()
        if self.rows.size == 0:
            return
        self.x0, self.y0 = float(self.lon.min()), float(self.lat.min())
        span_x, span_y = float(self.lon.max()) - self.x0, float(self.lat.max()) - self.y0
        # strips about a quarter of a typical box wide: few runs per box, few strangers in each
        self.dx = max(span_x / self.STRIPS, float(np.median(boxes[:, 2] - boxes[:, 0])) / 4, 1e-12)
        self.dy = max(span_y / self.CELLS, 1e-12)
        key = self._strip(self.lon) * self.CELLS + self._cell(self.lat)
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    def _strip(self, lon: np.ndarray) -> np.ndarray:
        # subtraction, division and floor never reverse an order, so a point inside a box falls
        # in a strip and cell between the box's: the runs hold every point of the box
        return np.clip(np.floor((lon - self.x0) / self.dx), 0, self.STRIPS).astype(np.int64)

    def _cell(self, lat: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((lat - self.y0) / self.dy), 0, self.CELLS - 1).astype(np.int64)

    def within(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> Pairs:
        """Every (box, located event) with the event in the closed box ``x0..x1`` x ``y0..y1``
        (what an STRtree envelope query gives), as box indices and indices of the located events."""
        if self.rows.size == 0 or x0.size == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        s0, s1 = self._strip(x0), self._strip(x1)
        box, strip = _runs(s0, s1 - s0 + 1)
        lo = np.searchsorted(self.keys, strip * self.CELLS + self._cell(y0)[box], "left")
        hi = np.searchsorted(self.keys, strip * self.CELLS + self._cell(y1)[box], "right")
        box, at = _runs(lo, hi - lo, box)
        point = self.order[at]
        lon, lat = self.lon[point], self.lat[point]
        inside = (lon >= x0[box]) & (lon <= x1[box]) & (lat >= y0[box]) & (lat <= y1[box])
        return box[inside], point[inside]


def _runs(start: np.ndarray, length: np.ndarray, owner: np.ndarray | None = None) -> Pairs:
    """Expand runs: for run ``i``, ``length[i]`` pairs ``(owner[i], start[i] + k)``, k = 0, 1, ..."""
    length = np.maximum(length, 0)
    ids = np.arange(start.size) if owner is None else owner
    run = np.repeat(np.arange(start.size), length)
    first = np.cumsum(length) - length
    return ids[run], start[run] + (np.arange(run.size) - first[run])


def _circle_boxes(rules: list[tuple[int, RadiusRule]]) -> np.ndarray:
    """Each circle's bounding box ``(lon0, lat0, lon1, lat1)``, a little larger than the circle."""
    lat = np.array([r.lat for _, r in rules])
    lon = np.array([r.lon for _, r in rules])
    radius = np.array([r.radius_m for _, r in rules])
    dlat = np.degrees(radius / EARTH_RADIUS_M) * 1.001
    dlon = dlat / np.maximum(np.cos(np.radians(np.minimum(np.abs(lat) + dlat, 89.9))), 1e-6)
    return np.column_stack([lon - dlon, lat - dlat, lon + dlon, lat + dlat]).reshape(-1, 4)


def _radius(rules: list[tuple[int, RadiusRule]], boxes: np.ndarray, grid: _Grid | None) -> pl.DataFrame:
    """Events in a circle's bounding box (the prefilter) whose haversine distance is within it."""
    if not rules or grid is None:
        return _empty()
    pos = np.array([p for p, _ in rules], dtype=np.int64)
    lat = np.array([r.lat for _, r in rules])
    lon = np.array([r.lon for _, r in rules])
    radius = np.array([r.radius_m for _, r in rules])
    r, p = grid.within(*boxes.T)
    d = _haversine(grid.lat, grid.lon, p, lat, lon, r)
    keep = d <= radius[r]
    return _pairs(pos[r[keep]], grid.rows[p[keep]])


def _haversine(lat1: np.ndarray, lon1: np.ndarray, i: np.ndarray, lat2: np.ndarray, lon2: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Great-circle metres between points ``i`` of ``(lat1, lon1)`` and ``j`` of ``(lat2, lon2)``
    (degrees); radians and cosines are taken once per point, not once per pair."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    c1, c2 = np.cos(p1), np.cos(p2)
    a = np.sin((p2[j] - p1[i]) / 2) ** 2 + c1[i] * c2[j] * np.sin(np.radians(lon2[j] - lon1[i]) / 2) ** 2
    out: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return out


def _polygon(positions: list[int], shapes: np.ndarray, bounds: np.ndarray, grid: _Grid | None) -> pl.DataFrame:
    """Events in a polygon's bounding box (the prefilter) that the prepared polygon intersects."""
    if not positions or grid is None:
        return _empty()
    r, p = grid.within(*bounds.T)
    shapely.prepare(shapes)
    hit = shapely.intersects_xy(shapes[r], grid.lon[p], grid.lat[p])
    return _pairs(np.array(positions, dtype=np.int64)[r[hit]], grid.rows[p[hit]])


def _keyword_text() -> pl.Expr:
    return pl.concat_str([pl.col("text").fill_null(""), pl.col("address").fill_null("")], separator="\n").str.to_lowercase()


def _plate_text() -> pl.Expr:
    """Text and address, each upper-cased to letters and digits, joined by ``|`` (which no plate
    holds, so a plate never matches across the two fields)."""
    fields = [pl.col(c).fill_null("").str.to_uppercase().str.replace_all(r"[^0-9A-Z]", "") for c in ("text", "address")]
    return pl.concat_str(fields, separator="|")


def _joined(found: pl.LazyFrame, wanted: pl.DataFrame, on: str | list[str]) -> pl.LazyFrame:
    return found.join(wanted.lazy(), on=on).select("_r", "_e")


def _patterns(rules: list[tuple[int, str]], events: pl.DataFrame, text: pl.Expr) -> pl.LazyFrame:
    """Rules whose pattern occurs in ``text``: all patterns in one Aho-Corasick pass."""
    if not rules:
        return _empty().lazy()
    wanted = pl.DataFrame({"_r": [p for p, _ in rules], "_p": [s for _, s in rules]}, schema={"_r": pl.Int64, "_p": pl.String})
    patterns = wanted["_p"].unique()
    found = events.lazy().select("_e", _p=text.str.extract_many(patterns.to_list(), overlapping=True).list.unique()).explode("_p")
    return _joined(found, wanted, "_p")


def _address(rules: list[tuple[int, AddressRule]], events: pl.DataFrame) -> pl.LazyFrame:
    """Events whose address equals the rule's, both as :func:`normalize_address` puts them."""
    if not rules:
        return _empty().lazy()
    wanted = pl.DataFrame(
        {"_r": [p for p, _ in rules], "_a": [normalize_address(r.address) for _, r in rules]}, schema={"_r": pl.Int64, "_a": pl.String}
    )
    norm = pl.col("address").str.replace_all(r"[^0-9A-Za-z]+", " ").str.strip_chars(" ").str.to_uppercase()  # = normalize_address
    return _joined(events.lazy().select("_e", _a=norm), wanted, "_a")


def _area(rules: list[tuple[int, AreaRule]], events: pl.DataFrame) -> pl.LazyFrame:
    if not rules:
        return _empty().lazy()
    wanted = pl.DataFrame(
        {"_r": [p for p, _ in rules], "level": [r.level for _, r in rules], "unit_id": [r.unit_id for _, r in rules]},
        schema={"_r": pl.Int64, "level": pl.String, "unit_id": pl.String},
    )
    levels = [lvl for lvl in ("tract", "neighborhood", "borough") if lvl in events.columns]
    units = events.lazy().unpivot(index="_e", on=levels, variable_name="level", value_name="unit_id")
    return _joined(units, wanted, ["level", "unit_id"])
