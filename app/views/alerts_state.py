"""The state of one ``/alerts`` session: the signed-in key, the city, the rule being written, its
preview, and the key's rules, endpoints and deliveries, with the actions the page's views call.

Every read and change goes through :class:`~app.alerts.store.AlertStore` (no SQL here) and every
rule through the API's own checks (:class:`~app.api.schemas_alerts.RuleIn`,
:func:`~app.api.alerts_deps.check_rule`), so the page accepts exactly what ``POST /rules`` does.
The API key itself is never kept: signing in keeps the key's id, and every change first checks
that the key is still live (a key revoked meanwhile signs the page out).

>>> state = AlertsState(alerts=AlertStore(url), snapshot=store.current())   # doctest: +SKIP
>>> state.sign_in(token); state.draft.param.update(lat=40.75, lon=-73.99); state.run_preview()   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import param
import polars as pl
import shapely
import structlog
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.alerts.models import Delivery, Endpoint
from app.alerts.preview import Preview, preview_rule
from app.alerts.queue import RetryRefusedError
from app.alerts.rule_book import QuotaExceededError
from app.alerts.ssrf import TargetRefusedError, check_target
from app.alerts.store import AlertStore
from app.api.alerts_deps import check_rule
from app.api.schemas_alerts import EndpointIn, RuleIn, shown_target
from app.config import Settings
from app.data.cities import default_city
from app.data.registry import city_timezone
from app.data.snapshot import Snapshot
from app.engine.lens import city_categories
from app.views.alerts_draft import RuleDraft, error_text

__all__ = ["BAD_KEY", "MAX_FAILURES", "AlertsState"]

log = structlog.get_logger(__name__)
BAD_KEY = "This key is not valid or has been revoked."
#: Failed sign-ins a session may make before it must wait (guessing keys is throttled).
MAX_FAILURES = 5
_WAIT_S = 60.0
#: Draft fields a preview does not depend on (every other change makes the shown preview stale).
_NOT_PREVIEWED = ("name", "rule_name", "endpoint_ids")


def _problems(err: RequestValidationError) -> str:
    """The API's refusal of a rule (a city or unit it does not know) as the form shows errors."""
    return "\n".join(f"{str(e['loc'][-1]).replace('_', ' ').capitalize()}: {e['msg']}" for e in err.errors())


class AlertsState(param.Parameterized):
    """Everything one browser session of the alerts page shows and does."""

    snapshot = param.ClassSelector(class_=Snapshot, allow_None=True, doc="The served snapshot the preview runs over.")
    key_id = param.Integer(default=None, allow_None=True, doc="The signed-in key's id (the key itself is never kept).")
    key_name = param.String(default="", doc="The signed-in key's name and visible prefix.")
    city = param.Selector[str | None](default=None, objects=[], allow_None=True, check_on_set=False, doc="The city rules are written for.")
    preview = param.ClassSelector(class_=Preview, allow_None=True, doc="The draft's 30-day preview, once asked for.")
    rules = param.List(default=[], doc="The key's rules as rows: id, name, kind, city, paused, endpoints.")
    endpoints = param.List(default=[], doc="The key's endpoints as rows: id, label.")
    deliveries = param.List(default=[], doc="The key's newest deliveries as rows: id, rule, status, attempts, response, next.")
    error = param.String(default="", doc="Why the draft was refused (pydantic's message), or blank.")
    message = param.String(default="", doc="What the last action did.")
    sign_in_error = param.String(default="", doc="Why signing in failed, or blank.")
    secret = param.String(default="", doc="A new webhook's whsec_ secret, shown once (cleared by the next action).")

    def __init__(self, alerts: AlertStore, settings: Settings | None = None, **params: Any) -> None:
        #: The app's alerts store (shared by every session), the quotas and trusted webhook hosts,
        #: and the rule being written (its own parameters, which the form and map bind to).
        self.alerts, self.settings, self.draft = alerts, settings or Settings(), RuleDraft()
        super().__init__(**params)
        self._failures: list[float] = []
        self._cities()
        self.draft.param.watch(self._stale, [p for p in self.draft.param if p not in _NOT_PREVIEWED])

    def _stale(self, *_: Any) -> None:
        """A changed rule drops its old preview: the count shown is always the draft's."""
        self.preview = None

    @param.depends("snapshot", watch=True)
    def _cities(self) -> None:
        """Offer the snapshot's cities (keeping the chosen one while the snapshot still has it)."""
        snap = self.snapshot
        if snap is None:
            return
        self.param.city.objects = snap.cities()
        if self.city not in self.param.city.objects:
            self.city = default_city(snap, "nyc")

    def follow(self, newest: Snapshot | None) -> bool:
        """Preview over ``newest`` from now on when it is a newer snapshot, and re-read the key's
        deliveries (True if the snapshot moved): the page calls this every :data:`FOLLOW_MS`."""
        moved = newest is not None and (self.snapshot is None or newest.id != self.snapshot.id)
        if moved:
            self.snapshot = newest
        if self.key_id is not None:
            self.refresh()
        return moved

    # -- signing in -------------------------------------------------------------------------------

    def sign_in(self, token: str) -> bool:
        """Sign in with an API key (``csh_...``); a bad or revoked one sets :attr:`sign_in_error`."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < _WAIT_S]
        if len(self._failures) >= MAX_FAILURES:
            self.sign_in_error = f"Too many failed attempts: wait {_WAIT_S:.0f} seconds and try again."
            return False
        key = self.alerts.authenticate(token.strip()) if token.strip() else None
        if key is None:
            self._failures.append(now)
            self.sign_in_error = BAD_KEY
            log.info("alerts_page.sign_in_refused")
            return False
        self._failures = []
        self.param.update(key_id=key.id, key_name=f"{key.name} ({key.prefix}…)", sign_in_error="", message="", error="")
        log.info("alerts_page.signed_in", key_id=key.id)
        self.refresh()
        return True

    def sign_out(self, reason: str = "") -> None:
        """Forget the key and everything shown of it (the draft's endpoints were the key's)."""
        self.draft.endpoint_ids = []
        self.param.update(
            key_id=None, key_name="", rules=[], endpoints=[], deliveries=[], preview=None, secret="", message="", sign_in_error=reason
        )

    def _live(self) -> int | None:
        """The key's id if it is still live; signs out (saying why) when it was revoked meanwhile."""
        if self.key_id is None:
            return None
        if self.alerts.live_key(self.key_id) is None:
            self.sign_out("This key has been revoked: sign in with another one.")
            return None
        return int(self.key_id)

    # -- reading ----------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the key's rules, endpoints and newest deliveries."""
        key_id = self._live()
        if key_id is None:
            return
        endpoints = self.alerts.endpoints(key_id)
        labels = {e.id: _endpoint_label(e) for e in endpoints}
        rules = self.alerts.rules(key_id)
        links = self.alerts.rule_endpoint_ids([r.id for r in rules])
        names = {r.id: r.name for r in rules}
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "kind": r.kind,
                "city": r.city,
                "paused": r.paused,
                "endpoints": ", ".join(labels.get(i, f"#{i}") for i in links[r.id]) or "none",
            }
            for r in rules
        ]
        deliveries, _ = self.alerts.delivery_page(key_id, limit=50)
        self.param.update(
            endpoints=[{"id": e.id, "label": labels[e.id]} for e in endpoints],
            rules=rows,
            deliveries=[_delivery_row(d, names) for d in deliveries],
        )

    def categories(self) -> list[str]:
        """The chosen city's categories (the category filter's options)."""
        return city_categories(self.snapshot, self.city) if self.snapshot is not None and self.city else []

    def units(self, level: str) -> dict[str, str]:
        """Name -> unit id of the chosen city's units at ``level`` (the unit pickers' options)."""
        if self.snapshot is None or not self.city:
            return {}
        units = self.snapshot.units(self.city, level).select("name", "unit_id").sort("name")
        return {f"{n} ({u})": u for n, u in zip(units["name"].to_list(), units["unit_id"].to_list(), strict=True)}

    def unit_at(self, level: str, lon: float, lat: float) -> str | None:
        """The chosen city's unit at ``level`` containing a point (None outside every unit)."""
        snap, city = self.snapshot, self.city
        if snap is None or not city:
            return None
        ids, tree = snap.memo(("alerts-unit-tree", city, level), lambda: _unit_tree(snap, city, level))
        hits = tree.query(shapely.Point(lon, lat), predicate="intersects")
        return str(ids[int(hits[0])]) if len(hits) else None

    @param.depends("city", watch=True, on_init=True)
    def _city_changed(self) -> None:
        """A new city: its own time zone by default, and filters, units and preview of the old one dropped."""
        if self.city is None:
            return
        self.draft.param.update(timezone=city_timezone(self.city), categories=[], unit_id="", anomaly_units=[])
        self.preview = None

    # -- the draft ----------------------------------------------------------------------------------

    def _checked(self, *, preview: bool = False) -> tuple[RuleIn, str] | None:
        """The draft as a checked rule body and its time zone, or None with :attr:`error` saying why."""
        if self.city is None:
            self.error = "No city is published yet."
            return None
        try:
            body = self.draft.rule_in(self.city, preview=preview)
            timezone = check_rule(body, self.snapshot)
        except ValidationError as err:
            self.error = error_text(err)
            return None
        except RequestValidationError as err:
            self.error = _problems(err)
            return None
        self.error = ""
        return body, timezone

    def _preview_job(self) -> Callable[[], Preview] | None:
        """The preview of the checked draft, ready to run (None, with :attr:`error`, when it does not check)."""
        self.secret = ""
        checked = self._checked(preview=True)
        snapshot = self.snapshot
        if checked is None or snapshot is None:
            return None
        body, timezone = checked
        return partial(preview_rule, snapshot, body.city, body.spec, body.filters, timezone=timezone, daily_cap=body.daily_cap)

    def _show_preview(self, found: Preview) -> Preview:
        self.preview = found
        self.message = f"Preview: {found.total} match{'es' if found.total != 1 else ''} in the last 30 days."
        return found

    def run_preview(self) -> Preview | None:
        """What the draft would have matched in the last 30 days (nothing is saved)."""
        job = self._preview_job()
        return None if job is None else self._show_preview(job())

    async def run_preview_async(self, apply: Callable[[Callable[[], None]], None] | None = None) -> None:
        """:meth:`run_preview` with the matching in a worker thread, so a month of a big city does
        not hold up the other sessions of the server; ``apply`` runs the step that shows the result
        (a page passes one that holds its document's lock, e.g. ``pn.state.execute``)."""
        job = self._preview_job()
        if job is None:
            return
        self.message = "Previewing the last 30 days..."
        found = await asyncio.to_thread(job)

        def show() -> None:
            self._show_preview(found)

        (apply or (lambda step: step()))(show)

    def save(self) -> int | None:
        """Store the draft as a rule of the key (its id), or None with :attr:`error` saying why."""
        self.secret = ""
        key_id = self._live()
        checked = self._checked()
        if key_id is None or checked is None:
            return None
        body, timezone = checked
        options = {f: getattr(body, f) for f in ("daily_cap", "quiet_start", "quiet_end", "digest_at")}
        try:
            rule = self.alerts.create_rule(
                key_id,
                body.name,
                body.spec,
                body.filters,
                city=body.city,
                timezone=timezone,
                endpoint_ids=body.endpoint_ids,
                most=self.settings.alerts_max_rules,
                **options,
            )
        except (QuotaExceededError, LookupError) as err:
            self.error = str(err)
            return None
        nowhere = "" if body.endpoint_ids else f" It delivers nowhere yet: give it an endpoint (PATCH /rules/{rule.id} with endpoint_ids)."
        self.message = f"Saved the rule “{rule.name}”.{nowhere}"
        self.draft.rule_name = ""  # the next rule needs a name of its own (saving twice would copy this one)
        self.refresh()
        return rule.id

    def add_endpoint(self, kind: str, target: str) -> int | None:
        """A new endpoint of the key, chosen for the draft (its id); a webhook's secret is shown once."""
        self.secret = ""
        key_id = self._live()
        if key_id is None:
            return None
        try:
            body = EndpointIn(kind=kind, target=target.strip())
            if body.kind in ("webhook", "discord"):
                check_target(body.target, self.settings.webhook_allow_hosts)
            endpoint = self.alerts.create_endpoint(key_id, body.kind, body.target, most=self.settings.alerts_max_endpoints)
        except ValidationError as err:
            self.error = "Endpoint: " + "; ".join(e["msg"] for e in err.errors())
            return None
        except TargetRefusedError as err:
            self.error = f"Endpoint: target refused: {err}"
            return None
        except QuotaExceededError as err:
            self.error = str(err)
            return None
        self.error = ""
        self.draft.endpoint_ids = [*self.draft.endpoint_ids, endpoint.id]
        self.refresh()
        self.secret = endpoint.secret or ""
        self.message = f"Added {_endpoint_label(endpoint)}; the rule will deliver to it."
        return endpoint.id

    # -- the key's rules and deliveries -------------------------------------------------------------

    def set_paused(self, rule_id: int, paused: bool) -> bool:
        """Pause or resume one of the key's rules."""
        key_id = self._live()
        rule = self.alerts.update_rule(key_id, rule_id, paused=paused) if key_id is not None else None
        if rule is not None:
            self.message = f"The rule “{rule.name}” is {'paused' if paused else 'active again'}."
            self.refresh()
        return rule is not None

    def delete_rule(self, rule_id: int) -> bool:
        """Delete one of the key's rules (with its queued deliveries)."""
        key_id = self._live()
        name = next((r["name"] for r in self.rules if r["id"] == rule_id), f"#{rule_id}")
        done = key_id is not None and self.alerts.delete_rule(key_id, rule_id)
        if done:
            self.message = f"Deleted the rule “{name}”."
            self.refresh()
        return done

    def retry(self, delivery_id: int) -> bool:
        """Queue one of the key's dead deliveries again."""
        key_id = self._live()
        if key_id is None:
            return False
        try:
            done = self.alerts.retry(key_id, delivery_id, datetime.now(UTC)) is not None
        except RetryRefusedError as err:
            self.error = str(err)
            return False
        if done:
            self.message = f"Delivery {delivery_id} is queued again."
            self.refresh()
        return done

    def matches_frame(self) -> pl.DataFrame:
        """The preview's located matches (lon, lat, label) for the map."""
        rows = [m for m in (self.preview.matches if self.preview else []) if m.lon is not None and m.lat is not None]
        return pl.DataFrame(
            {
                "lon": [m.lon for m in rows],
                "lat": [m.lat for m in rows],
                "label": [f"{m.category or m.kind} · {m.time:%Y-%m-%d %H:%M}" for m in rows],
            },
            schema={"lon": pl.Float64, "lat": pl.Float64, "label": pl.String},
        )


def _unit_tree(snapshot: Snapshot, city: str, level: str) -> tuple[list[str], shapely.STRtree]:
    frame = snapshot.unit_geometries(city, level)
    return frame["unit_id"].to_list(), shapely.STRtree(shapely.from_wkb(frame["geom_wkb"].to_numpy()))


def _endpoint_label(endpoint: Endpoint) -> str:
    """An endpoint as the page names it (a Discord token masked, as the API shows it)."""
    return f"{endpoint.kind} {shown_target(endpoint)}" + (" (disabled)" if endpoint.disabled_reason else "")


def _delivery_row(d: Delivery, rule_names: dict[int, str]) -> dict[str, Any]:
    parts = [f"HTTP {d.last_status}"] if d.last_status is not None else []
    if d.last_error and (d.last_status is None or str(d.last_status) not in d.last_error):
        parts.append(d.last_error)
    last = " · ".join(parts)
    waiting = d.status in ("pending", "held", "sending")
    return {
        "id": d.id,
        "rule": rule_names.get(d.rule_id, f"#{d.rule_id}"),
        "status": d.status,
        "attempts": d.attempts,
        "last": last or "—",
        "next": f"{d.next_attempt_at:%Y-%m-%d %H:%M} UTC" if waiting else "—",
    }
