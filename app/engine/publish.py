"""Publish one city: the release (every level at its grain) and the score of every cell, computed
once per snapshot and stored with it; readers only filter, sort and sum these two tables.

Everything a reader can see is post-processing of the release: counts are released cells (a
coarser bin is a sum of released cells, withheld when any part is), and scores are computed from
the release with withheld cells filled from released numbers. The newest cells whose pair block
is still filling are *incomplete*: not published (a partial day is not drawn as a collapse) and not
scored, and published once the block is complete (so a later snapshot never re-audits a bin).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import structlog

from app.data.geography import LEVELS, tract_parents
from app.engine.bins import ALL_CATEGORIES
from app.engine.dp_publish import DpRelease, dp_layers, noise_variance
from app.engine.fill import fill_withheld
from app.engine.grains import DEFAULT_GRAINS, GRAINS, bin_expr, bin_range, check_grains, choose_grains, coarser_grains, floor_bin, next_bin
from app.engine.layers import hourly_base, layer_cells, level_layer
from app.engine.privacy import Policy
from app.engine.scoring import ScoreSpec, score_layer
from app.engine.suppression import segments, suppress_layers

#: Mean squared error of a withheld cell's stand-in per event of it: about 1.25 x the stand-in for
#: tract-week cells of the default demo under ``suppress`` (k = 11), measured against the true
#: counts (1.18 at a stand-in of 1, 5.5 at 4, 9.4 at 8): a little more than Poisson.
STAND_IN_VARIANCE = 1.25

__all__ = ["STAND_IN_VARIANCE", "Published", "complete_until", "publish_city", "publishable_shares"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Published:
    """One city's release and scores (the two tables stored with the snapshot)."""

    release: pl.DataFrame  # level, grain, unit_id, parent_id, category, bin_start, count, suppressed, partial
    scores: pl.DataFrame  # level, grain, unit_id, category, bin_start, observed, expected, variance, ...
    grains: dict[str, str] = field(default_factory=dict)
    history_start: datetime | None = None
    horizon: datetime | None = None
    complete_until: dict[str, datetime] = field(default_factory=dict)  # per level: first unpublished bin
    dp: DpRelease | None = None  # 'dp': the bins noised now (to record in the ledger before publishing)


def publishable_shares(
    events: pl.DataFrame, units: pl.DataFrame, tz: str, k: int, levels: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per level and grain, the share of the level's events in all-category cells of at least
    ``k`` events, and the share of such cells (what :func:`app.engine.grains.choose_grains` reads)."""
    base = hourly_base(events)
    parents = tract_parents(units)
    by_events: dict[str, dict[str, float]] = {}
    by_cells: dict[str, dict[str, float]] = {}
    for level in levels:
        by_events[level], by_cells[level] = {}, {}
        for grain in GRAINS:
            cells = level_layer(base, parents, level, grain, tz, None).filter(pl.col("category") == ALL_CATEGORIES)["count"]
            total = int(cells.sum())
            by_events[level][grain] = float(cells.filter(cells >= k).sum()) / total if total else 0.0
            by_cells[level][grain] = cells.filter(cells >= k).len() / cells.len() if cells.len() else 0.0
    return by_events, by_cells


def complete_until(horizon: datetime, grain: str, below: str | None, tz: str) -> datetime:
    """Start of the first bin of ``grain`` that is not yet published: the bin holding
    ``horizon`` or, with a coarser level ``below``, the first bin of its pair block (see
    :mod:`app.engine.suppression`)."""
    start = floor_bin(horizon, grain, tz)
    if below is None:
        return start
    coarse = floor_bin(horizon, below, tz)
    bins = bin_range(coarse, next_bin(coarse, below, tz), grain, tz)
    i, n = bins.index(start), len(bins)
    block = max(min(i // 2, n // 2 - 1), 0)
    return bins[2 * block]


def publish_city(
    events: pl.DataFrame,
    units: pl.DataFrame,
    tz: str,
    policy: Policy,
    horizon: datetime | None = None,
    grains: Mapping[str, str] | None = DEFAULT_GRAINS,
    stored: Mapping[str, pl.DataFrame] | None = None,
    rng_seed: int | None = None,
) -> Published:
    """The release and scores of one city's current events (see the module docstring).

    ``horizon``: the instant up to which the data are complete (default: the newest event).
    ``grains``: the grain of each level, or None to choose them from the data
    (:func:`app.engine.grains.choose_grains`: the finest grain whose cells are mostly publishable;
    not under ``dp``, where a choice made from the raw data would leak: the default grains then).
    ``stored``: under ``dp``, the ledger's released cells per level (re-served, never noised again);
    ``rng_seed``: seeded ``dp`` noise, for tests only (see :func:`app.engine.dp_publish.dp_layers`)."""
    present = [lvl for lvl in LEVELS if units.filter(pl.col("level") == lvl).height]
    if grains is None and policy.mode == "dp":
        grains = DEFAULT_GRAINS
    if grains is None:
        shares, cell_shares = publishable_shares(events, units, tz, policy.k, present)
        grains = choose_grains(shares, present, cell_shares)
    grains = check_grains(grains, present)
    if events.height == 0 or not present:
        return Published(_empty_release(), pl.DataFrame(), dict(grains))
    newest = events["ts"].max()
    first = events["ts"].min()
    assert isinstance(newest, datetime)
    assert isinstance(first, datetime)
    horizon = horizon or newest
    # History starts at the first event's hour: the hours of a first day before it are missing data,
    # not zeros (a day or week bin that starts before it is released but enters no baseline).
    # Under dp the history starts at the first event's week: its grid (which cells get noise) then
    # says only in which week the data begin.
    history = floor_bin(first, "week" if policy.mode == "dp" else "hour", tz)
    clock = _Clock()
    layers = layer_cells(events, tract_parents(units), grains, tz, present)
    clock.lap("layers")
    below: dict[str, str | None] = dict.fromkeys(present)
    if policy.mode != "dp":  # dp has no pair blocks: a bin is published once it is complete
        for i, (seg, _) in enumerate(segs := segments(present, grains)):
            if i:
                below[seg[0]] = segs[i - 1][1]
    cutoff = {lvl: complete_until(horizon, grains[lvl], below[lvl], tz) for lvl in present}
    dp = None
    if policy.mode == "suppress":
        released = suppress_layers(layers, units.select("level", "unit_id", "parent_id"), grains, policy.k, tz, present)
    elif policy.mode == "none":
        released = layers.with_columns(suppressed=pl.lit(False))
    else:
        dp = dp_layers(
            layers, units.select("level", "unit_id", "parent_id"), grains, tz, present, history, cutoff, policy, stored or {}, rng_seed
        )
        released = dp.released
    clock.lap("release")
    if dp is None:
        filled = fill_withheld(released, grains, tz, present, policy.k)
    else:  # nothing is withheld: the noisy counts are the baselines' input
        filled = released.with_columns(filled=pl.col("count").cast(pl.Float64))
    clock.lap("fill")
    n_cats = events["category"].n_unique() + 1
    fill_variance = STAND_IN_VARIANCE if policy.mode == "suppress" else 0.0
    noise = noise_variance(policy, len(present))
    scores = []
    for level in present:
        mine = filled.filter(pl.col("level") == level)
        n_units = units.filter(pl.col("level") == level).height
        for grain in coarser_grains(grains[level]):
            cells = mine if grain == grains[level] else _coarser(mine, grain, tz)
            until = cutoff[level] if grain == grains[level] else floor_bin(cutoff[level], grain, tz)
            spans = _SPAN[grain] // _SPAN[grains[level]]  # released cells summed into one bin of this grain
            spec = ScoreSpec(grain, tz, history, n_units, n_cats, until, fill_variance=fill_variance, noise_variance=noise * spans)
            scored = score_layer(cells.select("unit_id", "category", "bin_start", "count", "suppressed", "filled"), spec)
            scores.append(scored.with_columns(level=pl.lit(level), grain=pl.lit(grain)))
            clock.lap(f"scores {level}@{grain}")
    release = released.with_columns(
        grain=pl.col("level").replace_strict(grains, return_dtype=pl.String),
        partial=pl.col("bin_start") >= pl.col("level").replace_strict(cutoff, return_dtype=pl.Datetime("us", "UTC")),
    ).with_columns(count=pl.when(pl.col("partial")).then(None).otherwise(pl.col("count")))
    release = release.select("level", "grain", "unit_id", "parent_id", "category", "bin_start", "count", "suppressed", "partial")
    return Published(
        release.sort("level", "category", "unit_id", "bin_start"),
        pl.concat(scores, how="vertical_relaxed"),
        dict(grains),
        history,
        horizon,
        cutoff,
        dp,
    )


#: Hours in a bin of each grain (how many finer cells a coarser bin sums, for the noise it carries).
_SPAN = {"hour": 1, "day": 24, "week": 168}


class _Clock:
    """Phase timings of a publish, logged at debug level (what a slow publish spent its time on)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        log.debug("publish.phase", phase=phase, seconds=round(now - self.t, 3))
        self.t = now


def _coarser(cells: pl.DataFrame, grain: str, tz: str) -> pl.DataFrame:
    """A level's filled release summed to a coarser grain (withheld when any part is)."""
    binned = cells.with_columns(bin_start=bin_expr("bin_start", grain, tz))
    out = binned.group_by("unit_id", "category", "bin_start").agg(
        count=pl.col("count").sum(), suppressed=pl.col("suppressed").any(), filled=pl.col("filled").sum()
    )
    return out.with_columns(count=pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count")))


def _empty_release() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "level": pl.String,
            "grain": pl.String,
            "unit_id": pl.String,
            "parent_id": pl.String,
            "category": pl.String,
            "bin_start": pl.Datetime("us", "UTC"),
            "count": pl.Int64,
            "suppressed": pl.Boolean,
            "partial": pl.Boolean,
        }
    )


assert ALL_CATEGORIES == "*"
