"""Scoring a detector against planted ground truth (the demo city's ``planted_anomalies.csv``).

A detection matches a planted anomaly when the category agrees (``"*"``, all activity, matches
any), the time windows overlap, and the units are the same or one contains the other (a tract
spike found at its neighborhood still counts as found). Recall is over planted anomalies,
precision over detections: every detection that matches nothing is a false alarm.

Two detectors are evaluated on a snapshot: what the product lists (:func:`engine_detections`, the
published scores through the lens) and the plain rolling z of the same released cells
(:func:`rolling_z_detections`). The release rule is the snapshot's: evaluate a snapshot published
with ``privacy_mode="none"`` for the detector itself, a ``suppress`` one for what users see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from app.data.snapshot import Snapshot
from app.engine.grains import DEFAULT_GRAINS, bin_expr
from app.engine.scores import BASELINE, BIN_LENGTH, rolling_zscores

__all__ = [
    "CELL_KEYS",
    "EVAL_LEVELS",
    "Evaluation",
    "engine_detections",
    "evaluate",
    "evaluate_against_background",
    "match_planted",
    "rolling_z_detections",
]


@dataclass(frozen=True)
class Evaluation:
    """Precision, recall and F1 of one detector, with the counts behind them."""

    detections: int
    true_detections: int
    planted: int
    found: int

    @property
    def precision(self) -> float:
        return self.true_detections / self.detections if self.detections else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.planted if self.planted else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _lineage(parents: pl.DataFrame) -> pl.DataFrame:
    """Pairs (unit, related unit) where one contains the other or they are equal, any levels."""
    cols = [c for c in ("tract_id", "neighborhood_id", "borough_id") if c in parents.columns]
    pairs = []
    for a in cols:
        for b in cols:
            pairs.append(parents.select(pl.col(a).alias("unit_id"), pl.col(b).alias("related_id")))
    return pl.concat(pairs).drop_nulls().unique()


def match_planted(detections: pl.DataFrame, truth: pl.DataFrame, parents: pl.DataFrame) -> pl.DataFrame:
    """Matching (detection row, anomaly_id) pairs.

    ``detections``: ``unit_id, category, window_start, window_end`` (plus anything else);
    ``truth``: ``anomaly_id, unit_id, category, start, end``.
    """
    det = detections.with_row_index("detection").select("detection", "unit_id", "category", "window_start", "window_end")
    related = det.join(_lineage(parents), on="unit_id", how="inner")
    cand = related.join(
        truth.select("anomaly_id", pl.col("unit_id").alias("related_id"), pl.col("category").alias("t_cat"), "start", "end"),
        on="related_id",
        how="inner",
    )
    ok = (
        ((pl.col("category") == pl.col("t_cat")) | (pl.col("category") == "*"))
        & (pl.col("window_start") < pl.col("end"))
        & (pl.col("window_end") > pl.col("start"))
    )
    return cand.filter(ok).select("detection", "anomaly_id").unique().sort("detection", "anomaly_id")


def evaluate(detections: pl.DataFrame, truth: pl.DataFrame, parents: pl.DataFrame) -> Evaluation:
    """Precision / recall of ``detections`` against ``truth`` (see :func:`match_planted`)."""
    matches = match_planted(detections, truth, parents)
    return Evaluation(
        detections=detections.height,
        true_detections=matches["detection"].n_unique(),
        planted=truth.height,
        found=matches["anomaly_id"].n_unique(),
    )


#: What identifies one reported cell in a detections frame (see :func:`evaluate_against_background`).
CELL_KEYS = ("level", "unit_id", "category", "window_start")


def evaluate_against_background(
    detections: pl.DataFrame, background: pl.DataFrame, truth: pl.DataFrame, parents: pl.DataFrame
) -> Evaluation:
    """Precision / recall on real background (plants added to real events, :mod:`bench.plant`):
    ``detections`` of the planted data, ``background`` the same detector's detections of the same
    data without plants.

    A detection matching a plant is true; one matching none counts against precision only when its
    cell (:data:`CELL_KEYS`) is absent from ``background`` (a cell reported either way is the
    data's own anomaly, neither found nor false). ``Evaluation.detections`` counts the true and the
    false ones, so ``precision`` is true / (true + false)."""
    matches = match_planted(detections, truth, parents)
    keys = list(CELL_KEYS)
    unmatched = detections.with_row_index("detection").join(matches.select("detection").unique(), on="detection", how="anti")
    false = unmatched.join(background.select(keys).unique(), on=keys, how="anti", nulls_equal=True).height
    true = matches["detection"].n_unique()
    return Evaluation(detections=true + false, true_detections=true, planted=truth.height, found=matches["anomaly_id"].n_unique())


#: Levels the product lists anomalies at.
EVAL_LEVELS = ("tract", "neighborhood")
#: The columns every detector returns (and an empty detection frame has).
_DETECTIONS = pl.Schema(
    {
        "level": pl.String(),
        "unit_id": pl.String(),
        "category": pl.String(),
        "window_start": pl.Datetime("us", "UTC"),
        "window_end": pl.Datetime("us", "UTC"),
    }
)


def _history(snapshot: Snapshot, city: str) -> tuple[datetime, dict[str, str], dict[str, datetime], str]:
    """The release's history start, grains, first unpublished bin per level and time zone."""
    meta = snapshot.release_meta(city)
    if not meta:
        raise ValueError(f"the snapshot has no release for {city!r}")
    start = meta["history_start"]
    assert isinstance(start, datetime)
    return start, dict(meta["grains"] or DEFAULT_GRAINS), dict(meta["complete_until"]), str(meta["timezone"])


def engine_detections(snapshot: Snapshot, city: str = "nyc", baseline: timedelta = BASELINE, **lens_params: Any) -> pl.DataFrame:
    """What the product lists: the lens' anomalies (default thresholds unless ``lens_params`` say
    otherwise) at every :data:`EVAL_LEVELS` and its published grain, in the bins that end after a
    full ``baseline`` of history (earlier cells are scored on a shorter one) up to the end of what
    is published. Scores do not depend on the window, so
    one window covering that span lists exactly what sliding windows would: ``level, unit_id,
    category, window_start, window_end, observed, effect, zscore, q``."""
    from app.engine.lens import Lens  # the lens imports the engine; imported late to keep this module light

    first, _, cutoff, _ = _history(snapshot, city)
    lens = Lens(snapshot=snapshot, city=city, **lens_params)
    frames = []
    for level in EVAL_LEVELS:
        if level not in cutoff or cutoff[level] <= first + baseline:
            continue
        lens.param.update(level=level, since=first + baseline, until=cutoff[level])
        found, _ = lens.anomalies()
        if found.height:
            frames.append(found.select("level", "unit_id", "category", "bin_start", "bin_end", "observed", "effect", "zscore", "q"))
    if not frames:
        return pl.DataFrame(schema=_DETECTIONS)
    found = pl.concat(frames)
    return found.rename({"bin_start": "window_start", "bin_end": "window_end"}).sort("window_start", "level", "unit_id", "category")


def rolling_z_detections(snapshot: Snapshot, city: str = "nyc", min_z: float = 3.0, baseline: timedelta = BASELINE) -> pl.DataFrame:
    """The plain detector on the same cells: the trailing 28-day z
    (:func:`~app.engine.scores.rolling_zscores`) of every released (unit, category, bin) cell of
    each :data:`EVAL_LEVELS` at the level's published grain, ``z >= min_z``, in the same bins as
    :func:`engine_detections`; no FDR. Withheld and incomplete cells are left out (read as zeros)."""
    first, grains, cutoff, tz = _history(snapshot, city)
    release = snapshot.release(city)
    frames = []
    for level in EVAL_LEVELS:
        if level not in cutoff:
            continue
        grain = grains[level]
        cells = release.filter((pl.col("level") == level) & ~pl.col("suppressed") & ~pl.col("partial") & (pl.col("count") > 0)).select(
            "unit_id", "category", "bin_start", "count"
        )
        scored = rolling_zscores(cells, grain, baseline)
        end = pl.col("bin_start") + BIN_LENGTH[grain]
        if grain != "hour":  # a local day or week ends at the next local midnight (23 or 25 hours on DST changes)
            end = bin_expr(end + timedelta(hours=12), grain, tz)
        hits = scored.filter((end > first + baseline) & (pl.col("bin_start") < cutoff[level]) & (pl.col("zscore") >= min_z))
        frames.append(
            hits.select(
                pl.lit(level).alias("level"), "unit_id", "category", pl.col("bin_start").alias("window_start"), end.alias("window_end")
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=_DETECTIONS)
