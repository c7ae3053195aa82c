"""``/deliveries``: the delivery log of a key's rules (status, attempts, the last answer) and a
hand retry of a dead delivery."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from app.alerts.queue import RetryRefusedError
from app.api.alerts_deps import RESPONSES, AlertsDep, KeyDep
from app.api.deps import PageDep
from app.api.schemas_alerts import MAX_ID, DeliveriesOut, DeliveryOut, DeliveryStatus

router = APIRouter(tags=["alerts"], responses=RESPONSES)


@router.get("/deliveries", response_model=DeliveriesOut)
def list_deliveries(
    key: KeyDep,
    alerts: AlertsDep,
    page: PageDep,
    status: Annotated[DeliveryStatus | None, Query(description="Only deliveries of this status.")] = None,
    rule_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only deliveries of this rule.")] = None,
) -> DeliveriesOut:
    """This key's deliveries, newest first, paged: status, attempts, the receiver's last answer."""
    rows, total = alerts.delivery_page(key.id, status=status, rule_id=rule_id, limit=page.limit, offset=page.offset)
    items = [DeliveryOut.of(d) for d in rows]
    return DeliveriesOut(total=total, limit=page.limit, offset=page.offset, next_offset=page.next_offset(total), items=items)


@router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryOut)
def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Id of a dead delivery of this key.")],
    key: KeyDep,
    alerts: AlertsDep,
) -> DeliveryOut:
    """Queue a dead delivery again, due now, with a fresh retry schedule (409 unless it is dead)."""
    try:
        delivery = alerts.retry(key.id, delivery_id, datetime.now(UTC))
    except RetryRefusedError as err:
        raise HTTPException(409, str(err)) from None
    if delivery is None:
        raise HTTPException(404, f"no delivery {delivery_id}")
    return DeliveryOut.of(delivery)
