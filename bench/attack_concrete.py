"""Concrete attacks: each one differencing rule an analyst would try by hand, applied to every
published cell. Each yields :class:`Derivation` s of withheld cells; scoring is elsewhere.

* ``direct``: a cell withheld in one answer and released in another (another window, a bbox).
* ``cross_grain``: a coarser bin minus its released finer bins (week - days, day - hours), and a
  withheld coarser bin as the sum of its finer ones.
* ``window_minus_parts``: a window total minus its released bins (or a withheld total as their sum).
* ``overlapping_windows``: two nested totals of one unit whose difference is one withheld bin, or a
  withheld total as an enclosing total minus the released rest.
* ``category_sum``: a unit's all-category cell minus its released categories (or the reverse).
* ``parent_minus_children``: a parent cell minus its released children (or the reverse).
* ``expected_differencing``: see :mod:`bench.attack_expected`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from bench.attack_index import Lookup
from bench.attack_model import ALL, Key, Published

__all__ = ["Derivation", "concrete_attacks"]


@dataclass(frozen=True)
class Derivation:
    """A value derived for a cell, by which attack, from what."""

    cell: int
    value: int
    attack: str
    evidence: str


def needs(pub: Published, city: str) -> tuple[bool, bool]:
    """Whether the city's top level may count events no unit below holds (unlocated events: the
    attacker never knows where, so a top-level cell is not the sum of its children), and whether
    categories exist that the attacker cannot name (then ``"*"`` is not the sum of the named ones)."""
    info = pub.info[city]
    return len(info.levels) > 1, not info.categories_complete


def _solve_sum(total: tuple[str, int], withheld: int, unknown: int, known_sum: int, first: int) -> tuple[int, int] | None:
    """With ``total = sum(parts)``: the one withheld term and its value, when all else is known."""
    if unknown or total[0] == "unknown":
        return None
    if total[0] == "withheld":
        return (total[1], known_sum) if withheld == 0 else None
    return (first, total[1] - known_sum) if withheld == 1 else None


def _direct(pub: Published) -> Iterator[Derivation]:
    for cid in sorted(pub.withheld):
        v = pub.values[cid]
        if v is not None:
            src = ",".join(sorted(pub.sources[cid]))
            yield Derivation(cid, v, "bbox_differencing" if "bbox" in src else "direct", f"released and withheld by {src}")


def _is_total(pub: Published, cid: int) -> bool:
    return bool(pub.sources[cid] & {"total", "rollup"})


def _intervals(pub: Published, look: Lookup) -> Iterator[Derivation]:
    """A cell against the finer bins of another grid tiling it (cross grain, window minus parts)."""
    for cid, key in enumerate(pub.keys):
        total = look.key_state(key)
        for g, a, b in look.tilings(key.city, key.level, key.category, key.h0, key.h1):
            st = look.stats(g, key.unit, a, b)
            hit = _solve_sum(total, st.withheld, st.unknown, st.known_sum, st.first_withheld)
            if hit:
                attack = "window_minus_parts" if _is_total(pub, cid) else "cross_grain"
                yield Derivation(hit[0], hit[1], attack, f"{key} = sum of its {b - a} {g.grain} bins")


def _nested(pub: Published, look: Lookup) -> Iterator[Derivation]:
    """Two nested window totals of one unit sharing an end: their difference is the rest."""
    totals: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for cid, key in enumerate(pub.keys):
        if _is_total(pub, cid):
            totals[(key.city, key.level, key.unit, key.category)].append(cid)
    for (city, level, unit, cat), cids in totals.items():
        for big in cids:
            kb = pub.keys[big]
            for small in cids:
                ks = pub.keys[small]
                if small == big or not (kb.h0 <= ks.h0 and ks.h1 <= kb.h1) or (kb.h0 != ks.h0) == (kb.h1 != ks.h1):
                    continue
                rest = (ks.h1, kb.h1) if kb.h0 == ks.h0 else (kb.h0, ks.h0)
                sb, ss = look.key_state(kb), look.key_state(ks)
                if sb[0] != "known" or ss[0] == "unknown":
                    continue
                rs = look.key_state(Key(city, level, unit, cat, *rest))
                options: list[tuple[int, int, int, int]] = []
                if rs[0] != "unknown":
                    options.append((1, 0, 0, rs[1]) if rs[0] == "withheld" else (0, 0, rs[1], -1))
                options += [
                    (st.withheld, st.unknown, st.known_sum, st.first_withheld)
                    for g, a, b in look.tilings(city, level, cat, *rest)
                    for st in [look.stats(g, unit, a, b)]
                ]
                for withheld, unknown, known, first in options:
                    if unknown or withheld + (ss[0] == "withheld") != 1:
                        continue
                    cell, value = (ss[1], sb[1] - known) if ss[0] == "withheld" else (first, sb[1] - ss[1] - known)
                    yield Derivation(cell, value, "overlapping_windows", f"{kb} minus {ks}")
                    break


def _grouped(pub: Published, look: Lookup) -> Iterator[Derivation]:
    """Category sums and parent minus children: one pass groups each sum's parts."""
    flags = {city: needs(pub, city) for city in pub.info}
    by_cats: dict[tuple[str, str, str, int, int], dict[str, int]] = defaultdict(dict)
    by_kids: dict[tuple[str, str, str, str, int, int], dict[str, int]] = defaultdict(dict)
    for cid, k in enumerate(pub.keys):
        if k.category != ALL:
            by_cats[(k.city, k.level, k.unit, k.h0, k.h1)][k.category] = cid
        info = pub.info[k.city]
        i = info.levels.index(k.level)
        if i + 1 < len(info.levels):
            parent = info.parents[k.level].get(k.unit)
            if parent is not None:
                by_kids[(k.city, info.levels[i + 1], parent, k.category, k.h0, k.h1)][k.unit] = cid
    zero_cover: dict[tuple[str, str, str, int, int], bool] = {}
    children: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for city, info in pub.info.items():
        for lvl in info.levels[:-1]:
            for u, p in info.parents[lvl].items():
                children[(city, lvl, p or "")].append(u)

    def covered(city: str, level: str, cat: str, h0: int, h1: int) -> bool:
        key = (city, level, cat, h0, h1)
        if key not in zero_cover:
            zero_cover[key] = look.zero_covered(city, level, cat, h0, h1)
        return zero_cover[key]

    def parts_of(cells: dict[str, int], members: list[str], cover: list[bool]) -> tuple[int, int, int, int]:
        withheld = unknown = known = 0
        first = -1
        for m, zero_ok in zip(members, cover, strict=True):
            cid = cells.get(m)
            if cid is None:
                unknown += not zero_ok
                continue
            v = pub.values[cid]
            if v is None:
                withheld += 1
                first = cid
            else:
                known += v
        return withheld, unknown, known, first

    for k in pub.keys:
        info = pub.info[k.city]
        unlocated, other = flags[k.city]
        total = look.key_state(k)
        if k.category == ALL and not other:
            cells = by_cats.get((k.city, k.level, k.unit, k.h0, k.h1), {})
            cover = [c in cells or covered(k.city, k.level, c, k.h0, k.h1) for c in info.categories]
            hit = _solve_sum(total, *parts_of(cells, info.categories, cover))
            if hit:
                yield Derivation(hit[0], hit[1], "category_sum", f"{k} minus its categories")
        i = info.levels.index(k.level)
        if i == 0 or (i == len(info.levels) - 1 and unlocated):
            continue
        below = info.levels[i - 1]
        kids = children.get((k.city, below, k.unit), [])
        cells = by_kids.get((k.city, k.level, k.unit, k.category, k.h0, k.h1), {})
        zero_ok = covered(k.city, below, k.category, k.h0, k.h1)
        hit = _solve_sum(total, *parts_of(cells, kids, [zero_ok] * len(kids)))
        if hit:
            yield Derivation(hit[0], hit[1], "parent_minus_children", f"{k} minus its {len(kids)} {below} units")


def concrete_attacks(pub: Published) -> list[Derivation]:
    """Every derivation of every concrete attack except expected differencing."""
    look = Lookup(pub)
    out: list[Derivation] = []
    for attack in (_direct(pub), _intervals(pub, look), _nested(pub, look), _grouped(pub, look)):
        out.extend(attack)
    return out
