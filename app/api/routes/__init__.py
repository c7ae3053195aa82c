"""One router per resource, gathered here."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import alert_deliveries, alert_endpoints, alert_links, alert_rules, anomalies, cities, health, heat, tracts

__all__ = ["api_router"]

api_router = APIRouter()
for _module in (health, cities, tracts, heat, anomalies, alert_rules, alert_endpoints, alert_deliveries, alert_links):
    api_router.include_router(_module.router)
