"""Cassette replay for adapter tests: recorded pages (body and headers, see ``cassettes/README.md``)
served by a real local HTTP server (pytest-httpserver), and a helper to drain an adapter's pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.data.sources import Adapter, IngestCursor, RawPage

CASSETTES = Path(__file__).with_name("cassettes")


@dataclass(frozen=True)
class Cassette:
    """One recorded exchange: the request it answered and the response (status, headers, body)."""

    path: str
    query: dict[str, str]
    status: int
    headers: dict[str, str]
    body: Any

    def response(self, body: Any = None) -> Response:
        """The recorded response (or the same headers around another ``body``)."""
        return Response(json.dumps(self.body if body is None else body), status=self.status, headers=self.headers)


def load_cassette(name: str) -> Cassette:
    """``cassettes/<name>`` (e.g. ``open311/boston_requests_page1.json``)."""
    raw = json.loads((CASSETTES / name).read_text())
    request, response = raw["request"], raw["response"]
    return Cassette(request["path"], request["query"], response["status"], response["headers"], response["body"])


def cassette_pages(provider: str, prefix: str) -> list[Cassette]:
    """All ``<prefix>_page<N>.json`` cassettes of a provider, in page order."""
    files = sorted((CASSETTES / provider).glob(f"{prefix}_page*.json"), key=lambda p: int(p.stem.rsplit("page", 1)[1]))
    return [load_cassette(f"{provider}/{f.name}") for f in files]


def serve_by_page(
    httpserver: HTTPServer, pages: list[Cassette], empty: Callable[[int], Any], edit: Callable[[Any], Any] | None = None
) -> None:
    """Answer ``GET <cassette path>?page=N`` with the N-th cassette (``empty(N)`` past the last)."""

    def handle(request: Request) -> Response:
        page = int(request.args.get("page", "1"))
        if page > len(pages):
            return pages[-1].response(empty(page))
        cassette = pages[page - 1]
        return cassette.response(edit(cassette.body) if edit else None)

    httpserver.expect_request(pages[0].path, method="GET").respond_with_handler(handle)


def requests_to(httpserver: HTTPServer, path: str) -> list[Request]:
    """The requests the local server received for ``path``, in order."""
    return [request for request, _ in httpserver.log if request.path == path]


def drain(adapter: Adapter, state: IngestCursor | None = None, since: str | None = None) -> list[RawPage]:
    """Every page the adapter yields against the local server, through a real ``httpx.AsyncClient``."""

    async def go() -> list[RawPage]:
        async with httpx.AsyncClient(timeout=5) as client:
            return [page async for page in adapter.pages(client, state or IngestCursor(), since)]

    return asyncio.run(go())
