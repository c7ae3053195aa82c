"""Signed webhook requests per the Standard Webhooks spec (the ``standardwebhooks`` package signs):
``webhook-id`` (stable per delivery, so a receiver can drop a repeat), ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one signature per live secret
(the old and the new one while a rotation overlaps). Sent to the checked address
(:mod:`app.alerts.ssrf`), redirects not followed, the response read up to a byte cap."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
from standardwebhooks.webhooks import Webhook

from app.alerts.ssrf import Target

__all__ = ["DEADLINE_S", "MAX_RESPONSE_BYTES", "Reply", "post_pinned", "send_signed", "signature_header"]

MAX_RESPONSE_BYTES = 64 * 1024
#: Seconds a whole webhook exchange may take (connect, send, read the capped reply).
DEADLINE_S = 15.0


class Reply:
    """What a receiver answered: status, ``Retry-After`` and the first bytes of the body."""

    def __init__(self, status: int, retry_after: str | None, body: bytes) -> None:
        self.status, self.retry_after, self.body = status, retry_after, body


def signature_header(secrets: list[str], msg_id: str, at: datetime, body: str) -> str:
    """The ``webhook-signature`` value: ``v1,<sig>`` per secret, space-separated."""
    return " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets)


async def send_signed(
    client: httpx.AsyncClient, target: Target, secrets: list[str], msg_id: str, at: datetime, body: str, deadline_s: float = DEADLINE_S
) -> Reply:
    """POST ``body`` (JSON) to ``target``, signed with every secret in ``secrets``; the whole
    exchange ends within ``deadline_s`` (``TimeoutError``), however slowly the receiver answers."""
    async with asyncio.timeout(deadline_s):
        return await _post(client, target, secrets, msg_id, at, body)


async def _post(client: httpx.AsyncClient, target: Target, secrets: list[str], msg_id: str, at: datetime, body: str) -> Reply:
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(secrets, msg_id, at, body),
    }
    return await post_pinned(client, target, body, headers)


async def post_pinned(client: httpx.AsyncClient, target: Target, body: str, headers: dict[str, str]) -> Reply:
    """POST JSON ``body`` to the checked address of ``target`` (its host in ``Host`` and TLS SNI),
    without following redirects, reading at most :data:`MAX_RESPONSE_BYTES` of the answer."""
    default = 443 if target.url.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    headers = {
        "content-type": "application/json",
        "user-agent": "city-service-heat-alerts",
        "accept-encoding": "identity",  # the byte cap counts what arrives, not what it inflates to
        "host": host if target.port == default else f"{host}:{target.port}",
        **headers,
    }
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    request = client.build_request("POST", target.pinned_url, content=body.encode(), headers=headers, extensions=extensions)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_RESPONSE_BYTES:
                break
        return Reply(response.status_code, response.headers.get("retry-after"), b"".join(chunks)[:MAX_RESPONSE_BYTES])
    finally:
        await response.aclose()
