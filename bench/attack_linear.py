"""The general attacker's decision: which targets (withheld cells, or sums of them) lie in the
span of the published equations, and their values, exactly (arithmetic modulo the prime
``2**31 - 1``; published values are far smaller, so a solved value is read back as the integer
nearest zero).

:func:`solve_system`, in three steps:

1. *Peeling*: a row with one unknown solves it (repeat); then a variable held by one row only can
   absorb that row whatever the other variables are, so the row says nothing about them and is set
   aside (repeat). Both steps are vectorised rounds.
2. The rest (the *core*) splits into independent blocks (connected components of rows and
   variables), each reduced to reduced row-echelon form by sparse elimination (pivot: the row's
   column in the fewest basis rows). A block whose elimination outgrows ``max_fill`` stored entries
   is abandoned: its targets count as undecided (sound but incomplete, and reported).
3. Random vectors of the null space (built backwards through the peeling and the blocks) move
   almost every undetermined target: those are certainly not determined. Every other target is
   decided exactly: rewritten through the rows set aside, reduced by its blocks, determined when
   nothing is left; its value is the same combination of the published values.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["P", "SystemSolution", "solve_system"]

P = 2_147_483_647
_I64 = npt.NDArray[np.int64]


def _signed(v: int) -> int:
    v %= P
    return v - P if v > P // 2 else v


class _Block:
    """Sparse reduced row-echelon basis of one block, modulo P."""

    def __init__(self, max_fill: int) -> None:
        self.basis: dict[int, tuple[dict[int, int], int]] = {}  # pivot -> (row, rhs)
        self.holders: dict[int, set[int]] = {}  # column -> pivots whose row holds it
        self.fill = 0
        self.max_fill = max_fill
        self.inconsistent = 0  # rows that reduced to 0 = non-zero (a model error)

    def reduce(self, row: dict[int, int], rhs: int) -> tuple[dict[int, int], int]:
        for c in [c for c in row if c in self.basis]:
            f = row.get(c)
            if not f:
                continue
            prow, prhs = self.basis[c]
            for k, v in prow.items():
                nv = (row.get(k, 0) - f * v) % P
                if nv:
                    row[k] = nv
                else:
                    row.pop(k, None)
            rhs = (rhs - f * prhs) % P
        return row, rhs

    def add(self, row: dict[int, int], rhs: int) -> bool:
        row, rhs = self.reduce(row, rhs)
        if not row:
            self.inconsistent += rhs % P != 0
            return True
        piv = min(row, key=lambda c: (len(self.holders.get(c, ())), c))
        inv = pow(row[piv], P - 2, P)
        row = {k: v * inv % P for k, v in row.items()}
        rhs = rhs * inv % P
        for other in list(self.holders.get(piv, ())):  # keep the basis fully reduced
            orow, orhs = self.basis[other]
            f = orow.pop(piv)
            for k, v in row.items():
                if k == piv:
                    continue
                nv = (orow.get(k, 0) - f * v) % P
                if nv:
                    if k not in orow:
                        self.holders.setdefault(k, set()).add(other)
                        self.fill += 1
                    orow[k] = nv
                elif k in orow:
                    del orow[k]
                    self.holders[k].discard(other)
                    self.fill -= 1
            self.basis[other] = (orow, (orhs - f * rhs) % P)
        self.holders.pop(piv, None)
        self.basis[piv] = (row, rhs)
        for k in row:
            if k != piv:
                self.holders.setdefault(k, set()).add(piv)
        self.fill += len(row)
        return self.fill <= self.max_fill


@dataclass
class SystemSolution:
    """Which targets of :func:`solve_system` the equations determine (index -> value)."""

    values: dict[int, int] = field(default_factory=dict)
    undecided: int = 0  # targets in abandoned blocks or grown past ``max_terms``
    peeled: int = 0  # variables solved by singleton rows
    eliminated: int = 0  # rows dropped because a variable only they hold can absorb them
    core_rows: int = 0
    core_vars: int = 0
    blocks: int = 0
    largest_block: tuple[int, int] = (0, 0)  # (rows, variables)
    abandoned: int = 0
    inconsistent: int = 0  # rows left with no unknown but a non-zero remainder (a model error)
    var_values: dict[int, int] = field(default_factory=dict)  # variables solved by peeling
    checked: int = 0  # targets no random null-space vector moved (decided exactly)


def _gather(ptr: _I64, groups: _I64) -> tuple[_I64, _I64]:
    """Positions of every entry of the CSR/CSC ``groups`` and the index in ``groups`` of each."""
    lens = ptr[groups + 1] - ptr[groups]
    total = int(lens.sum())
    owner = np.repeat(np.arange(groups.size, dtype=np.int64), lens)
    offsets = np.repeat(ptr[groups] - (np.cumsum(lens) - lens), lens)
    return owner, (offsets + np.arange(total, dtype=np.int64)).astype(np.int64)


def _inverse(a: _I64) -> _I64:
    """Inverses modulo :data:`P` of an array (coefficients are almost always +-1)."""
    out = np.empty_like(a)
    one, minus = a == 1, a == P - 1
    out[one], out[minus] = 1, P - 1
    for i in np.flatnonzero(~(one | minus)):
        out[i] = pow(int(a[i]), P - 2, P)
    return out


@lru_cache(maxsize=4096)
def _inv(a: int) -> int:
    return pow(a, P - 2, P)


def _null_vectors(
    n_vars: int,
    state: npt.NDArray[np.int8],
    label: _I64,
    blocks: dict[int, _Block | None],
    rounds: list[tuple[_I64, _I64]],
    indptr: _I64,
    indices: _I64,
    data: _I64,
    samples: int,
    seed: int = 20261202,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``samples`` random solutions of the homogeneous system (rows: ``indptr, indices, data``),
    built backwards through the peeling: solved variables are 0, free core columns and variables
    in no row are random, pivots follow from their block's reduced rows, and each variable set
    aside follows from its row (last set aside first). Returns the vectors and which variables
    they say nothing about (those of abandoned blocks, and what was set aside through them)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((samples, n_vars), np.int64)
    tainted = np.zeros(n_vars, np.bool_)
    loose = (state == 0) & (label < 0)
    x[:, loose] = rng.integers(1, P, (samples, int(loose.sum())))
    for lab, blk in blocks.items():
        if blk is None:
            tainted[label == lab] = True
            continue
        cols = np.flatnonzero(label == lab)
        pivots = set(blk.basis)
        free = np.array([c for c in cols.tolist() if c not in pivots], np.int64)
        x[:, free] = rng.integers(1, P, (samples, free.size))
        for piv, (row, _) in blk.basis.items():
            acc = np.zeros(samples, np.int64)
            for k, v in row.items():
                if k != piv:
                    acc = (acc - v * x[:, k]) % P
            x[:, piv] = acc
    for chosen, rows in reversed(rounds):
        owner, pos = _gather(indptr, rows)
        w, a = indices[pos], data[pos]
        mine = w == chosen[owner]
        acc = np.zeros((samples, chosen.size), np.int64)
        for s_i in range(samples):
            np.add.at(acc[s_i], owner[~mine], a[~mine] * x[s_i, w[~mine]] % P)
        a_v = np.zeros(chosen.size, np.int64)
        a_v[owner[mine]] = a[mine]
        x[:, chosen] = (-(acc % P) * _inverse(a_v)) % P
        bad = np.zeros(chosen.size, np.bool_)
        np.logical_or.at(bad, owner, tainted[w])
        tainted[chosen] = bad
    return x, tainted


def _candidates(targets: list[tuple[dict[int, int], int]], x: npt.NDArray[np.int64], tainted: npt.NDArray[np.bool_]) -> _I64:
    """Targets no null-space vector of ``x`` moves (those touching an abandoned block included)."""
    if not targets:
        return np.zeros(0, np.int64)
    lens = np.fromiter((len(v) for v, _ in targets), np.int64, len(targets))
    owner = np.repeat(np.arange(len(targets), dtype=np.int64), lens)
    var = np.fromiter((k for v, _ in targets for k in v), np.int64, int(lens.sum()))
    coef = np.fromiter((c for v, _ in targets for c in v.values()), np.int64, int(lens.sum())) % P
    moved = np.zeros(len(targets), np.bool_)
    unsure = np.zeros(len(targets), np.bool_)
    np.logical_or.at(unsure, owner, tainted[var])
    for s_i in range(x.shape[0]):
        acc = np.zeros(len(targets), np.int64)
        np.add.at(acc, owner, coef * x[s_i, var] % P)
        moved |= acc % P != 0
    out: _I64 = np.flatnonzero(~moved | unsure)
    return out


def solve_system(
    rows: sparse.csr_matrix,
    rhs: _I64,
    targets: list[tuple[dict[int, int], int]],
    max_fill: int = 3_000_000,
    max_terms: int = 1_000_000,
    samples: int = 2,
    seed: int = 20261202,
) -> SystemSolution:
    """Values of the ``targets`` (``(variable -> coefficient, constant)``: the target is
    ``constant + sum coef * x``) that ``rows @ x = rhs`` determines, exactly (modulo :data:`P`).

    1. *Peeling*: a row with one unknown solves it; a variable held by one row only can absorb that
       row whatever the others are, so the row constrains nothing else and is set aside (a target
       holding the variable is rewritten through the row: ``t - (t_v / a_v) row``).
    2. The rest (the *core*) splits into independent blocks, each reduced to echelon form; a target
       is determined when every block's part of it reduces to zero."""
    out = SystemSolution()
    m = rows.tocsr().astype(np.int64)
    m.sum_duplicates()
    m.data %= P
    m.eliminate_zeros()
    n_rows, n_vars = m.shape
    indptr, indices, data = m.indptr, m.indices.astype(np.int64), m.data
    csc = m.tocsc()
    cptr, cidx, cdat = csc.indptr, csc.indices.astype(np.int64), csc.data
    rest = rhs.astype(np.int64) % P
    state = np.zeros(n_vars, np.int8)  # 0 live, 1 solved, 2 set aside with its row
    value = np.zeros(n_vars, np.int64)
    live_row = np.ones(n_rows, np.bool_)
    cnt = np.diff(indptr).astype(np.int64)
    deg = np.diff(cptr).astype(np.int64)
    aside_order = np.full(n_vars, -1, np.int64)
    aside_row = np.full(n_vars, -1, np.int64)
    empty = cnt == 0
    live_row[empty] = False
    out.inconsistent += int(np.count_nonzero(rest[empty]))
    # Singletons to a fixpoint (solving never frees a variable: a singleton row holds no other
    # live one), then free variables to a fixpoint (setting a row aside never makes a singleton).
    while True:
        sing = np.flatnonzero(live_row & (cnt == 1))
        if sing.size == 0:
            break
        r_of, pos = _gather(indptr, sing)
        v_all = indices[pos]
        keep = state[v_all] == 0
        rs, vs, cs = sing[r_of[keep]], v_all[keep], data[pos[keep]]
        uv, first = np.unique(vs, return_index=True)
        x = rest[rs[first]] * _inverse(cs[first]) % P
        state[uv], value[uv] = 1, x
        live_row[rs] = False
        dup = np.ones(rs.size, np.bool_)
        dup[first] = False
        if dup.any():  # two singleton rows of one variable must agree
            out.inconsistent += int(np.count_nonzero((rest[rs[dup]] - cs[dup] * value[vs[dup]]) % P))
        out.peeled += int(uv.size)
        c_of, cpos = _gather(cptr, uv)
        r2 = cidx[cpos]
        ok = live_row[r2]
        r2, vv, cc = r2[ok], uv[c_of[ok]], cdat[cpos[ok]]
        np.subtract.at(rest, r2, cc * value[vv] % P)
        rest[r2] %= P
        np.subtract.at(cnt, r2, 1)
        done = np.unique(r2[cnt[r2] == 0])
        live_row[done] = False
        out.inconsistent += int(np.count_nonzero(rest[done]))
    step = 0
    rounds: list[tuple[_I64, _I64]] = []  # (variables set aside, their rows) per step
    while True:
        free = np.flatnonzero((state == 0) & (deg == 1))
        if free.size == 0:
            break
        c_of, cpos = _gather(cptr, free)
        r = cidx[cpos]
        ok = live_row[r]
        r, fv = r[ok], free[c_of[ok]]
        ur, first = np.unique(r, return_index=True)
        chosen = fv[first]
        state[chosen] = 2
        aside_order[chosen] = step
        aside_row[chosen] = ur
        rounds.append((chosen, ur))
        live_row[ur] = False
        out.eliminated += int(ur.size)
        _, pos = _gather(indptr, ur)
        w = indices[pos]
        w = w[state[w] == 0]
        np.subtract.at(deg, w, 1)
        step += 1
    out.var_values = {int(v): _signed(int(value[v])) for v in np.flatnonzero(state == 1)}
    # The core: live rows over live variables, solved blocks at a time.
    core = np.flatnonzero(live_row)
    out.core_rows = int(core.size)
    sub = m[core]
    keep_col = state[sub.indices] == 0
    r_of = np.repeat(np.arange(core.size), np.diff(sub.indptr))
    cr, cv, cd = r_of[keep_col], sub.indices[keep_col], (sub.data[keep_col] % P)
    used = np.unique(cv)
    out.core_vars = int(used.size)
    label = np.full(n_vars, -1, np.int64)
    blocks: dict[int, _Block | None] = {}
    if core.size:
        col = np.searchsorted(used, cv)
        g = sparse.csr_matrix((np.ones(cr.size), (cr, col)), shape=(core.size, used.size))
        graph = sparse.bmat([[None, g], [g.T, None]]).tocsr()
        _, lab = csgraph.connected_components(graph, directed=False)
        row_lab, var_lab = lab[: core.size], lab[core.size :]
        label[used] = var_lab
        order_rows = np.argsort(row_lab, kind="stable")
        starts = np.searchsorted(row_lab[order_rows], np.unique(row_lab))
        bounds = np.append(starts, order_rows.size)
        csr_core = sparse.csr_matrix((cd, (cr, cv)), shape=(core.size, n_vars))
        for i in range(starts.size):
            group = order_rows[bounds[i] : bounds[i + 1]]
            lab_i = int(row_lab[group[0]])
            members = sorted(group.tolist(), key=lambda j: csr_core.indptr[j + 1] - csr_core.indptr[j])
            blk: _Block | None = _Block(max_fill)
            for j in members:
                a0, a1 = csr_core.indptr[j], csr_core.indptr[j + 1]
                assert blk is not None
                if not blk.add(dict(zip(csr_core.indices[a0:a1].tolist(), csr_core.data[a0:a1].tolist(), strict=True)), int(rest[core[j]])):
                    blk = None
                    out.abandoned += 1
                    break
            blocks[lab_i] = blk
            out.inconsistent += blk.inconsistent if blk is not None else 0
            n_v = int(np.count_nonzero(var_lab == lab_i))
            if len(members) > out.largest_block[0]:
                out.largest_block = (len(members), n_v)
        out.blocks = starts.size
    # Random vectors of the null space (every published equation unchanged): a target that any of
    # them changes is certainly not determined; only the others are decided exactly below.
    x, tainted = _null_vectors(n_vars, state, label, blocks, rounds, indptr, indices, data, samples, seed)
    cand = _candidates(targets, x, tainted)
    out.checked = int(cand.size)
    row_cache: dict[int, tuple[list[int], list[int], int]] = {}

    def row_of(r: int) -> tuple[list[int], list[int], int]:
        got = row_cache.get(r)
        if got is None:
            got = row_cache[r] = (indices[indptr[r] : indptr[r + 1]].tolist(), data[indptr[r] : indptr[r + 1]].tolist(), int(rhs[r]) % P)
        return got

    for ti in cand.tolist():
        vec, const = targets[ti]
        t = {int(k): int(c) % P for k, c in vec.items() if c % P}
        cst = int(const) % P
        heap = [(int(aside_order[v]), v) for v in t if state[v] == 2]
        heapq.heapify(heap)
        ok = True
        while heap:
            _, v = heapq.heappop(heap)
            f0 = t.get(v)
            if not f0:
                continue
            cols, vals, b = row_of(int(aside_row[v]))
            a_v = vals[cols.index(v)]
            f = f0 * _inv(a_v) % P
            cst = (cst + f * b) % P
            for w, c in zip(cols, vals, strict=True):
                nv = (t.get(w, 0) - f * c) % P
                if nv:
                    if w not in t and state[w] == 2:
                        heapq.heappush(heap, (int(aside_order[w]), w))
                    t[w] = nv
                else:
                    t.pop(w, None)
            if len(t) > max_terms:
                ok = False
                out.undecided += 1
                break
        if not ok:
            continue
        parts: dict[int, dict[int, int]] = {}
        for w, c in t.items():
            if state[w] == 1:
                cst = (cst + c * int(value[w])) % P
            elif label[w] < 0:  # in no live row: free
                ok = False
                break
            else:
                parts.setdefault(int(label[w]), {})[w] = c
        if not ok:
            continue
        for lab_i, part in parts.items():
            blk2 = blocks.get(lab_i)
            if blk2 is None:
                out.undecided += 1
                ok = False
                break
            left, val = blk2.reduce(dict(part), 0)
            if left:
                ok = False
                break
            cst = (cst - val) % P
        if ok:
            out.values[ti] = _signed(cst)
    return out
