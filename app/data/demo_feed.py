"""The demo city as a live-like source the scheduler polls (real providers live in app.data.sources)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import polars as pl

from app.data.demo import DemoCity, DemoSpec
from app.data.geography import load_geography

__all__ = ["DEMO_SOURCE", "DemoSource", "Source"]

DEMO_SOURCE = "demo"


class Source(Protocol):
    """A feed of canonical events: ``pull`` returns per-table frames with ``since <= time < until``."""

    name: str
    city: str

    def pull(self, since: datetime, until: datetime) -> dict[str, pl.DataFrame]: ...


@dataclass
class DemoSource:
    """The simulated city as a live feed: every poll yields the events of the elapsed time, the
    same ones (and ids) a full rebuild would produce, because each day has its own random stream."""

    spec: DemoSpec
    name: str = DEMO_SOURCE
    city: str = "nyc"

    def pull(self, since: datetime, until: datetime) -> dict[str, pl.DataFrame]:
        frames = DemoCity(self.spec, load_geography(self.city)).generate(since.astimezone(UTC), until.astimezone(UTC))
        return {kind: frame.drop("planted") for kind, frame in frames.items()}

    def to_meta(self) -> dict[str, str]:
        """What a snapshot records so a later process can resume the same feed."""
        s = self.spec
        return {
            "demo_seed": str(s.seed),
            "demo_end": s.end.isoformat(),
            "demo_days": str(s.days),
            "demo_size": str(s.size),
            "demo_city": self.city,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> DemoSource | None:
        """The demo source recorded in ``meta``, or ``None`` when the store holds no demo."""
        if "demo_seed" not in meta:
            return None
        spec = DemoSpec(int(meta["demo_seed"]), datetime.fromisoformat(meta["demo_end"]), int(meta["demo_days"]), int(meta["demo_size"]))
        return cls(spec, city=meta.get("demo_city", "nyc"))
