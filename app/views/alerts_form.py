"""The rule form of the alerts page: the city, the rule's kind and the kind's fields (each place
the map sets can be typed here too), the category filter, time zone, daily cap, quiet hours and
digest, where the alerts go (an existing endpoint, or a new webhook, email or Discord target),
and the Preview and Save buttons. Every widget is bound to the draft; pydantic's message for bad
input shows beside the buttons."""

from __future__ import annotations

from typing import Any

import panel as pn
import param

from app.alerts.rule_book import ENDPOINT_KINDS
from app.data.cities import city_name
from app.views.alerts_draft import AREA_LEVELS, RuleDraft
from app.views.alerts_state import AlertsState
from app.views.page import NUMBER_CSS

__all__ = ["KIND_NAMES", "RuleForm"]

#: What the kind picker calls each rule kind.
KIND_NAMES = {
    "Radius around a point": "radius",
    "Polygon drawn on the map": "polygon",
    "Area (a unit of the city)": "area",
    "Address": "address",
    "Keyword": "keyword",
    "Licence plate": "plate",
    "Anomaly (released scores)": "anomaly",
}
_LEVEL_NAMES = {"Tract": "tract", "Neighborhood": "neighborhood", "Borough": "borough"}
_SMALL = {"font-size": "0.85em", "color": "#444"}


def _ignore(_: object) -> None:
    """A button callback returns nothing (the state's actions say what they did themselves)."""


def _is_set(value: object) -> bool:
    return bool(value)


def _lines(text: str) -> str:
    """Markdown line breaks between error lines."""
    return text.replace("\n", "  \n")


def _no_endpoint(endpoints: list[Any]) -> str:
    return "" if endpoints else "*No endpoint yet: add one below.*"


class RuleForm(pn.viewable.Viewer):
    """The form that writes the session's draft rule and asks for its preview or saves it."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state whose draft this form writes.")

    @property
    def bound(self) -> AlertsState:
        assert self.state is not None, "RuleForm needs a state"
        return self.state

    @property
    def draft(self) -> RuleDraft:
        return self.bound.draft

    def _shown_for(self, *kinds: str) -> Any:
        def shown(kind: str) -> bool:
            return kind in kinds

        return pn.bind(shown, self.draft.param.kind)

    def _kind_fields(self) -> list[pn.viewable.Viewable]:
        """One group of fields per rule kind, shown while that kind is chosen."""
        d = self.draft.param
        num = {"stylesheets": [NUMBER_CSS]}
        radius = pn.Column(
            pn.widgets.FloatInput.from_param(d.lat, label="Latitude of the centre", **num),
            pn.widgets.FloatInput.from_param(d.lon, label="Longitude of the centre", **num),
            pn.widgets.FloatInput.from_param(d.radius_m, label="Radius (m)", step=50, **num),
            pn.pane.Markdown("Click the map to place the centre.", styles=_SMALL, margin=(0, 10)),
            visible=self._shown_for("radius"),
        )
        clear = pn.widgets.Button(label="Clear the polygon", color="light")
        clear.on_click(lambda _: setattr(self.draft, "polygon", []))
        polygon = pn.Column(
            pn.pane.Markdown(pn.bind(self._polygon_note, d.polygon), styles=_SMALL, margin=(0, 10)),
            clear,
            visible=self._shown_for("polygon"),
        )
        level = pn.widgets.Select.from_param(d.level, label="Area level", options=_LEVEL_NAMES)
        unit = pn.widgets.Select(label="Area unit")

        def units(*_: Any) -> None:
            options = {"(pick one)": "", **self.bound.units(self.draft.level)}
            unit.options = options
            unit.value = self.draft.unit_id if self.draft.unit_id in options.values() else ""

        unit.param.watch(lambda e: setattr(self.draft, "unit_id", e.new or ""), "value")
        self.draft.param.watch(units, ["level", "unit_id"])
        self.bound.param.watch(units, "city")
        units()
        area = pn.Column(
            level,
            unit,
            pn.pane.Markdown("Or click a unit on the map.", styles=_SMALL, margin=(0, 10)),
            visible=self._shown_for("area"),
        )
        texts = [
            pn.widgets.TextInput.from_param(d.address, label="Address (as the provider publishes it)", visible=self._shown_for("address")),
            pn.widgets.TextInput.from_param(d.keyword, label="Keyword (plain text, any case)", visible=self._shown_for("keyword")),
            pn.widgets.TextInput.from_param(d.plate, label="Licence plate", visible=self._shown_for("plate")),
        ]
        return [radius, polygon, area, *texts, self._anomaly_fields()]

    def _anomaly_fields(self) -> pn.viewable.Viewable:
        d = self.draft.param
        level = pn.widgets.Select.from_param(d.anomaly_level, label="Anomaly level", options={**_LEVEL_NAMES, "Whole city": "city"})
        units = pn.widgets.MultiSelect(label="Units watched (none picked: every unit)", size=6)

        def fill(*_: Any) -> None:
            lvl = self.draft.anomaly_level
            options = self.bound.units(lvl) if lvl in AREA_LEVELS else {}
            units.options = options
            units.value = [u for u in self.draft.anomaly_units if u in options.values()]
            units.disabled = not options

        units.param.watch(lambda e: setattr(self.draft, "anomaly_units", list(e.new)), "value")
        self.draft.param.watch(fill, "anomaly_level")
        self.bound.param.watch(fill, "city")
        fill()
        num = {"stylesheets": [NUMBER_CSS]}
        return pn.Column(
            level,
            units,
            pn.widgets.FloatInput.from_param(d.min_z, label="Minimum z-score", step=0.5, **num),
            pn.widgets.FloatInput.from_param(d.max_q, label="Largest q-value", step=0.01, **num),
            visible=self._shown_for("anomaly"),
        )

    @staticmethod
    def _polygon_note(ring: list[Any]) -> str:
        if not ring:
            return "Pick the polygon tool above the map, press and hold where the polygon starts, click each corner, press and hold on the last one."
        return f"Polygon of {len(ring)} corners drawn."

    def _categories(self) -> pn.widgets.MultiSelect:
        widget = pn.widgets.MultiSelect(label="Only these categories (none picked: all)", size=6)

        def fill(*_: Any) -> None:
            options = self.bound.categories()
            widget.options = options
            widget.value = [c for c in self.draft.categories if c in options]

        widget.param.watch(lambda e: setattr(self.draft, "categories", list(e.new)), "value")
        self.bound.param.watch(fill, ["city", "snapshot"])
        self.draft.param.watch(fill, "categories")
        fill()
        return widget

    def _schedule(self) -> list[pn.viewable.Viewable]:
        d = self.draft.param
        clock: dict[str, Any] = {"placeholder": "HH:MM"}
        return [
            pn.widgets.TextInput.from_param(d.timezone, label="Time zone (IANA, e.g. America/New_York)"),
            pn.widgets.IntInput.from_param(d.daily_cap, label="Daily cap (blank: none)", start=1, stylesheets=[NUMBER_CSS]),
            pn.Row(
                pn.widgets.TextInput.from_param(d.quiet_start, label="Quiet from", **clock),
                pn.widgets.TextInput.from_param(d.quiet_end, label="Quiet until", **clock),
            ),
            pn.widgets.TextInput.from_param(d.digest_at, label="Daily digest at (blank: single alerts)", **clock),
        ]

    def _endpoints(self) -> list[pn.viewable.Viewable]:
        """Which of the key's endpoints the rule delivers to, and a form to add one."""
        chosen = pn.widgets.CheckBoxGroup(label="Deliver to", inline=False)

        def fill(*_: Any) -> None:
            options = {e["label"]: e["id"] for e in self.bound.endpoints}
            chosen.options = options
            chosen.value = [i for i in self.draft.endpoint_ids if i in options.values()]

        chosen.param.watch(lambda e: setattr(self.draft, "endpoint_ids", list(e.new)), "value")
        self.bound.param.watch(fill, "endpoints")
        self.draft.param.watch(fill, "endpoint_ids")
        fill()
        kind = pn.widgets.Select(label="New endpoint kind", options=list(ENDPOINT_KINDS), value="webhook")
        target = pn.widgets.TextInput(label="New endpoint target (URL or email address)", placeholder="https://… or name@example.org")
        add = pn.widgets.Button(label="Add this endpoint", color="light")

        def added(_: Any) -> None:
            if self.bound.add_endpoint(str(kind.value), target.value or "") is not None:
                target.value = ""

        add.on_click(added)
        secret = pn.pane.Alert(
            pn.bind(self._secret_note, self.bound.param.secret),
            alert_type="warning",
            visible=pn.bind(_is_set, self.bound.param.secret),
            margin=(0, 10),
        )
        none = pn.pane.Markdown(pn.bind(_no_endpoint, self.bound.param.endpoints), styles=_SMALL, margin=(0, 10))
        return [pn.pane.Markdown("**Deliver to**", margin=(5, 10, 0, 10)), chosen, none, kind, target, add, secret]

    @staticmethod
    def _secret_note(secret: str) -> str:
        return f"The webhook's signing secret, shown only now: `{secret}`. Keep it to verify deliveries." if secret else ""

    def __panel__(self) -> pn.viewable.Viewable:
        state, d = self.bound, self.draft.param
        city = pn.widgets.Select.from_param(state.param.city, label="City", options={city_name(c): c for c in state.param.city.objects})
        kind = pn.widgets.Select.from_param(d.kind, label="Rule kind", options=KIND_NAMES)
        preview = pn.widgets.Button(label="Preview the last 30 days", color="primary")

        async def _preview(_: object) -> None:  # the result is shown under the document's lock: the map's sources change too
            await state.run_preview_async(lambda step: pn.state.execute(step, schedule=True))

        preview.on_click(_preview)
        save = pn.widgets.Button(label="Save the rule", color="success")
        save.on_click(lambda _: _ignore(state.save()))
        error = pn.pane.Alert(
            pn.bind(_lines, state.param.error),
            alert_type="danger",
            visible=pn.bind(_is_set, state.param.error),
            margin=(0, 10),
        )
        return pn.Column(
            "## New rule",
            city,
            pn.widgets.TextInput.from_param(d.rule_name, label="Rule name"),
            kind,
            *self._kind_fields(),
            self._categories(),
            *self._schedule(),
            *self._endpoints(),
            pn.Row(preview, save),
            error,
            sizing_mode="stretch_width",
        )
