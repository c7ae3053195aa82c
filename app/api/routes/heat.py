"""``/heat``: released counts per unit (and per time bin) for a window."""

from __future__ import annotations

from typing import Annotated

import polars as pl
from fastapi import APIRouter, Query

from app.api.deps import BBoxDep, LensDep, PageDep, TimeBin
from app.api.routes._common import lens_out, privacy_out
from app.api.schemas import HeatCell, HeatOut, RollupOut

router = APIRouter(tags=["counts"])


@router.get("/heat", response_model=HeatOut)
def heat(
    lens: LensDep,
    page: PageDep,
    bbox: BBoxDep,
    time_bin: Annotated[TimeBin | None, Query(description="Split counts by hour, day or week; omit for window totals.")] = None,
) -> HeatOut:
    """Counts per unit for the window (snapped to whole time bins), after the privacy gate; bbox
    selects whole units. A withheld total carries its parent's released total (``rollup``)."""
    if time_bin is not None:
        lens.time_bin = time_bin
    counts = lens.unit_counts()
    series = lens.series() if time_bin is not None else None
    if bbox is not None:
        counts = counts.filter(pl.col("lon").is_between(bbox.min_lon, bbox.max_lon) & pl.col("lat").is_between(bbox.min_lat, bbox.max_lat))
    if series is not None:
        cells = series.join(counts.select("unit_id", "name"), on="unit_id", how="inner").sort(["unit_id", "bin_start"])
    else:
        cells = counts.sort("unit_id")
    total = cells.height
    rows = cells.slice(page.offset, page.limit)
    return HeatOut(
        lens=lens_out(lens),
        privacy=privacy_out(lens),
        time_bin=time_bin,
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_offset=page.next_offset(total),
        cells=[
            HeatCell(
                unit_id=r["unit_id"],
                name=r.get("name"),
                bin_start=r.get("bin_start"),
                count=r["count"],
                suppressed=r["suppressed"],
                partial=bool(r.get("partial") or False),
                rollup=RollupOut(level=r["rollup_level"], unit_id=r["rollup_unit_id"], count=r["rollup_count"])
                if r.get("rollup_level")
                else None,
            )
            for r in rows.iter_rows(named=True)
        ],
    )
