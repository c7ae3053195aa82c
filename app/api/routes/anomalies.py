"""``/anomalies``: anomalous (unit, category, bin) cells of a window, highest z first."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import LensDep, PageDep, TimeBin
from app.api.routes._common import lens_out, privacy_out
from app.api.schemas import AnomaliesOut, AnomalyOut

router = APIRouter(tags=["anomalies"])
_BIN = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


@router.get("/anomalies", response_model=AnomaliesOut)
def anomalies(
    lens: LensDep,
    page: PageDep,
    min_z: Annotated[float, Query(ge=0, le=1000, allow_inf_nan=False, description="Smallest z-score listed (0..1000).")] = 3.0,
    time_bin: Annotated[TimeBin, Query(description="Bin width scored: hour, day or week.")] = "day",
) -> AnomaliesOut:
    """Released anomalies against each series' trailing 28-day baseline; paged."""
    lens.min_z, lens.time_bin = min_z, time_bin
    found, withheld = lens.anomalies()
    total = found.height
    rows = found.slice(page.offset, page.limit) if total else found
    items = [
        AnomalyOut(
            level=lens.level,
            unit_id=r["unit_id"],
            name=r["name"],
            category=r["category"],
            window_start=r["bin_start"],
            window_end=r["bin_start"] + _BIN[time_bin],
            observed=r["count"],
            expected=r["expected"],
            std=r["std"],
            zscore=r["zscore"],
        )
        for r in rows.iter_rows(named=True)
    ]
    return AnomaliesOut(
        lens=lens_out(lens),
        privacy=privacy_out(lens),
        time_bin=time_bin,
        min_z=min_z,
        withheld=withheld,
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_offset=page.next_offset(total),
        items=items,
    )
