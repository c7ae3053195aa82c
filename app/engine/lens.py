"""The lens: all state of one screen (or one API request) as ``param`` parameters.

The lens only holds state; each method reads the snapshot's frames and calls the pure functions
in :mod:`app.engine.bins`, :mod:`app.engine.scores` and :mod:`app.engine.privacy`. Counts leave it
only through the privacy gate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import param
import polars as pl

from app.data.geography import LEVELS, tract_parents
from app.data.snapshot import Snapshot
from app.engine.bins import TIME_BINS, bin_counts, filter_events, unit_counts
from app.engine.privacy import Policy, release_anomalies, release_counts
from app.engine.scores import score_window

__all__ = ["ALL", "KINDS", "Lens"]

ALL = "All"
KINDS = ("request", "incident", "closure")


class Lens(param.Parameterized):
    """What the user is looking at: city, admin level, time window, category, bins and threshold.

    >>> lens = Lens(snapshot=store.current(), level="borough")   # doctest: +SKIP
    >>> lens.unit_counts().head()                                  # doctest: +SKIP
    """

    snapshot = param.ClassSelector(class_=Snapshot, allow_None=True, doc="The published snapshot the lens reads.")
    city = param.Selector[str](default="nyc", objects=["nyc"], doc="City whose events and geography are shown.")
    level = param.Selector[str](default="neighborhood", objects=list(LEVELS), doc="Admin level counts and anomalies are computed at.")
    since = param.Date[datetime | None](
        default=None, allow_None=True, doc="Start of the window (inclusive, UTC); default: 7 days before the newest event."
    )
    until = param.Date[datetime | None](
        default=None, allow_None=True, doc="End of the window (exclusive, UTC); default: the end of the newest event's day."
    )
    category = param.Selector[str](default=ALL, objects=[ALL], check_on_set=False, doc="One category, or 'All'.")
    kinds = param.ListSelector(default=list(KINDS), objects=list(KINDS), doc="Event kinds included: 311 requests, incidents, closures.")
    time_bin = param.Selector[str](default="day", objects=list(TIME_BINS), doc="Width of the time bins that are counted and scored.")
    min_z = param.Number(default=3.0, bounds=(0.0, 1000.0), doc="Smallest z-score listed as an anomaly.")
    privacy_mode = param.Selector[str](
        default="suppress", objects=["none", "suppress"], doc="Release rule for counts ('suppress' hides 1..k-1)."
    )
    privacy_k = param.Integer(default=11, bounds=(1, None), doc="Smallest count published in 'suppress' mode.")

    def __init__(self, **params: object) -> None:
        self._window_city: str | None = None
        super().__init__(**params)
        self._sync_choices()

    @param.depends("snapshot", "city", watch=True)
    def _sync_choices(self) -> None:
        """Offer the snapshot's cities and categories, and default the window to its newest week
        (again whenever the city changes: cities' data rarely cover the same weeks)."""
        if self.snapshot is None:
            return
        self.param.city.objects = self.snapshot.cities() or [self.city]
        events = self.snapshot.events(self.city)
        cats = sorted(events["category"].unique().drop_nulls().to_list())
        self.param.category.objects = [ALL, *cats]
        if self.category not in self.param.category.objects:
            self.category = ALL
        if self._window_city not in (None, self.city):
            self.param.update(since=None, until=None)
        self._window_city = self.city
        if self.until is None and events.height:
            last = events["ts"].max()
            assert isinstance(last, datetime)
            self.until = last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        if self.since is None and self.until is not None:
            self.since = self.until - timedelta(days=7)

    # ---- derived frames ----------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return Policy(self.privacy_mode, self.privacy_k)

    def window(self) -> tuple[datetime | None, datetime | None]:
        """``(since, until)`` as UTC datetimes (``param.Date`` also admits plain dates)."""
        bounds = []
        for value in (self.since, self.until):
            if value is not None and not isinstance(value, datetime):
                value = datetime(value.year, value.month, value.day, tzinfo=UTC)
            bounds.append(value)
        return bounds[0], bounds[1]

    def categories(self) -> list[str]:
        """Categories in the current snapshot and city (without 'All')."""
        return [c for c in self.param.category.objects if c != ALL]

    def parents(self) -> pl.DataFrame:
        """Tract -> neighborhood -> borough -> city ids."""
        assert self.snapshot is not None
        return tract_parents(self.snapshot.units(self.city))

    def events(self, since: datetime | None = None) -> pl.DataFrame:
        """Current events in the window (or from ``since``), kinds and category of the lens."""
        if self.snapshot is None:
            return pl.DataFrame()
        cats = None if self.category == ALL else [self.category]
        start, end = self.window()
        return filter_events(self.snapshot.events(self.city), since or start, end, cats, self.kinds)

    def points(self) -> pl.DataFrame:
        """Located event points (lon, lat) in the window: input of the heat raster, no counts."""
        return self.events().filter(pl.col("lon").is_not_null()).select("lon", "lat")

    def unit_counts(self) -> pl.DataFrame:
        """Released window totals per unit at the lens level, with unit names and centroids."""
        assert self.snapshot is not None
        units = self.snapshot.units(self.city, self.level).select("unit_id", "name", "lon", "lat")
        counts = units.join(unit_counts(self.events(), self.parents(), self.level), on="unit_id", how="left").with_columns(
            pl.col("count").fill_null(0)
        )
        return release_counts(counts, self.policy)

    def series(self) -> pl.DataFrame:
        """Released counts per unit and time bin (all categories of the lens summed)."""
        binned = bin_counts(self.events(), self.parents(), self.level, self.time_bin, by_category=False)
        return release_counts(binned, self.policy)

    def anomalies(self) -> tuple[pl.DataFrame, int]:
        """Released anomalies in the window (highest z first) and the number withheld by privacy."""
        snap, city, (since, until) = self.snapshot, self.city, self.window()
        if snap is None or since is None or until is None:
            return pl.DataFrame(), 0
        cats = None if self.category == ALL else (self.category,)
        key = (self.level, self.time_bin, since, until, cats, tuple(self.kinds))
        scored = snap.memo(
            ("scored", city, *key),
            lambda: score_window(
                snap.events(city), tract_parents(snap.units(city)), self.level, self.time_bin, since, until, cats, self.kinds
            ),
        )
        hits = scored.filter(pl.col("zscore") >= self.min_z)
        released, withheld = release_anomalies(hits, self.policy)
        units = snap.units(city, self.level).select("unit_id", "name")
        return released.join(units, on="unit_id", how="left").sort(["zscore", "unit_id"], descending=[True, False]), withheld
