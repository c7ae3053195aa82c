"""SeeClickFix API v2 adapter: ``GET {base_url}/issues`` of one place or organisation.

``spec.dataset`` selects the issues: a place ``url_name`` (``cambridge`` -> ``place_url=cambridge``),
or a query string sent as is for an organisation best selected another way (``request_types=5763,5764``,
a bounding box ``min_lat=..&min_lng=..&max_lat=..&max_lng=..``). Another organisation is one more
registry entry.

Pages are read ``sort=updated_at&sort_direction=DESC`` following ``metadata.pagination.next_page``,
down to the cursor minus ``overlap_minutes``: an issue updated while we page jumps to the front (already
read), so pages can only repeat a row, never skip one. That order means the cursor (newest
``updated_at`` seen) is committed with the last page only. SeeClickFix's ``after`` bounds creation
time (an issue is updated no earlier than created), so it is sent on backfills only. The first page's
ETag is kept: an unchanged first page answers 304 Not Modified and the run stops there.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import polars as pl

from app.data.registry import SourceSpec
from app.data.sources._rows import iso_z, later, request_frame, start_time, time_range
from app.data.sources.base import IngestCursor, RawPage, register_adapter
from app.data.sources.http import get_json

__all__ = ["DEFAULT_LOOKBACK", "MAX_PAGES", "MAX_PER_PAGE", "STATUSES", "SeeClickFixAdapter"]

#: How far back a source with no cursor and no ``--since`` starts.
DEFAULT_LOOKBACK = timedelta(days=90)
#: The issues endpoint's documented ``per_page`` maximum.
MAX_PER_PAGE = 1000
#: Every status, archived included (the API's default leaves archived issues out, and a status
#: change to archived is an update we must see).
STATUSES = "open,acknowledged,closed,archived"
#: A run that has not ended after this many pages is a server bug, not data.
MAX_PAGES = 100_000


@register_adapter("seeclickfix")
class SeeClickFixAdapter:
    """Issues of one SeeClickFix place or organisation (``token_env``, if set, holds ``email:password``
    for HTTP Basic auth, the API's documented scheme; public issues need none).

    >>> adapter = SeeClickFixAdapter(get_source("cambridge_scf"))  # doctest: +SKIP
    >>> async for page in adapter.pages(client, IngestCursor()): ...  # doctest: +SKIP
    """

    def __init__(self, spec: SourceSpec, clock: Callable[[], datetime] | None = None) -> None:
        if spec.table != "request":
            raise ValueError(f"{spec.name}: SeeClickFix serves issues; table must be 'request', not {spec.table!r}")
        if not spec.dataset:
            raise ValueError(f"{spec.name}: SeeClickFix needs `dataset`: a place url_name or a query such as 'request_types=1,2'")
        self.spec = spec
        self.clock = clock or (lambda: datetime.now(UTC))
        self.url = f"{spec.base_url.rstrip('/')}/issues"
        self.selector = dict(parse_qsl(spec.dataset)) if "=" in spec.dataset else {"place_url": spec.dataset}
        self.cursor_field = spec.fields.updated or spec.fields.time

    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        """Newest update first down to the floor; the cursor and the first page's ETag ride on the last page."""
        now = self.clock().astimezone(UTC)
        floor = start_time(self.spec, state, since, now, DEFAULT_LOOKBACK)
        backfill = since is not None or state.cursor is None
        params: dict[str, Any] = {
            **self.selector,
            "status": STATUSES,
            "sort": "updated_at",
            "sort_direction": "DESC",
            "per_page": min(self.spec.page_size, MAX_PER_PAGE),
        }
        if backfill:
            params["after"] = iso_z(floor)
        pending: list[dict[str, Any]] | None = None
        newest: datetime | None = None
        validators: tuple[str | None, str | None] = (None, None)
        page: int | None = 1
        for _ in range(MAX_PAGES):
            if page is None:
                break
            conditional = page == 1 and not backfill
            body, response = await get_json(client, self.url, {**params, "page": page}, self._headers(state if conditional else None))
            if body is None:  # 304: the first page is as it was, so nothing changed since the last run
                yield RawPage(rows=[], cursor=None, not_modified=True)
                return
            if not isinstance(body, dict) or not isinstance(body.get("issues"), list):
                raise ValueError(f"{self.spec.name}: /issues did not answer an object with an `issues` list")
            if conditional:
                validators = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
            rows: list[dict[str, Any]] = body["issues"]
            if not rows:
                break
            if pending is not None:
                yield RawPage(rows=pending, cursor=None)
            pending = rows
            oldest, latest = time_range(rows, self.cursor_field, self.spec.timezone)
            newest = later(newest, latest)
            page = None if oldest is not None and oldest < floor else _next_page(body, page)
        else:
            raise RuntimeError(f"{self.spec.name}: paging did not end after {MAX_PAGES} pages")
        if pending is not None:
            etag, last_modified = validators
            cursor = iso_z(min(newest, now)) if newest else None  # never ahead of our clock (a row stamped in the future)
            yield RawPage(rows=pending, cursor=cursor, etag=etag, last_modified=last_modified)

    def _headers(self, state: IngestCursor | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if token := self.spec.token():
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        if state is not None and state.etag:
            headers["If-None-Match"] = state.etag
        if state is not None and state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        return headers

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Canonical request rows; nested fields (``request_type.title``) come through dotted paths."""
        return request_frame(self.spec, rows)


def _next_page(body: dict[str, Any], page: int) -> int | None:
    """``metadata.pagination.next_page`` (null on the last page); ``page + 1`` if a server omits metadata."""
    metadata = body.get("metadata")
    pagination = metadata.get("pagination") if isinstance(metadata, dict) else None
    if not isinstance(pagination, dict):
        return page + 1
    nxt = pagination.get("next_page")
    return nxt if isinstance(nxt, int) and nxt > page else None
