"""Dependencies of the alert API: the alerts store (opened on first use), the API key of a request
(``Authorization: Bearer csh_...``, rate-limited per key by :mod:`app.api.ratelimit`) and the checks
of a rule that need the served snapshot (a known city, units that exist)."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from app.alerts.models import ApiKey
from app.alerts.rules import AnomalyRule, AreaRule
from app.alerts.store import AlertStore
from app.api.ratelimit import TokenBuckets
from app.api.schemas_alerts import PreviewIn, RuleIn
from app.config import Settings
from app.data.cities import known_cities
from app.data.registry import city_timezone
from app.data.snapshot import Snapshot

__all__ = ["RESPONSES", "AlertsDep", "KeyDep", "body_errors", "check_rule", "close_alerts", "current_snapshot", "get_alerts", "open_alerts"]

_OPENING = threading.Lock()
#: Answers every alert route may give besides its own, for the OpenAPI text.
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No live API key: send `Authorization: Bearer csh_...` (the answer carries `WWW-Authenticate: Bearer`)."},
    404: {"description": "No such object of this key (another key's objects are not found either)."},
    429: {"description": "Too many requests for this key: wait `Retry-After` seconds (see the `RateLimit-*` headers)."},
}
_BEARER = HTTPBearer(auto_error=False, description="An API key: `python -m app.alerts keys create NAME` prints one (csh_...).")


def open_alerts(app: FastAPI) -> AlertStore:
    """The app's alerts store, opened (and migrated) the first time it is needed."""
    alerts: AlertStore | None = app.state.alerts
    if alerts is None:
        with _OPENING:
            alerts = app.state.alerts
            if alerts is None:
                settings: Settings = app.state.settings
                if settings.alerts_url is None:  # the embedded SQLite file lives in the data dir
                    settings.data_dir.mkdir(parents=True, exist_ok=True)
                alerts = app.state.alerts = AlertStore(settings.alerts_database_url)
    return alerts


def close_alerts(app: FastAPI) -> None:
    """Close the app's alerts store if it was opened."""
    alerts: AlertStore | None = app.state.alerts
    if alerts is not None:
        alerts.close()
        app.state.alerts = None


def get_alerts(request: Request) -> AlertStore:
    return open_alerts(request.app)


AlertsDep = Annotated[AlertStore, Depends(get_alerts)]


def require_key(
    request: Request,
    response: Response,
    alerts: AlertsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> ApiKey:
    """The live API key of the request. Every request spends a token of its key's bucket (an
    unauthenticated one, of its client address's) first, so guessing keys is throttled too."""
    key = alerts.authenticate(credentials.credentials) if credentials is not None else None
    client = f"key:{key.id}" if key is not None else f"addr:{request.client.host if request.client else '-'}"
    buckets: TokenBuckets = request.app.state.alert_buckets
    verdict = buckets.take(client)
    response.headers.update(verdict.headers())
    if not verdict.allowed:
        raise HTTPException(429, f"too many requests: try again in {verdict.retry_after_s} s", headers=verdict.headers())
    if key is None:
        raise HTTPException(
            401, "a live API key is needed: Authorization: Bearer csh_...", headers={"WWW-Authenticate": "Bearer", **verdict.headers()}
        )
    return key


KeyDep = Annotated[ApiKey, Depends(require_key)]


def current_snapshot(request: Request) -> Snapshot | None:
    """The served snapshot, if one is published."""
    snapshot: Snapshot | None = request.app.state.store.current()
    return snapshot


def _refuse(loc: tuple[str, ...], rule: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": rule, "input": value}])


def check_rule(body: RuleIn | PreviewIn, snapshot: Snapshot | None) -> str:
    """Check what a rule names against the snapshot (a known city; an area's unit, an anomaly
    rule's units, in the city's geography when the snapshot has the city) and return its time zone
    (the city's when the body gives none)."""
    cities = known_cities(snapshot)
    if body.city not in cities:
        raise _refuse(("city",), f"unknown city {body.city!r}; known: {', '.join(cities)}", body.city)
    if snapshot is not None and body.city in snapshot.cities():
        spec = body.spec
        if isinstance(spec, AreaRule) and spec.unit_id not in set(snapshot.units(body.city, spec.level)["unit_id"].to_list()):
            raise _refuse(("spec", "unit_id"), f"no {spec.level} {spec.unit_id!r} in {body.city}'s geography", spec.unit_id)
        if isinstance(spec, AnomalyRule) and spec.unit_ids and spec.level != "city":
            known = set(snapshot.units(body.city, spec.level)["unit_id"].to_list())
            missing = [u for u in spec.unit_ids if u not in known]
            if missing:
                raise _refuse(
                    ("spec", "unit_ids"), f"no {spec.level} {', '.join(map(repr, missing[:10]))} in {body.city}'s geography", missing
                )
    return body.timezone or city_timezone(body.city)


def body_errors(err: ValidationError) -> RequestValidationError:
    """A model check of a merged body as a 422 on the body's fields."""
    return RequestValidationError(
        [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"], "input": e.get("input")} for e in err.errors()]
    )
