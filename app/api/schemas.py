"""Response models at the API edge; their field descriptions become the OpenAPI text."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "AnomaliesOut",
    "AnomalyOut",
    "CitiesOut",
    "CityOut",
    "Feature",
    "FeatureCollection",
    "HealthOut",
    "HeatCell",
    "HeatOut",
    "LevelOut",
    "PrivacyOut",
    "SnapshotOut",
    "SourceOut",
    "WindowOut",
]


class PrivacyOut(BaseModel):
    """How the numbers in a response were released."""

    mode: Literal["none", "suppress", "dp"] = Field(
        description="'suppress' hides counts 1..k-1 and their complements; 'dp' publishes noisy counts; 'none' is internal use."
    )
    k: int = Field(description="Smallest count published in 'suppress' mode.")
    epsilon: float | None = Field(None, description="Privacy-loss parameter of each 'dp' release (null in other modes).")
    epsilon_spent: float | None = Field(
        None, description="In 'dp' mode: the largest privacy loss any instant of this city's data has accumulated (the budget bounds it)."
    )


class WindowOut(BaseModel):
    """The lens a response was computed with (echoed so a result is self-describing)."""

    city: str
    level: str
    since: datetime
    until: datetime
    category: str | None = Field(description="The one category counted, or null for all.")
    snapshot_id: str
    grid_since: datetime | None = Field(None, description="The window snapped outwards to whole bins of the city's local time: start.")
    grid_until: datetime | None = Field(None, description="... and end (exclusive). Counts and anomalies cover this grid.")
    time_bin: str | None = Field(None, description="The bin shown: the asked one, or the level's published grain when that is coarser.")
    grain: str | None = Field(None, description="The grain this level is published at (finer bins are not published for it).")
    published_until: datetime | None = Field(
        None, description="Bins from here on are still filling and not published yet; window totals stop here."
    )
    timezone: str | None = Field(None, description="The city's time zone: days and weeks are its local days and weeks.")


class RollupOut(BaseModel):
    """Where a count is too small to publish, the finest coarser unit whose count can be."""

    level: str
    unit_id: str
    count: int


class DriverOut(BaseModel):
    """A category that drives an anomaly's unit-window excess."""

    category: str
    excess: float = Field(description="Observed minus expected events of this category.")
    share: float = Field(description="Its part of the unit-window's positive excess (0..1).")


class HeatCell(BaseModel):
    """One released count: a unit (and a time bin when one was asked for)."""

    unit_id: str
    name: str | None = None
    bin_start: datetime | None = Field(None, description="Start of the time bin (UTC), when time_bin was given.")
    count: int | None = Field(description="Released count; null when withheld by the privacy rule or not published yet.")
    suppressed: bool = Field(description="True when the count was withheld by the privacy rule.")
    partial: bool = Field(
        False,
        description="True when the bin is still filling (not published yet; neither withheld nor zero); for a window total, "
        "when the window reaches past the published data (lens.published_until): the total counts its complete bins only.",
    )
    rollup: RollupOut | None = Field(None, description="For a withheld window total: the parent unit's released total.")


class HeatOut(BaseModel):
    """Binned counts of a window, one page."""

    lens: WindowOut
    privacy: PrivacyOut
    time_bin: str | None
    total: int = Field(description="Cells in the whole result (all pages).")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, or null on the last page.")
    cells: list[HeatCell]


class AnomalyOut(BaseModel):
    """One anomalous (unit, category, time bin) with its evidence, all of it privacy-released."""

    level: str = Field(description="Level the anomaly is shown at.")
    unit_id: str
    name: str | None
    category: str = Field(description="Category; '*' means all categories.")
    window_start: datetime
    window_end: datetime
    observed: int = Field(description="Released count of the cell.")
    expected: float = Field(description="Seasonal baseline expectation for this bin (trailing window, same weekday/hour).")
    variance: float = Field(description="Baseline predictive variance (over-dispersion and estimation uncertainty included).")
    zscore: float
    p: float = Field(description="Exact negative-binomial upper-tail p-value.")
    q: float = Field(
        description="Benjamini-Hochberg q-value over the cells of this level and bin (all units x categories), fixed at publish."
    )
    baseline_start: datetime
    baseline_end: datetime
    effect: str = Field(description="'volume' (events added), 'mix' (taken from other categories, total unchanged) or 'volume+mix'.")
    share: float | None = Field(description="This category's part of its unit-window's positive excess.")
    drivers: list[DriverOut] = Field(description="Categories with the largest excess in the unit-window (published cells only).")
    rolled_up_from: str | None = Field(description="Always null: anomalies are listed at the level and grain they are published at.")
    narrative: str = Field(description="One sentence built from the released numbers above.")


class AnomaliesOut(BaseModel):
    """Anomalies of a window, highest z first, one page."""

    lens: WindowOut
    privacy: PrivacyOut
    time_bin: str
    min_z: float
    q: float = Field(description="Largest q-value listed.")
    withheld: int = Field(description="Cells of the window (unit x shown bin) withheld by the privacy rule: not scored.")
    total: int
    limit: int
    offset: int
    next_offset: int | None
    items: list[AnomalyOut]


class LevelOut(BaseModel):
    """One admin level of a city, finest first; ``key`` is what the ``level`` parameter takes."""

    key: Literal["tract", "neighborhood", "borough", "city"] = Field(description="Generic level key used by every route.")
    name: str = Field(description="What the level is called in this city, e.g. 'Community area' for Chicago's neighborhoods.")
    units: int = Field(description="Units of this level in the served snapshot.")
    grain: str = Field(description="Time grain this level is published at (hour, day or week).")


class CityOut(BaseModel):
    """A city of the served snapshot: names, levels, what it holds and its local time zone."""

    id: str = Field(description="City id, the value of the ``city`` parameter.")
    name: str = Field(description="Display name, e.g. 'New York City'.")
    timezone: str = Field(description="IANA time zone of the city (from its sources in the registry, else UTC).")
    levels: list[LevelOut] = Field(description="Admin levels, finest first.")
    kinds: list[str] = Field(description="Event kinds the city has events of: request, incident, closure.")
    categories: int = Field(description="Number of distinct categories (complaint types, offences, closure kinds).")
    first_event: datetime | None = Field(
        description="Time of the oldest event (UTC; under 'dp' the start of its local week); null without events."
    )
    last_event: datetime | None = Field(
        description="Time of the newest event (UTC; under 'dp' the release's horizon); null without events."
    )


class CitiesOut(BaseModel):
    """Every city of the served snapshot."""

    snapshot_id: str
    default_city: str | None = Field(description="The city routes use when ``city`` is omitted.")
    cities: list[CityOut]


class SnapshotOut(BaseModel):
    """The snapshot being served."""

    id: str
    created_at: datetime
    age_s: float
    rows: dict[str, int] | None = Field(description="Current rows per kind (null under 'dp': exact counts are not published).")


class SourceOut(BaseModel):
    """Freshness of one source."""

    source: str
    cursor: str | None
    last_success: datetime | None
    age_s: float | None = Field(description="Seconds since the last successful poll.")
    consecutive_failures: int
    breaker: Literal["closed", "open"] = Field(
        "closed", description="Circuit breaker: 'open' after repeated failures, until a probe succeeds."
    )
    last_error: str | None = Field(None, description="The last failure, if the source is failing.")
    drift: dict[str, list[str]] | None = Field(None, description="Schema drift seen on the last poll: new, vanished and retyped fields.")
    rows_total: int | None = Field(
        0, description="Rows ingested from this source so far (null under 'dp': exact counts are not published)."
    )
    unlocated_total: int | None = Field(0, description="Of those, rows kept without a usable location (null under 'dp').")


class HealthOut(BaseModel):
    """Liveness and freshness."""

    status: Literal["ok", "degraded", "starting"] = Field(description="'degraded' while a source's breaker is open or its payload drifts.")
    snapshot: SnapshotOut | None
    sources: list[SourceOut]


class Feature(BaseModel):
    """A GeoJSON feature (RFC 7946) of one unit."""

    type: Literal["Feature"]
    id: str
    geometry: dict[str, Any]
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    """A GeoJSON feature collection (RFC 7946, WGS84 lon/lat)."""

    type: Literal["FeatureCollection"]
    features: list[Feature]
