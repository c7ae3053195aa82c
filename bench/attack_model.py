"""What the crawl published, as cells: a key (city, level, unit, category, hour interval) and a
released value or "withheld"; grouped in *grids* (one level x category x shown bin, or one window
total) that say which cells were published and where an absent cell is a published zero.

Everything is read from the ``lens`` each answer echoes, never guessed:

* ``time_bin`` is the bin shown (the coarser of the asked one and the level's ``grain``); bins are
  the city's local days and weeks (``timezone``; 23- and 25-hour days on daylight-saving changes).
* A bin at or after ``published_until`` (floored to the shown bin) is *incomplete*, as is a row
  flagged ``partial``: not published, not withheld, not zero -- unknown, and so is an absent row
  there. In a complete bin of a complete (all pages, bbox-free) answer an absent row is a released
  zero.
* A window total (no ``time_bin``) is the sum of the level's released cells over its complete bins
  in ``[grid_since, min(grid_until, published_until))``; every unit is listed (zeros included). A
  withheld total's ``rollup`` is the parent's total over the same grid, up to the *parent* level's
  ``published_until``.
* Every ``/anomalies`` item's ``observed`` is the released cell of its bin.

:func:`layers` turns the cells into the general attacker's model (:mod:`bench.attack_system`): the
cells at each level's grain, and every other published number as a sum of them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from bench.attack_api import CityInfo, Crawl, Response, windows
from bench.attack_system import KNOWN, OTHER, UNKNOWN, WITHHELD, Layer, SumKey
from bench.attack_time import Clock, hour_index

__all__ = ["ALL", "AnomalyObs", "Grid", "Key", "Model", "Published", "layers", "publish"]

#: Category of "all categories" in keys (the API's ``category`` omitted, or ``*`` in anomalies).
ALL = "*"


@dataclass(frozen=True, slots=True)
class Key:
    """One cell: the events of ``unit`` (at ``level``) of ``category`` with hour in ``[h0, h1)``."""

    city: str
    level: str
    unit: str
    category: str
    h0: int
    h1: int


@dataclass
class Grid:
    """Cells of one level x category x shown bin (``grain`` None: one window total, one bin)."""

    city: str
    level: str
    category: str
    grain: str | None
    edges: npt.NDArray[np.int64]  # bin i is [edges[i], edges[i + 1])
    cells: dict[tuple[str, int], int] = field(default_factory=dict)  # (unit, bin) -> cell id
    zero_bins: set[int] = field(default_factory=set)  # bins where an absent unit is a published zero


@dataclass(frozen=True)
class AnomalyObs:
    """One scored cell of an ``/anomalies`` answer (``response``: which answer)."""

    key: Key
    grain: str
    response: int
    observed: int
    expected: float
    variance: float
    base0: int
    base1: int


@dataclass
class Published:
    """Every cell the crawl saw, deduplicated by key."""

    info: dict[str, CityInfo]
    universe: dict[str, tuple[int, int]]  # hours every modelled cell lies in, per city
    keys: list[Key] = field(default_factory=list)
    values: list[int | None] = field(default_factory=list)  # released value, None if never released
    withheld: set[int] = field(default_factory=set)  # cells some answer withheld
    conflicts: list[tuple[Key, int, int]] = field(default_factory=list)  # one key, two released values
    grids: list[Grid] = field(default_factory=list)
    anomalies: list[AnomalyObs] = field(default_factory=list)
    dropped: int = 0  # cells outside the universe (not modelled)
    incomplete: int = 0  # rows shown as still filling (unknowns, not withheld)
    mismatches: list[str] = field(default_factory=list)  # answers that contradict the model
    sources: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    _ids: dict[Key, int] = field(default_factory=dict)

    def cell(self, key: Key, value: int | None, source: str) -> int | None:
        """Record one observation of ``key``; its cell id (None when outside the universe)."""
        lo, hi = self.universe[key.city]
        if key.h0 < lo or key.h1 > hi or key.h1 <= key.h0:
            self.dropped += 1
            return None
        cid = self._ids.get(key)
        if cid is None:
            cid = self._ids[key] = len(self.keys)
            self.keys.append(key)
            self.values.append(None)
        self.sources[cid].add(source)
        if value is None:
            self.withheld.add(cid)
        else:
            old = self.values[cid]
            if old is not None and old != value:
                self.conflicts.append((key, old, value))
            self.values[cid] = value
        return cid

    def id_of(self, key: Key) -> int | None:
        return self._ids.get(key)

    def value(self, key: Key) -> int | None:
        cid = self._ids.get(key)
        return None if cid is None else self.values[cid]

    def note(self, text: str) -> None:
        if len(self.mismatches) < 200:
            self.mismatches.append(text)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).astimezone(UTC) if value else None


@lru_cache(maxsize=1 << 16)
def _hours(ts: str) -> int:
    return hour_index(datetime.fromisoformat(ts).astimezone(UTC))


def publish(crawl: Crawl) -> Published:
    """Turn the raw answers into cells and grids."""
    infos = {i.city: i for i in crawl.cities}
    universe = {}
    for info in crawl.cities:
        lo, hi = windows(info)["all"]
        universe[info.city] = (hour_index(lo), hour_index(hi))
    pub = Published(infos, universe)
    grids: dict[tuple[str, str, str, str | None, int, int], Grid] = {}
    for r in crawl.heat:
        _heat(pub, grids, r)
    for i, r in enumerate(crawl.anomalies):
        _anomalies(pub, grids, r, i)
    pub.grids = list(grids.values())
    return pub


def _edges(clock: Clock, lo: int, hi: int, grain: str) -> npt.NDArray[np.int64]:
    bins = clock.bins(datetime.fromtimestamp(lo * 3600, UTC), datetime.fromtimestamp(hi * 3600, UTC), grain)
    return np.array([b[0] for b in bins] + [bins[-1][1]], np.int64)


def _grid(
    pub: Published,
    grids: dict[tuple[str, str, str, str | None, int, int], Grid],
    city: str,
    level: str,
    cat: str,
    grain: str | None,
    lo: int = 0,
    hi: int = 0,
) -> Grid:
    key = (city, level, cat, grain, lo, hi) if grain is None else (city, level, cat, grain, 0, 0)
    g = grids.get(key)
    if g is None:
        if grain is None:
            edges = np.array([lo, hi], np.int64)
        else:
            u0, u1 = pub.universe[city]
            edges = _edges(pub.info[city].clock, u0, u1, grain)
        g = grids[key] = Grid(city, level, cat, grain, edges)
    return g


def _lens(pub: Published, r: Response) -> tuple[CityInfo, dict[str, object]]:
    lens = r.body.get("lens") or {}
    info = pub.info[r.params["city"]]
    zone = lens.get("timezone")
    if zone and zone != info.clock.name:
        pub.note(f"{r.params}: time zone {zone}, the attacker models {info.clock.name}")
    level = str(lens.get("level") or r.params["level"])
    if lens.get("grain") and lens["grain"] != info.grains.get(level):
        pub.note(f"{r.params}: grain {lens['grain']}, the attacker models {info.grains.get(level)}")
    return info, lens


def _heat(pub: Published, grids: dict[tuple[str, str, str, str | None, int, int], Grid], r: Response) -> None:
    p, body = r.params, r.body
    info, lens = _lens(pub, r)
    city, level = info.city, str(p["level"])
    cat = str(lens.get("category") or p.get("category") or ALL)
    clock = info.clock
    gs, gu = _ts(str(lens["grid_since"])), _ts(str(lens["grid_until"]))
    if gs is None or gu is None:
        pub.note(f"{p}: no grid in the lens")
        return
    cutoff = _ts(lens.get("published_until")) if lens.get("published_until") else None  # type: ignore[arg-type]
    complete = bool(body.get("complete")) and p.get("bbox") is None
    if p.get("time_bin") is None:
        lo = hour_index(gs)
        hi = hour_index(min(gu, cutoff) if cutoff else gu)
        if hi <= lo:  # the whole window is still filling: nothing published
            pub.incomplete += len(body["cells"])
            return
        grid = _grid(pub, grids, city, level, cat, None, lo, hi)
        if complete:
            grid.zero_bins.add(0)
        for c in body["cells"]:
            if c.get("partial"):
                pub.incomplete += 1
                continue
            cid = pub.cell(Key(city, level, c["unit_id"], cat, lo, hi), c["count"], "total" + ("-bbox" if p.get("bbox") else ""))
            if cid is not None:
                grid.cells[(c["unit_id"], 0)] = cid
            up = c.get("rollup")
            if up:
                up_cut = info.published_until.get(up["level"])
                b = hour_index(min(gu, up_cut) if up_cut else gu)
                if b > lo:
                    cid = pub.cell(Key(city, up["level"], up["unit_id"], cat, lo, b), int(up["count"]), "rollup")
                    if cid is not None:
                        _grid(pub, grids, city, up["level"], cat, None, lo, b).cells[(up["unit_id"], 0)] = cid
        return
    shown = str(lens.get("time_bin") or body.get("time_bin"))
    grid = _grid(pub, grids, city, level, cat, shown)
    index = {int(h): i for i, h in enumerate(grid.edges[:-1])}
    g0, g1 = hour_index(gs), hour_index(gu)
    if g0 not in index or (g1 not in index and g1 != int(grid.edges[-1])):
        pub.note(f"{p}: grid {lens['grid_since']}..{lens['grid_until']} is not on the attacker's {shown} bins")
    first_open = hour_index(clock.floor(cutoff, shown)) if cutoff else None
    for c in body["cells"]:
        h0 = _hours(c["bin_start"])
        at = index.get(h0)
        if at is None:
            pub.note(f"{p}: {shown} bin {c['bin_start']} is not on the attacker's {clock.name} grid")
            continue
        if c.get("partial") or (first_open is not None and h0 >= first_open):
            pub.incomplete += 1
            continue
        cid = pub.cell(
            Key(city, level, c["unit_id"], cat, h0, int(grid.edges[at + 1])),
            c["count"],
            f"heat-{shown}" + ("-bbox" if p.get("bbox") else ""),
        )
        if cid is not None:
            grid.cells[(c["unit_id"], at)] = cid
    if complete:
        for b, h in enumerate(grid.edges[:-1].tolist()):
            if h >= g0 and int(grid.edges[b + 1]) <= g1 and (first_open is None or h < first_open):
                grid.zero_bins.add(b)


def _anomalies(pub: Published, grids: dict[tuple[str, str, str, str | None, int, int], Grid], r: Response, i: int) -> None:
    info, lens = _lens(pub, r)
    city = info.city
    grain = str(lens.get("time_bin") or r.body["time_bin"])
    for a in r.body["items"]:
        key = Key(city, a["level"], a["unit_id"], a["category"], _hours(a["window_start"]), _hours(a["window_end"]))
        nxt = hour_index(info.clock.next(datetime.fromtimestamp(key.h0 * 3600, UTC), grain))
        if nxt != key.h1:
            pub.note(f"anomaly {a['unit_id']} {a['window_start']}..{a['window_end']}: not one {grain} bin of {info.clock.name}")
            continue
        cid = pub.cell(key, int(a["observed"]), "anomaly")
        if cid is None:
            continue
        grid = grids.get((city, key.level, key.category, grain, 0, 0))
        if grid is not None:  # a cell of a crawled series: the attacks can place it
            hit = np.flatnonzero(grid.edges[:-1] == key.h0)
            if hit.size and int(grid.edges[hit[0] + 1]) == key.h1:
                grid.cells[(key.unit, int(hit[0]))] = cid
        pub.anomalies.append(
            AnomalyObs(
                key,
                grain,
                i,
                int(a["observed"]),
                float(a["expected"]),
                float(a["variance"]),
                _hours(a["baseline_start"]),
                _hours(a["baseline_end"]),
            )
        )


@dataclass
class Model:
    """The general attacker's input: layers (finest level first, city by city), the published
    numbers that are sums of several grain cells, and where every withheld cell of ``pub`` is."""

    layers: list[Layer]
    sums: list[SumKey]
    sum_cells: list[int]  # cell id of each sum
    grain_cells: dict[int, tuple[int, int]]  # withheld cell id -> (layer, flat index)


def layers(pub: Published) -> Model:
    """The general attacker's model of ``pub``: per city and level (finest first) the cells at the
    level's grain (known, withheld or unknown) and every other published cell as a sum of them."""
    out: list[Layer] = []
    sums: list[SumKey] = []
    sum_cells: list[int] = []
    grain_cells: dict[int, tuple[int, int]] = {}
    index_of: dict[tuple[str, str], int] = {}
    by_level: dict[tuple[str, str], tuple[Layer, dict[int, int]]] = {}
    for city, info in pub.info.items():
        cats = [ALL, *info.categories] + ([] if info.categories_complete else [OTHER])
        u0, u1 = pub.universe[city]
        for i, level in enumerate(info.levels):
            grain = info.grains[level]
            edges = _edges(info.clock, u0, u1, grain)
            units = sorted(info.parents.get(level, {}))
            up = info.levels[i + 1] if i + 1 < len(info.levels) else None
            up_index = {u: j for j, u in enumerate(sorted(info.parents.get(up, {})))} if up else {}
            parent = np.array([up_index.get(info.parents[level].get(u) or "", -1) for u in units], np.int64)
            shape = (len(units), len(cats), len(edges) - 1)
            state = np.full(shape, UNKNOWN, np.int8)
            value = np.zeros(shape, np.int64)
            for ci, cat in enumerate(cats):
                for g in pub.grids:
                    if g.city == city and g.level == level and g.category == cat and g.grain == grain and g.zero_bins:
                        zb = np.fromiter(g.zero_bins, np.int64)
                        state[:, ci, zb] = KNOWN
            lay = Layer(city, level, grain, units, cats, edges, value, state, parent, rest=up is None and i > 0)
            index_of[(city, level)] = len(out)
            out.append(lay)
            by_level[(city, level)] = (lay, {int(h): b for b, h in enumerate(edges.tolist())})
    for cid, key in enumerate(pub.keys):
        got = by_level.get((key.city, key.level))
        if got is None:
            continue
        lay, pos = got
        b0, b1 = pos.get(key.h0), pos.get(key.h1)
        u, c = lay.unit_index.get(key.unit), lay.cat_index.get(key.category)
        v = pub.values[cid]
        if b0 is not None and b1 == b0 + 1 and u is not None and c is not None:
            lay.state[u, c, b0] = KNOWN if v is not None else WITHHELD
            lay.value[u, c, b0] = v or 0
            if v is None:
                _n_u, n_c, n_b = lay.shape
                grain_cells[cid] = (index_of[(key.city, key.level)], (u * n_c + c) * n_b + b0)
        else:
            sums.append(SumKey(key.city, key.level, key.unit, key.category, key.h0, key.h1, v))
            sum_cells.append(cid)
    return Model(out, sums, sum_cells, grain_cells)
