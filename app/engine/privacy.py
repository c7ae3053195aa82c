"""The privacy gate: every count (and every number derived from a count) passes here before it
leaves the engine for the API, the views or an export.

Modes: ``none`` (internal analysis) and ``suppress`` (small-cell suppression: counts 1..k-1 are
withheld, 0 may show; default k = 11, the CMS rule). Complementary suppression and differential
privacy arrive with the full engine and plug in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

__all__ = ["Policy", "release_anomalies", "release_counts"]

Mode = Literal["none", "suppress"]


@dataclass(frozen=True)
class Policy:
    """How numbers are released: ``mode`` and the smallest publishable count ``k``."""

    mode: Mode = "suppress"
    k: int = 11

    def hides(self, col: str) -> pl.Expr:
        """True where ``col`` holds a count this policy withholds."""
        if self.mode == "none":
            return pl.lit(False)
        return pl.col(col).is_between(1, self.k - 1)


def release_counts(frame: pl.DataFrame, policy: Policy, columns: Sequence[str] = ("count",)) -> pl.DataFrame:
    """Null out withheld counts in ``columns`` and add a ``suppressed`` flag per row."""
    hidden = pl.any_horizontal([policy.hides(c) for c in columns]) if columns else pl.lit(False)
    out = frame.with_columns(suppressed=hidden)
    return out.with_columns([pl.when(policy.hides(c)).then(None).otherwise(pl.col(c)).alias(c) for c in columns])


def release_anomalies(frame: pl.DataFrame, policy: Policy) -> tuple[pl.DataFrame, int]:
    """Anomalies that may be published and how many were withheld.

    A z-score with its baseline would reveal a withheld observed count, so under ``suppress`` an
    anomaly whose observed count is withheld is withheld whole; expected values are rounded.
    """
    hidden = frame.select(policy.hides("count").alias("h"))["h"] if frame.height else pl.Series("h", [], pl.Boolean)
    kept = frame.filter(~hidden) if frame.height else frame
    kept = kept.with_columns(pl.col("expected").round(2), pl.col("std").round(2), pl.col("zscore").round(2))
    return kept, int(hidden.sum())
