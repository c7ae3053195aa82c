"""The truth an attack is scored against: raw events of the snapshot counted into the very cells
the attacker keyed (same units, categories and hour intervals, so the same local-time bins).

Unlocated events (no tract) count at the city level only, as the engine counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from app.data.geography import tract_parents
from app.data.snapshot import Snapshot
from bench.attack_model import ALL, Key

__all__ = ["Truth"]


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
