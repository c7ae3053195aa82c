"""Open311 GeoReport v2 adapter: ``GET {base_url}/requests.json`` in ``start_date``/``end_date`` windows.

GeoReport v2 answers at most 90 days or 1,000 requests per call, and servers cap lower (Boston and
Chicago 50), so a window is read with the ``page``/``page_size`` extension most servers implement
(Boston, Chicago, San Francisco, Toronto, Bloomington); a server that ignores ``page`` answers page 2
with page 1 again, and the window's end then shrinks to the oldest time seen until nothing new comes.

The cursor is the newest value of the field the server's date window filters on (``fields.updated``,
else ``fields.time``). A server orders a window as it likes (Boston: newest update first), so the
cursor is committed with a window's last page only; the next run re-reads ``overlap_minutes`` before it.
``api_key`` is sent only when the entry names a ``token_env`` that is set, and is redacted from errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import polars as pl

from app.data.normalize import get_path
from app.data.registry import SourceSpec
from app.data.sources._rows import iso_z, later, request_frame, start_time, time_range
from app.data.sources.base import IngestCursor, RawPage, register_adapter
from app.data.sources.http import get_json, redact

__all__ = ["DEFAULT_LOOKBACK", "MAX_CALLS_PER_WINDOW", "WINDOW", "Open311Adapter"]

#: Longest ``start_date``..``end_date`` span asked for at once (the spec's own limit is 90 days).
WINDOW = timedelta(days=7)
#: How far back a source with no cursor and no ``--since`` starts (the spec's default span).
DEFAULT_LOOKBACK = timedelta(days=90)
#: A window that has not ended after this many calls is a server bug, not data.
MAX_CALLS_PER_WINDOW = 10_000


@register_adapter("open311")
class Open311Adapter:
    """Service requests of one GeoReport v2 endpoint (``spec.dataset``, when set, is its ``jurisdiction_id``).

    >>> adapter = Open311Adapter(get_source("boston311"))  # doctest: +SKIP
    >>> async for page in adapter.pages(client, IngestCursor()): ...  # doctest: +SKIP
    """

    def __init__(self, spec: SourceSpec, clock: Callable[[], datetime] | None = None) -> None:
        if spec.table != "request":
            raise ValueError(f"{spec.name}: Open311 serves service requests; table must be 'request', not {spec.table!r}")
        self.spec = spec
        self.clock = clock or (lambda: datetime.now(UTC))
        self.url = f"{spec.base_url.rstrip('/')}/requests.json"
        self.cursor_field = spec.fields.updated or spec.fields.time

    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        """Windows oldest first; inside a window, pages in the server's order, the cursor on the last."""
        end = self.clock().astimezone(UTC).replace(microsecond=0)
        start = start_time(self.spec, state, since, end, DEFAULT_LOOKBACK)
        while start < end:
            window_end = min(start + WINDOW, end)
            async for page in self._window(client, start, window_end):
                yield page
            start = window_end

    async def _window(self, client: httpx.AsyncClient, start: datetime, end: datetime) -> AsyncIterator[RawPage]:
        seen: set[str] = set()
        window_end = end
        pending: list[dict[str, Any]] | None = None
        newest: datetime | None = None
        page = 1
        for _ in range(MAX_CALLS_PER_WINDOW):
            rows = await self._fetch(client, start, end, page)
            fresh = [r for r in rows if _key(r, self.spec.fields.id) not in seen]
            seen.update(_key(r, self.spec.fields.id) for r in fresh)
            if fresh:
                if pending is not None:
                    yield RawPage(rows=pending, cursor=None)
                pending = fresh
                newest = later(newest, time_range(fresh, self.cursor_field, self.spec.timezone)[1])
                page += 1
                continue
            if not rows or page == 1:
                break  # an empty page, or a shrunk window with nothing new: the window is done
            oldest = time_range(rows, self.cursor_field, self.spec.timezone)[0]
            if oldest is None or oldest >= end:
                break
            end, page = oldest, 1  # the server ignores `page`: shrink the window to what it has not shown
        else:
            raise RuntimeError(f"{self.spec.name}: window {iso_z(start)}..{iso_z(end)} did not end after {MAX_CALLS_PER_WINDOW} calls")
        if pending is not None:  # a row stamped past the window (a server clock bug) must not push the cursor ahead
            yield RawPage(rows=pending, cursor=iso_z(min(newest, window_end)) if newest else None)

    async def _fetch(self, client: httpx.AsyncClient, start: datetime, end: datetime, page: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"start_date": iso_z(start), "end_date": iso_z(end), "page": page, "page_size": self.spec.page_size}
        if self.spec.dataset:
            params["jurisdiction_id"] = self.spec.dataset
        if token := self.spec.token():
            params["api_key"] = token
        try:
            body, _ = await get_json(client, self.url, params)
        except httpx.HTTPStatusError as exc:  # its message quotes the URL, api_key included
            raise httpx.HTTPStatusError(redact(str(exc)), request=exc.request, response=exc.response) from None
        if isinstance(body, dict) and isinstance(body.get("service_requests"), list):
            body = body["service_requests"]  # a few servers wrap the list
        if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
            raise ValueError(f"{self.spec.name}: requests.json did not answer a list of service requests")
        return body

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Canonical request rows; GeoReport times carry offsets, so they are exact in UTC."""
        return request_frame(self.spec, rows)


def _key(row: dict[str, Any], id_field: str) -> str:
    """Identity of a row inside one window (rows with no id yet, e.g. Chicago's tokens, by content)."""
    value = get_path(row, id_field)
    return f"id:{value}" if value not in (None, "") else "row:" + json.dumps(row, sort_keys=True, default=str)
