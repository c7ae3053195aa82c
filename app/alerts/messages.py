"""What a person reads: the title, facts and text of an alert or digest, made once from a
delivery's payload and shared by the email and Discord channels (webhooks get the JSON itself).

An event alert shows the provider's own record as the provider published it; an anomaly alert the
released numbers and the published narrative. Nothing here counts or computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["Message", "digest_message", "item_message", "render_email", "render_link_page"]

_ENV = Environment(loader=PackageLoader("app.alerts", "templates"), autoescape=select_autoescape(["html"]), keep_trailing_newline=True)
#: Provider fields shown first when a record has them (the rest follow in the provider's order).
_FIRST = ("unique_key", "id", "created_date", "date", "complaint_type", "primary_type", "descriptor", "description", "status")
_MAX_FIELDS = 20


@dataclass(frozen=True)
class Message:
    """One alert (or one item of a digest) as text: a title, a lead line, labelled facts."""

    title: str
    lead: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    time: str | None = None


def _text(value: Any, limit: int = 300) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def item_message(payload: dict[str, Any], rule_name: str) -> Message:
    """The message of one queued item (an event or an anomaly payload, see
    :mod:`app.alerts.evaluate`)."""
    if payload.get("type") == "test":
        return Message("A test from City Service Heat", _text(payload.get("message")))
    if payload.get("type") == "anomaly":
        unit = payload.get("unit_name") or payload.get("unit_id")
        facts = [
            ("Place", f"{unit} ({payload.get('level')})"),
            ("Category", _text(payload.get("category"))),
            ("Period", f"{payload.get('bin_start')} to {payload.get('bin_end')}"),
            ("Released count", _text(payload.get("count"))),
            ("Expected", _number(payload.get("expected"))),
            ("z", _number(payload.get("zscore"))),
            ("q", _number(payload.get("q"), 4)),
            ("Effect", _text(payload.get("effect"))),
        ]
        title = f"{rule_name}: {payload.get('category')} departs from normal in {unit}"
        return Message(_text(title, 240), _text(payload.get("narrative"), 2000), facts, payload.get("bin_start"))
    record = payload.get("record") if isinstance(payload.get("record"), dict) else {}
    assert isinstance(record, dict)
    keys = [k for k in _FIRST if k in record] + [k for k in record if k not in _FIRST]
    facts = [(str(k), _text(record[k])) for k in keys[:_MAX_FIELDS] if record[k] not in (None, "")]
    lat, lon = payload.get("lat"), payload.get("lon")
    located = isinstance(lat, int | float) and isinstance(lon, int | float)
    where = payload.get("address") or (f"{lat:.5f}, {lon:.5f}" if located else "")  # ~1 m: as precise as a place needs
    title = f"{rule_name}: {payload.get('category') or 'a new report'}" + (f" at {where}" if where else "")
    lead = f"{payload.get('source')} published {payload.get('kind') or 'a record'} {payload.get('id')}" + (
        f" at {payload.get('time')}" if payload.get("time") else ""
    )
    return Message(_text(title, 240), lead, facts, payload.get("time"))


def digest_message(items: list[dict[str, Any]], rule_name: str, day: str) -> tuple[Message, list[Message]]:
    """The digest's own message and one message per item it gathers."""
    parts = [item_message(p, rule_name) for p in items]
    noun = "alert" if len(parts) == 1 else "alerts"
    return Message(f"{rule_name}: {len(parts)} {noun} of {day}", f"Your daily digest of {day} for the rule {rule_name}."), parts


def _number(value: Any, digits: int = 2) -> str:
    return "" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def render_email(message: Message, items: list[Message], links: dict[str, str]) -> tuple[str, str]:
    """The text and HTML bodies of an email (``links``: ``pause`` and ``unsubscribe`` URLs)."""
    context = {"message": message, "items": items, "links": links}
    return _ENV.get_template("email.txt").render(context), _ENV.get_template("email.html").render(context)


def render_link_page(title: str, text: str, action: str | None = None, button: str = "") -> str:
    """The small page a pause or unsubscribe link opens (``action``: where its button posts)."""
    return _ENV.get_template("link_page.html").render(title=title, text=text, action=action, button=button)
