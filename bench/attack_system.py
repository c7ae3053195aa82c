"""The general linear attacker's model: every *grain cell* of the release (one level x unit x
category x bin of the level's published grain) as a variable, and the linear identities every
world satisfies, whatever its events.

A variable is *known* (released, zeros by absence in complete bins included), *withheld* (a
target) or *unknown* (not published: incomplete bins, a category the attacker cannot name, a level
or category it did not crawl). The identities:

* ``star``: a unit's ``"*"`` cell is the sum of its categories' cells (``OTHER``, the categories the
  attacker cannot name, is one more unknown category when the named ones do not add up).
* ``chain``: for consecutive levels ``lo`` (finer space, coarser or equal time) and ``hi``, per
  ``hi`` unit, category and ``lo`` bin ``tau``: the ``lo`` children's cells of ``tau`` add up to the
  ``hi`` unit's cells inside ``tau`` (a tract-week is seven of its neighborhood-days' worth, a
  neighborhood-day 23, 24 or 25 borough-hours' worth). Where the ``hi`` level counts events no
  ``lo`` unit holds (the city counts unlocated events), the rest is one more unknown per equation,
  so that equation says nothing linear.
* ``sum``: every other published number (coarser bins, window totals, roll-ups, anomalies'
  ``observed``) is the sum of the grain cells it covers (released: an equation; withheld: a target).

These are *all* the linear identities: the four layers are the marginals of one tract x category x
hour tensor over nested partitions (space gets coarser while time gets finer going up), and any
set of cells satisfying ``star`` and ``chain`` is the image of some real tensor (the additive
junction-tree construction), so a withheld cell is determined by the published numbers exactly
when its variable lies in the span of these equations (:func:`bench.attack_linear.solve_system`).
Non-negativity is not linear; :func:`zero_sums` applies it separately (bounds findings).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import sparse

__all__ = [
    "KNOWN",
    "OTHER",
    "STAR",
    "UNKNOWN",
    "WITHHELD",
    "Layer",
    "SumKey",
    "System",
    "build_system",
    "cell_of",
    "zero_sums",
]

KNOWN, WITHHELD, UNKNOWN = 0, 1, 2
STAR = "*"
OTHER = "__other__"
_I64 = npt.NDArray[np.int64]


@dataclass
class Layer:
    """One level at its grain: ``value[u, c, b]`` where ``state`` is KNOWN.

    ``categories[0]`` is ``"*"``; ``OTHER`` (last, always UNKNOWN) when the named ones do not add up.
    ``parent[u]``: index of the unit's parent among the next level's units (-1: none or top).
    ``rest``: this level counts events that no unit of the level below holds (unlocated events at
    the city level): the chain equation with the level below gets a free unknown.
    """

    city: str
    level: str
    grain: str
    units: list[str]
    categories: list[str]
    edges: _I64  # hour indices: bin b is [edges[b], edges[b + 1])
    value: npt.NDArray[np.int64]
    state: npt.NDArray[np.int8]
    parent: _I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    rest: bool = False

    def __post_init__(self) -> None:
        self.unit_index = {u: i for i, u in enumerate(self.units)}
        self.cat_index = {c: i for i, c in enumerate(self.categories)}
        self.bin_index = {int(h): i for i, h in enumerate(self.edges[:-1])}

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.units), len(self.categories), len(self.edges) - 1


@dataclass(frozen=True)
class SumKey:
    """A published number that is a sum of one layer's grain cells: bins ``[b0, b1)`` of ``unit``."""

    city: str
    level: str
    unit: str
    category: str
    h0: int
    h1: int
    value: int | None  # None: withheld


@dataclass
class System:
    """The equations (``rows @ x = rhs`` over the unknown cells) and where each variable is."""

    rows: sparse.csr_matrix  # int64 coefficients
    rhs: _I64
    kinds: list[str]  # family of each row ("star", "chain", "sum")
    var_cell: list[tuple[int, int]]  # variable -> (layer index, flat cell index); rests: (layer, -1 - n)
    var_of: list[_I64]  # per layer: flat cell -> variable (-1: known)
    inconsistent: dict[str, int]  # rows with no unknown whose known sides disagree, per family
    outside: int = 0  # sum keys that do not tile grain bins (a model error)
    #: Withheld sums: (index in the ``sums`` given, variables, known constant).
    sum_targets: list[tuple[int, dict[int, int], int]] = field(default_factory=list)


def cell_of(layer: Layer, flat: int) -> tuple[str, str, int, int, int]:
    """(unit, category, bin, h0, h1) of a flat cell index."""
    _, n_c, n_b = layer.shape
    u, rem = divmod(flat, n_c * n_b)
    c, b = divmod(rem, n_b)
    return layer.units[u], layer.categories[c], b, int(layer.edges[b]), int(layer.edges[b + 1])


class _Builder:
    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = layers
        self.var_of: list[_I64] = []
        self.var_cell: list[tuple[int, int]] = []
        n = 0
        for li, lay in enumerate(layers):
            flat = np.flatnonzero(lay.state.ravel() != KNOWN)
            vo = np.full(lay.state.size, -1, np.int64)
            vo[flat] = np.arange(n, n + flat.size)
            self.var_of.append(vo)
            self.var_cell.extend((li, int(f)) for f in flat)
            n += flat.size
        self.n_vars = n
        self.r: list[_I64] = []
        self.v: list[_I64] = []
        self.c: list[_I64] = []
        self.rhs: list[_I64] = []
        self.kinds: list[str] = []
        self.n_rows = 0
        self.inconsistent: dict[str, int] = {}

    def new_vars(self, li: int, n: int) -> _I64:
        out = np.arange(self.n_vars, self.n_vars + n, dtype=np.int64)
        base = sum(1 for _, f in self.var_cell if f < 0)
        self.var_cell.extend((li, -1 - (base + i)) for i in range(n))
        self.n_vars += n
        return out

    def family(
        self, kind: str, n_rows: int, row: _I64, li: _I64, flat: _I64, coef: _I64, extra: tuple[_I64, _I64, _I64] | None = None
    ) -> None:
        """Add ``n_rows`` equations ``sum coef * cell = 0`` (entries ``row, layer, flat cell``);
        ``extra``: (row, var, coef) entries over variables that are not cells."""
        known_side = np.zeros(n_rows, np.int64)
        has_var = np.zeros(n_rows, np.bool_)
        rr, vv, cc = [], [], []
        for lj in np.unique(li).tolist():
            sel = li == lj
            lay = self.layers[lj]
            var = self.var_of[lj][flat[sel]]
            unk = var >= 0
            np.add.at(known_side, row[sel][~unk], coef[sel][~unk] * lay.value.ravel()[flat[sel][~unk]])
            rr.append(row[sel][unk])
            vv.append(var[unk])
            cc.append(coef[sel][unk])
        if extra is not None:
            rr.append(extra[0])
            vv.append(extra[1])
            cc.append(extra[2])
        r = np.concatenate(rr) if rr else np.zeros(0, np.int64)
        v = np.concatenate(vv) if vv else np.zeros(0, np.int64)
        c = np.concatenate(cc) if cc else np.zeros(0, np.int64)
        has_var[r] = True
        bad = int(np.count_nonzero(~has_var & (known_side != 0)))
        if bad:
            self.inconsistent[kind] = self.inconsistent.get(kind, 0) + bad
        keep = np.flatnonzero(has_var)
        new_id = np.full(n_rows, -1, np.int64)
        new_id[keep] = np.arange(self.n_rows, self.n_rows + keep.size)
        self.r.append(new_id[r])
        self.v.append(v)
        self.c.append(c)
        self.rhs.append(-known_side[keep])
        self.kinds.extend([kind] * keep.size)
        self.n_rows += keep.size

    def matrix(self) -> tuple[sparse.csr_matrix, _I64]:
        r = np.concatenate(self.r) if self.r else np.zeros(0, np.int64)
        v = np.concatenate(self.v) if self.v else np.zeros(0, np.int64)
        c = np.concatenate(self.c) if self.c else np.zeros(0, np.int64)
        m = sparse.csr_matrix((c, (r, v)), shape=(self.n_rows, self.n_vars), dtype=np.int64)
        m.sum_duplicates()
        m.eliminate_zeros()
        return m, (np.concatenate(self.rhs) if self.rhs else np.zeros(0, np.int64))


def _star(b: _Builder, li: int) -> None:
    lay = b.layers[li]
    n_u, n_c, n_b = lay.shape
    u, c, t = np.meshgrid(np.arange(n_u), np.arange(n_c), np.arange(n_b), indexing="ij")
    flat = ((u * n_c + c) * n_b + t).ravel()
    row = (u * n_b + t).ravel()
    coef = np.where(c == 0, 1, -1).ravel().astype(np.int64)
    b.family("star", n_u * n_b, row, np.full(flat.size, li), flat, coef)


def _chain(b: _Builder, lo: int, hi: int) -> None:
    """Children's ``lo`` cells of each ``lo`` bin = the parent's ``hi`` cells inside it (per named
    category and OTHER; the ``"*"`` equation is implied by the others and ``star``)."""
    low, high = b.layers[lo], b.layers[hi]
    if low.categories != high.categories:
        raise ValueError(f"{low.level} and {high.level} model different categories")
    tau_lo = np.arange(len(low.edges) - 1)
    tau_hi = np.searchsorted(low.edges, high.edges[:-1], side="right") - 1
    ok = (tau_hi >= 0) & (tau_hi < len(low.edges) - 1)
    if not ok.all() or not np.isin(low.edges, high.edges).all():
        raise ValueError(f"{low.level} bin edges are not {high.level} bin edges: the grains do not nest")
    n_p, n_c, n_t = len(high.units), len(low.categories), len(low.edges) - 1
    cats = np.arange(1, n_c)
    # lo side: child u of parent p, category c, bin t -> row (p, c, t), +1
    _n_u, _, n_b = low.shape
    has = low.parent >= 0
    u, c, t = np.meshgrid(np.flatnonzero(has), cats, np.arange(n_b), indexing="ij")
    row_lo = ((low.parent[u] * n_c + c) * n_t + tau_lo[t]).ravel()
    flat_lo = ((u * n_c + c) * n_b + t).ravel()
    # hi side: parent p, category c, bin s -> row (p, c, tau(s)), -1
    _, _, n_s = high.shape
    p, c2, s = np.meshgrid(np.arange(n_p), cats, np.arange(n_s), indexing="ij")
    row_hi = ((p * n_c + c2) * n_t + tau_hi[s]).ravel()
    flat_hi = ((p * n_c + c2) * n_s + s).ravel()
    row = np.concatenate([row_lo, row_hi])
    li = np.concatenate([np.full(row_lo.size, lo), np.full(row_hi.size, hi)])
    flat = np.concatenate([flat_lo, flat_hi])
    coef = np.concatenate([np.ones(row_lo.size, np.int64), -np.ones(row_hi.size, np.int64)])
    n_rows = n_p * n_c * n_t
    extra = None
    if high.rest:  # one free unknown per equation: the events the hi level holds and no lo unit does
        rows = np.unique(row)
        extra = (rows, b.new_vars(hi, rows.size), np.ones(rows.size, np.int64))
    b.family("chain", n_rows, row, li, flat, coef, extra)


def build_system(layers: Sequence[Layer], sums: Iterable[SumKey] = ()) -> System:
    """The equations of ``layers`` (finest level first, one city after another) and ``sums``."""
    b = _Builder(layers)
    for li, lay in enumerate(layers):
        _star(b, li)
        if li + 1 < len(layers) and layers[li + 1].city == lay.city:
            _chain(b, li, li + 1)
    outside, targets = _sums_simple(b, sums)
    m, rhs = b.matrix()
    return System(m, rhs, b.kinds, b.var_cell, b.var_of, b.inconsistent, outside, targets)


def _sums_simple(b: _Builder, keys: Iterable[SumKey]) -> tuple[int, list[tuple[int, dict[int, int], int]]]:
    """Released sums as equations (``sum of unknown cells = value - sum of known cells``; a sum of
    known cells only is checked instead), withheld ones as targets."""
    by_level = {(lay.city, lay.level): i for i, lay in enumerate(b.layers)}
    outside = 0
    targets: list[tuple[int, dict[int, int], int]] = []
    r: list[_I64] = []
    v: list[_I64] = []
    c: list[_I64] = []
    rhs: list[int] = []
    for i, key in enumerate(keys):
        li = by_level.get((key.city, key.level))
        if li is None:
            outside += 1
            continue
        lay = b.layers[li]
        u, cat = lay.unit_index.get(key.unit), lay.cat_index.get(key.category)
        b0 = lay.bin_index.get(key.h0)
        b1 = len(lay.edges) - 1 if key.h1 == int(lay.edges[-1]) else lay.bin_index.get(key.h1)
        if u is None or cat is None or b0 is None or b1 is None or b1 <= b0:
            outside += 1
            continue
        _, n_c, n_b = lay.shape
        flat = (u * n_c + cat) * n_b + np.arange(b0, b1, dtype=np.int64)
        var = b.var_of[li][flat]
        unk = var >= 0
        const = int(lay.value.ravel()[flat[~unk]].sum())
        if key.value is None:
            targets.append((i, dict.fromkeys(var[unk].tolist(), 1), const))
        elif not unk.any():
            if const != key.value:
                b.inconsistent["sum"] = b.inconsistent.get("sum", 0) + 1
        else:
            row = b.n_rows + len(rhs)
            r.append(np.full(int(unk.sum()), row, np.int64))
            v.append(var[unk])
            c.append(np.ones(int(unk.sum()), np.int64))
            rhs.append(key.value - const)
    if rhs:
        b.r.append(np.concatenate(r))
        b.v.append(np.concatenate(v))
        b.c.append(np.concatenate(c))
        b.rhs.append(np.asarray(rhs, np.int64))
        b.kinds.extend(["sum"] * len(rhs))
        b.n_rows += len(rhs)
    return outside, targets


def zero_sums(rows: sparse.csr_matrix, rhs: _I64, nonneg: npt.NDArray[np.bool_], known: dict[int, int] | None = None) -> dict[int, int]:
    """Bounds, not linear algebra: variables forced to 0 because an equation whose right-hand side
    is 0 (once the ``known`` values are substituted) sums them with one sign -- every variable
    flagged ``nonneg`` is a count, so ``x + y = 0`` gives ``x = y = 0`` -- repeated as zeros are
    found. Returns ``{variable: 0}`` for the new zeros."""
    m = rows.tocsr()
    row_of = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    rest = rhs.astype(np.int64).copy()
    done = np.zeros(m.shape[1], np.bool_)
    if known:
        kv = np.fromiter(known, np.int64, len(known))
        val = np.zeros(m.shape[1], np.int64)
        val[kv] = np.fromiter(known.values(), np.int64, len(known))
        done[kv] = True
        np.subtract.at(rest, row_of, m.data * val[m.indices])
    zero = np.zeros(m.shape[1], np.bool_)
    live = np.ones(m.shape[0], np.bool_)
    sign = np.sign(m.data)
    while True:
        active = ~zero[m.indices] & ~done[m.indices]
        pos = np.bincount(row_of[active & (sign > 0)], minlength=m.shape[0])
        neg = np.bincount(row_of[active & (sign < 0)], minlength=m.shape[0])
        allnn = np.bincount(row_of[active & ~nonneg[m.indices]], minlength=m.shape[0]) == 0
        hit = np.flatnonzero(((pos == 0) | (neg == 0)) & ((pos + neg) > 0) & allnn & live & (rest == 0))
        if hit.size == 0:
            break
        live[hit] = False
        zero[np.unique(m.indices[np.isin(row_of, hit) & active])] = True
    return {int(i): 0 for i in np.flatnonzero(zero)}
