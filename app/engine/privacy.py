"""Release rules and the pieces of them shared across the engine.

Modes (:class:`Policy`):

``none``
    internal analysis; counts leave unchanged.
``suppress``
    cell suppression of the publish-time release (:mod:`app.engine.suppression`): counts
    ``1..k-1`` are withheld (*primary*, default k = 11, the CMS rule) and further cells are
    withheld (*complementary*) so that no withheld count can be recomputed from the published
    totals, parents, category sums or coarser bins. Its exact derivability audit is built on the
    graph of one cube here (:func:`_cube_graph`, :func:`_bridges`).
``dp``
    differential privacy: integer discrete-Laplace noise from OpenDP on every cell of every level,
    post-processed to consistent non-negative integers, with a persisted budget ledger that
    re-serves released bins for free and refuses to overspend
    (:class:`app.engine.ledger.BudgetLedger`). The publish-time release is
    :func:`app.engine.dp_publish.dp_layers` (every level at its grain, per category);
    :func:`dp_release` is the same for one category on one bin grid.

Why suppression is audited exactly
----------------------------------
The release cube of one bin is a two-dimensional table (the unit tree x the categories with their
``"*"`` total). Group rules of thumb ("at least two hidden cells per sum, hidden sum >= k") are not
airtight in two dimensions: a hidden cell bridging two cycles of hidden cells can be solved by a
linear combination of published sums. The audit decides derivability exactly. Its linear system is
a graph: keep the spatial equations (parent = sum of children, per category and ``"*"``), the
category equations of the finest units only (the coarser units' category equations are linear
combinations of these, so the row space is unchanged) and one "rest" unknown per parent cell whose
count exceeds its children's sum (events counted at a parent but in no child, e.g. unlocated events
at the city). Then every unknown appears in at most two equations with opposite signs (after
flipping the signs of the ``"*"`` and category equations), i.e. the coefficient matrix is the
incidence matrix of a graph whose nodes are equations (plus one ground node per bin) and whose
edges are hidden cells. An unknown is determined by the equations exactly when its unit vector is in
the row space, i.e. when no cycle of unknowns runs through it: when it is a *bridge*. Bridges are
found in near-linear time (:func:`_bridges`), so the audit is exact for any component size (no
dense rank test, no size cap).

What the audit does not cover: bounds. Counts are non-negative, so an attacker can still bound a
hidden cell (e.g. by a total minus its visible siblings); the group rule keeps each group's hidden
sum at 0 or >= k, but bounds combined across groups are not audited (that would take one linear
program per cell).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from app.data.geography import LEVELS
from app.engine.bins import ALL_CATEGORIES

__all__ = [
    "Mode",
    "Policy",
    "distribute",
    "dp_epsilon",
    "dp_noise_variance",
    "dp_release",
    "opendp_noise",
    "seeded_noise",
]

Mode = Literal["none", "suppress", "dp"]

_I64 = npt.NDArray[np.int64]
#: Values below which noise is drawn on one thread.
_NOISE_CHUNK = 100_000
_BOOL = npt.NDArray[np.bool_]
_F64 = npt.NDArray[np.float64]


def dp_noise_variance(scale: float) -> float:
    """Variance of the integer discrete Laplace distribution with ``scale`` b (pmf ~ e^{-|x|/b}):
    ``2 e^{-1/b} / (1 - e^{-1/b})^2``; 0 for ``scale <= 0``.

    Shared by :meth:`Policy.noise_variance` (the detector widens its z-scores with it) and the tests
    (which check the noise actually drawn against it)."""
    if scale <= 0:
        return 0.0
    p = math.exp(-1.0 / scale)
    return 2.0 * p / (1.0 - p) ** 2


@dataclass(frozen=True)
class Policy:
    """How numbers are released.

    ``mode``: ``none | suppress | dp``. ``k``: the smallest publishable count under ``suppress``.
    ``epsilon``: privacy loss of one ``dp`` release (of one bin; bins are disjoint, so a release of
    many bins costs ``epsilon`` per instant). ``threshold``: ``dp`` post-thresholding; ``None``
    (default) means off. Thresholding is post-processing, so privacy does not need it, and keeping
    the hierarchy additive forces the mass of sub-threshold cells onto their siblings, which fakes
    hot spots and breaks the additive-noise model the detector uses
    (:meth:`noise_variance`); set it (e.g. to ``k``) only for displays that must not show small
    noisy numbers.
    """

    mode: Mode = "suppress"
    k: int = 11
    epsilon: float = 1.0
    threshold: int | None = None

    def hides(self, col: str) -> pl.Expr:
        """True where ``col`` holds a count this policy withholds on its own (primary suppression).

        ``dp`` counts are already noisy, so nothing is withheld here."""
        if self.mode != "suppress":
            return pl.lit(False)
        return pl.col(col).is_between(1, self.k - 1)

    @property
    def dp_threshold(self) -> int:
        """The effective ``dp`` post-threshold (0: off)."""
        return 0 if self.threshold is None else max(int(self.threshold), 0)

    def noise_scale(self, n_levels: int) -> float:
        """Discrete Laplace scale of ``dp``: one event is in one cell per level, so the L1
        sensitivity of a release over ``n_levels`` levels is ``n_levels``."""
        return n_levels / self.epsilon

    def noise_variance(self, n_levels: int) -> float:
        """Variance of the noise added to each released cell (0 outside ``dp``)."""
        if self.mode != "dp":
            return 0.0
        return dp_noise_variance(self.noise_scale(n_levels))


# ---- suppression -------------------------------------------------------------------------------
def _bridges(n_nodes: int, eu: _I64, ev: _I64) -> _BOOL:
    """Bridges of the undirected multigraph with edges ``(eu[i], ev[i])`` (no self-loops).

    Vectorised, exact and linear-ish: a BFS spanning forest (scipy); a tree edge is a bridge
    unless some non-tree edge has exactly one endpoint in the subtree below it. That count is the
    subtree sum of ``(non-tree endpoints) - 2 (non-tree edges whose lowest common ancestor is
    here)``, with LCAs by binary lifting and subtree sums level by level (BFS trees are shallow).
    Parallel edges are never bridges."""
    from scipy import sparse
    from scipy.sparse import csgraph

    m = eu.shape[0]
    if m == 0:
        return np.zeros(0, np.bool_)
    lo, hi = np.minimum(eu, ev).astype(np.int64), np.maximum(eu, ev).astype(np.int64)
    pairs, first, inverse, multiplicity = np.unique(lo * n_nodes + hi, return_index=True, return_inverse=True, return_counts=True)
    pu, pv = lo[first], hi[first]
    n_pairs = pairs.shape[0]
    shape = (n_nodes + 1, n_nodes + 1)
    _, label = csgraph.connected_components(sparse.coo_matrix((np.ones(n_pairs), (pu, pv)), shape=shape).tocsr(), directed=False)
    roots = np.unique(label[:n_nodes], return_index=True)[1]
    root = n_nodes  # a super-root joined to one node of every component makes the forest one tree
    rows, cols = np.concatenate([pu, np.full(roots.shape[0], root)]), np.concatenate([pv, roots])
    graph = sparse.coo_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=shape).tocsr()
    _, pred = csgraph.breadth_first_order(graph, root, directed=False, return_predecessors=True)
    pred = pred.astype(np.int64)
    pred[root] = root
    dist = csgraph.shortest_path(graph, directed=False, unweighted=True, indices=root)
    depth = np.where(np.isfinite(dist), dist, 0).astype(np.int64)

    child = np.flatnonzero(pred[:n_nodes] != root)
    parent = pred[child]
    tree_pair = np.searchsorted(pairs, np.minimum(parent, child) * n_nodes + np.maximum(parent, child))
    is_tree = np.zeros(n_pairs, np.bool_)
    is_tree[tree_pair] = True
    a, b = pu[~is_tree], pv[~is_tree]
    n_up = max(1, int(depth.max()).bit_length())
    up = [pred]
    for _ in range(n_up):
        up.append(up[-1][up[-1]])
    x, y = np.where(depth[a] >= depth[b], a, b), np.where(depth[a] >= depth[b], b, a)
    diff = depth[x] - depth[y]
    for j in range(n_up + 1):
        jump = ((diff >> j) & 1) == 1
        x[jump] = up[j][x[jump]]
    for j in range(n_up, -1, -1):
        apart = up[j][x] != up[j][y]
        x[apart], y[apart] = up[j][x[apart]], up[j][y[apart]]
    lca = np.where(x == y, x, pred[x])
    cover = np.zeros(n_nodes + 1, np.int64)
    np.add.at(cover, a, 1)
    np.add.at(cover, b, 1)
    np.add.at(cover, lca, -2)
    deepest_first = np.argsort(-depth[:n_nodes], kind="stable")
    for layer in np.split(deepest_first, np.flatnonzero(np.diff(depth[deepest_first])) + 1):
        if layer.size and depth[layer[0]] > 0:
            np.add.at(cover, pred[layer], cover[layer])
    bridge_pair = np.zeros(n_pairs, np.bool_)
    bridge_pair[tree_pair] = (cover[child] == 0) & (multiplicity[tree_pair] == 1)
    out: _BOOL = bridge_pair[inverse]
    return out


@dataclass
class _CubeGraph:
    """Index arrays of one cube: counts, the additive groups and the audit graph's endpoints.

    Groups are numbered by their total cell: spatial group of cell r (r at a level above the finest)
    is ``r``, category group of the ``"*"`` cell r is ``n + r``."""

    count: _I64
    rank: _I64  # position in the deterministic tie-break order (count, level, unit, category, bin)
    by_rank: _I64  # row at each rank
    child: _I64  # child row of each (child, group) membership
    group: _I64  # group of each membership
    total: _I64  # total row of each group id (0..2n-1)
    valid: _BOOL  # group id is a group (a parent cell or a "*" cell)
    rest: _I64  # count of the group's total minus its children's sum (events in no child)
    end1: _I64  # audit-graph endpoints of each cell
    end2: _I64
    rest_end1: _I64  # endpoints of the rest unknowns (always unknown, never published)
    rest_end2: _I64
    bin: _I64  # bin of each cell (bins are independent: no equation spans two)
    rest_bin: _I64
    jitter: _F64  # per-cell tie-breaker in [0, 1) from a hash of its key (window-independent)
    rest_jitter: _F64


def _cube_graph(cube: pl.DataFrame, levels: Sequence[str] | None) -> _CubeGraph:
    present = set(cube["level"].unique().to_list())
    order = list(levels) if levels is not None else [lvl for lvl in LEVELS if lvl in present]
    if not present <= set(order):
        raise ValueError(f"cube levels {sorted(present - set(order))} not in the level order {order}")
    top = len(order) - 1
    if cube.filter((pl.col("level") == order[top]) & pl.col("parent_id").is_not_null()).height:
        raise ValueError(f"inconsistent cube: top-level ({order[top]}) cells have parents; pass the cube's levels")
    frame = cube.with_row_index("_row").with_columns(
        _row=pl.col("_row").cast(pl.Int64),
        _li=pl.col("level").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64),
        _bin=pl.col("bin_start").rank("dense").cast(pl.Int64) - 1,
    )
    n = frame.height
    cells = frame.select("_li", "unit_id", "category", "bin_start", "_row")
    sp = frame.filter((pl.col("_li") < top) & pl.col("parent_id").is_not_null()).select(
        "_row", _li=pl.col("_li") + 1, unit_id=pl.col("parent_id"), category=pl.col("category"), bin_start=pl.col("bin_start")
    )
    sp = sp.join(cells.rename({"_row": "_total"}), on=["_li", "unit_id", "category", "bin_start"], how="left")
    if sp["_total"].null_count():
        raise ValueError("inconsistent cube: a cell's parent cell is missing")
    stars = cells.filter(pl.col("category") == ALL_CATEGORIES).select("_li", "unit_id", "bin_start", _star="_row")
    star_of = frame.select("_row", "_li", "unit_id", "bin_start").join(stars, on=["_li", "unit_id", "bin_start"], how="left").sort("_row")
    if star_of["_star"].null_count():
        raise ValueError(f"inconsistent cube: a unit has category cells but no {ALL_CATEGORIES!r} total")
    count = frame["count"].cast(pl.Int64).to_numpy()
    li = frame["_li"].to_numpy()
    bin_id = frame["_bin"].to_numpy()
    star = star_of["_star"].to_numpy()
    is_star = (frame["category"] == ALL_CATEGORIES).to_numpy()
    sp_total = np.full(n, -1, np.int64)
    sp_total[sp["_row"].to_numpy()] = sp["_total"].to_numpy()

    cat_rows = np.flatnonzero(~is_star)
    sp_rows = np.flatnonzero(sp_total >= 0)
    child = np.concatenate([sp_rows, cat_rows])
    group = np.concatenate([sp_total[sp_rows], n + star[cat_rows]])
    total = np.concatenate([np.arange(n), np.arange(n)])
    valid = np.concatenate([li > 0, is_star])
    sums = np.bincount(group, weights=count[child], minlength=2 * n).astype(np.int64)
    rest = np.where(valid, count[total] - sums, 0)
    if (rest < 0).any():
        raise ValueError("inconsistent cube: children add up to more than their total")
    if (rest[n:] != 0).any():
        raise ValueError(f"inconsistent cube: categories do not add up to {ALL_CATEGORIES!r}")

    # Audit graph nodes: spatial equation of cell r -> r; category equation of finest unit with "*"
    # cell s -> n + s; rest equation of unit with "*" cell s -> 2n + s; ground of bin b -> 3n + b.
    ground = 3 * n + bin_id
    end1 = np.where(sp_total >= 0, sp_total, ground)
    end2 = np.where(li == 0, n + star, np.arange(n))
    with_rest = np.flatnonzero(rest[:n] > 0)
    rest_end1 = with_rest
    rest_end2 = 2 * n + star[with_rest]
    # Tie-break by a hash of the key, not by sorting its strings (several times faster on millions of rows).
    keyed = frame.select("_row", "count", "_li", "bin_start", _h=pl.struct("level", "unit_id", "category").hash(seed=5))
    order_rows = keyed.sort(["count", "_li", "_h", "bin_start"])["_row"].to_numpy()
    rank = np.empty(n, np.int64)
    rank[order_rows] = np.arange(n)
    hashed = frame.select(pl.struct("level", "unit_id", "category", "bin_start").hash(seed=11))[:, 0].to_numpy()
    jitter = (hashed >> np.uint64(11)).astype(np.float64) / 2.0**53
    rest_jitter = ((hashed[with_rest] ^ np.uint64(0x5DEECE66D)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return _CubeGraph(
        count,
        rank,
        order_rows,
        child,
        group,
        total,
        valid,
        rest,
        end1,
        end2,
        rest_end1,
        rest_end2,
        bin_id,
        bin_id[with_rest],
        jitter,
        rest_jitter,
    )


# ---- differential privacy ------------------------------------------------------------------------
def opendp_noise(values: _I64, scale: float) -> _I64:
    """``values`` plus discrete Laplace noise of ``scale`` from OpenDP. OpenDP's exact sampler takes
    ~10 µs a value and releases the GIL, so a long vector is noised in chunks on every core."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=scale)
    workers = max(1, min(os.cpu_count() or 1, values.shape[0] // _NOISE_CHUNK))
    if workers == 1:
        return np.asarray(meas(values.tolist()), dtype=np.int64)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda part: np.asarray(meas(part.tolist()), dtype=np.int64), np.array_split(values, workers * 4)))
    return np.concatenate(parts)


def dp_epsilon(policy: Policy, n_levels: int) -> float:
    """The ε OpenDP accounts for one release over ``n_levels`` levels (L1 sensitivity
    ``n_levels``), as charged by the ledger; equals ``policy.epsilon`` up to float rounding up."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=policy.noise_scale(n_levels))
    return float(meas.map(n_levels))


def seeded_noise(values: _I64, scale: float, seed: int) -> _I64:
    """The same distribution from numpy (difference of two geometrics): reproducible, for tests
    only: a seeded, non-cryptographic generator is no privacy protection."""
    rng = np.random.default_rng(seed)
    p = math.exp(-1.0 / scale)
    size = values.shape[0]
    noise = np.asarray(rng.geometric(1.0 - p, size), np.int64) - np.asarray(rng.geometric(1.0 - p, size), np.int64)
    out: _I64 = values + noise
    return out


def _hierarchy(units: pl.DataFrame) -> tuple[list[str], pl.DataFrame]:
    """Level names and the units frame with missing ancestors filled by per-parent placeholders
    (``"~"`` + the parent's id), so the hierarchy is a tree and every level adds up."""
    cols = list(units.columns)
    if not cols or any(not c.endswith("_id") for c in cols):
        raise ValueError(f"units needs '<level>_id' columns, finest first; got {cols}")
    frame = units.select(cols).unique(cols[0], keep="first").filter(pl.col(cols[0]).is_not_null())
    for i in range(len(cols) - 1, 0, -1):
        above = pl.lit("~") if i == len(cols) - 1 else pl.lit("~") + pl.col(cols[i + 1])
        frame = frame.with_columns(pl.col(cols[i]).fill_null(above))
    return [c.removesuffix("_id") for c in cols], frame


def distribute(children: pl.DataFrame, threshold: int, by: Sequence[str] = ()) -> pl.DataFrame:
    """Integer children adding up exactly to their parent's value ``parent``.

    ``children``: ``unit_id, parent_id, bin_start, noisy, parent`` (and the columns ``by``, which
    also key a parent's value, e.g. ``category``). The parent's value is split in
    proportion to the clipped noisy values (equal shares when all are 0) and rounded by largest
    remainder (ties by unit id), in exact integer arithmetic. With a threshold t >= 1 only children
    with noisy >= t share, and a share below t drops out (its mass goes to its siblings; if none is
    left the largest child takes all), so every child is 0 or >= t."""
    key = ["parent_id", "bin_start", *by]
    frame = children.sort([*key, "unit_id"]).with_columns(w=pl.col("noisy").clip(lower_bound=0).cast(pl.Int64))
    if threshold >= 1:
        frame = frame.with_columns(member=(pl.col("w") >= threshold) & (pl.col("parent") > 0))
    else:
        zero = pl.col("w").sum().over(key) == 0
        frame = frame.with_columns(w=pl.when(zero).then(1).otherwise(pl.col("w")), member=pl.col("parent") > 0)
    largest = (pl.col("w").rank("ordinal", descending=True).over(key) == 1) & (pl.col("parent") > 0)
    if threshold >= 1:
        # a parent >= t whose children are all below t: the largest child takes it all
        frame = frame.with_columns(member=pl.col("member") | (largest & ~pl.col("member").any().over(key)))
        while True:
            weight = pl.when(pl.col("member")).then(pl.col("w")).otherwise(0)
            frame = frame.with_columns(_wsum=weight.sum().over(key))
            small = pl.col("member") & (pl.col("parent") * pl.col("w") < threshold * pl.col("_wsum"))
            frame = frame.with_columns(_drop=small)
            if not frame["_drop"].any():
                break
            keep = pl.col("member") & ~pl.col("_drop")
            tie = pl.when(pl.col("member")).then(pl.col("w")).otherwise(-1).rank("ordinal", descending=True).over(key) == 1
            frame = frame.with_columns(member=keep | (tie & ~keep.any().over(key) & pl.col("member")))
    weight = pl.when(pl.col("member")).then(pl.col("w")).otherwise(0)
    frame = frame.with_columns(_w=pl.when(weight.sum().over(key) == 0).then(pl.col("member").cast(pl.Int64)).otherwise(weight))
    frame = frame.with_columns(_wsum=pl.col("_w").sum().over(key))
    prod = pl.col("parent") * pl.col("_w")
    frame = frame.with_columns(
        _floor=pl.when(pl.col("_wsum") > 0).then(prod // pl.col("_wsum")).otherwise(0),
        _rem=pl.when(pl.col("member") & (pl.col("_wsum") > 0)).then(prod % pl.col("_wsum")).otherwise(-1),
    )
    frame = frame.with_columns(_deficit=pl.col("parent") - pl.col("_floor").sum().over(key))
    frame = frame.sort([*key, "_rem", "unit_id"], descending=[*(False for _ in key), True, False])
    frame = frame.with_columns(_pos=pl.int_range(pl.len()).over(key))
    bump = pl.col("member") & (pl.col("_pos") < pl.col("_deficit"))
    return frame.with_columns(count=pl.col("_floor") + bump.cast(pl.Int64)).drop(
        "w", "member", "_wsum", "_w", "_floor", "_rem", "_deficit", "_pos", "_drop", strict=False
    )


def dp_release(
    counts: pl.DataFrame,
    units: pl.DataFrame,
    bins: Sequence[datetime] | pl.Series,
    policy: Policy,
    rng_seed: int | None = None,
) -> pl.DataFrame:
    """A differentially private release of one category (or ``"*"``) of one city.

    ``counts``: sparse finest-level counts ``unit_id, bin_start, count`` (units or bins not in
    ``units``/``bins`` are ignored: e.g. unlocated events, which no unit below the city holds, are not
    released). ``units``: one row per finest unit with its ancestors, columns ``<level>_id`` finest
    first (the :func:`app.data.geography.tract_parents` frame, or a suffix of it); a missing
    ancestor becomes the placeholder unit ``"~" + parent id``. ``bins``: the bin starts to release.

    The grid is dense (zeros get noise too, or the absence of noise would reveal them). Every cell
    of every level gets OpenDP discrete Laplace noise of scale ``n_levels / epsilon`` (one event is
    in one cell per level). Post-processing (free under DP) then goes top-down: the top clipped at
    0, each level's children split their parent's value in proportion to their clipped noisy values
    with largest-remainder rounding, so every level is non-negative integers adding up exactly to its
    parent; an optional threshold (:attr:`Policy.dp_threshold`) zeroes small children
    (``thresholded``). ``rng_seed`` switches to a seeded numpy generator of the same distribution,
    for tests only.

    Output: ``level, unit_id, parent_id, bin_start, count`` (Int64), ``thresholded`` (Boolean),
    finest level first."""
    if policy.epsilon <= 0:
        raise ValueError("dp needs epsilon > 0")
    levels, tree = _hierarchy(units)
    cols = [f"{lvl}_id" for lvl in levels]
    bin_frame = pl.DataFrame({"bin_start": pl.Series(list(bins), dtype=pl.Datetime("us", "UTC"))}).unique().sort("bin_start")
    sparse = counts.group_by(pl.col("unit_id").alias(cols[0]), "bin_start").agg(count=pl.col("count").sum().cast(pl.Int64))
    dense = tree.join(bin_frame, how="cross").join(sparse, on=[cols[0], "bin_start"], how="left").with_columns(pl.col("count").fill_null(0))
    per_level = []
    for i, (lvl, col) in enumerate(zip(levels, cols, strict=True)):
        parent = pl.col(cols[i + 1]) if i + 1 < len(cols) else pl.lit(None, pl.String)
        agg = dense.group_by(col, "bin_start").agg(parent_id=parent.first(), true=pl.col("count").sum())
        per_level.append(agg.select(level=pl.lit(lvl), unit_id=pl.col(col), parent_id="parent_id", bin_start="bin_start", true="true"))
    cells = pl.concat(per_level).sort("level", "unit_id", "bin_start")
    truth = cells["true"].to_numpy().astype(np.int64)
    scale = policy.noise_scale(len(levels))
    noisy = opendp_noise(truth, scale) if rng_seed is None else seeded_noise(truth, scale, rng_seed)
    cells = cells.with_columns(noisy=pl.Series(noisy, dtype=pl.Int64)).drop("true")

    t = policy.dp_threshold
    top = cells.filter(pl.col("level") == levels[-1]).with_columns(count=pl.col("noisy").clip(lower_bound=0))
    if t >= 1:
        top = top.with_columns(count=pl.when(pl.col("count") < t).then(0).otherwise(pl.col("count")))
    done = [top]
    above = top
    for lvl in reversed(levels[:-1]):
        parent_values = above.select(pl.col("unit_id").alias("parent_id"), "bin_start", parent="count")
        kids = cells.filter(pl.col("level") == lvl).join(parent_values, on=["parent_id", "bin_start"], how="left")
        above = distribute(kids, t).drop("parent")
        done.append(above)
    out = pl.concat([d.select("level", "unit_id", "parent_id", "bin_start", "count", "noisy") for d in done])
    rank = {lvl: i for i, lvl in enumerate(levels)}
    out = out.with_columns(
        count=pl.col("count").cast(pl.Int64), thresholded=(pl.lit(t >= 1) & (pl.col("count") == 0) & (pl.col("noisy") >= 1))
    )
    out = out.with_columns(_lvl=pl.col("level").replace_strict(rank, return_dtype=pl.Int64)).sort("_lvl", "unit_id", "bin_start")
    return out.select("level", "unit_id", "parent_id", "bin_start", "count", "thresholded")
