"""The signed-in key's rules (name, kind, city, paused, endpoints; pause or resume, delete) and its
delivery log (status, attempts, last response, next attempt; retry a dead, capped or paused one)."""

from __future__ import annotations

import html
from functools import partial
from typing import Any

import panel as pn
import param
import polars as pl

from app.data.cities import city_name
from app.views.alerts_state import AlertsState
from app.views.tables import TABLE_CSS, html_table

__all__ = ["DeliveryLog", "RulesList"]
#: Statuses a delivery can be retried from (see :meth:`app.alerts.queue.DeliveryQueue.retry`).
_RETRYABLE = ("dead", "capped", "paused")

_ROW_CSS = """
.csh-rule { font-size: 14px; color: #1a1a1a; margin: 0; }
.csh-rule .csh-paused { color: #8a4b00; font-weight: 600; }
"""


def _toggle(state: AlertsState, rule_id: int, paused: bool, _: Any) -> None:
    state.set_paused(rule_id, paused)


def _delete(state: AlertsState, rule_id: int, _: Any) -> None:
    state.delete_rule(rule_id)


class RulesList(pn.viewable.Viewer):
    """One line per rule with its Pause/Resume and Delete buttons (named after the rule, so a
    screen reader's list of buttons says which rule each acts on)."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state whose rules this lists.")

    def _rows(self, rules: list[dict[str, Any]]) -> pn.viewable.Viewable:
        assert self.state is not None
        state = self.state
        if not rules:
            return pn.pane.Markdown("*No rules yet.*", margin=(0, 10))
        lines: list[pn.viewable.Viewable] = []
        for rule in rules:
            rule_id, name, paused = int(rule["id"]), str(rule["name"]), bool(rule["paused"])
            status = '<span class="csh-paused">paused</span>' if paused else "active"
            text = (
                f'<p class="csh-rule"><strong>{html.escape(name)}</strong> · {html.escape(str(rule["kind"]))} · '
                f"{html.escape(city_name(str(rule['city'])))} · {status} · to {html.escape(str(rule['endpoints']))}</p>"
            )
            toggle = pn.widgets.Button(label=f"{'Resume' if paused else 'Pause'} “{name}”", color="light", width=260)
            toggle.on_click(partial(_toggle, state, rule_id, not paused))
            delete = pn.widgets.Button(label=f"Delete “{name}”", color="light", width=260)
            delete.on_click(partial(_delete, state, rule_id))
            lines.append(
                pn.Row(pn.pane.HTML(text, stylesheets=[_ROW_CSS], sizing_mode="stretch_width"), toggle, delete, sizing_mode="stretch_width")
            )
        return pn.Column(*lines, sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        assert self.state is not None
        return pn.Column("## Your rules", pn.panel(pn.bind(self._rows, self.state.param.rules)), sizing_mode="stretch_width")


class DeliveryLog(pn.viewable.Viewer):
    """The key's newest deliveries as a table, a picker of the retryable ones and a Retry button."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state whose deliveries this lists.")

    @staticmethod
    def _table(rows: list[dict[str, Any]]) -> str:
        columns = ["id", "rule", "status", "attempts", "last", "next"]
        frame = pl.DataFrame([{c: str(r[c]) for c in columns} for r in rows], schema=dict.fromkeys(columns, pl.String))
        headings = {
            "id": "Delivery",
            "rule": "Rule",
            "status": "Status",
            "attempts": "Attempts",
            "last": "Last response",
            "next": "Next attempt",
        }
        return html_table(frame, "Deliveries, newest first", css_class="csh-deliveries", numeric=["id", "attempts"], headings=headings)

    def __panel__(self) -> pn.viewable.Viewable:
        assert self.state is not None
        state = self.state
        dead = pn.widgets.Select(label="Delivery to retry (dead, capped or paused)", width=360)
        retry = pn.widgets.Button(label="Retry this delivery", color="light", width=180, align="end")

        def fill(*_: Any) -> None:
            options = {f"#{r['id']} ({r['rule']}: {r['last']})": int(r["id"]) for r in state.deliveries if r["status"] in _RETRYABLE}
            dead.options = options
            dead.disabled = retry.disabled = not options

        def again(_: Any) -> None:
            if dead.value is not None:
                state.retry(int(dead.value))

        retry.on_click(again)
        state.param.watch(fill, "deliveries")
        fill()
        refresh = pn.widgets.Button(label="Refresh the log", color="light", width=180, align="end")
        refresh.on_click(lambda _: state.refresh())
        return pn.Column(
            "## Delivery log",
            pn.pane.HTML(pn.bind(self._table, state.param.deliveries), stylesheets=[TABLE_CSS], sizing_mode="stretch_width"),
            pn.Row(dead, retry, refresh),
            sizing_mode="stretch_width",
        )
