"""The live region's sentence: what changed, said once, for screen-reader users ("42 anomalies in
Brooklyn, 3 new"). Pure, so the wording is tested without a browser."""

from __future__ import annotations

import polars as pl

__all__ = ["announcement", "anomaly_keys"]


def anomaly_keys(found: pl.DataFrame) -> frozenset[tuple[str, str, str, str]]:
    """Identity of each listed anomaly (level, unit, category, bin)."""
    if found.height == 0:
        return frozenset()
    rows = found.select("level", "unit_id", "category", pl.col("bin_start").cast(pl.String)).iter_rows()
    return frozenset((str(a), str(b), str(c), str(d)) for a, b, c, d in rows)


def announcement(found: pl.DataFrame, withheld: int, where: str, before: frozenset[tuple[str, str, str, str]] | None) -> str:
    """E.g. "42 anomalies in Brooklyn, 3 new; 5 withheld by the privacy rule." ``before`` is the
    previous list's keys (None on first render: nothing is "new" yet)."""
    now = anomaly_keys(found)
    n = len(now)
    noun = "anomaly" if n == 1 else "anomalies"
    text = f"{n} {noun} in {where}"
    if before is not None:
        text += f", {len(now - before)} new"
    if withheld:
        text += f"; {withheld} withheld by the privacy rule"
    return text + "."
