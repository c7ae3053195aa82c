"""Cell suppression of the whole release (space x category x time as one system), audited exactly
against linear attacks by certificates.

The release publishes each level at one grain, grains getting finer going up (tract by week,
neighborhood by day, borough and city by hour). A *segment* is a run of levels sharing a grain.
Every hidden cell must carry a **certificate**: a perturbation of the hidden cells that changes it
and leaves every published number unchanged. A linear attacker (any combination of released
numbers: differences of windows, grains, parents, categories, boxes) then cannot determine it,
because two worlds that differ in that cell publish the same numbers.

* Within one bin of a segment, the cells form the classic two-dimensional table (unit tree x
  categories with their ``"*"`` totals). Its equations form a graph whose edges are the hidden
  cells (:func:`app.engine.privacy._bridges` explains why); a cycle of hidden cells through a cell
  is a perturbation that keeps every sum of that bin, and the parent level's cells (summed to this
  grain, treated as known, which only makes the attacker stronger) are never touched.
* The level below a segment is published at a coarser grain and sums this segment's cells over
  its bins (a tract-week is seven neighborhood-days' worth of its events). A single-bin cycle would
  change that sum, so a segment with a coarser level below it needs a cycle that is hidden in
  **two bins of the same coarser bin** (a *pair*: Monday and Tuesday of a week, hours 0 and 1 of a
  day), used with opposite signs: every sum over the pair is unchanged.
* Realised on events: all of a certificate's changes happen in one hour, in one tract per unit,
  so every published cell of every other level keeps its count.

Complementary suppression hides the cheapest cells (by count; a zero costs a little, hiding one
is allowed) that close such a cycle, re-audits, and repeats to a fixpoint. Pairs are fixed blocks
of the calendar (not of the data), so a bin's cells are suppressed the same whatever window is
asked later. What this does not cover: bounds (counts are non-negative, so a hidden cell can be
bounded; the group rule keeps every line's hidden sum at 0 or >= k) and differences between two
snapshots (a late event changes a published cell; see the README).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
import polars as pl
import structlog
from scipy import sparse
from scipy.sparse import csgraph

from app.data.geography import LEVELS
from app.engine.bins import ALL_CATEGORIES
from app.engine.grains import bin_expr, bin_range, check_grains, floor_bin, next_bin
from app.engine.layers import aggregate
from app.engine.privacy import _bridges, _cube_graph, _CubeGraph

__all__ = ["ZERO_COST", "UnprotectedCells", "segments", "suppress_layers"]

log = structlog.get_logger(__name__)
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]
_F64 = npt.NDArray[np.float64]
#: What hiding a zero cell costs in the cheapest-cycle search (a count of 1 costs 1).
ZERO_COST = 2.0
_KEYS = ["level", "unit_id", "parent_id", "category"]
_MAX_ROUNDS = 50


class UnprotectedCells(RuntimeError):  # noqa: N818  # a condition, named for what it reports
    """Some withheld cells of a release have no certificate at these grains (nothing is published)."""

    def __init__(self, message: str, grains: Mapping[str, str]) -> None:
        super().__init__(message)
        self.grains = dict(grains)


def segments(levels: Sequence[str], grains: Mapping[str, str]) -> list[tuple[list[str], str]]:
    """Runs of consecutive levels that share a grain, finest level first."""
    out: list[tuple[list[str], str]] = []
    for level in levels:
        if out and out[-1][1] == grains[level]:
            out[-1][0].append(level)
        else:
            out.append(([level], grains[level]))
    return out


def suppress_layers(
    layers: pl.DataFrame, units: pl.DataFrame, grains: Mapping[str, str], k: int, tz: str, levels: Sequence[str] = LEVELS
) -> pl.DataFrame:
    """The layers (:func:`app.engine.layers.layer_cells`) with ``count`` null where withheld and
    ``suppressed``; zero cells the audit had to hide are added as rows (count null). ``units``:
    ``level, unit_id, parent_id`` of every unit (zero cells of siblings can be hidden too)."""
    present = [lvl for lvl in levels if lvl in set(layers["level"].unique().to_list())]
    grains = check_grains(grains, present)
    out = []
    aliases: list[tuple[str, str, str]] = []  # (level, parent level, grain) of only-child cells
    segs = segments(present, grains)
    for i, (seg_levels, grain) in enumerate(segs):
        top = present.index(seg_levels[-1])
        parent = present[top + 1] if top + 1 < len(present) else None
        below = segs[i - 1][1] if i > 0 else None
        cells = layers.filter(pl.col("level").is_in(seg_levels))
        pinned = None
        if parent is not None:
            pinned = aggregate(layers.filter(pl.col("level") == parent), grain, tz).with_columns(parent_id=pl.lit(None, pl.String))
            only = _only_children(units, seg_levels[-1])
            cells = cells.filter(~((pl.col("level") == seg_levels[-1]) & pl.col("unit_id").is_in(only.implode())))
            aliases.append((seg_levels[-1], parent, grain))
        order = [*seg_levels, *([parent] if parent else [])]
        # Every sibling's zero is offered in every block, so a block's release depends on that
        # block alone (offering them only where needed, and all of them on a retry, made one hard
        # block anywhere change the others).
        done, unresolved = _suppress_segment(cells, pinned, order, units, k, grain, below, tz, everyone=True)
        if unresolved:
            raise UnprotectedCells(f"privacy audit: {unresolved} withheld cells of {'+'.join(order)}@{grain} cannot be protected", grains)
        out.append(done)
    released = pl.concat(out, how="vertical_relaxed") if out else layers.with_columns(suppressed=pl.lit(False))
    for level, parent, grain in reversed(aliases):  # coarsest first: an only child of an only child needs its parent's rows
        released = pl.concat([released, _aliased(released, units, level, parent, grain, tz)], how="vertical_relaxed")
    return released


def _only_children(units: pl.DataFrame, level: str) -> pl.Series:
    """Units of ``level`` that are their parent's only child."""
    kids = units.filter(pl.col("level") == level)
    return kids.filter(pl.len().over("parent_id") == 1)["unit_id"]


def _aliased(released: pl.DataFrame, units: pl.DataFrame, level: str, parent: str, grain: str, tz: str) -> pl.DataFrame:
    """Cells of the units that are their parent's only child: the parent's released cells summed
    to the child's grain (withheld when any part is). Such a cell *is* its parent's sum, so the
    child adds no equation; publishing it separately would have to be audited against the
    parent's time sums, which no certificate of the child's own segment can cover."""
    only = units.filter((pl.col("level") == level) & pl.col("unit_id").is_in(_only_children(units, level).implode()))
    if only.height == 0:
        return released.clear()
    up = released.filter((pl.col("level") == parent) & pl.col("unit_id").is_in(only["parent_id"].implode()))
    summed = aggregate(up.with_columns(parent_id=pl.lit(None, pl.String)), grain, tz)
    mapping = only.select(pl.col("parent_id").alias("unit_id"), child=pl.col("unit_id"))
    out = summed.join(mapping, on="unit_id").with_columns(level=pl.lit(level), parent_id=pl.col("unit_id"), unit_id=pl.col("child"))
    return out.select(released.columns)


def _blocks(frame: pl.DataFrame, grain: str, below: str, tz: str) -> pl.DataFrame:
    """Every calendar bin of the frame's span with its pair block: ``bin_start, block``.

    Bins of one coarser ``below`` bin are numbered 0, 1, ... and paired (0, 1), (2, 3), ...; an odd
    last one joins the block before it (three bins, three pairs)."""
    lo, hi = frame["bin_start"].min(), frame["bin_start"].max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    starts = bin_range(floor_bin(lo, below, tz), next_bin(hi, grain, tz), grain, tz)
    bins = pl.DataFrame({"bin_start": starts}, schema={"bin_start": pl.Datetime("us", "UTC")})
    bins = bins.with_columns(_coarse=bin_expr("bin_start", below, tz))
    bins = bins.with_columns(_i=pl.col("bin_start").rank("ordinal").over("_coarse").cast(pl.Int64) - 1, _n=pl.len().over("_coarse"))
    half = pl.max_horizontal(pl.min_horizontal(pl.col("_i") // 2, pl.col("_n") // 2 - 1), pl.lit(0))
    return bins.select("bin_start", block=pl.struct("_coarse", half).rank("dense").cast(pl.Int64))


def _with_siblings(frame: pl.DataFrame, units: pl.DataFrame, order: list[str], k: int, everyone: bool = False) -> pl.DataFrame:
    """Zero rows for the other children of a parent cell (per category and bin) that has exactly
    one child with a count in 1..k-1, top down: that child's cycle must pass through a sibling,
    and a sibling's zero is the cheapest one to hide. (With two or more small children the cycle
    exists among them; with none there is nothing to protect.)"""
    for level, child in zip(order[:0:-1], order[-2::-1], strict=True):
        kids = units.filter(pl.col("level") == child).select(unit_id="unit_id", parent_id="parent_id")
        small = frame.filter((pl.col("level") == child) & pl.col("count").is_between(1, k - 1))
        lonely = small.group_by("parent_id", "category", "bin_start").len().filter(pl.col("len") == 1).drop("len")
        parents = frame.filter((pl.col("level") == level) & (pl.col("count") > 0)).select(
            pl.col("unit_id").alias("parent_id"), "category", "bin_start"
        )
        if not everyone:  # ``everyone``: every non-zero parent cell (the retry when a cycle could not be closed)
            parents = parents.join(lonely, on=["parent_id", "category", "bin_start"], how="semi")
        spawned = parents.join(kids, on="parent_id").with_columns(level=pl.lit(child), count=pl.lit(0, pl.Int64), locked=pl.lit(False))
        totals = (
            spawned.select("unit_id", "parent_id", "bin_start", "level", "count", "locked")
            .unique()
            .with_columns(category=pl.lit(ALL_CATEGORIES))
        )  # a unit with a category cell needs its "*" cell in the audit's equations
        existing = frame.filter(pl.col("level") == child).select("unit_id", "category", "bin_start")
        spawned = pl.concat([spawned, totals.select(spawned.columns)]).unique(["unit_id", "category", "bin_start"])
        spawned = spawned.join(existing, on=["unit_id", "category", "bin_start"], how="anti")
        frame = pl.concat([frame, spawned.select(frame.columns)])
    return frame


def _suppress_segment(
    cells: pl.DataFrame,
    pinned: pl.DataFrame | None,
    order: list[str],
    units: pl.DataFrame,
    k: int,
    grain: str,
    below: str | None,
    tz: str,
    everyone: bool = False,
) -> tuple[pl.DataFrame, int]:
    """Suppress one segment (and say how many hidden cells no cycle could protect). With a coarser level ``below``, a cell is hidden in every bin of its
    pair block or in none: a cycle of hidden keys is then hidden in both bins of each pair, the
    certificate the module docstring asks for, and the audit runs once per block on block sums."""
    frame = cells.with_columns(locked=pl.lit(False))
    if pinned is not None:
        frame = pl.concat([frame, pinned.with_columns(locked=pl.lit(True)).select(frame.columns)])
    if frame.height == 0:
        return cells.with_columns(suppressed=pl.lit(False)), 0
    frame = _with_siblings(frame, units, order, k, everyone)
    blocks = _blocks(frame, grain, below, tz) if below is not None else frame.select("bin_start").unique().with_row_index("block")
    # One 64-bit key per (level, unit, parent, category): joins and sorts on it instead of four
    # strings (a collision among a few million keys has odds of about 1e-7).
    frame = frame.join(blocks.with_columns(pl.col("block").cast(pl.Int64)), on="bin_start", how="left").with_columns(
        _k=pl.struct(_KEYS).hash(seed=3)
    )
    primary = pl.col("count").is_between(1, k - 1) & ~pl.col("locked")
    block_cube = (
        frame.group_by("_k", "block")
        .agg(
            *(pl.col(c).first() for c in _KEYS),
            pl.col("count").sum(),
            pl.col("locked").first(),
            _primary=primary.any(),
            _first=pl.col("bin_start").min(),
        )
        .with_columns(bin_start=pl.col("_first").min().over("block"))
        .sort("block", "_k")
    )
    g = _cube_graph(block_cube.select(*_KEYS, "bin_start", "count"), order)
    if below is not None:
        _keep_rests_in_every_bin(g, frame, block_cube)
    locked = block_cube["locked"].to_numpy()
    hidden: _BOOL = block_cube["_primary"].to_numpy().copy()
    t0 = time.perf_counter()
    unresolved = audit_blocks(g, hidden, locked, k, label=f"{'+'.join(order)}@{grain}")
    log.debug("privacy.segment", segment=f"{'+'.join(order)}@{grain}", cells=block_cube.height, seconds=round(time.perf_counter() - t0, 3))
    flags = block_cube.select("_k", "block", suppressed=pl.Series(hidden))
    out = frame.filter(~pl.col("locked")).join(flags, on=["_k", "block"], how="left")
    if below is not None:  # hidden keys are hidden in every bin of the block, zeros included
        keys = block_cube.filter(pl.Series(hidden)).select("_k", "block", *_KEYS)
        grid = keys.join(blocks, on="block").join(out.select("_k", "bin_start", "count"), on=["_k", "bin_start"], how="left")
        grid = grid.filter(pl.col("count").is_null() & pl.col("level").is_in(order[: len(order) - (pinned is not None)]))
        out = pl.concat(
            [out, grid.with_columns(count=pl.lit(0, pl.Int64), locked=pl.lit(False), suppressed=pl.lit(True)).select(out.columns)]
        )
    out = out.filter((pl.col("count") > 0) | pl.col("suppressed"))  # zeros stay implicit unless hidden
    out = out.with_columns(count=pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count")))
    return out.select(*cells.columns, "suppressed"), unresolved


def _keep_rests_in_every_bin(g: _CubeGraph, frame: pl.DataFrame, block_cube: pl.DataFrame) -> None:
    """Keep a rest unknown of a block only when it is positive in every bin of the block (a pair
    certificate moves it in both bins)."""
    if g.rest_end1.size == 0:
        return
    kids = (
        frame.filter(pl.col("parent_id").is_not_null())
        .group_by(pl.col("parent_id").alias("unit_id"), "category", "bin_start")
        .agg(_kids=pl.col("count").sum())
    )
    per_bin = frame.join(kids, on=["unit_id", "category", "bin_start"], how="left").with_columns(
        _rest=pl.col("count") - pl.col("_kids").fill_null(0)
    )
    has_kids = frame.filter(pl.col("parent_id").is_not_null())["parent_id"].unique()
    always = per_bin.filter(pl.col("unit_id").is_in(has_kids.implode())).group_by("_k", "block").agg(_ok=(pl.col("_rest") > 0).all())
    ok = block_cube.select("_k", "block").join(always, on=["_k", "block"], how="left")["_ok"].fill_null(False)
    keep = ok.to_numpy()[g.rest_end1]
    g.rest_end1, g.rest_end2 = g.rest_end1[keep], g.rest_end2[keep]
    g.rest_bin, g.rest_jitter = g.rest_bin[keep], g.rest_jitter[keep]


def audit_blocks(g: _CubeGraph, hidden: _BOOL, locked: _BOOL, k: int, label: str = "") -> int:
    """Complementary suppression to a fixpoint (in place): the group rule, then while a hidden
    non-zero cell is a bridge of its block's graph, close a cheapest cycle through it. Returns how
    many hidden cells are left without a cycle (0: every withheld cell is protected).

    Hidden zeros left on no cycle are published at the end: published numbers determine them
    already (a zero parent whose children are all absent, say), and a bridge is on no cycle, so
    publishing it takes no certificate from any other cell and keeps each group's hidden sum."""
    n = g.count.shape[0]
    rows = np.arange(n, dtype=np.int64)
    rr = g.rest_end1.astype(np.int64)
    f = _Frames(rows, rows, g.bin.astype(np.int64), rr, rr, g.bin[rr].astype(np.int64), 3 * n + int(g.bin.max()) + 1)
    _group_rule(g, hidden, locked, k)
    open_rows = _nonzero(g, _uncertified(g, hidden, f))
    for _ in range(_MAX_ROUNDS):
        if open_rows.size == 0:
            break
        before = int(hidden.sum())
        _certify(g, hidden, locked, f, open_rows)
        _group_rule(g, hidden, locked, k)
        stalled = int(hidden.sum()) == before
        open_rows = _nonzero(g, _uncertified(g, hidden, f))
        if stalled:
            break
    if open_rows.size:
        log.info("privacy.audit_unresolved", cells=int(open_rows.size), segment=label)
    loose = _uncertified(g, hidden, f)
    hidden[loose[g.count[loose] == 0]] = False
    return int(open_rows.size)


def _nonzero(g: _CubeGraph, rows: _I64) -> _I64:
    out: _I64 = rows[g.count[rows] != 0]
    return out


class _Frames:
    """Certification frames: a single bin, or a pair of bins of one block. Row ``r1[i]`` (in bin
    ``a``) and ``r2[i]`` (the same key in bin ``b``) form edge ``i`` of frame ``fid[i]``; node ids
    are offset per frame so frames are disjoint graphs."""

    def __init__(self, r1: _I64, r2: _I64, fid: _I64, rest1: _I64, rest2: _I64, rest_fid: _I64, span: int) -> None:
        self.r1, self.r2, self.fid = r1, r2, fid
        self.rest1, self.rest2, self.rest_fid = rest1, rest2, rest_fid
        self.span = span


def _edges(g: _CubeGraph, f: _Frames) -> tuple[_I64, _I64, _I64, _I64]:
    """Frame-offset endpoints ``(u, v)`` of the cell edges, then of the rest edges (the graph of
    the frame's first bin)."""
    off = f.fid * f.span
    rest_row = np.full(g.count.shape[0], -1, np.int64)
    rest_row[g.rest_end1] = np.arange(g.rest_end1.shape[0])
    ri = rest_row[f.rest1]
    roff = f.rest_fid * f.span
    return g.end1[f.r1] + off, g.end2[f.r1] + off, g.rest_end1[ri] + roff, g.rest_end2[ri] + roff


def _uncertified(g: _CubeGraph, hidden: _BOOL, f: _Frames) -> _I64:
    """Hidden rows that no frame certifies (in no frame on a cycle of hidden pairs)."""
    cu, cv, ru, rv = _edges(g, f)
    live = hidden[f.r1] & hidden[f.r2]
    eu = np.concatenate([cu[live], ru])
    ev = np.concatenate([cv[live], rv])
    certified = np.zeros(g.count.shape[0], np.bool_)
    if eu.size:
        nodes, inverse = np.unique(np.concatenate([eu, ev]), return_inverse=True)
        m = eu.shape[0]
        bridge = _bridges(nodes.shape[0], inverse[:m], inverse[m:])[: int(live.sum())]
        good = np.flatnonzero(live)[~bridge]
        certified[f.r1[good]] = True
        certified[f.r2[good]] = True
    out: _I64 = np.flatnonzero(hidden & ~certified)
    return out


def _cost(g: _CubeGraph, hidden: _BOOL, rows: _I64) -> _F64:
    c = np.where(g.count[rows] > 0, g.count[rows].astype(np.float64), ZERO_COST) + 1e-3 * g.jitter[rows]
    out: _F64 = np.where(hidden[rows], 1e-6 * (1 + g.jitter[rows]), c)
    return out


def _certify(g: _CubeGraph, hidden: _BOOL, locked: _BOOL, f: _Frames, open_rows: _I64) -> None:
    """For each uncertified row, hide the cheapest cells (in both bins of a frame) that put it on a
    cycle of hidden pairs: a shortest path between its two equations within its frame.

    Paths are searched inside the connected piece of the frame's graph that holds the row (a
    sibling group, a borough), so each search is small."""
    cu, cv, ru, rv = _edges(g, f)
    is_open = np.zeros(g.count.shape[0], np.bool_)
    is_open[open_rows] = True
    done = np.zeros(g.count.shape[0], np.bool_)
    usable = np.flatnonzero(~locked[f.r1] & ~locked[f.r2])
    touched = usable[is_open[f.r1[usable]] | is_open[f.r2[usable]]]
    if touched.size == 0:
        return
    eu = np.concatenate([cu[usable], ru])
    ev = np.concatenate([cv[usable], rv])
    edge = np.concatenate([usable, np.full(ru.shape[0], -1, np.int64)])
    nodes, inverse = np.unique(np.concatenate([eu, ev]), return_inverse=True)
    m = eu.shape[0]
    u, v = inverse[:m], inverse[m:]
    graph = sparse.coo_matrix((np.ones(m), (u, v)), shape=(nodes.shape[0],) * 2).tocsr()
    _, comp = csgraph.connected_components(graph, directed=False)
    edge_comp = comp[u]
    by_comp = np.argsort(edge_comp, kind="stable")
    cstart = np.searchsorted(edge_comp[by_comp], np.arange(int(comp.max()) + 2))
    pos_of = np.full(f.r1.shape[0], -1, np.int64)
    pos_of[usable] = np.arange(usable.shape[0])
    for target in touched[np.argsort(g.rank[f.r1[touched]], kind="stable")].tolist():
        a, b = int(f.r1[target]), int(f.r2[target])
        if done[a] and done[b]:
            continue
        c = int(edge_comp[pos_of[target]])
        sub = by_comp[cstart[c] : cstart[c + 1]]
        sub = sub[edge[sub] != target]
        rows = edge[sub]
        cell = rows >= 0
        w = np.full(sub.shape[0], 1e-6)
        r1, r2 = f.r1[rows[cell]], f.r2[rows[cell]]
        w[cell] = _cost(g, hidden, r1) + np.where(r1 == r2, 0.0, _cost(g, hidden, r2))
        local, inv = np.unique(np.concatenate([u[sub], v[sub], [u[pos_of[target]], v[pos_of[target]]]]), return_inverse=True)
        k = sub.shape[0]
        path = _cheapest_path(local.shape[0], inv[:k], inv[k : 2 * k], w, int(inv[2 * k]), int(inv[2 * k + 1]))
        if path is None:
            continue
        hidden[a] = hidden[b] = True
        for idx in path:
            row = int(rows[idx])
            if row >= 0:
                hidden[f.r1[row]] = hidden[f.r2[row]] = True
        done[a] = done[b] = True


def _cheapest_path(n_nodes: int, u: _I64, v: _I64, w: _F64, source: int, target: int) -> list[int] | None:
    """Edge indices of the cheapest path from ``source`` to ``target`` (None when unreachable)."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    by_pair = np.lexsort((w, hi, lo))
    pair_key = lo[by_pair] * n_nodes + hi[by_pair]
    best = by_pair[np.r_[True, pair_key[1:] != pair_key[:-1]]] if by_pair.size else by_pair
    graph = sparse.coo_matrix((w[best], (lo[best], hi[best])), shape=(n_nodes, n_nodes)).tocsr()
    _, pred = csgraph.dijkstra(graph, directed=False, indices=source, return_predecessors=True)
    if pred[target] < 0:
        return None
    lookup = dict(zip((lo[best] * n_nodes + hi[best]).tolist(), best.tolist(), strict=True))
    out, step = [], target
    while step != source:
        back = int(pred[step])
        out.append(lookup[min(step, back) * n_nodes + max(step, back)])
        step = back
    return out


def _gather(starts: _I64, order: _I64, groups: _I64) -> tuple[_I64, _I64]:
    """Memberships of ``groups`` (CSR ``starts``/``order``) and each one's position in ``groups``."""
    lens = starts[groups + 1] - starts[groups]
    total = int(lens.sum())
    offsets = np.repeat(starts[groups] - (np.cumsum(lens) - lens), lens)
    out: _I64 = order[offsets + np.arange(total)]
    return out, np.repeat(np.arange(groups.shape[0]), lens)


def _group_rule(g: _CubeGraph, hidden: _BOOL, locked: _BOOL, k: int) -> None:
    """Hide cells (in place) until every group with a visible total is safe: no hidden child, or
    at least two hidden "children" (a positive rest counts as one) whose sum as the public sees it
    is 0 or at least ``k``; the smallest visible unlocked child is hidden next (or the total, when
    every child is hidden and the total is not locked). Groups that cannot be fixed are left.

    Each pass looks only at the groups a change of the previous pass touched."""
    n = g.count.shape[0]
    n_groups = 2 * n
    by_group = np.argsort(g.group, kind="stable")
    gstart = np.searchsorted(g.group[by_group], np.arange(n_groups + 1)).astype(np.int64)
    by_child = np.argsort(g.child, kind="stable")
    cstart = np.searchsorted(g.child[by_child], np.arange(n + 1)).astype(np.int64)
    stuck = np.zeros(n_groups, np.bool_)
    dirty = np.flatnonzero(g.valid).astype(np.int64)
    while dirty.size:
        mem, local = _gather(gstart, by_group, dirty)
        kid = g.child[mem]
        hid_c = hidden[kid]
        n_hid = np.bincount(local[hid_c], minlength=dirty.size)
        vis_sum = np.bincount(local[~hid_c], weights=g.count[kid[~hid_c]], minlength=dirty.size)
        seen = g.count[g.total[dirty]] - vis_sum
        n_eff = n_hid + (g.rest[dirty] > 0)
        bad = ~hidden[g.total[dirty]] & (n_hid >= 1) & ((n_eff == 1) | ((seen >= 1) & (seen <= k - 1))) & ~stuck[dirty]
        if not bad.any():
            return
        sel = bad[local] & ~hid_c & ~locked[kid]
        best = np.full(dirty.size, n, np.int64)
        np.minimum.at(best, local[sel], g.rank[kid[sel]])
        bad_at = np.flatnonzero(bad)
        picks = best[bad_at]
        newly = g.by_rank[picks[picks < n]]
        no_child = dirty[bad_at[picks == n]]
        total_ok = ~locked[g.total[no_child]]
        stuck[no_child[~total_ok]] = True
        changed = np.concatenate([newly, g.total[no_child[total_ok]]]).astype(np.int64)
        hidden[changed] = True
        as_child, _ = _gather(cstart, by_child, np.unique(changed))
        touched = np.concatenate([g.group[as_child], changed, changed + n])
        dirty = np.unique(touched[g.valid[touched]])


assert ALL_CATEGORIES == "*"
