"""``/links/{token}``: the signed pause, resume and unsubscribe links of alerts, no login needed.

``GET`` shows what the link does and a button (mail scanners that open links change nothing);
``POST`` does it, including the one-click unsubscribe a mail client sends per RFC 8058
(``List-Unsubscribe=One-Click``). Following a link again does nothing more and still says so."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from app.alerts.links import BadLinkError, Link, signer_from_settings
from app.alerts.messages import render_link_page
from app.api.alerts_deps import AlertsDep

router = APIRouter(tags=["alerts"])

Token = Annotated[str, Path(min_length=1, max_length=512, description="The signed token of the link.")]
_ASK = {
    "pause": ("Pause this alert rule", "Pause the rule “{name}”? No alerts are sent for it until it is resumed.", "Pause"),
    "resume": ("Resume this alert rule", "Resume the rule “{name}”?", "Resume"),
    "unsubscribe": ("Unsubscribe", "Stop the rule “{name}” sending to this address?", "Unsubscribe"),
}
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def _read(request: Request, token: str) -> Link | HTMLResponse:
    try:
        return signer_from_settings(request.app.state.settings).read(token)
    except BadLinkError as err:
        page = render_link_page("This link does not work", f"token: {err}. Use the link exactly as it came in the alert.")
        return HTMLResponse(page, status_code=422, headers=_HEADERS)


@router.get("/links/{token}", response_class=HTMLResponse, summary="What a pause or unsubscribe link does")
async def show_link(request: Request, token: Token, alerts: AlertsDep) -> HTMLResponse:
    """A page naming the rule and the action, with a button that does it (``POST``)."""
    link = _read(request, token)
    if isinstance(link, HTMLResponse):
        return link
    name = await run_in_threadpool(alerts.link_subject, link)
    if name is None:
        return HTMLResponse(
            render_link_page("Nothing to do", "This rule no longer exists: nothing more will be sent for it."), headers=_HEADERS
        )
    title, text, button = _ASK[link.action]
    return HTMLResponse(render_link_page(title, text.format(name=name), f"/links/{token}", button), headers=_HEADERS)


@router.post("/links/{token}", response_class=HTMLResponse, summary="Follow a pause or unsubscribe link (one-click)")
async def follow_link(request: Request, token: Token, alerts: AlertsDep) -> HTMLResponse:
    """Do what the link says; the answer says what was done."""
    link = _read(request, token)
    if isinstance(link, HTMLResponse):
        return link
    done = await run_in_threadpool(alerts.follow_link, link)
    return HTMLResponse(render_link_page("Done", done), headers=_HEADERS)
