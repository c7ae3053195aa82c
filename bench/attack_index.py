"""Fast questions about published cells: the state of one cell, and statistics of a run of bins of
one unit's series (how many are withheld, which, how many unknown, the sum of the released ones)
answered by binary search over per-series sorted arrays."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench.attack_model import Grid, Key, Published

__all__ = ["Lookup", "RangeStats"]

_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RangeStats:
    """Bins ``[a, b)`` of one unit's series in one grid."""

    withheld: int
    unknown: int
    known_sum: int
    first_withheld: int  # cell id of one withheld bin (-1: none)


class _Series:
    """One unit's cells in one grid, sorted by bin, with running counts (plain lists: scalar
    binary searches are cheaper with :mod:`bisect` than with numpy)."""

    def __init__(self, bins: list[int], cids: list[int], pub: Published, zero: npt.NDArray[np.bool_]) -> None:
        pairs = sorted(zip(bins, cids, strict=True))
        self.bins = [b for b, _ in pairs]
        self.cids = [c for _, c in pairs]
        self.cum_hidden, self.cum_value, self.cum_at_zero = [0], [0], [0]
        for b, c in pairs:
            v = pub.values[c]
            self.cum_hidden.append(self.cum_hidden[-1] + (v is None))
            self.cum_value.append(self.cum_value[-1] + (v or 0))
            self.cum_at_zero.append(self.cum_at_zero[-1] + bool(zero[b]))


class Lookup:
    """Index of ``pub``'s grids by (city, level, category) and of each grid's unit series."""

    def __init__(self, pub: Published) -> None:
        self.pub = pub
        self.grids: dict[tuple[str, str, str], list[Grid]] = defaultdict(list)
        self._pos: dict[int, dict[int, int]] = {}
        self._zero: dict[int, tuple[npt.NDArray[np.bool_], list[int]]] = {}
        self._series: dict[int, dict[str, _Series]] = {}
        for g in pub.grids:
            self.grids[(g.city, g.level, g.category)].append(g)
            self._pos[id(g)] = {int(h): i for i, h in enumerate(g.edges)}
            zero = np.zeros(g.edges.size - 1, np.bool_)
            zero[list(g.zero_bins)] = True
            self._zero[id(g)] = (zero, [0, *np.cumsum(zero).tolist()])

    def series(self, g: Grid, unit: str) -> _Series | None:
        per = self._series.get(id(g))
        if per is None:
            by_unit: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
            for (u, b), cid in g.cells.items():
                by_unit[u][0].append(b)
                by_unit[u][1].append(cid)
            zero = self._zero[id(g)][0]
            per = self._series[id(g)] = {u: _Series(bs, cs, self.pub, zero) for u, (bs, cs) in by_unit.items()}
        return per.get(unit)

    def span(self, g: Grid, h0: int, h1: int) -> tuple[int, int] | None:
        """Bin range ``[a, b)`` of ``g`` tiling ``[h0, h1)`` exactly, if any."""
        pos = self._pos[id(g)]
        a, b = pos.get(h0), pos.get(h1)
        return (a, b) if a is not None and b is not None and b > a else None

    def tilings(self, city: str, level: str, cat: str, h0: int, h1: int) -> Iterator[tuple[Grid, int, int]]:
        """Binned grids tiling ``[h0, h1)`` with at least two bins."""
        for g in self.grids.get((city, level, cat), []):
            if g.grain is not None:
                ab = self.span(g, h0, h1)
                if ab and ab[1] - ab[0] > 1:
                    yield g, ab[0], ab[1]

    def stats(self, g: Grid, unit: str, a: int, b: int) -> RangeStats:
        _zero, cum_zero = self._zero[id(g)]
        s = self.series(g, unit)
        n_zero = cum_zero[b] - cum_zero[a]
        if s is None:
            return RangeStats(0, (b - a) - n_zero, 0, -1)
        i, j = bisect_left(s.bins, a), bisect_left(s.bins, b)
        hidden = s.cum_hidden[j] - s.cum_hidden[i]
        unknown = (b - a) - n_zero - ((j - i) - (s.cum_at_zero[j] - s.cum_at_zero[i]))
        first = -1
        if hidden:
            first = s.cids[bisect_left(s.cum_hidden, s.cum_hidden[i] + 1, i + 1, j + 1) - 1]
        return RangeStats(hidden, unknown, s.cum_value[j] - s.cum_value[i], first)

    def key_state(self, key: Key) -> tuple[str, int]:
        """``("known", value)``, ``("withheld", cell id)`` or ``("unknown", -1)``."""
        cid = self.pub.id_of(key)
        if cid is not None:
            v = self.pub.values[cid]
            return ("known", v) if v is not None else ("withheld", cid)
        for g in self.grids.get((key.city, key.level, key.category), []):
            ab = self.span(g, key.h0, key.h1) if g.grain is not None else None
            if ab and ab[1] == ab[0] + 1 and self._zero[id(g)][0][ab[0]]:
                return ("known", 0)
        return ("unknown", -1)

    def zero_covered(self, city: str, level: str, cat: str, h0: int, h1: int) -> bool:
        """An absent cell of this category and interval is a published zero."""
        for g in self.grids.get((city, level, cat), []):
            ab = self.span(g, h0, h1) if g.grain is not None else None
            if ab and ab[1] == ab[0] + 1 and self._zero[id(g)][0][ab[0]]:
                return True
        return False
