"""``/rules``: a key's alert rules (create, list, read, change, delete) and a 30-day preview of a
rule before it is saved. Another key's rule is a 404, as if it did not exist."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import ValidationError

from app.alerts.preview import Preview, preview_rule
from app.alerts.rule_book import QuotaExceededError
from app.api.alerts_deps import RESPONSES, AlertsDep, KeyDep, body_errors, check_rule, current_snapshot
from app.api.deps import PageDep
from app.api.errors import NoSnapshotError, unprocessable
from app.api.schemas_alerts import MAX_ID, PreviewIn, RuleIn, RuleOut, RulePatch, RulesOut
from app.config import Settings

router = APIRouter(tags=["alerts"], responses=RESPONSES)

RuleId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of this key's rules.")]
_OPTIONS = ("daily_cap", "quiet_start", "quiet_end", "digest_at", "paused")


def _missing(rule_id: int) -> HTTPException:
    return HTTPException(404, f"no rule {rule_id}")


@router.post("/rules", response_model=RuleOut, status_code=201)
def create_rule(body: RuleIn, key: KeyDep, alerts: AlertsDep, request: Request) -> RuleOut:
    """Create a rule delivering to some of this key's endpoints (409 past the key's rule quota)."""
    settings: Settings = request.app.state.settings
    timezone = check_rule(body, current_snapshot(request))
    options = {f: getattr(body, f) for f in _OPTIONS}
    try:
        rule = alerts.create_rule(
            key.id,
            body.name,
            body.spec,
            body.filters,
            city=body.city,
            timezone=timezone,
            endpoint_ids=body.endpoint_ids,
            most=settings.alerts_max_rules,
            **options,
        )
    except QuotaExceededError as err:
        raise HTTPException(409, str(err)) from None
    except LookupError as err:
        raise unprocessable("endpoint_ids", f"{err}: a rule delivers only to endpoints of its own key", body.endpoint_ids, "body") from None
    return RuleOut.of(rule, sorted(set(body.endpoint_ids)))


@router.get("/rules", response_model=RulesOut)
def list_rules(key: KeyDep, alerts: AlertsDep, page: PageDep) -> RulesOut:
    """This key's rules, oldest first, paged."""
    rules = alerts.rules(key.id, limit=page.limit, offset=page.offset)
    links = alerts.rule_endpoint_ids([r.id for r in rules])
    total = alerts.count_rules(key.id)
    items = [RuleOut.of(r, links[r.id]) for r in rules]
    return RulesOut(total=total, limit=page.limit, offset=page.offset, next_offset=page.next_offset(total), items=items)


@router.post("/rules/preview", response_model=Preview)
def preview(body: PreviewIn, key: KeyDep, request: Request) -> Preview:
    """What the rule would have matched in the last 30 days of the snapshot (nothing is saved):
    the count, alerts per day with the daily cap applied, per-day counts, the matches (at most 500)
    and the rule's geometry for a map. Runs in the server's thread pool."""
    snapshot = current_snapshot(request)
    if snapshot is None:
        raise NoSnapshotError()
    timezone = check_rule(body, snapshot)
    if body.city not in snapshot.cities():
        raise unprocessable("city", f"the served snapshot holds no data of {body.city!r} yet", body.city, "body")
    return preview_rule(snapshot, body.city, body.spec, body.filters, timezone=timezone, daily_cap=body.daily_cap)


@router.get("/rules/{rule_id}", response_model=RuleOut)
def get_rule(rule_id: RuleId, key: KeyDep, alerts: AlertsDep) -> RuleOut:
    """One of this key's rules."""
    rule = alerts.get_rule(key.id, rule_id)
    if rule is None:
        raise _missing(rule_id)
    return RuleOut.of(rule, alerts.rule_endpoint_ids([rule_id])[rule_id])


@router.patch("/rules/{rule_id}", response_model=RuleOut)
def update_rule(rule_id: RuleId, body: RulePatch, key: KeyDep, alerts: AlertsDep, request: Request) -> RuleOut:
    """Change some fields of a rule (e.g. ``{"paused": true}``); the result is checked as a whole."""
    rule = alerts.get_rule(key.id, rule_id)
    if rule is None:
        raise _missing(rule_id)
    changes = body.model_dump(exclude_unset=True)
    stored = RuleOut.of(rule, alerts.rule_endpoint_ids([rule_id])[rule_id]).model_dump(exclude={"id", "created_at", "updated_at"})
    try:
        merged = RuleIn.model_validate({**stored, **changes})
    except ValidationError as err:
        raise body_errors(err) from None
    timezone = check_rule(merged, current_snapshot(request))
    values: dict[str, Any] = {f: getattr(merged, f) for f in changes if f not in ("timezone",)}
    if "timezone" in changes or "city" in changes:
        values["timezone"] = timezone
    try:
        updated = alerts.update_rule(key.id, rule_id, **values)
    except LookupError as err:
        raise unprocessable(
            "endpoint_ids", f"{err}: a rule delivers only to endpoints of its own key", changes.get("endpoint_ids"), "body"
        ) from None
    if updated is None:
        raise _missing(rule_id)
    return RuleOut.of(updated, alerts.rule_endpoint_ids([rule_id])[rule_id])


@router.delete("/rules/{rule_id}", status_code=204, response_class=Response)
def delete_rule(rule_id: RuleId, key: KeyDep, alerts: AlertsDep) -> Response:
    """Delete a rule with its links and queued deliveries."""
    if not alerts.delete_rule(key.id, rule_id):
        raise _missing(rule_id)
    return Response(status_code=204)
