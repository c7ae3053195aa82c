"""Provider adapters: each turns a provider's pages into canonical frames for one table.

``adapter_for(spec)`` picks the adapter class by ``spec.provider``; adapters take an injected
``httpx.AsyncClient`` (tests pass one aimed at a local server) and never touch the store.
"""

from __future__ import annotations

from app.data.sources.base import Adapter, IngestCursor, RawPage, adapter_for, register_adapter

__all__ = ["Adapter", "IngestCursor", "RawPage", "adapter_for", "register_adapter"]
