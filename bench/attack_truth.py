"""The truth an attack is scored against: raw events of the snapshot counted into the very cells
the attacker keyed (same units, categories and hour intervals, so the same local-time bins).

Unlocated events (no tract) count at the city level only, as the engine counts them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import polars as pl

from app.data.geography import LEVELS, tract_parents
from app.data.snapshot import Snapshot
from app.engine.grains import bin_range, floor_bin, grain_rank, next_bin
from bench.attack_model import ALL, Key
from bench.attack_system import KNOWN, UNKNOWN, WITHHELD, Layer

__all__ = ["Truth", "release_layers"]


class Truth:
    """Counts of arbitrary cells, vectorised by sorted codes and binary search.

    ``frames``: per city, one row per event with ``category``, ``hour`` (hours since the epoch)
    and a ``<level>_id`` column per level (null where the event is in no unit of that level)."""

    def __init__(self, frames: dict[str, pl.DataFrame]) -> None:
        self._index: dict[tuple[str, str, bool], tuple[dict[str, int], dict[str, int], npt.NDArray[np.int64]]] = {}
        self._events = frames

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> Truth:
        """The truth of a published snapshot (tract -> neighborhood -> borough -> city)."""
        frames = {}
        for city in snapshot.cities():
            parents = tract_parents(snapshot.units(city))
            events = snapshot.events(city).select("category", "tract_id", hour=(pl.col("ts").dt.epoch("s") // 3600).cast(pl.Int64))
            frames[city] = events.join(parents.drop("city_id"), on="tract_id", how="left").with_columns(city_id=pl.lit(city))
        return cls(frames)

    def _codes(self, city: str, level: str, by_category: bool) -> tuple[dict[str, int], dict[str, int], npt.NDArray[np.int64]]:
        key = (city, level, by_category)
        if key not in self._index:
            ev = self._events[city].filter(pl.col(f"{level}_id").is_not_null())
            units = {u: i for i, u in enumerate(sorted(ev[f"{level}_id"].unique().to_list()))}
            cats = {c: i for i, c in enumerate(sorted(ev["category"].unique().to_list()))}
            u = np.array([units[x] for x in ev[f"{level}_id"].to_list()], np.int64)
            c = np.array([cats[x] for x in ev["category"].to_list()], np.int64) if by_category else np.zeros(ev.height, np.int64)
            code = ((u * (len(cats) + 1) + c) << 32) + ev["hour"].to_numpy().astype(np.int64)
            self._index[key] = (units, cats, np.sort(code))
        return self._index[key]

    def counts(self, keys: Sequence[Key]) -> npt.NDArray[np.int64]:
        """True count of every key (0 for units or categories without events)."""
        out = np.zeros(len(keys), np.int64)
        groups: dict[tuple[str, str, bool], list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault((k.city, k.level, k.category != ALL), []).append(i)
        for (city, level, by_cat), idx in groups.items():
            units, cats, code = self._codes(city, level, by_cat)
            lo = np.empty(len(idx), np.int64)
            hi = np.empty(len(idx), np.int64)
            ok = np.zeros(len(idx), np.bool_)
            for j, i in enumerate(idx):
                k = keys[i]
                u, c = units.get(k.unit), cats.get(k.category, -1) if by_cat else 0
                if u is None or c < 0:
                    continue
                base = (u * (len(cats) + 1) + c) << 32
                lo[j], hi[j], ok[j] = base + k.h0, base + k.h1, True
            n = np.searchsorted(code, hi) - np.searchsorted(code, lo)
            out[np.asarray(idx)] = np.where(ok, n, 0)
        return out


def release_layers(snapshot: Snapshot, city: str, universe: tuple[int, int] | None = None) -> list[Layer]:
    """The release of ``city`` read straight from the snapshot, as the general attacker's layers
    (what a perfect crawl would learn): every level at its grain over whole bins of the coarsest
    grain (``universe``: hour indices to cover, default the release's span), categories named from
    the events, incomplete bins unknown. A reference for the crawl's model
    (:func:`bench.attack_model.layers`), not an input of any attack."""
    meta = snapshot.release_meta(city)
    tz, grains, cutoff = str(meta["timezone"]), dict(meta["grains"]), dict(meta.get("complete_until") or {})
    release = snapshot.release(city)
    units = snapshot.units(city)
    levels = [lv for lv in LEVELS if units.filter(pl.col("level") == lv).height]
    cats = [ALL, *sorted(snapshot.events(city)["category"].unique().drop_nulls().to_list())]
    coarsest = max((grains[lv] for lv in levels), key=grain_rank)
    lo, hi = release["bin_start"].min(), release["bin_start"].max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    if universe is not None:
        lo, hi = (datetime.fromtimestamp(h * 3600, UTC) for h in universe)
        hi -= timedelta(hours=1)
    start = floor_bin(lo, coarsest, tz)
    end = next_bin(floor_bin(hi, coarsest, tz), coarsest, tz)
    out = []
    for i, level in enumerate(levels):
        grain = grains[level]
        starts = bin_range(start, end, grain, tz)
        edges = np.array([int(b.timestamp()) // 3600 for b in [*starts, end]], np.int64)
        names = sorted(units.filter(pl.col("level") == level)["unit_id"].to_list())
        up = levels[i + 1] if i + 1 < len(levels) else None
        parent_names = sorted(units.filter(pl.col("level") == up)["unit_id"].to_list()) if up else []
        pidx = {u: j for j, u in enumerate(parent_names)}
        pmap = dict(units.filter(pl.col("level") == level).select("unit_id", "parent_id").iter_rows())
        parent = np.array([pidx.get(pmap.get(u) or "", -1) for u in names], np.int64)
        shape = (len(names), len(cats), len(starts))
        state = np.full(shape, KNOWN, np.int8)
        first_open = bisect_left(starts, cutoff[level]) if level in cutoff else len(starts)
        state[:, :, first_open:] = UNKNOWN
        value = np.zeros(shape, np.int64)
        cells = release.filter(pl.col("level") == level)
        ui = {u: j for j, u in enumerate(names)}
        ci = {c: j for j, c in enumerate(cats)}
        bi = {int(b.timestamp()) // 3600: j for j, b in enumerate(starts)}
        cells = cells.filter((pl.col("bin_start") >= start) & (pl.col("bin_start") < end))
        u = np.array([ui[x] for x in cells["unit_id"].to_list()], np.int64)
        c = np.array([ci[x] for x in cells["category"].to_list()], np.int64)
        b = np.array([bi[int(x.timestamp()) // 3600] for x in cells["bin_start"].to_list()], np.int64)
        part = cells["partial"].to_numpy()
        supp = cells["suppressed"].to_numpy()
        cnt = cells["count"].fill_null(-1).to_numpy()
        state[u, c, b] = np.where(part, UNKNOWN, np.where(supp, WITHHELD, KNOWN))
        value[u, c, b] = np.where(part | supp, 0, cnt)
        out.append(Layer(city, level, grain, names, cats, edges, value, state, parent, rest=level == "city" and i > 0))
    return out
