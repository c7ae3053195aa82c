"""The adapter contract shared by every provider.

An adapter yields :class:`RawPage` objects (the provider's rows exactly as received, plus the
cursor to store once that page is committed) and turns raw rows into a canonical frame. The
ingest loop (``app.data.ingest``) does the rest: point-in-tract join, upsert, cursor, breaker.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import polars as pl

from app.data.registry import SourceSpec

__all__ = ["CANONICAL_COLUMNS", "Adapter", "IngestCursor", "RawPage", "adapter_for", "register_adapter"]

#: Columns of the canonical frame an adapter returns for each table (before the tract join).
CANONICAL_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "request": {
        "source_id": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "category": pl.String(),
        "descriptor": pl.String(),
        "lon": pl.Float64(),
        "lat": pl.Float64(),
        "attrs": pl.String(),
    },
    "incident": {
        "source_id": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "type": pl.String(),
        "severity": pl.Int16(),
        "lon": pl.Float64(),
        "lat": pl.Float64(),
        "attrs": pl.String(),
    },
    "closure": {
        "source_id": pl.String(),
        "start_ts": pl.Datetime("us", "UTC"),
        "end_ts": pl.Datetime("us", "UTC"),
        "kind": pl.String(),
        "description": pl.String(),
        "lon": pl.Float64(),
        "lat": pl.Float64(),
        "attrs": pl.String(),
    },
}


@dataclass(frozen=True)
class IngestCursor:
    """Where the previous ingest stopped: the provider cursor and the HTTP validators it saw."""

    cursor: str | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class RawPage:
    """One page as received. ``cursor``/``etag``/``last_modified`` are stored only after the page's
    rows are committed, so a crash re-reads it instead of skipping it."""

    rows: list[dict[str, Any]]
    cursor: str | None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class Adapter(Protocol):
    """What every provider adapter offers."""

    spec: SourceSpec

    def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        """Pages newer than ``state`` (or than ``since`` for a backfill), oldest first."""
        ...

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Canonical frame (:data:`CANONICAL_COLUMNS` of ``spec.table``) in UTC and WGS84; rows with
        bad or missing coordinates are kept with null lon/lat."""
        ...


_ADAPTERS: dict[str, Callable[[SourceSpec], Adapter]] = {}


def register_adapter(provider: str) -> Callable[[Callable[[SourceSpec], Adapter]], Callable[[SourceSpec], Adapter]]:
    """Class decorator: make ``cls`` the adapter of ``provider``."""

    def decorate(cls: Callable[[SourceSpec], Adapter]) -> Callable[[SourceSpec], Adapter]:
        _ADAPTERS[provider] = cls
        return cls

    return decorate


#: The module that registers each provider's adapter, imported on first use to keep startup light.
_PROVIDER_MODULES = {
    "socrata": "socrata",
    "highways_xml": "highways",
    "highways_datex": "highways",
    "open311": "open311",
    "seeclickfix": "seeclickfix",
}


def adapter_for(spec: SourceSpec) -> Adapter:
    """The adapter instance for ``spec`` (imports its provider module on first use)."""
    if spec.provider not in _ADAPTERS and spec.provider in _PROVIDER_MODULES:
        importlib.import_module(f"app.data.sources.{_PROVIDER_MODULES[spec.provider]}")  # registers itself
    if spec.provider not in _ADAPTERS:
        raise KeyError(f"no adapter for provider {spec.provider!r}")
    return _ADAPTERS[spec.provider](spec)
