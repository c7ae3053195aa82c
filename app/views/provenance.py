"""Provenance and licence panel: where the numbers on screen come from and under which release rule.

A reader of a public dashboard needs to know who published each dataset, under which licence, how
fresh it is and how the counts were protected before they can cite or trust a figure. Everything
here is read from the snapshot (its ``ingest_state``, meta and release facts, incl. the ε a ``dp``
release has spent) and the source registry; nothing is added to the data layer, and a fact none of them records is shown as "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import panel as pn
import polars as pl
from pydantic import ValidationError

from app.data.cities import city_name
from app.data.demo_feed import DEMO_SOURCE, DemoSource
from app.data.registry import SourceSpec, load_registry
from app.data.snapshot import Snapshot
from app.engine.lens import Lens
from app.views.base import LensView

__all__ = [
    "UNKNOWN",
    "ProvenancePanel",
    "SourceLine",
    "age_text",
    "privacy_rule",
    "privacy_text",
    "snapshot_text",
    "source_lines",
    "sources_markdown",
]

UNKNOWN = "unknown"
_SMALL = {"font-size": "0.85em", "color": "#555"}


@dataclass(frozen=True)
class SourceLine:
    """One source as the panel shows it (every field already text; "unknown" when not recorded)."""

    source: str
    publisher: str
    dataset: str
    licence: str
    last_fetch: str
    age: str
    rows: str


def age_text(then: datetime | None, now: datetime) -> str:
    """A short age such as ``4 min``, ``3 h``, ``2 d`` (``unknown`` without a time)."""
    if then is None:
        return UNKNOWN
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} d"


def _utc_minute(value: datetime | None) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if value is not None else UNKNOWN


def _registry() -> dict[str, SourceSpec]:
    """The source registry, or nothing when it cannot be read (the panel then says "unknown"
    instead of taking the page down over a provenance detail)."""
    try:
        return load_registry()
    except (OSError, KeyError, ValueError, ValidationError):
        return {}


def _status(row: Mapping[str, Any]) -> str:
    """Why a source's numbers may be stale: an open breaker or failed polls ('' when healthy)."""
    if row.get("breaker_opened_at"):
        return "breaker open"
    failures = int(row.get("consecutive_failures") or 0)
    return f"{failures} failed poll{'s' if failures > 1 else ''}" if failures else ""


def source_lines(
    state: pl.DataFrame,
    meta: Mapping[str, str],
    registry: Mapping[str, SourceSpec],
    now: datetime,
    city: str | None = None,
    exact: bool = True,
) -> list[SourceLine]:
    """One line per source of the snapshot's ``ingest_state`` (of ``city`` when the source's city
    is known), with publisher, dataset id and licence from the registry.

    The demo feed is not in the registry: its dataset is described by the spec the snapshot meta
    records. Row totals are those the real-source ingest keeps per source; the demo build does not
    keep any, so its rows are "unknown" here (the snapshot line counts the tables). Without
    ``exact`` (a ``dp`` snapshot) row totals are withheld.
    """
    demo = DemoSource.from_meta(dict(meta))
    lines = []
    for row in state.iter_rows(named=True):
        name = str(row["source"])
        spec = registry.get(name)
        if spec is not None:
            source_city: str | None = spec.city
            publisher, dataset, licence = spec.publisher or UNKNOWN, spec.dataset or UNKNOWN, spec.licence or UNKNOWN
            rows = f"{int(row.get('rows_total') or 0):,}" if exact else "withheld (dp)"
        elif name == DEMO_SOURCE and demo is not None:
            source_city = demo.city
            s = demo.spec
            publisher, dataset, licence = "simulated demo feed", f"demo seed {s.seed}, {s.days} days, size {s.size:,}", UNKNOWN
            rows = UNKNOWN
        else:
            source_city, publisher, dataset, licence, rows = None, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
        if city is not None and source_city not in (None, city):
            continue
        last = row.get("last_success")
        status = _status(row)
        age = age_text(last, now) + (f" ({status})" if status else "")
        lines.append(SourceLine(name, publisher, dataset, licence, _utc_minute(last), age, rows))
    return lines


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def sources_markdown(lines: list[SourceLine]) -> str:
    """The sources as a small Markdown table (a sentence when the snapshot records none)."""
    if not lines:
        return "*No source is recorded in this snapshot: publisher, licence and freshness are unknown.*"
    head = "| Source | Publisher | Dataset | Licence | Last fetch | Age | Rows ingested |\n|---|---|---|---|---|---|---|"
    body = [
        "| " + " | ".join(_cell(v) for v in (s.source, s.publisher, s.dataset, s.licence, s.last_fetch, s.age, s.rows)) + " |"
        for s in lines
    ]
    return "\n".join([head, *body])


def snapshot_text(snap: Snapshot, city: str, now: datetime, newest: datetime | None) -> str:
    """Which snapshot is shown, how old it is, how many current rows it holds and its newest event."""
    if snap.exact_counts_public:
        counts = snap.memo(("row-counts",), snap.row_counts)
        rows = ", ".join(
            f"{counts.get(t, 0):,} {label}" for t, label in (("request", "requests"), ("incident", "incidents"), ("closure", "closures"))
        )
    else:
        rows = "withheld (differential privacy)"
    return (
        f"Snapshot `{snap.id}` · built {_utc_minute(snap.created_at)} ({age_text(snap.created_at, now)} ago) · "
        f"rows: {rows} · newest {city_name(city)} event: {_utc_minute(newest if isinstance(newest, datetime) else None)}"
    )


def privacy_rule(lens: Lens) -> str:
    """The release rule in short words, e.g. ``suppress, k = 11`` (table summary, link notice, PNG caption)."""
    if lens.privacy_mode == "suppress":
        return f"suppress, k = {lens.privacy_k}"
    if lens.privacy_mode == "dp":
        return f"dp, ε = {lens.epsilon:g}"
    return str(lens.privacy_mode)


def privacy_text(mode: str, k: int, epsilon: float, spent: float | None = None, budget: float | None = None, city: str = "") -> str:
    """The release rule in words; in 'dp' mode also the ε spent at the city's most-charged instant."""
    if mode == "suppress":
        return f"Privacy: suppress (counts 1 to {k - 1} withheld, with complements, k = {k})"
    if mode == "dp":
        if spent is None or budget is None:
            charged = "ε spent: unknown (the snapshot does not say)"
        else:
            charged = f"ε spent: {spent:g} of the budget {budget:g} at {city}'s most-charged instant"
        return f"Privacy: differential privacy (noisy counts, ε = {epsilon:g} per release) · {charged}"
    return "Privacy: none (internal use: exact counts)"


class ProvenancePanel(LensView):
    """Snapshot line, release rule and a per-source table of publisher, licence and freshness.

    >>> pn.panel(ProvenancePanel(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    def _sources(self, *_: Any) -> str:
        lens = self.bound
        if lens.snapshot is None:
            return ""
        snap = lens.snapshot
        return sources_markdown(
            source_lines(snap.ingest_state(), snap.meta, _registry(), datetime.now(UTC), lens.city, snap.exact_counts_public)
        )

    def _summary(self, *_: Any) -> str:
        """The snapshot line and, below it, the release rule (with the ε spent in 'dp' mode)."""
        lens = self.bound
        if lens.snapshot is None:
            return "No snapshot."
        line = snapshot_text(lens.snapshot, lens.city, datetime.now(UTC), lens.newest_event())
        return f"{line}  \n{self._privacy()}"

    def _privacy(self) -> str:
        lens = self.bound
        if lens.privacy_mode != "dp":
            return privacy_text(lens.privacy_mode, lens.privacy_k, lens.epsilon)
        spent, budget = lens.privacy_spent()
        return privacy_text("dp", lens.privacy_k, lens.epsilon, spent, budget, lens.city)

    def __panel__(self) -> pn.viewable.Viewable:
        p = self.bound.param
        deps = [p.snapshot, p.city, p.privacy_mode, p.privacy_k, p.epsilon]
        summary = pn.pane.Markdown(pn.bind(self._summary, *deps), styles=_SMALL, margin=(0, 10))
        sources = pn.pane.Markdown(pn.bind(self._sources, p.snapshot, p.city), styles=_SMALL, margin=(0, 10))
        return pn.Column(summary, sources, sizing_mode="stretch_width")
