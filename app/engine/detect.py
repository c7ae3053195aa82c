"""Detection: which (unit, category, bin) cells of a window are anomalous, at one or more levels.

Pure functions over the fixed count cube (:func:`app.engine.bins.cube_counts`). Each level is
scored on its own cells, with its own baseline model and its own false-discovery family (all
units x categories x bins of that level in the window), so a neighborhood-wide surge and a single
tract's spike are each judged against their own kind of noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from app.engine.baselines import BASELINE, BIN_LENGTH, BaselineModel, fit_baseline
from app.engine.bins import ALL_CATEGORIES
from app.engine.scores import DEFAULT_MIN_Z, DEFAULT_Q, score_cells

__all__ = ["Detection", "DetectionSettings", "detect", "level_cells"]


@dataclass(frozen=True)
class DetectionSettings:
    """Knobs of one detection run (defaults are the product's defaults)."""

    time_bin: str = "day"
    baseline: timedelta = BASELINE
    q: float = DEFAULT_Q
    min_z: float = DEFAULT_MIN_Z
    extra_variance: float = 0.0  # DP noise variance per cell (0 unless scores run on noisy counts)
    totals: bool = False  # score the "*" cells (one series per unit) instead of the categories


@dataclass(frozen=True)
class Detection:
    """All scored cells of a run (``scored``), the anomalies among them, and per-level inputs the
    attribution step reuses (cell counts and fitted baseline models)."""

    scored: pl.DataFrame
    settings: DetectionSettings
    counts: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    models: Mapping[str, BaselineModel] = field(default_factory=dict)

    @property
    def anomalies(self) -> pl.DataFrame:
        s = self.settings
        if self.scored.height == 0:
            return self.scored
        return self.scored.filter((pl.col("q") <= s.q) & (pl.col("zscore") >= s.min_z)).sort(
            ["level", "zscore", "unit_id", "category", "bin_start"], descending=[False, True, False, False, False]
        )


def level_cells(cube: pl.DataFrame, level: str, totals: bool = False) -> pl.DataFrame:
    """Per-category cells of one level of the cube (``unit_id, category, bin_start, count``), or
    with ``totals`` only its all-category ``"*"`` cells (what a ``dp`` release holds)."""
    pick = pl.col("category") == ALL_CATEGORIES if totals else pl.col("category") != ALL_CATEGORIES
    return cube.filter((pl.col("level") == level) & pick).select("unit_id", "category", "bin_start", "count")


def detect(
    cube: pl.DataFrame,
    n_units: Mapping[str, int],
    levels: Sequence[str],
    since: datetime,
    until: datetime,
    settings: DetectionSettings | None = None,
) -> Detection:
    """Score every non-empty cell in ``[since, until)`` at each of ``levels``.

    ``cube`` must cover ``[since - baseline, until)`` (the pre-window fits the baseline model).
    ``n_units[level]`` is the number of units of the level (empty units are tested too).
    """
    settings = settings or DetectionSettings()
    frames, counts, models = [], {}, {}
    for level in levels:
        cells = level_cells(cube, level, settings.totals)
        model = fit_baseline(cells, settings.time_bin, since, settings.baseline)
        scored = score_cells(
            cells, since, until, settings.time_bin, n_units.get(level, 1), model=model, extra_variance=settings.extra_variance
        )
        counts[level], models[level] = cells, model
        frames.append(scored.with_columns(level=pl.lit(level)))
    scored = pl.concat([f for f in frames if f.height], how="diagonal_relaxed") if any(f.height for f in frames) else pl.DataFrame()
    if scored.height:
        scored = scored.with_columns(
            bin_end=pl.col("bin_start") + BIN_LENGTH[settings.time_bin],
            baseline_start=pl.col("bin_start") - settings.baseline,
            baseline_end=pl.col("bin_start"),
        )
    return Detection(scored, settings, counts, models)
