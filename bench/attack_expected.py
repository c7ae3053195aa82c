"""Expected differencing: withheld counts recovered from published ``expected`` values.

The attacker does not know the baseline model; it tests the family of *trailing-window* models
``E(t) = a[category, slot] * (sum of the series' counts over the published baseline window of t
+ b[series])``, the slot being the seasonal position of the bin (one slot for weeks, the weekday
for days, the hour of the week for hours). For two bins of one series ``P`` bins apart in the same
slot, ``E(t + P) - E(t) = a * (X[t, t + P) - X[t - w, t - w + P))`` where ``w`` is the baseline's
length in bins (``baseline_end - baseline_start``): the series constant cancels.

Per answer and (category, slot) -- or pooled over categories when the per-category fit has too
few pairs -- ``a`` is fitted on pairs whose counts are all released; the model is accepted only
when at least two such pairs agree within the rounding of the published values (two decimals).
Then every pair whose count difference holds exactly one withheld bin yields that bin, if the
rounding error bound after dividing by ``a`` stays below half an event. Under the old 28-day
trailing mean of weekly bins this is ``5 * (E(t + 1) - E(t)) = x(t) - x(t - 4)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.attack_concrete import Derivation
from bench.attack_index import Lookup
from bench.attack_model import AnomalyObs, Key, Published

__all__ = ["expected_differencing"]

_PERIOD = {"week": 1, "day": 7, "hour": 168}
_ROUND = 0.01  # published expected values carry two decimals: a difference is off by <= 0.01


@dataclass(frozen=True)
class _Pair:
    obs: AnomalyObs
    delta_e: float
    plus: list[Key]
    minus: list[Key]
    slot: int


def _pairs(pub: Published, look: Lookup) -> Iterator[_Pair]:
    series: dict[tuple[int, Key], dict[int, AnomalyObs]] = defaultdict(dict)
    edges: dict[tuple[str, str], np.ndarray] = {}
    for a in pub.anomalies:
        k = a.key
        if (k.city, a.grain) not in edges:
            grids = [g for g in pub.grids if g.city == k.city and g.grain == a.grain]
            if not grids:
                continue
            edges[(k.city, a.grain)] = grids[0].edges
        e = edges[(k.city, a.grain)]
        t = int(np.searchsorted(e, k.h0))
        if t < e.size and e[t] == k.h0:
            series[(a.response, Key(k.city, k.level, k.unit, k.category, 0, 0))][t] = a
    for (_, sk), by_bin in series.items():
        for t, a in by_bin.items():
            p = _PERIOD[a.grain]
            later = by_bin.get(t + p)
            e = edges[(sk.city, a.grain)]
            w = int(np.searchsorted(e, a.base1) - np.searchsorted(e, a.base0))
            if later is None or a.base0 < e[0] or w < p or t - w < 0 or t + p >= e.size:
                continue

            def keys(lo: int, e: np.ndarray = e, sk: Key = sk, p: int = p) -> list[Key]:
                return [Key(sk.city, sk.level, sk.unit, sk.category, int(e[i]), int(e[i + 1])) for i in range(lo, lo + p)]

            yield _Pair(a, later.expected - a.expected, keys(t), keys(t - w), t % p)


def _states(look: Lookup, pair: _Pair) -> tuple[int, list[tuple[int, int]]] | None:
    """Known part of the count difference and its withheld terms ``(cell, sign)``; None if unknown."""
    known, hidden = 0, []
    for sign, keys in ((1, pair.plus), (-1, pair.minus)):
        for k in keys:
            s, v = look.key_state(k)
            if s == "unknown":
                return None
            if s == "known":
                known += sign * v
            else:
                hidden.append((v, sign))
    return known, hidden


def _fit(pairs: list[tuple[_Pair, int]]) -> float | None:
    """The slope shared by fully released pairs, when at least two agree within rounding."""
    usable = [(p.delta_e, d) for p, d in pairs if d != 0]
    if len(usable) < 2:
        return None
    slopes = np.array([de / d for de, d in usable])
    a = float(np.median(slopes))
    tol = np.array([_ROUND / abs(d) for _, d in usable]) + 1e-9
    if a <= 0 or not bool(np.all(np.abs(slopes - a) <= tol)):
        return None
    return a


def expected_differencing(pub: Published) -> list[Derivation]:
    """Withheld bins recovered from consecutive same-slot expected values."""
    look = Lookup(pub)
    full: dict[tuple[int, str, int], list[tuple[_Pair, int]]] = defaultdict(list)
    pooled: dict[tuple[int, int], list[tuple[_Pair, int]]] = defaultdict(list)
    open_: list[tuple[_Pair, int, int, int]] = []
    for pair in _pairs(pub, look):
        got = _states(look, pair)
        if got is None:
            continue
        known, hidden = got
        if not hidden:
            full[(pair.obs.response, pair.obs.key.category, pair.slot)].append((pair, known))
            pooled[(pair.obs.response, pair.slot)].append((pair, known))
        elif len(hidden) == 1:
            open_.append((pair, known, *hidden[0]))
    slopes: dict[tuple[int, str, int], float | None] = {}
    pooled_slopes = {k: _fit(v) for k, v in pooled.items()}
    out = []
    for pair, known, cell, sign in open_:
        gk = (pair.obs.response, pair.obs.key.category, pair.slot)
        if gk not in slopes:
            slopes[gk] = _fit(full.get(gk, []))
        a = slopes[gk] or pooled_slopes.get((pair.obs.response, pair.slot))
        if not a:
            continue
        err = 1.5 * _ROUND / a
        x = sign * (pair.delta_e / a - known)
        if err < 0.5 and x > -0.5:
            out.append(
                Derivation(
                    cell,
                    round(x),
                    "expected_differencing",
                    f"E({pair.obs.key.h0}+P) - E({pair.obs.key.h0}) = {pair.delta_e:.2f}, slope {a:.4f}",
                )
            )
    return out
