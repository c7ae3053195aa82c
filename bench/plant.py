"""Planting known anomalies into *real* background events, so detection quality can be measured
where the noise is the city's own and not the demo simulator's.

The demo city's planted anomalies (:mod:`app.data.demo`) sit on Poisson background drawn from the
same model family the engine assumes, which flatters any detector built on that model. Here a copy
of a real event frame gets a seeded, documented design of extra events (``spike``) and relabelled
events (``mix_shift``, total unchanged), and the ground truth says exactly which rows were touched.

Conventions, chosen so the truth lines up with what the product can publish:

* Plants cover whole UTC days, 1-3 of them by default, inside the design's window
  ``[since, until)``. (The engine's ``day`` bins are the city's local days, so in a city off UTC
  a plant's day straddles two of them; a ``week`` bin holds it whole unless it crosses a week.)
* ``size`` is events **per day bin** of the plant: the release rule (k = 11) and the detector both
  judge one unit x category x day cell, so a 3-day plant of 11 adds 11 events to each of its days.
* A spike's extra rows are copies of real events of the same unit (location, kind and every
  pass-through column kept), given the plant's category, a uniform time in the day and a new ``id``.
* A mix shift relabels ``size`` of the unit's events of other categories each day into the plant's
  category, never more than ``max_share`` of that day's other-category events.
* Plants never share a neighborhood (or, when the design outgrows the city, never overlap in time
  with a plant of the same neighborhood, one free day between), so each detection can only match
  one plant's effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

from app.data.geography import tract_parents
from app.data.snapshot import EVENT_SCHEMA

__all__ = ["SIZE_CLASSES", "SKIPPED_SCHEMA", "TRUTH_SCHEMA", "PlantDesign", "PlantGroup", "Planting", "plant"]

#: Events per day bin of each size class: at the publish threshold (k = 11), just above it, well
#: above it, and large.
SIZE_CLASSES: dict[str, tuple[int, int]] = {"at_k": (11, 11), "small": (12, 15), "medium": (20, 30), "large": (50, 80)}
_DAY = timedelta(days=1)
_DAY_US = 86_400_000_000
#: Levels a plant can target, and the event column holding that level's unit id.
_UNIT_COLUMN = {"tract": "tract_id", "neighborhood": "neighborhood_id"}
TRUTH_SCHEMA = pl.Schema(
    {
        "anomaly_id": pl.Int64(),
        "kind": pl.String(),
        "level": pl.String(),
        "unit_id": pl.String(),
        "category": pl.String(),
        "size_class": pl.String(),
        "per_day": pl.Int64(),
        "days": pl.Int64(),
        "start": pl.Datetime("us", "UTC"),
        "end": pl.Datetime("us", "UTC"),
        "events": pl.Int64(),
    }
)
#: Columns of :attr:`Planting.skipped`.
SKIPPED_SCHEMA = pl.Schema({"group": pl.Int64(), "kind": pl.String(), "reason": pl.String()})


@dataclass(frozen=True)
class PlantGroup:
    """``count`` plants of one kind, level and size class (``per_day`` events per day bin, drawn
    uniformly in the inclusive range; ``days`` likewise)."""

    kind: Literal["spike", "mix_shift"]
    level: str
    size_class: str
    per_day: tuple[int, int]
    count: int
    days: tuple[int, int] = (1, 3)

    def __post_init__(self) -> None:
        if self.level not in _UNIT_COLUMN:
            raise ValueError(f"plants target one of {sorted(_UNIT_COLUMN)}, not {self.level!r}")
        if not (1 <= self.per_day[0] <= self.per_day[1] and 1 <= self.days[0] <= self.days[1] and self.count >= 0):
            raise ValueError(f"bad plant group {self}")


@dataclass(frozen=True)
class PlantDesign:
    """Everything that decides the plants: the window they go in, the groups, the seed, the
    category pool (the ``top_categories`` most frequent categories of the window, so plants land in
    categories with real background rather than in empty ones) and the mix shifts' ``max_share``."""

    since: datetime
    until: datetime
    groups: tuple[PlantGroup, ...]
    seed: int = 0
    top_categories: int = 10
    max_share: float = 0.75

    def __post_init__(self) -> None:
        for bound in (self.since, self.until):
            if bound.tzinfo is None or bound.astimezone(UTC) != bound.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0):
                raise ValueError(f"the design window must start and end on UTC midnights: {bound!r}")
        if self.until - self.since < _DAY:
            raise ValueError("the design window must hold at least one day")
        if not 0 < self.max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1]: {self.max_share}")

    @classmethod
    def standard(cls, since: datetime, until: datetime, levels: Sequence[str] = ("tract", "neighborhood"), seed: int = 0) -> PlantDesign:
        """The bench's design per level: 5 spikes of each size class and 4 mix shifts of each class
        up to ``medium`` (a relabelling of 50+ events a day needs a unit with 70+ events a day of
        other categories, which few real units have)."""
        groups = []
        for level in levels:
            groups += [PlantGroup("spike", level, name, size, 5) for name, size in SIZE_CLASSES.items()]
            groups += [PlantGroup("mix_shift", level, name, SIZE_CLASSES[name], 4) for name in ("at_k", "small", "medium")]
        return cls(since, until, tuple(groups), seed)

    @property
    def n_days(self) -> int:
        return int((self.until - self.since) / _DAY)


@dataclass(frozen=True)
class Planting:
    """The planted copy of the frame (``plant_id`` names the plant of each added or relabelled row,
    null elsewhere), its ground truth (:data:`TRUTH_SCHEMA`, one row per placed plant; ``anomaly_id``
    is the plant id, the column :func:`app.engine.evaluate.match_planted` reads) and the design's
    plants that the data could not hold (``skipped``, with the reason)."""

    events: pl.DataFrame
    truth: pl.DataFrame
    skipped: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SKIPPED_SCHEMA))

    def changed(self) -> pl.DataFrame:
        """Added and relabelled rows only (what an upsert of the planted store needs)."""
        return self.events.filter(pl.col("plant_id").is_not_null())


@dataclass
class _Placed:
    key: str
    first: int
    last: int  # inclusive day indices


def plant(events: pl.DataFrame, units: pl.DataFrame, design: PlantDesign) -> Planting:
    """Apply ``design`` to a copy of ``events`` (the engine's event frame, :data:`EVENT_SCHEMA`,
    plus a unique ``id``; other columns pass through) of a city whose geo units are ``units``.

    Deterministic for a given frame and design. Raises when the frame lacks the columns or holds no
    event in the design's window.
    """
    missing = [c for c in (*EVENT_SCHEMA, "id") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack columns {missing}")
    parents = tract_parents(units).select("tract_id", "neighborhood_id")
    frame = (
        events.with_row_index("_row")
        .join(parents, on="tract_id", how="left", maintain_order="left")
        # a row located in no tract but known by its neighborhood (``area_id``) counts there
        .with_columns(neighborhood_id=pl.coalesce("neighborhood_id", "area_id"))
        .with_columns(_day=((pl.col("ts") - design.since).dt.total_microseconds() // _DAY_US).cast(pl.Int64))
    )
    window = frame.filter((pl.col("_day") >= 0) & (pl.col("_day") < design.n_days))
    if window.height == 0:
        raise ValueError(f"no events in the design window {design.since} .. {design.until}")
    pool = window.group_by("category").len().sort(["len", "category"], descending=[True, False]).head(design.top_categories)["category"]
    categories = pool.sort().to_list()

    placed: list[_Placed] = []
    truth: list[dict[str, object]] = []
    skipped: list[dict[str, object]] = []
    relabel: dict[int, tuple[int, str]] = {}  # row -> (plant id, new category)
    added: list[pl.DataFrame] = []
    slot = 0
    for g, group in enumerate(design.groups):
        for _ in range(group.count):
            slot += 1
            rng = np.random.default_rng([design.seed, slot])
            per_day = int(rng.integers(group.per_day[0], group.per_day[1] + 1))
            days = int(rng.integers(group.days[0], min(group.days[1], design.n_days) + 1))
            category = str(categories[int(rng.integers(len(categories)))])
            unit_col = _UNIT_COLUMN[group.level]
            if group.kind == "spike":
                options = _spike_options(frame, unit_col, design.n_days, days)
            else:
                need = math.ceil(per_day / design.max_share)
                options = _mix_options(window, unit_col, category, design.n_days, days, need)
            choice = _choose(options, placed, days, rng)
            if choice is None:
                skipped.append({"group": g, "kind": group.kind, "reason": f"no {group.level} can hold {per_day}/day for {days} day(s)"})
                continue
            unit, key, first = choice
            pid = len(truth) + 1
            placed.append(_Placed(key, first, first + days - 1))
            if group.kind == "spike":
                donors = frame.filter(pl.col(unit_col) == unit)
                added.append(_spike_rows(donors, pid, category, design.since, first, days, per_day, rng))
            else:
                for day in range(first, first + days):
                    pool_rows = window.filter((pl.col(unit_col) == unit) & (pl.col("_day") == day) & (pl.col("category") != category))
                    picked = rng.choice(pool_rows["_row"].to_numpy(), per_day, replace=False)
                    relabel.update({int(r): (pid, category) for r in picked})
            start = design.since + first * _DAY
            truth.append(
                {
                    "anomaly_id": pid,
                    "kind": group.kind,
                    "level": group.level,
                    "unit_id": unit,
                    "category": category,
                    "size_class": group.size_class,
                    "per_day": per_day,
                    "days": days,
                    "start": start,
                    "end": start + days * _DAY,
                    "events": per_day * days,
                }
            )
    return Planting(_apply(frame, relabel, added), pl.DataFrame(truth, schema=TRUTH_SCHEMA), pl.DataFrame(skipped, schema=SKIPPED_SCHEMA))


def _spike_options(frame: pl.DataFrame, unit_col: str, n_days: int, days: int) -> pl.DataFrame:
    """(unit, first day) pairs a spike can use: any unit with at least one real event to copy."""
    units = frame.select(unit_id=pl.col(unit_col), key=pl.coalesce("neighborhood_id", unit_col)).drop_nulls().unique("unit_id")
    firsts = pl.DataFrame({"first": np.arange(n_days - days + 1, dtype=np.int64)})
    return units.join(firsts, how="cross")


def _mix_options(window: pl.DataFrame, unit_col: str, category: str, n_days: int, days: int, need: int) -> pl.DataFrame:
    """(unit, first day) pairs where each of the ``days`` days holds ``need`` events of other categories."""
    others = (
        window.filter((pl.col("category") != category) & pl.col(unit_col).is_not_null())
        .group_by(unit_id=pl.col(unit_col), day=pl.col("_day"))
        .agg(n=pl.len(), key=pl.coalesce("neighborhood_id", unit_col).first())
        .filter(pl.col("n") >= need)
    )
    rows = []
    for first in range(n_days - days + 1):
        ok = others.filter(pl.col("day").is_between(first, first + days - 1)).group_by("unit_id").agg(pl.len(), pl.col("key").first())
        rows.append(ok.filter(pl.col("len") == days).select("unit_id", "key", first=pl.lit(first, pl.Int64)))
    return pl.concat(rows) if rows else pl.DataFrame(schema={"unit_id": pl.String, "key": pl.String, "first": pl.Int64})


def _choose(options: pl.DataFrame, placed: list[_Placed], days: int, rng: np.random.Generator) -> tuple[str, str, int] | None:
    """One option drawn uniformly: among units of neighborhoods no plant uses yet, else among those
    whose earlier plants are a free day or more apart in time; None when neither exists."""
    options = options.sort("unit_id", "first")
    used = {p.key for p in placed}
    fresh = options.filter(~pl.col("key").is_in(list(used)))
    if fresh.height == 0:
        clash = pl.lit(False)
        for p in placed:
            clash |= (pl.col("key") == p.key) & (pl.col("first") <= p.last + 1) & (pl.col("first") + days - 1 >= p.first - 1)
        fresh = options.filter(~clash)
    if fresh.height == 0:
        return None
    row = fresh.row(int(rng.integers(fresh.height)), named=True)
    return str(row["unit_id"]), str(row["key"]), int(row["first"])


def _spike_rows(
    donors: pl.DataFrame, pid: int, category: str, since: datetime, first: int, days: int, per_day: int, rng: np.random.Generator
) -> pl.DataFrame:
    """``per_day`` copies of random real events of the unit on each plant day, relabelled and re-timed."""
    n = per_day * days
    picks = donors[rng.integers(0, donors.height, n)]
    day = np.repeat(np.arange(first, first + days, dtype=np.int64), per_day)
    micros = int(since.timestamp()) * 1_000_000 + day * _DAY_US + rng.integers(0, _DAY_US, n)
    return picks.with_columns(
        category=pl.lit(category, pl.String),
        ts=pl.Series(micros).cast(pl.Datetime("us", "UTC")),
        id=pl.Series([f"plant-{pid}-{i}" for i in range(n)], dtype=pl.String),
        plant_id=pl.lit(pid, pl.Int64),
    )


def _apply(frame: pl.DataFrame, relabel: dict[int, tuple[int, str]], added: list[pl.DataFrame]) -> pl.DataFrame:
    """The frame with relabels applied and added rows appended, helper columns dropped."""
    changes = pl.DataFrame(
        {"_row": list(relabel), "plant_id": [v[0] for v in relabel.values()], "_new": [v[1] for v in relabel.values()]},
        schema={"_row": pl.UInt32, "plant_id": pl.Int64, "_new": pl.String},
    )
    out = (
        frame.join(changes, on="_row", how="left", maintain_order="left")
        .with_columns(category=pl.coalesce("_new", "category"))
        .drop("_new")
    )
    if added:
        new = pl.concat(added, how="vertical_relaxed").select(out.columns)
        if new.join(out.select("id"), on="id", how="semi").height:
            raise ValueError("a planted id collides with a real one")
        out = pl.concat([out, new], how="vertical_relaxed")
    return out.drop("_row", "neighborhood_id", "_day")
