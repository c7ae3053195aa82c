"""Discord deliveries: the webhook JSON Discord documents (``embeds`` with a title, description,
fields and timestamp), within Discord's limits (title 256, description 4096, 25 fields of name
256 / value 1024, 10 embeds), with mentions disabled so a provider's text can never ping anyone.
Discord answers 204 (or 200 with ``?wait=true``); its 429 carries ``Retry-After``."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from app.alerts.messages import Message

__all__ = ["DISCORD_HOSTS", "discord_body", "is_discord_webhook"]

DISCORD_HOSTS = ("discord.com", "discordapp.com", "canary.discord.com", "ptb.discord.com")
_COLOUR = 0xD9480F
_TOTAL = 6000  # characters Discord allows across all embeds of one message


def is_discord_webhook(url: str) -> bool:
    """Whether ``url`` is a Discord webhook URL (``https://discord.com/api/webhooks/<id>/<token>``)."""
    parts = urlsplit(url.strip())
    path = parts.path.split("/")
    return parts.scheme == "https" and (parts.hostname or "") in DISCORD_HOSTS and path[1:3] == ["api", "webhooks"] and len(path) >= 5


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _embed(message: Message) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": _cut(message.title, 256),
        "description": _cut(message.lead, 4096),
        "color": _COLOUR,
        "fields": [{"name": _cut(k, 256), "value": _cut(v, 1024), "inline": len(v) < 40} for k, v in message.facts[:25] if v],
    }
    if message.time:
        embed["timestamp"] = message.time
    return embed


def discord_body(message: Message, items: list[Message], pause_url: str | None = None) -> str:
    """The JSON of one Discord webhook call: the message, and for a digest its first 9 items;
    ``pause_url`` (the signed link that pauses the rule) closes the first embed."""
    embeds = [_embed(message)] + [_embed(item) for item in items[:9]]
    if pause_url:
        embeds[0]["description"] = _cut(embeds[0]["description"], 3800) + f"\n\n[Pause this rule]({pause_url})"
    while len(embeds) > 1 and _size(embeds) > _TOTAL:
        embeds.pop()
    while embeds[0]["fields"] and _size(embeds) > _TOTAL:
        embeds[0]["fields"].pop()
    embeds[0]["description"] = _cut(embeds[0]["description"], max(0, _TOTAL - _size(embeds) + len(embeds[0]["description"])))
    if len(embeds) - 1 < len(items):
        note = f"\n(the first {len(embeds) - 1} of {len(items)} are shown)"
        embeds[0]["description"] = _cut(embeds[0]["description"], max(0, 4096 - len(note))) + note
        while len(embeds) > 1 and _size(embeds) > _TOTAL:
            embeds.pop()
    return json.dumps({"username": "City Service Heat", "embeds": embeds, "allowed_mentions": {"parse": []}})


def _size(embeds: list[dict[str, Any]]) -> int:
    """Characters Discord counts towards its total: titles, descriptions, field names and values."""
    return sum(len(e["title"]) + len(e["description"]) + sum(len(f["name"]) + len(f["value"]) for f in e["fields"]) for e in embeds)
