"""Event filters shared by the engine and the views: the lens' window, category, kind and tract
selection of the unified event frame, and the release's all-categories value.

Pure functions of frames and arguments, so a notebook can call them on any snapshot's events.
Counting happens at publish time (:mod:`app.engine.layers`, :mod:`app.engine.publish`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

__all__ = ["ALL_CATEGORIES", "filter_events"]

#: The release's category value for "all categories" (a real category never starts with '*').
ALL_CATEGORIES = "*"


def filter_events(
    events: pl.DataFrame,
    since: datetime | None = None,
    until: datetime | None = None,
    categories: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    tract_ids: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Events with ``since <= ts < until`` and, when given, the listed categories, kinds and tracts.

    ``None`` means no filter; an empty list selects nothing (unticking every kind shows no events).
    """
    cond = pl.lit(True)
    if since is not None:
        cond &= pl.col("ts") >= since
    if until is not None:
        cond &= pl.col("ts") < until
    if categories is not None:
        cond &= pl.col("category").is_in(list(categories))
    if kinds is not None:
        cond &= pl.col("kind").is_in(list(kinds))
    if tract_ids is not None:
        cond &= pl.col("tract_id").is_in(list(tract_ids))
    return events.filter(cond)
