"""The ``/alerts`` page: sign in with an API key, write a rule on the map and in the form, preview
its last 30 days, save it, and manage the key's rules and deliveries.

``build_alerts`` is the factory the FastAPI mount calls per browser session (like
:func:`app.views.page.build_dashboard`): a fresh :class:`AlertsState` over the app's one
:class:`~app.alerts.store.AlertStore` and the served snapshot. The key is typed into a password
field and checked on the server; it never reaches the URL, the logs or the session state (only the
key's id does).
"""

from __future__ import annotations

import html
from typing import Any

import panel as pn
import param
from bokeh.models import CustomJS
from panel.template.base import BasicTemplate

from app.alerts.store import AlertStore
from app.config import Settings
from app.data.store import Store
from app.views.alerts_form import RuleForm
from app.views.alerts_map import AlertsMap
from app.views.alerts_preview import PreviewView
from app.views.alerts_rules import DeliveryLog, RulesList
from app.views.alerts_state import AlertsState
from app.views.page import FOLLOW_MS
from app.views.scripts import script
from app.views.template import template

__all__ = ["TITLE", "SignIn", "alerts_page", "build_alerts"]

TITLE = "City Service Heat · Alerts"
_ACCENT = "#b2401e"
_NOTE = {"font-size": "0.9em", "color": "#444"}
_CODE_CSS = "code { color: #1a1a1a; background: #f0f0f0; padding: 0 3px; }"  # Bootstrap's pink code fails 4.5:1 here


def _signed_in(key_id: int | None) -> bool:
    return key_id is not None


def _signed_out(key_id: int | None) -> bool:
    return key_id is None


def _who(name: str) -> str:
    return f"Signed in with the key **{name}**." if name else ""


def _problem(text: str) -> str:
    return f'<p role="alert" style="color:#a4161a;font-weight:600">{html.escape(text)}</p>' if text else ""


def _status(text: str) -> str:
    return f'<p role="status" aria-live="polite" style="margin:0">{html.escape(text)}</p>'


class SignIn(pn.viewable.Viewer):
    """The key field and its message; once signed in, who is signed in and a Sign out button."""

    state = param.ClassSelector(class_=AlertsState, doc="The session state this signs in.")

    def __panel__(self) -> pn.viewable.Viewable:
        assert self.state is not None
        state = self.state
        key = pn.widgets.PasswordInput(label="API key", placeholder="csh_…", width=360)
        button = pn.widgets.Button(label="Sign in", color="primary", align="end")

        def submit(*_: Any) -> None:
            token = (key.value_input or key.value or "").strip()
            if not token:  # the field was just cleared (Enter, then the button's blur), or nothing typed
                return
            key.param.update(value="", value_input="")  # the field never holds a key after use
            state.sign_in(token)

        button.on_click(submit)
        key.param.watch(lambda e: submit() if e.new else None, "value")  # Enter in the field
        problem = pn.pane.HTML(
            pn.bind(_problem, state.param.sign_in_error),
            margin=(0, 10),
        )
        out = pn.widgets.Button(label="Sign out", color="light", width=140)
        out.on_click(lambda _: state.sign_out())
        signed_out = pn.Column(
            "## Sign in",
            pn.pane.Markdown(
                "Sign in with an API key of the alert API (`python -m app.alerts keys create NAME` prints one). "
                "It is checked on the server and not kept by this page.",
                styles=_NOTE,
                stylesheets=[_CODE_CSS],
            ),
            pn.Row(key, button),
            problem,
            visible=pn.bind(_signed_out, state.param.key_id),
            sizing_mode="stretch_width",
        )
        signed_in = pn.Row(
            pn.pane.Markdown(pn.bind(_who, state.param.key_name), sizing_mode="stretch_width"),
            out,
            visible=pn.bind(_signed_in, state.param.key_id),
            sizing_mode="stretch_width",
        )
        return pn.Column(signed_out, signed_in, sizing_mode="stretch_width")


def _message(state: AlertsState) -> pn.viewable.Viewable:
    """What the last action did, in a polite live region."""
    return pn.pane.HTML(
        pn.bind(_status, state.param.message),
        sizing_mode="stretch_width",
        margin=(0, 10),
    )


def alerts_page(state: AlertsState) -> BasicTemplate:
    """The page over one session state."""
    signed_in = pn.bind(_signed_in, state.param.key_id)
    work = pn.Row(
        pn.Column(RuleForm(state=state), width=380),
        pn.Column("## Map", AlertsMap(state=state), PreviewView(state=state), sizing_mode="stretch_width", min_width=480),
        sizing_mode="stretch_width",
    )
    body = pn.Column(
        SignIn(state=state),
        _message(state),
        pn.Column(work, RulesList(state=state), DeliveryLog(state=state), visible=signed_in, sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )
    return template(TITLE, main=[body], sidebar=[], accent=_ACCENT, skip_label="Skip to the alerts")


def build_alerts(alerts: AlertStore, store: Store, settings: Settings) -> BasicTemplate:
    """A fresh state and page for one browser session; a live session follows the newest snapshot
    and re-reads its delivery log every :data:`~app.views.page.FOLLOW_MS`."""
    state = AlertsState(alerts, settings=settings, snapshot=store.current())
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.add_periodic_callback(lambda: _ignore(state.follow(store.current())), period=FOLLOW_MS)
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=script("alerts_canvas.js")))  # the canvases named
    return alerts_page(state)


def _ignore(_: object) -> None:
    """A periodic callback returns nothing."""
