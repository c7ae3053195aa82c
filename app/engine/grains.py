"""Time grains in a city's local time: which bin an instant falls in, and which grain each admin
level is published at.

Day and week bins follow the city's clock (a New York day starts at local midnight, weeks on
Monday), so "Saturday" and weekday rhythms mean what a resident means; stored timestamps stay UTC
and a bin is named by the UTC instant it starts at. Hour bins are UTC hours, which coincide with
local hours in every whole-hour time zone (all the cities here). A local day is 23 or 25 hours
long on daylight-saving changes, which the bins honour.

Each level is published at **one** grain (:data:`DEFAULT_GRAINS`), coarser where units are small
and finer where they are large (tract by week, neighborhood by day, borough and city by hour), so
most published cells are big enough to publish; a coarser view of a level is the sum of its
released cells. Grains never get coarser going up the levels (:func:`check_grains`), which is what
lets the suppression audit treat the release as a chain of segments (see
:mod:`app.engine.suppression`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import polars as pl

__all__ = [
    "DEFAULT_GRAINS",
    "GRAINS",
    "PUBLISHABLE_SHARE",
    "TOP_CELL_SHARE",
    "bin_expr",
    "bin_range",
    "check_grains",
    "choose_grains",
    "coarser_grains",
    "floor_bin",
    "grain_rank",
    "next_bin",
    "parse_grains",
    "slot_expr",
    "slots",
]

#: Grains from finest to coarsest.
GRAINS: tuple[str, ...] = ("hour", "day", "week")
#: The grain each level is published at (one per level).
DEFAULT_GRAINS: dict[str, str] = {"tract": "week", "neighborhood": "day", "borough": "hour", "city": "hour"}
_TRUNCATE = {"hour": "1h", "day": "1d", "week": "1w"}
#: A grain is "mostly publishable" for a level when this share of its events sits in cells of at
#: least k events (all categories): the finest such grain is the level's, when chosen automatically.
PUBLISHABLE_SHARE = 0.9
#: ... and for the top level, this share of its cells (see :func:`choose_grains`).
TOP_CELL_SHARE = 0.95


def grain_rank(grain: str) -> int:
    """0 for hour, 1 for day, 2 for week (``ValueError`` otherwise)."""
    try:
        return GRAINS.index(grain)
    except ValueError:
        raise ValueError(f"unknown time grain {grain!r}; expected one of {', '.join(GRAINS)}") from None


def coarser_grains(grain: str) -> tuple[str, ...]:
    """``grain`` and every coarser one (the grains a level's released cells can be summed to)."""
    return GRAINS[grain_rank(grain) :]


def check_grains(grains: Mapping[str, str], levels: Sequence[str]) -> dict[str, str]:
    """The grain of every level, checked: known grains, none coarser than the level below it."""
    out = {level: grains[level] for level in levels}
    for lo, hi in itertools.pairwise(levels):
        if grain_rank(out[hi]) > grain_rank(out[lo]):
            raise ValueError(f"level {hi!r} is published at a coarser grain ({out[hi]}) than the level below it ({lo}: {out[lo]})")
    return out


def choose_grains(
    shares: Mapping[str, Mapping[str, float]],
    levels: Sequence[str],
    cell_shares: Mapping[str, Mapping[str, float]] | None = None,
    threshold: float = PUBLISHABLE_SHARE,
    top_cells: float = TOP_CELL_SHARE,
) -> dict[str, str]:
    """Each level's grain from ``shares[level][grain]`` (the share of the level's events in cells
    of at least k events): the finest grain that reaches ``threshold`` and is not coarser than the
    level below's, else the coarsest allowed. The top level (the city) also needs ``top_cells`` of
    its cells publishable (``cell_shares``): its sums are the overview, and a sum with one
    withheld part is withheld. (Default demo: tract by week, neighborhood by day, borough and city
    by hour; Chicago's crimes: community area by week, side and city by day.)"""
    out: dict[str, str] = {}
    limit = len(GRAINS) - 1
    for i, level in enumerate(levels):
        allowed = GRAINS[: limit + 1]
        top = i == len(levels) - 1 and cell_shares is not None
        good = [
            g
            for g in allowed
            if shares.get(level, {}).get(g, 0.0) >= threshold and (not top or (cell_shares or {}).get(level, {}).get(g, 0.0) >= top_cells)
        ]
        out[level] = good[0] if good else allowed[-1]
        limit = grain_rank(out[level])
    return out


def parse_grains(text: str) -> dict[str, str] | None:
    """``"tract=week,neighborhood=day,..."`` as a mapping (checked grains); ``"auto"`` gives None."""
    if text.strip() in ("", "auto"):
        return None
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"grains must be 'auto' or level=grain pairs separated by commas, not {text!r}")
    out = {level.strip(): grain.strip() for level, grain in pairs}
    for grain in out.values():
        grain_rank(grain)
    return out


@lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def bin_expr(col: str | pl.Expr, grain: str, tz: str) -> pl.Expr:
    """The UTC start of the ``grain`` bin each instant of ``col`` (UTC datetimes) falls in."""
    expr = pl.col(col) if isinstance(col, str) else col
    grain_rank(grain)
    if grain == "hour" or tz == "UTC":
        return expr.dt.truncate(_TRUNCATE[grain])
    return expr.dt.convert_time_zone(tz).dt.truncate(_TRUNCATE[grain]).dt.convert_time_zone("UTC")


def floor_bin(ts: datetime, grain: str, tz: str) -> datetime:
    """The UTC start of the ``grain`` bin containing ``ts`` (aware; naive is taken as UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if grain_rank(grain) == 0:
        return ts.replace(minute=0, second=0, microsecond=0)
    local = ts.astimezone(_zone(tz))
    day = local.date()
    if grain == "week":
        day -= timedelta(days=day.weekday())
    return datetime(day.year, day.month, day.day, tzinfo=_zone(tz)).astimezone(UTC)


def next_bin(start: datetime, grain: str, tz: str) -> datetime:
    """The start of the bin after the one starting at ``start`` (23/25-hour days honoured)."""
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[grain]
    if grain == "hour":
        return start + step
    # Local calendar arithmetic: noon of the next local day/week, floored, skips DST gaps cleanly.
    local = start.astimezone(_zone(tz)) + step + timedelta(hours=12)
    return floor_bin(local, grain, tz)


def bin_range(lo: datetime, hi: datetime, grain: str, tz: str) -> list[datetime]:
    """Bin starts ``b`` with ``floor(lo) <= b < hi``."""
    out: list[datetime] = []
    b = floor_bin(lo, grain, tz)
    while b < hi:
        out.append(b)
        b = next_bin(b, grain, tz)
    return out


def slots(grain: str) -> int:
    """Seasonal slots of a grain: hour-of-week (168), day-of-week (7), none for weeks (1)."""
    return {"hour": 168, "day": 7, "week": 1}[grain]


def slot_expr(grain: str, tz: str, col: str = "bin_start") -> pl.Expr:
    """Seasonal slot of each bin in local time: hour-of-week for hours, day-of-week for days."""
    local = pl.col(col).dt.convert_time_zone(tz) if tz != "UTC" else pl.col(col)
    if grain == "hour":
        return ((local.dt.weekday().cast(pl.Int32) - 1) * 24 + local.dt.hour().cast(pl.Int32)).cast(pl.Int32)
    if grain == "day":
        return (local.dt.weekday() - 1).cast(pl.Int32)
    return pl.lit(0, pl.Int32)
