"""In-process scheduler: polls sources and publishes snapshots off the request path.

APScheduler 3's ``AsyncIOScheduler`` runs plain functions in the event loop's thread pool, so a
refresh (ingest, anomaly recompute, snapshot copy) never blocks a request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.config import Settings
from app.data.store import Store
from app.pipeline import refresh

__all__ = ["create_scheduler", "refresh_and_warm"]

log = structlog.get_logger(__name__)


def refresh_and_warm(store: Store, live_sources: list[str] | None = None) -> None:
    """One scheduler tick: refresh the store, then load the new snapshot's frames before readers ask."""
    snap = refresh(store, live_sources=live_sources or [])
    if snap is not None:
        for city in snap.cities():
            snap.events(city)
        log.info("scheduler.published", snapshot=snap.id)


def create_scheduler(store: Store, settings: Settings) -> AsyncIOScheduler:
    """A scheduler with the poll-and-publish job every ``settings.poll_seconds`` (not started)."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        refresh_and_warm,
        "interval",
        args=[store, settings.source_names],
        seconds=settings.poll_seconds,
        id="refresh",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC) + timedelta(seconds=settings.poll_seconds),
    )
    return scheduler
