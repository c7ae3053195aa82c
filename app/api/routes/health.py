"""``/healthz`` (is a snapshot served, how old, how fresh and healthy is each source) and ``/metrics``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
    exact = snap.exact_counts_public  # not under dp: exact counts would undo the noise
    sources = [
        SourceOut(
            source=row["source"],
            cursor=row["cursor"],
            last_success=row["last_success"],
            age_s=(now - row["last_success"]).total_seconds() if row["last_success"] else None,
            consecutive_failures=row["consecutive_failures"],
            breaker="open" if row.get("breaker_opened_at") else "closed",
            last_error=row.get("last_error"),
            drift=json.loads(row["drift"]) if row.get("drift") else None,
            rows_total=(row.get("rows_total") or 0) if exact else None,
            unlocated_total=(row.get("unlocated_total") or 0) if exact else None,
        )
        for row in snap.ingest_state().iter_rows(named=True)
    ]
    snapshot = SnapshotOut(
        id=snap.id, created_at=snap.created_at, age_s=(now - snap.created_at).total_seconds(), rows=snap.row_counts() if exact else None
    )
    degraded = any(s.breaker == "open" or s.drift for s in sources)
    return HealthOut(status="degraded" if degraded else "ok", snapshot=snapshot, sources=sources)


@router.get(
    "/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}}
)
def metrics() -> PlainTextResponse:
    """Prometheus metrics: ingest rows, unlocated rows, failures, schema drift, open breakers."""
    return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)
