"""``/healthz``: is a snapshot served, how old is it, how fresh is each source."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.api.deps import get_store
from app.api.schemas import HealthOut, SnapshotOut, SourceOut
from app.data.store import Store

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut, "description": "No snapshot yet."}})
def healthz(store: Annotated[Store, Depends(get_store)], response: Response) -> HealthOut:
    """Snapshot id, age and row counts, and per-source freshness; 503 until a snapshot exists."""
    snap = store.current()
    if snap is None:
        response.status_code = 503
        return HealthOut(status="starting", snapshot=None, sources=[])
    now = datetime.now(UTC)
    sources = [
        SourceOut(
            source=row["source"],
            cursor=row["cursor"],
            last_success=row["last_success"],
            age_s=(now - row["last_success"]).total_seconds() if row["last_success"] else None,
            consecutive_failures=row["consecutive_failures"],
        )
        for row in snap.ingest_state().iter_rows(named=True)
    ]
    snapshot = SnapshotOut(id=snap.id, created_at=snap.created_at, age_s=(now - snap.created_at).total_seconds(), rows=snap.row_counts())
    return HealthOut(status="ok", snapshot=snapshot, sources=sources)
