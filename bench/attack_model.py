"""What the crawl published, as cells: a key (city, level, unit, category, hour interval) and a
released value or "withheld"; grouped in *grids* (one level x category x grain, or one window
total) that say which cells were published and where an absent cell is a published zero.

A binned ``/heat`` answer lists only non-zero or withheld cells (absent cells are zeros), so a bin
wholly inside the asked window of a complete, bbox-free answer is a published zero for every unit
not listed. Window totals list every unit (zeros included). A withheld total's ``rollup`` is the
parent's released total, and every ``/anomalies`` item's ``observed`` is a released cell too.

Window totals cover the asked window widened to whole bins of a grain: the level's announced grain
(``/cities``) or, when none is announced, the grain (hour, day or week) whose widening makes the
city's released total equal the sum of its released hourly cells (the attacker calibrates it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from bench.attack_api import CityInfo, Crawl, Response, windows
from bench.attack_time import GRAINS, Clock, hour_index

__all__ = ["ALL", "AnomalyObs", "Grid", "Key", "Published", "publish"]

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
    """Cells of one level x category x grain (``grain`` None: one window total, one bin)."""

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
    total_grain: dict[tuple[str, str], str]
    keys: list[Key] = field(default_factory=list)
    values: list[int | None] = field(default_factory=list)  # released value, None if never released
    withheld: set[int] = field(default_factory=set)  # cells some answer withheld
    conflicts: list[tuple[Key, int, int]] = field(default_factory=list)  # one key, two released values
    grids: list[Grid] = field(default_factory=list)
    anomalies: list[AnomalyObs] = field(default_factory=list)
    dropped: int = 0  # cells outside the universe (not modelled)
    sources: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    _ids: dict[Key, int] = field(default_factory=dict)

    def cell(self, key: Key, value: int | None, source: str) -> int | None:
        """Record one observation of ``key``; its cell id (None when outside the universe)."""
        lo, hi = self.universe[key.city]
        if key.h0 < lo or key.h1 > hi:
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


def _hours(ts: str) -> int:
    return hour_index(datetime.fromisoformat(ts).astimezone(UTC))


def _calibrate(crawl: Crawl, info: CityInfo) -> str | None:
    """The grain window totals are widened to (None when no candidate fits)."""
    hourly: dict[int, int] = {}
    for r in crawl.heat:
        b = r.body
        if (
            r.params["city"] == info.city
            and r.params["level"] == "city"
            and b.get("time_bin") == "hour"
            and r.params.get("category") is None
        ):
            for c in b["cells"]:
                if c["count"] is not None:
                    hourly[_hours(c["bin_start"])] = int(c["count"])
    fits = []
    for r in crawl.heat:
        p = r.params
        if p["city"] != info.city or p["level"] != "city" or p.get("time_bin") or p.get("category") or r.window not in ("mis", "mis2"):
            continue
        total = r.body["cells"][0]["count"] if r.body["cells"] else None
        if total is None:
            continue
        since, until = datetime.fromisoformat(p["since"]), datetime.fromisoformat(p["until"])
        for grain in GRAINS:
            lo, hi = info.clock.snap(since, until, grain)
            if sum(v for h, v in hourly.items() if hour_index(lo) <= h < hour_index(hi)) == total:
                fits.append(grain)
                break
    return fits[0] if fits and all(f == fits[0] for f in fits) else None


def publish(crawl: Crawl) -> Published:
    """Turn the raw answers into cells and grids."""
    infos = {i.city: i for i in crawl.cities}
    universe = {}
    total_grain: dict[tuple[str, str], str] = {}
    for info in crawl.cities:
        lo, hi = windows(info)["all"]
        universe[info.city] = (hour_index(lo), hour_index(hi))
        fallback = _calibrate(crawl, info)
        for level in info.levels:
            grain = info.announced.get(level) or fallback
            if grain is not None:
                total_grain[(info.city, level)] = grain
    pub = Published(infos, universe, total_grain)
    grids: dict[tuple[str, str, str, str | None, int, int], Grid] = {}
    for r in crawl.heat:
        _heat(pub, grids, r)
    for i, r in enumerate(crawl.anomalies):
        _anomalies(pub, grids, r, i)
    pub.grids = list(grids.values())
    return pub


def _grid(
    pub: Published,
    grids: dict[tuple[str, str, str, str | None, int, int], Grid],
    city: str,
    level: str,
    cat: str,
    grain: str | None,
    lo: int,
    hi: int,
) -> Grid:
    key = (city, level, cat, grain, lo, hi) if grain is None else (city, level, cat, grain, 0, 0)
    g = grids.get(key)
    if g is None:
        if grain is None:
            edges = np.array([lo, hi], np.int64)
        else:
            u0, u1 = pub.universe[city]
            bins = pub.info[city].clock.bins(datetime.fromtimestamp(u0 * 3600, UTC), datetime.fromtimestamp(u1 * 3600, UTC), grain)
            edges = np.array([b[0] for b in bins] + [bins[-1][1]], np.int64)
        g = grids[key] = Grid(city, level, cat, grain, edges)
    return g


def _heat(pub: Published, grids: dict[tuple[str, str, str, str | None, int, int], Grid], r: Response) -> None:
    p, body = r.params, r.body
    city, level = p["city"], p["level"]
    cat = p.get("category") or ALL
    clock: Clock = pub.info[city].clock
    since, until = datetime.fromisoformat(p["since"]), datetime.fromisoformat(p["until"])
    grain = body.get("time_bin")
    complete = bool(body.get("complete")) and p.get("bbox") is None
    if grain is None:
        tg = pub.total_grain.get((city, level))
        if tg is None:
            return
        lo, hi = (hour_index(t) for t in clock.snap(since, until, tg))
        grid = _grid(pub, grids, city, level, cat, None, lo, hi)
        for c in body["cells"]:
            cid = pub.cell(Key(city, level, c["unit_id"], cat, lo, hi), c["count"], "total")
            if cid is not None:
                grid.cells[(c["unit_id"], 0)] = cid
            up = c.get("rollup")
            ug = pub.total_grain.get((city, up["level"])) if up else None
            if up and ug:
                a, b = (hour_index(t) for t in clock.snap(since, until, ug))
                cid = pub.cell(Key(city, up["level"], up["unit_id"], cat, a, b), int(up["count"]), "rollup")
                if cid is not None:
                    _grid(pub, grids, city, up["level"], cat, None, a, b).cells[(up["unit_id"], 0)] = cid
        return
    grid = _grid(pub, grids, city, level, cat, grain, 0, 0)
    index = {int(h): i for i, h in enumerate(grid.edges[:-1])}
    for c in body["cells"]:
        h0 = _hours(c["bin_start"])
        b = index.get(h0)
        if b is None:
            raise ValueError(f"{grain} bin {c['bin_start']} is not on the {clock.name} grid: wrong time zone?")
        cid = pub.cell(Key(city, level, c["unit_id"], cat, h0, int(grid.edges[b + 1])), c["count"], f"heat-{grain}")
        if cid is not None:
            grid.cells[(c["unit_id"], b)] = cid
    if complete:
        grid.zero_bins.update(index[b0] for b0, _ in clock.inside(since, until, grain) if b0 in index)


def _anomalies(pub: Published, grids: dict[tuple[str, str, str, str | None, int, int], Grid], r: Response, i: int) -> None:
    city, grain = r.params["city"], r.body["time_bin"]
    for a in r.body["items"]:
        key = Key(city, a["level"], a["unit_id"], a["category"], _hours(a["window_start"]), _hours(a["window_end"]))
        cid = pub.cell(key, int(a["observed"]), "anomaly")
        if cid is None:
            continue
        grid = grids.get((city, key.level, key.category, grain, 0, 0))
        if grid is not None:  # a cell of a crawled series: the linear attacker can place it
            hit = np.flatnonzero(grid.edges[:-1] == key.h0)
            if hit.size and int(grid.edges[hit[0] + 1]) == key.h1:
                grid.cells[(key.unit, int(hit[0]))] = cid
        obs = AnomalyObs(
            key,
            grain,
            i,
            int(a["observed"]),
            float(a["expected"]),
            float(a["variance"]),
            _hours(a["baseline_start"]),
            _hours(a["baseline_end"]),
        )
        pub.anomalies.append(obs)
