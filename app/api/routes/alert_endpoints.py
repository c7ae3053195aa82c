"""``/endpoints``: where a key's alerts go. Webhook and Discord targets pass the SSRF guard when
they are created (and again at every send); a webhook's signing secret is shown once, in the
answer that creates it or rotates it, and never read back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from app.alerts.delivery import send_test
from app.alerts.models import Endpoint
from app.alerts.rule_book import QuotaExceededError
from app.alerts.ssrf import TargetRefusedError, check_target
from app.api.alerts_deps import RESPONSES, AlertsDep, KeyDep
from app.api.errors import unprocessable
from app.api.schemas_alerts import MAX_ID, EndpointCreated, EndpointIn, EndpointOut, EndpointsOut, RotateOut, TestOut
from app.config import Settings

router = APIRouter(tags=["alerts"], responses=RESPONSES)

EndpointId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of this key's endpoints.")]


def _owned(alerts: AlertsDep, key_id: int, endpoint_id: int) -> Endpoint:
    endpoint = alerts.get_endpoint(key_id, endpoint_id)
    if endpoint is None:
        raise HTTPException(404, f"no endpoint {endpoint_id}")
    return endpoint


@router.post("/endpoints", response_model=EndpointCreated, status_code=201)
def create_endpoint(body: EndpointIn, key: KeyDep, alerts: AlertsDep, request: Request) -> EndpointCreated:
    """Create an endpoint (webhook, email or discord); a webhook's ``whsec_`` secret is in this answer only."""
    settings: Settings = request.app.state.settings
    if body.kind in ("webhook", "discord"):
        try:
            check_target(body.target, settings.webhook_allow_hosts)
        except TargetRefusedError as err:
            raise unprocessable("target", f"target refused: {err}", None, "body") from None
    try:
        endpoint = alerts.create_endpoint(key.id, body.kind, body.target, most=settings.alerts_max_endpoints)
    except QuotaExceededError as err:
        raise HTTPException(409, str(err)) from None
    return EndpointCreated(**EndpointOut.of(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/endpoints", response_model=EndpointsOut)
def list_endpoints(key: KeyDep, alerts: AlertsDep) -> EndpointsOut:
    """This key's endpoints, oldest first (never a secret)."""
    return EndpointsOut(items=[EndpointOut.of(e) for e in alerts.endpoints(key.id)])


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut)
def get_endpoint(endpoint_id: EndpointId, key: KeyDep, alerts: AlertsDep) -> EndpointOut:
    """One of this key's endpoints (never its secret)."""
    return EndpointOut.of(_owned(alerts, key.id, endpoint_id))


@router.delete("/endpoints/{endpoint_id}", status_code=204, response_class=Response)
def delete_endpoint(endpoint_id: EndpointId, key: KeyDep, alerts: AlertsDep) -> Response:
    """Delete an endpoint with its links and deliveries."""
    if not alerts.delete_endpoint(key.id, endpoint_id):
        raise HTTPException(404, f"no endpoint {endpoint_id}")
    return Response(status_code=204)


@router.post("/endpoints/{endpoint_id}/test", response_model=TestOut)
async def test_endpoint(endpoint_id: EndpointId, key: KeyDep, alerts: AlertsDep, request: Request) -> TestOut:
    """Send one signed test message to the endpoint now and say whether it arrived (2xx) or why not."""
    endpoint = await run_in_threadpool(_owned, alerts, key.id, endpoint_id)
    if endpoint.kind != "webhook":  # email and Discord sends are not built yet: say so, send nothing
        return TestOut(sent=False, code=None, reason=f"test sends to {endpoint.kind} endpoints are not available yet")
    settings: Settings = request.app.state.settings
    decision = await send_test(endpoint, allow=settings.webhook_allow_hosts, timeout=10.0)
    if decision.status == "sent":
        return TestOut(sent=True, code=decision.code, reason=None)
    # a test send changes nothing: no retry is scheduled and a 410 does not disable the endpoint
    reason = decision.reason if decision.code is None else f"the receiver answered {decision.code}; only 2xx is success"
    return TestOut(sent=False, code=decision.code, reason=reason)


@router.post("/endpoints/{endpoint_id}/rotate", response_model=RotateOut)
def rotate_endpoint(endpoint_id: EndpointId, key: KeyDep, alerts: AlertsDep) -> RotateOut:
    """A new signing secret for a webhook (shown once); the old one keeps signing for 24 hours."""
    endpoint = _owned(alerts, key.id, endpoint_id)
    if endpoint.kind != "webhook":
        raise HTTPException(409, f"only webhook endpoints sign their deliveries; endpoint {endpoint_id} is {endpoint.kind}")
    secret = alerts.rotate_secret(endpoint_id, key_id=key.id)
    rotated = _owned(alerts, key.id, endpoint_id)
    return RotateOut(id=endpoint_id, secret=secret, previous_secret_until=rotated.previous_until)
