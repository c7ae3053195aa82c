"""``/anomalies``: anomalous (unit, category, bin) cells of a window, highest z first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import MIN_Z_BOUNDS, Q_BOUNDS, LensDep, PageDep, TimeBin
from app.api.routes._common import lens_out, privacy_out
from app.api.schemas import AnomaliesOut, AnomalyOut, DriverOut
from app.engine.scores import DEFAULT_Q

router = APIRouter(tags=["anomalies"])


@router.get("/anomalies", response_model=AnomaliesOut)
def anomalies(
    lens: LensDep,
    page: PageDep,
    min_z: Annotated[
        float,
        Query(
            ge=MIN_Z_BOUNDS[0],
            le=MIN_Z_BOUNDS[1],
            allow_inf_nan=False,
            description=f"Smallest z-score listed ({MIN_Z_BOUNDS[0]:g}..{MIN_Z_BOUNDS[1]:g}).",
        ),
    ] = 3.0,
    q: Annotated[
        float,
        Query(
            ge=Q_BOUNDS[0],
            le=Q_BOUNDS[1],
            allow_inf_nan=False,
            description=f"Largest Benjamini-Hochberg q-value listed ({Q_BOUNDS[0]:g} <= q <= {Q_BOUNDS[1]:g}).",
        ),
    ] = DEFAULT_Q,
    time_bin: Annotated[
        TimeBin, Query(description="Bin width: hour, day or week; a level published at a coarser grain answers at its grain.")
    ] = "day",
    dips: Annotated[bool, Query(description="List unusually low cells (lower tail: z <= -min_z) instead of high ones.")] = False,
) -> AnomaliesOut:
    """Released anomalies of the window against seasonal baselines (exact tail p-values, z = Phi^-1(1 - p),
    FDR per bin), with drivers and a narrative each; paged. Scores were computed when the snapshot was
    published, so a cell reads the same in every window; withheld cells are not scored (``withheld``
    counts them)."""
    lens.param.update(min_z=min_z, q=q, time_bin=time_bin, dips=dips)
    found, withheld = lens.anomalies()
    total = found.height
    rows = found.slice(page.offset, page.limit) if total else found
    items = [
        AnomalyOut(
            level=r["level"],
            unit_id=r["unit_id"],
            name=r["name"],
            category=r["category"],
            window_start=r["bin_start"],
            window_end=r["bin_end"],
            observed=r["observed"],
            expected=r["expected"],
            variance=r["variance"],
            zscore=r["zscore"],
            p=r["p"],
            q=r["q"],
            baseline_start=r["baseline_start"],
            baseline_end=r["baseline_end"],
            effect=r["effect"],
            share=r["share"],
            drivers=[DriverOut(**d) for d in (r["drivers"] or [])],
            rolled_up_from=r["rolled_up_from"],
            narrative=r["narrative"],
        )
        for r in rows.iter_rows(named=True)
    ]
    return AnomaliesOut(
        lens=lens_out(lens),
        privacy=privacy_out(lens),
        time_bin=time_bin,
        min_z=min_z,
        q=q,
        withheld=withheld,
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_offset=page.next_offset(total),
        items=items,
    )
