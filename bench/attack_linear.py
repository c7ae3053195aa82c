"""The general linear attacker's decision: which withheld cells lie in the span of the released
rows, and their values, exactly (arithmetic modulo the prime ``2**31 - 1``; published values are
far smaller, so a solved value is read back as the integer nearest zero).

Steps: *peeling* (a row with one unknown class solves it; repeat), then the remaining rows split into
independent blocks (connected components of rows and classes), each reduced to reduced row-echelon
form by sparse elimination (pivot: the row's column in the fewest basis rows). A target is
determined when every block's part of it reduces to zero; its value is then the same combination of
the rows' values. A block whose elimination outgrows ``max_fill`` stored entries is abandoned: its
targets count as undecided (the attacker is then sound but incomplete, and says so).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["P", "Solution", "solve"]

P = 2_147_483_647
_I64 = npt.NDArray[np.int64]


@dataclass
class Solution:
    """Determined targets (cell id -> value) and what the solver could not finish."""

    values: dict[int, int] = field(default_factory=dict)
    undecided: int = 0  # targets in abandoned blocks
    blocks: int = 0
    largest_block: tuple[int, int] = (0, 0)  # (rows, classes)
    abandoned: int = 0
    peeled: int = 0


def _signed(v: int) -> int:
    v %= P
    return v - P if v > P // 2 else v


def _peel(rows: sparse.csr_matrix, rhs: _I64) -> tuple[dict[int, int], npt.NDArray[np.bool_]]:
    """Solve singleton rows repeatedly. Returns class values and which rows are used up."""
    csc = rows.tocsc()
    n_rows = rows.shape[0]
    unknown = np.diff(rows.indptr).astype(np.int64)
    rest = rhs.astype(np.int64).copy()
    done = np.zeros(n_rows, np.bool_)
    known: dict[int, int] = {}
    queue = deque(np.flatnonzero(unknown == 1).tolist())
    while queue:
        r = queue.popleft()
        if done[r] or unknown[r] != 1:
            continue
        cols = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
        free = [int(c) for c in cols if int(c) not in known]
        if len(free) != 1:
            continue
        c = free[0]
        known[c] = int(rest[r])
        for r2 in csc.indices[csc.indptr[c] : csc.indptr[c + 1]]:
            unknown[r2] -= 1
            rest[r2] -= known[c]
            if unknown[r2] == 1:
                queue.append(int(r2))
            elif unknown[r2] == 0:
                done[r2] = True
    done |= unknown == 0
    return known, done


class _Block:
    """Sparse reduced row-echelon basis of one block, modulo P."""

    def __init__(self, max_fill: int) -> None:
        self.basis: dict[int, tuple[dict[int, int], int]] = {}  # pivot -> (row, rhs)
        self.holders: dict[int, set[int]] = {}  # column -> pivots whose row holds it
        self.fill = 0
        self.max_fill = max_fill

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


def solve(rows: sparse.csr_matrix, rhs: _I64, targets: sparse.csr_matrix, max_fill: int = 3_000_000) -> Solution:
    """Values of the ``targets`` (0/1 rows over the same classes) the released ``rows`` determine."""
    out = Solution()
    known, done = _peel(rows, rhs)
    out.peeled = len(known)
    live = np.flatnonzero(~done)
    residual = rows[live].tocsr().astype(np.int64)
    residual_rhs = rhs[live].copy()
    # Substitute the peeled classes and drop them.
    if known:
        kc = np.fromiter(known.keys(), np.int64)
        kv = np.zeros(rows.shape[1], np.int64)
        kv[kc] = np.fromiter(known.values(), np.int64)
        residual_rhs -= np.rint(residual @ kv).astype(np.int64)
        mask = np.ones(rows.shape[1])
        mask[kc] = 0
        residual = (residual @ sparse.diags(mask.astype(np.int64), dtype=np.int64)).tocsr()
        residual.eliminate_zeros()
    n_rows, _n_cls = residual.shape
    graph = sparse.bmat([[None, residual], [residual.T, None]]).tocsr()
    _, label = csgraph.connected_components(graph, directed=False)
    row_label, cls_label = label[:n_rows], label[n_rows:]
    by_block: dict[int, list[int]] = {}
    for r in range(n_rows):
        if residual.indptr[r + 1] > residual.indptr[r]:
            by_block.setdefault(int(row_label[r]), []).append(r)
    blocks: dict[int, _Block | None] = {}
    for lab, members in by_block.items():
        members.sort(key=lambda r: residual.indptr[r + 1] - residual.indptr[r])
        block: _Block | None = _Block(max_fill)
        for r in members:
            cols = residual.indices[residual.indptr[r] : residual.indptr[r + 1]]
            vals = residual.data[residual.indptr[r] : residual.indptr[r + 1]]
            assert block is not None
            if not block.add({int(c): int(v) % P for c, v in zip(cols, vals, strict=True)}, int(residual_rhs[r]) % P):
                block = None
                out.abandoned += 1
                break
        blocks[lab] = block
        cls_n = int(np.count_nonzero(cls_label == lab))
        if len(members) > out.largest_block[0]:
            out.largest_block = (len(members), cls_n)
    out.blocks = len(by_block)
    for t in range(targets.shape[0]):
        cols = targets.indices[targets.indptr[t] : targets.indptr[t + 1]]
        value = sum(known.get(int(c), 0) for c in cols)
        parts: dict[int, dict[int, int]] = {}
        for c in cols:
            if int(c) not in known:
                parts.setdefault(int(cls_label[c]), {})[int(c)] = 1
        ok = True
        for lab, part in parts.items():
            blk = blocks.get(lab)
            if lab not in blocks:  # classes in no residual row: free unknowns
                ok = False
                break
            if blk is None:
                out.undecided += 1
                ok = False
                break
            left, val = blk.reduce(dict(part), 0)
            if left:
                ok = False
                break
            value -= val  # reduce() subtracted the combination's value from 0
        if ok:
            out.values[t] = _signed(value)
    return out
