"""In-process scheduler: polls sources and publishes snapshots off the request path, evaluates
the alert rules against each new snapshot, and sends due alert deliveries.

APScheduler 3's ``AsyncIOScheduler`` runs plain functions in the event loop's thread pool, so a
refresh (ingest, anomaly recompute, snapshot copy, rule evaluation) never blocks a request; the
delivery job is a coroutine (its sends are async HTTP).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.alerts.delivery import Channels, deliver_due
from app.alerts.evaluate import evaluate_snapshot
from app.alerts.store import AlertStore
from app.config import Settings
from app.data.store import Store
from app.pipeline import refresh

__all__ = ["create_scheduler", "refresh_and_warm"]

log = structlog.get_logger(__name__)


#: Seconds between runs of the alert delivery job.
DELIVERY_SECONDS = 10.0


def refresh_and_warm(
    store: Store, live_sources: list[str] | None = None, alerts: AlertStore | None = None, now: datetime | None = None
) -> int:
    """One scheduler tick: refresh the store, load the new snapshot's frames before readers ask,
    then queue the alerts it brings (a failing evaluation is logged; it never stops the poll).
    Returns how many deliveries it queued."""
    before = store.current()
    snap = refresh(store, now=now, live_sources=live_sources or [])
    if snap is not None:
        for city in snap.cities():
            snap.events(city)
        log.info("scheduler.published", snapshot=snap.id)
        if alerts is not None and (before is None or snap.id != before.id):
            try:
                return evaluate_snapshot(alerts, snap)
            except Exception:  # one bad rule or store hiccup must not stop publishing
                log.exception("alerts.evaluation_failed", snapshot=snap.id)
    return 0


def create_scheduler(store: Store, settings: Settings, alerts: AlertStore | None = None) -> AsyncIOScheduler:
    """A scheduler with the poll-and-publish job every ``settings.poll_seconds`` and, with an
    alerts store, the delivery job every :data:`DELIVERY_SECONDS` and as soon as a publish has
    queued deliveries (not started)."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    if alerts is not None:
        scheduler.add_job(
            deliver_due,
            "interval",
            args=[alerts],
            kwargs={"channels": Channels.from_settings(settings)},
            seconds=DELIVERY_SECONDS,
            id="deliver",
            max_instances=1,
            coalesce=True,
        )

    def tick() -> None:
        if refresh_and_warm(store, settings.source_names, alerts) and alerts is not None:
            scheduler.modify_job("deliver", next_run_time=datetime.now(UTC))  # new alerts go now, not at the next round

    scheduler.add_job(
        tick,
        "interval",
        seconds=settings.poll_seconds,
        id="refresh",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC) + timedelta(seconds=settings.poll_seconds),
    )
    return scheduler
