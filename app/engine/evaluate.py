"""Scoring a detector against planted ground truth (the demo city's ``planted_anomalies.csv``).

A detection matches a planted anomaly when the category agrees (``"*"``, all activity, matches
any), the time windows overlap, and the units are the same or one contains the other (a tract
spike found at its neighborhood, after a privacy roll-up, still counts as found). Recall is over
planted anomalies, precision over detections: every detection that matches nothing is a false
alarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from app.data.geography import tract_parents
from app.data.snapshot import Snapshot
from app.engine.baselines import BASELINE
from app.engine.bins import cube_counts
from app.engine.detect import level_cells
from app.engine.scores import rolling_zscores

__all__ = [
    "EVAL_LEVELS",
    "Evaluation",
    "engine_detections",
    "evaluate",
    "history_start",
    "match_planted",
    "rolling_z_detections",
    "weekly_windows",
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


#: Levels the product lists anomalies at (each lens level also rolls up to its parent).
EVAL_LEVELS = ("tract", "neighborhood")


def weekly_windows(first: datetime, until: datetime, days: int = 7) -> list[tuple[datetime, datetime]]:
    """Consecutive windows of ``days`` ending at ``until`` and reaching back to ``first`` (the
    oldest may be shorter): the lens' default 7-day window, slid over the history."""
    out, hi = [], until
    while hi > first:
        lo = max(hi - timedelta(days=days), first)
        out.append((lo, hi))
        hi = lo
    return out[::-1]


def _scoreable(snapshot: Snapshot, city: str, baseline: timedelta) -> tuple[datetime, datetime]:
    ts = snapshot.events(city)["ts"]
    first, last = ts.min(), ts.max()
    assert isinstance(first, datetime)
    assert isinstance(last, datetime)
    return history_start(first) + baseline, _midnight(last) + timedelta(days=1)


def history_start(ts: datetime) -> datetime:
    """The midnight that starts the history's first day (the day of the first event: a partial first
    day makes the earliest baselines slightly low, which is better than losing a day of scoring)."""
    return _midnight(ts)


def _midnight(ts: datetime) -> datetime:
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def engine_detections(snapshot: Snapshot, city: str = "nyc", **lens_params: Any) -> pl.DataFrame:
    """What the product publishes, window by window: released anomalies of the lens at every
    :data:`EVAL_LEVELS` (default settings unless ``lens_params`` say otherwise), de-duplicated."""
    from app.engine.lens import Lens  # the lens imports the engine; imported late to keep this module light

    lens = Lens(snapshot=snapshot, city=city, **lens_params)
    first, until = _scoreable(snapshot, city, lens.baseline)
    frames = []
    for lo, hi in weekly_windows(first, until):
        for level in EVAL_LEVELS:
            lens.param.update(level=level, since=lo, until=hi)
            found, _ = lens.anomalies()
            if found.height:
                frames.append(found.select("level", "unit_id", "category", "bin_start", "bin_end", "observed", "effect", "zscore", "q"))
    if not frames:
        return pl.DataFrame(schema={"unit_id": pl.String, "category": pl.String, "window_start": pl.Datetime("us", "UTC")})
    found = pl.concat(frames).unique(["level", "unit_id", "category", "bin_start"], keep="first")
    return found.rename({"bin_start": "window_start", "bin_end": "window_end"}).sort("window_start", "level", "unit_id", "category")


def rolling_z_detections(snapshot: Snapshot, city: str = "nyc", min_z: float = 3.0, baseline: timedelta = BASELINE) -> pl.DataFrame:
    """The plain detector on the same cells: trailing 28-day z of each (unit, category, day) at
    every :data:`EVAL_LEVELS`, ``z >= min_z``, no FDR and no privacy gate."""
    first, until = _scoreable(snapshot, city, baseline)
    events = snapshot.events(city)
    cube = cube_counts(events, tract_parents(snapshot.units(city)), "day", (*EVAL_LEVELS, "borough", "city"))
    frames = []
    for level in EVAL_LEVELS:
        scored = rolling_zscores(level_cells(cube, level), "day", baseline)
        hits = scored.filter((pl.col("bin_start") >= first) & (pl.col("bin_start") < until) & (pl.col("zscore") >= min_z))
        frames.append(hits.with_columns(level=pl.lit(level)))
    found = pl.concat(frames)
    return found.select(
        "level",
        "unit_id",
        "category",
        pl.col("bin_start").alias("window_start"),
        (pl.col("bin_start") + timedelta(days=1)).alias("window_end"),
    )
