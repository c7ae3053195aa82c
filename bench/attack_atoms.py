"""Published cells as linear equations over *atoms*, the finest cells every published number is a
sum of: leaf x category x hour, where a leaf is a tract or the city's "unlocated" remainder (events
counted at the city level but in no tract) and a category is a crawled one or "other" (events of
categories the crawl never learnt).

Atoms inside any published zero are dropped. Atoms that no released equation tells apart (the same
set of released cells contains each) are merged into one *class*: a withheld cell that holds part
of a class and not the rest is never determined (every combination of released rows weighs a class'
atoms equally), and every other withheld cell is a 0/1 vector over classes. :mod:`bench.attack_linear`
then decides which of those vectors lie in the span of the released rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse

from bench.attack_model import ALL, Grid, Published

__all__ = ["OTHER", "UNLOCATED", "AtomLimitError", "Classes", "classes", "needs"]

UNLOCATED = "__unlocated__"
OTHER = "__other__"
_I64 = npt.NDArray[np.int64]


@dataclass
class _City:
    leaves: list[str]
    unit_of: dict[str, _I64]  # level -> unit index of each leaf (-1: not in any unit of that level)
    units: dict[str, dict[str, int]]
    cats: list[str]
    unlocated: bool


@dataclass
class Classes:
    """The reduced system: released rows and withheld targets as sets of classes."""

    rows: sparse.csr_matrix  # released cell x class (0/1)
    rhs: _I64  # released values of the rows
    row_cells: _I64  # cell id of each row
    targets: sparse.csr_matrix  # target cell x class (0/1), determinable targets only
    target_cells: _I64
    split: _I64  # withheld cells never determined: they hold part of a class
    n_atoms: int
    n_classes: int
    inconsistent: _I64  # released cells with no atom left but a non-zero value (a model error)


def _total(pub: Published, city: str, level: str, unit: str, cat: str) -> int | None:
    """Released total of the whole crawled range (None when withheld or not crawled)."""
    lo, hi = pub.universe[city]
    for g in pub.grids:
        if g.city == city and g.level == level and g.category == cat and g.grain is None and g.edges[0] == lo and g.edges[1] == hi:
            cid = g.cells.get((unit, 0))
            return None if cid is None else pub.values[cid]
    return None


def needs(pub: Published, city: str) -> tuple[bool, bool]:
    """Whether the city has unlocated events and events of categories the crawl does not know:
    the released city total over the whole range against its boroughs' (its categories') sum."""
    info = pub.info[city]
    top = info.levels[-1]
    whole = _total(pub, city, top, city, ALL)
    if whole is None or len(info.levels) < 2:
        return True, True
    below = info.levels[-2]
    parts = [_total(pub, city, below, u, ALL) for u in info.parents.get(below, {})]
    cats = [_total(pub, city, top, city, c) for c in info.categories]
    unlocated = any(p is None for p in parts) or sum(p or 0 for p in parts) != whole
    other = any(c is None for c in cats) or sum(c or 0 for c in cats) != whole
    return unlocated, other


def _city_layout(pub: Published, city: str) -> _City:
    info = pub.info[city]
    with_unlocated, with_other = needs(pub, city)
    parents = info.parents
    tracts = sorted(parents.get("tract", {}))
    leaves = [*tracts, UNLOCATED] if with_unlocated else tracts
    units = {lvl: {u: i for i, u in enumerate(sorted(parents.get(lvl, {})))} for lvl in info.levels}
    unit_of: dict[str, _I64] = {}
    up = {lvl: dict(parents.get(lvl, {})) for lvl in info.levels}
    for lvl in info.levels:
        ids = []
        for t in tracts:
            cur: str | None = t
            for step in info.levels[: info.levels.index(lvl)]:
                cur = up[step].get(cur) if cur is not None else None
            ids.append(units[lvl].get(cur, -1) if cur is not None else -1)
        if with_unlocated:
            ids.append(units[lvl].get(city, 0) if lvl == info.levels[-1] else -1)
        unit_of[lvl] = np.asarray(ids, np.int64)
    cats = [*info.categories, OTHER] if with_other else list(info.categories)
    return _City(leaves, unit_of, units, cats, with_unlocated)


def _full(grid: Grid) -> bool:
    return grid.grain is not None and len(grid.zero_bins) == len(grid.edges) - 1


def _expand(pub: Published, grid: Grid, lay: _City, unlocated: bool) -> tuple[_I64, _I64]:
    """(leaf, hour) of every atom inside a non-zero or withheld cell of ``grid``."""
    uo = lay.unit_of[grid.level]
    leaf_sets: dict[int, _I64] = {}
    leaves_out, hours_out = [], []
    for (unit, b), cid in grid.cells.items():
        if pub.values[cid] == 0:
            continue
        u = lay.units[grid.level].get(unit)
        if u is None:
            continue
        if u not in leaf_sets:
            leaf_sets[u] = np.flatnonzero(uo == u)
        ls = leaf_sets[u]
        last = len(lay.leaves) - 1 if lay.unlocated else len(lay.leaves)
        ls = ls[ls == last] if unlocated else ls[ls < last]
        hs = np.arange(grid.edges[b], grid.edges[b + 1], dtype=np.int64)
        leaves_out.append(np.repeat(ls, hs.size))
        hours_out.append(np.tile(hs, ls.size))
    if not leaves_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(leaves_out), np.concatenate(hours_out)


def _size(pub: Published, grid: Grid, lay: _City) -> int:
    counts = np.bincount(lay.unit_of[grid.level][lay.unit_of[grid.level] >= 0], minlength=len(lay.units[grid.level]))
    total = 0
    for (unit, b), cid in grid.cells.items():
        u = lay.units[grid.level].get(unit)
        if pub.values[cid] != 0 and u is not None:
            total += int(counts[u]) * int(grid.edges[b + 1] - grid.edges[b])
    return total


def _candidates(pub: Published, city: str, lay: _City, values: _I64, tables: dict[int, _I64], max_atoms: int) -> tuple[_I64, _I64, _I64]:
    """Atoms (leaf, category, hour) inside the support of each category's finest full-coverage
    grid (its own, else the all-category one), less those any other grid proves zero."""
    every = [g for g in pub.grids if g.city == city]
    grids = [g for g in every if _full(g)]
    total = 0
    top = pub.info[city].levels[-1]
    out_l, out_c, out_h = [], [], []
    for ci, cat in enumerate(lay.cats):
        own = [g for g in grids if g.category == cat] or [g for g in grids if g.category == ALL]
        if not own:
            raise ValueError(f"no full-coverage grid for {city}/{cat}: the crawl is too small for the general attacker")
        best = min(own, key=lambda g: _size(pub, g, lay))
        lv, hv = _expand(pub, best, lay, unlocated=False)
        tops = [g for g in own if g.level == top]
        if tops and lay.unlocated:
            ul, uh = _expand(pub, min(tops, key=lambda g: _size(pub, g, lay)), lay, unlocated=True)
            lv, hv = np.concatenate([lv, ul]), np.concatenate([hv, uh])
        cv = np.full(lv.size, ci, np.int64)
        for g in every:
            if g.category in (cat, ALL) and lv.size:
                keep = ~_members(g, lay, values, lv, cv, hv, tables)[2]
                lv, hv, cv = lv[keep], hv[keep], cv[keep]
        total += lv.size
        if total > max_atoms:
            raise AtomLimitError(f"more than {max_atoms} atoms not proven zero in {city}: the general attacker would not finish")
        out_l.append(lv)
        out_h.append(hv)
        out_c.append(np.full(lv.size, ci, np.int64))
    return np.concatenate(out_l), np.concatenate(out_c), np.concatenate(out_h)


def _members(
    grid: Grid, lay: _City, values: _I64, leaf: _I64, cat: _I64, hour: _I64, tables: dict[int, _I64]
) -> tuple[_I64, _I64, npt.NDArray[np.bool_]]:
    """Cells of ``grid`` holding each atom (-1: none) and which atoms it proves zero."""
    if grid.category == ALL:
        sel = np.ones(leaf.size, np.bool_)
    elif grid.category in lay.cats:
        sel = cat == lay.cats.index(grid.category)
    else:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(leaf.size, np.bool_)
    idx = np.flatnonzero(sel)
    unit = lay.unit_of[grid.level][leaf[idx]]
    b = np.searchsorted(grid.edges, hour[idx], side="right") - 1
    ok = (unit >= 0) & (b >= 0) & (b < grid.edges.size - 1)
    idx, unit, b = idx[ok], unit[ok], b[ok]
    nb = grid.edges.size - 1
    table = tables.get(id(grid))
    if table is None:
        table = np.full(len(lay.units[grid.level]) * nb, -1, np.int64)
        for (u, bb), cid in grid.cells.items():
            ui = lay.units[grid.level].get(u)
            if ui is not None:
                table[ui * nb + bb] = cid
        if grid.category == ALL:  # shared by every category's pass; per-category ones are small
            tables[id(grid)] = table
    cells = table[unit * nb + b]
    zero_bin = np.zeros(nb, np.bool_)
    zero_bin[list(grid.zero_bins)] = True
    zero = np.zeros(leaf.size, np.bool_)
    known = cells >= 0
    zero[idx[(~known & zero_bin[b]) | (known & (values[np.maximum(cells, 0)] == 0))]] = True
    return cells[known], idx[known], zero


class AtomLimitError(RuntimeError):
    """Too many atoms survive the zeros for the general attacker to finish in time."""


def classes(pub: Published, max_atoms: int = 3_000_000) -> Classes:
    """Build the class system of every city in ``pub`` (raises :class:`AtomLimitError` past
    ``max_atoms`` atoms)."""
    rng = np.random.default_rng(20261202)
    n_cells = len(pub.keys)
    pair_cell, pair_atom = [], []
    zero_all: list[npt.NDArray[np.bool_]] = []
    offset = 0
    values = np.array([-1 if v is None else v for v in pub.values], np.int64)
    for city in pub.info:
        lay = _city_layout(pub, city)
        tables: dict[int, _I64] = {}
        leaf, cat, hour = _candidates(pub, city, lay, values, tables, max_atoms)
        zero = np.zeros(leaf.size, np.bool_)
        for grid in pub.grids:
            if grid.city != city:
                continue
            cells, atoms, z = _members(grid, lay, values, leaf, cat, hour, tables)
            zero |= z
            pair_cell.append(cells)
            pair_atom.append(atoms + offset)
        zero_all.append(zero)
        offset += leaf.size
    zero = np.concatenate(zero_all) if zero_all else np.zeros(0, np.bool_)
    cells = np.concatenate(pair_cell) if pair_cell else np.zeros(0, np.int64)
    atoms = np.concatenate(pair_atom) if pair_atom else np.zeros(0, np.int64)
    keep = ~zero[atoms]
    cells, atoms = cells[keep], atoms[keep]
    alive = np.flatnonzero(~zero)
    remap = np.full(zero.size, -1, np.int64)
    remap[alive] = np.arange(alive.size)
    atoms = remap[atoms]
    m = sparse.csr_matrix((np.ones(cells.size, np.int8), (cells, atoms)), shape=(n_cells, alive.size))
    m.data[:] = 1
    released = np.flatnonzero(values >= 0)
    withheld = np.array(sorted(c for c in pub.withheld if values[c] < 0), np.int64)
    # Classes: atoms with one set of released rows (two independent 64-bit hashes of that set).
    rel = m[released].tocsc()
    atom_of = np.repeat(np.arange(rel.shape[1], dtype=np.int64), np.diff(rel.indptr))
    sig = np.zeros((2, alive.size), np.uint64)
    for j in range(2):
        w = rng.integers(1, 2**63, released.size, dtype=np.uint64)
        np.add.at(sig[j], atom_of, w[rel.indices])
    _, cls = np.unique(sig.T, axis=0, return_inverse=True)
    cls = cls.ravel().astype(np.int64)
    n_cls = int(cls.max()) + 1 if cls.size else 0
    to_cls = sparse.csr_matrix((np.ones(alive.size), (np.arange(alive.size), cls)), shape=(alive.size, n_cls))
    size = np.bincount(cls, minlength=n_cls)
    rows = (m[released] @ to_cls).tocsr()
    row_rhs = values[released]
    empty = np.diff(rows.indptr) == 0
    inconsistent = released[empty & (row_rhs != 0)]
    tgt = (m[withheld] @ to_cls).tocsr()
    tgt.sum_duplicates()
    whole = np.ones(withheld.size, np.bool_)
    t_rows = np.repeat(np.arange(withheld.size), np.diff(tgt.indptr))
    partial = tgt.data != size[tgt.indices]
    whole[np.unique(t_rows[partial])] = False
    tgt.data[:] = 1
    rows.data[:] = 1
    return Classes(
        rows=rows[~empty],
        rhs=row_rhs[~empty],
        row_cells=released[~empty],
        targets=tgt[whole],
        target_cells=withheld[whole],
        split=withheld[~whole],
        n_atoms=int(alive.size),
        n_classes=n_cls,
        inconsistent=inconsistent,
    )
