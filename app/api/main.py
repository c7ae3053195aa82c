"""The one server process: FastAPI routes (the alert API among them, over the alerts store at
``app.state.alerts``), the Panel dashboard at ``/dashboard`` and the scheduler in the lifespan. ``uvicorn --factory app.api.main:create_app`` serves it (see ``panel_serve.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.routing import APIRoute
from panel.io.fastapi import add_applications

from app.api.alerts_deps import close_alerts, open_alerts
from app.api.body_limit import BodyLimitMiddleware
from app.api.errors import install_error_handlers
from app.api.ratelimit import TokenBuckets
from app.api.routes import api_router
from app.config import Settings, get_settings
from app.data.store import Store
from app.scheduler import create_scheduler

__all__ = ["create_app"]

_FAVICON = Path(__file__).with_name("favicon.ico")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app over ``settings.data_dir``; the scheduler starts with the lifespan."""
    settings = settings or get_settings()
    store = Store(settings.data_dir, keep=settings.keep_snapshots)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The scheduler evaluates rules and sends deliveries, so with it the alerts store opens at
        # start-up; without it, on the alert API's first request. Either way it closes here.
        scheduler = create_scheduler(store, settings, open_alerts(app)) if settings.scheduler_enabled else None
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            close_alerts(app)

    app = FastAPI(
        title="City Service Heat",
        version="0.1.0",
        summary="Where, in which category and why city activity departs from its normal rhythm.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.alerts = None  # an AlertStore once opened (app.api.alerts_deps.open_alerts)
    app.state.alert_buckets = TokenBuckets(settings.alerts_rate_per_minute, settings.alerts_rate_burst)
    install_error_handlers(app)
    # Outermost but for Starlette's error middleware: before routing, auth and JSON parsing.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(api_router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(_FAVICON, media_type="image/x-icon")

    from app.views.alerts_page import build_alerts  # Panel/Bokeh import cost only where the pages are served
    from app.views.page import build_dashboard

    pages: dict[str, Any] = {
        "/dashboard": lambda: build_dashboard(store, settings),
        "/alerts": lambda: build_alerts(open_alerts(app), store, settings),
    }
    add_applications(pages, app=app, title="City Service Heat")
    for route in app.routes:  # the pages are not part of the JSON API's contract
        if isinstance(route, APIRoute) and route.path.startswith(("/dashboard", "/alerts")):
            route.include_in_schema = False
    return app
