"""The publish-time ``dp`` release: one noisy release per snapshot, in which every cell is noised
once, ever.

Each level is released at its grain (:mod:`app.engine.grains`). The grid is dense and its shape
does not depend on the data: every unit of the level, plus one hidden *rest* pseudo-unit per parent
(events counted at the parent but in none of its children, e.g. unlocated ones), every category and
``"*"``, every complete bin since the history began. Each cell gets OpenDP discrete Laplace noise of
scale ``2 L / epsilon``: one event is in two cells of a level (its category and ``"*"``), so a level
has L1 sensitivity 2 and the ``L`` levels together ``2 L``. A level's bin therefore costs
``epsilon / L`` in the ledger, and every instant is covered by one bin of each level: ``epsilon`` in
all, however many snapshots are published.

Post-processing, top-down (free under differential privacy): the top level is clipped at 0; each
level's children (and the rest) split their parent's consistent value summed over the child's bin
(a parent is at the same or a finer grain) per category, in proportion to their clipped noisy values
with largest-remainder rounding (:func:`app.engine.privacy.distribute`). So each category, and
``"*"``, adds up exactly across space (children to parents) and across time (a coarser bin is the sum
of its released bins); all counts are non-negative integers. ``"*"`` is its own noisy measurement:
the categories of a cell need not add up to it.

Bins once released are never noised again: the ledger's cells (``stored``) are re-served as they
are, only bins never released are noised (returned in :attr:`DpRelease.new`, which the caller
records in the ledger before it publishes), so late events for a released bin are not reflected.
Bins not complete at the horizon are neither released nor charged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from app.engine.bins import ALL_CATEGORIES
from app.engine.grains import bin_expr, bin_range, next_bin
from app.engine.layers import LAYER_SCHEMA
from app.engine.privacy import Policy, distribute, dp_noise_variance, opendp_noise, seeded_noise

__all__ = ["REST", "DpRelease", "dp_layers", "level_epsilon", "noise_variance", "series_key"]

#: Prefix of the rest pseudo-unit of a parent (noised and split like a child, never published).
REST = "~rest:"

_CELL_COLS = list(LAYER_SCHEMA.names())  # a stored cell has a layer cell's columns


@dataclass(frozen=True)
class DpRelease:
    """A city's ``dp`` release at publish time."""

    released: pl.DataFrame  # level, unit_id, parent_id, category, bin_start, count, suppressed (all False)
    new: dict[str, pl.DataFrame]  # per level: cells of the bins released now (the ledger records them)
    new_bins: dict[str, list[tuple[datetime, datetime]]]  # per level: those bins' [start, end)
    epsilon: float  # charged per bin of a level
    series: str  # the release's configuration (:func:`series_key`)


def series_key(policy: Policy, grains: Mapping[str, str], levels: Sequence[str]) -> str:
    """The configuration a stored release belongs to: ε and every level's grain. A publish re-serves
    only cells of its own configuration; another one (a changed ε, grain or set of levels) is a
    new release of every level, charged again, so its noise scale and its consistency never mix
    with the old one's."""
    return f"eps={policy.epsilon:g};" + ",".join(f"{lvl}={grains[lvl]}" for lvl in levels)


def level_epsilon(policy: Policy, n_levels: int) -> float:
    """The ε OpenDP accounts for one bin of one level (L1 sensitivity 2 at scale ``2 L / epsilon``),
    so ``n_levels`` levels cost ``policy.epsilon`` per instant, up to float rounding up."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    scale = policy.noise_scale(2 * n_levels)
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=scale)
    return float(meas.map(2))


def noise_variance(policy: Policy, n_levels: int) -> float:
    """Variance of the noise drawn for each cell of a ``dp`` release over ``n_levels`` levels."""
    return dp_noise_variance(policy.noise_scale(2 * n_levels)) if policy.mode == "dp" else 0.0


def dp_layers(
    layers: pl.DataFrame,
    units: pl.DataFrame,
    grains: Mapping[str, str],
    tz: str,
    levels: Sequence[str],
    history: datetime,
    cutoff: Mapping[str, datetime],
    policy: Policy,
    stored: Mapping[str, pl.DataFrame],
    rng_seed: int | None = None,
) -> DpRelease:
    """The ``dp`` release of ``layers`` (true counts, :data:`app.engine.layers.LAYER_SCHEMA`) for
    the bins of each level from ``history`` to ``cutoff[level]`` (see the module docstring).

    ``units``: the city's ``level, unit_id, parent_id``. ``stored``: per level, the cells the ledger
    holds for it in this configuration (:func:`series_key`) (``level, unit_id, parent_id, category, bin_start, count``).
    ``rng_seed`` switches to a seeded numpy generator of the same noise, for tests only."""
    if policy.epsilon <= 0:
        raise ValueError("dp needs epsilon > 0")
    cats = sorted({*layers["category"].unique().to_list(), ALL_CATEGORIES})
    scale = policy.noise_scale(2 * len(levels))
    t = policy.dp_threshold
    done: dict[str, pl.DataFrame] = {}
    new: dict[str, pl.DataFrame] = {}
    new_bins: dict[str, list[tuple[datetime, datetime]]] = {}
    parent_level: str | None = None
    for n, level in enumerate(reversed(list(levels))):
        grain = grains[level]
        have = stored.get(level, pl.DataFrame(schema=LAYER_SCHEMA)).filter(pl.col("bin_start") < cutoff[level]).select(_CELL_COLS)
        have_bins = set(have["bin_start"].unique().to_list())
        bins = [b for b in bin_range(history, cutoff[level], grain, tz) if b not in have_bins]
        new_bins[level] = [(b, next_bin(b, grain, tz)) for b in bins]
        mine = units.filter(pl.col("level") == level).select("unit_id", "parent_id")
        truth = layers.filter(pl.col("level") == level).select("unit_id", "category", "bin_start", "count")
        if parent_level is not None:
            parent_units = units.filter(pl.col("level") == parent_level).select(parent_id="unit_id")
            mine = pl.concat([mine, parent_units.select(unit_id=pl.lit(REST) + pl.col("parent_id"), parent_id="parent_id")])
            truth = pl.concat([truth, _rest_truth(layers, level, parent_level, grain, tz)])
        grid = _dense(mine, cats, bins).join(truth, on=["unit_id", "category", "bin_start"], how="left")
        values = grid["count"].fill_null(0).to_numpy().astype(np.int64)
        noisy = seeded_noise(values, scale, rng_seed + n) if rng_seed is not None else opendp_noise(values, scale)
        grid = grid.drop("count").with_columns(noisy=pl.Series(noisy, dtype=pl.Int64))
        if parent_level is None:
            fresh = grid.with_columns(count=pl.col("noisy").clip(lower_bound=0))
            if t >= 1:
                fresh = fresh.with_columns(count=pl.when(pl.col("count") < t).then(0).otherwise(pl.col("count")))
        else:
            up = (
                done[parent_level]
                .with_columns(bin_start=bin_expr("bin_start", grain, tz))
                .group_by(pl.col("unit_id").alias("parent_id"), "category", "bin_start")
                .agg(parent=pl.col("count").sum())
            )
            kids = grid.join(up, on=["parent_id", "category", "bin_start"], how="left").with_columns(pl.col("parent").fill_null(0))
            fresh = distribute(kids, t, by=["category"]) if kids.height else kids.with_columns(count=pl.lit(0, pl.Int64))
        fresh = fresh.filter(~pl.col("unit_id").str.starts_with(REST)).select(
            level=pl.lit(level),
            unit_id="unit_id",
            parent_id="parent_id",
            category="category",
            bin_start="bin_start",
            count=pl.col("count").cast(pl.Int64),
        )
        new[level] = fresh
        done[level] = pl.concat([have, fresh])
        parent_level = level
    released = pl.concat([done[lvl] for lvl in levels]).with_columns(suppressed=pl.lit(False))
    return DpRelease(released, new, new_bins, level_epsilon(policy, len(levels)), series_key(policy, grains, levels))


def _dense(units: pl.DataFrame, cats: Sequence[str], bins: Sequence[datetime]) -> pl.DataFrame:
    """Every unit x category x bin: the grid whose shape does not depend on the data."""
    frame_bins = pl.DataFrame({"bin_start": pl.Series(list(bins), dtype=pl.Datetime("us", "UTC"))})
    frame_cats = pl.DataFrame({"category": list(cats)}, schema={"category": pl.String})
    return units.join(frame_cats, how="cross").join(frame_bins, how="cross").sort("parent_id", "unit_id", "category", "bin_start")


def _rest_truth(layers: pl.DataFrame, level: str, parent_level: str, grain: str, tz: str) -> pl.DataFrame:
    """Per parent, category and bin of ``level``: the parent's events in none of its children."""
    parent = (
        layers.filter(pl.col("level") == parent_level)
        .with_columns(bin_start=bin_expr("bin_start", grain, tz))
        .group_by(pl.col("unit_id").alias("parent_id"), "category", "bin_start")
        .agg(total=pl.col("count").sum())
    )
    kids = layers.filter(pl.col("level") == level).group_by("parent_id", "category", "bin_start").agg(inside=pl.col("count").sum())
    rest = parent.join(kids, on=["parent_id", "category", "bin_start"], how="left").with_columns(
        count=(pl.col("total") - pl.col("inside").fill_null(0)).cast(pl.Int64)
    )
    if (rest["count"] < 0).any():
        raise ValueError(f"inconsistent layers: {level} cells add up to more than their {parent_level} parent")
    return rest.filter(pl.col("count") > 0).select(
        unit_id=pl.lit(REST) + pl.col("parent_id"), category="category", bin_start="bin_start", count="count"
    )
