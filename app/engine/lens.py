"""The lens: all state of one screen (or one API request) as ``param`` parameters, over what the
snapshot published.

The lens computes nothing that could differ between windows: the release and the score of every
cell were computed once when the snapshot was published (:mod:`app.engine.publish`); here they are
filtered, summed (a total is withheld when any summed cell is), sorted and explained. So a cell
reads the same numbers in every window, and a request costs what it returns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import param
import polars as pl
import shapely

from app.data.geography import LEVELS, level_column, tract_parents
from app.data.snapshot import Snapshot
from app.engine.bins import ALL_CATEGORIES, filter_events
from app.engine.drivers import explain_published
from app.engine.grains import DEFAULT_GRAINS, GRAINS, bin_expr, floor_bin, grain_rank, next_bin
from app.engine.narratives import narrate
from app.engine.privacy import Policy
from app.engine.scores import DEFAULT_Q
from app.engine.scoring import BASELINE_DAYS

__all__ = ["ALL", "EARLIEST", "KINDS", "LATEST", "Lens", "city_categories"]

#: Earliest and latest instants a window may name (outside them no city has data, and date
#: arithmetic near year 1 or 9999 overflows): the API, the dashboard and links share them.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

ALL = "All"
KINDS = ("request", "incident", "closure")


def city_categories(snapshot: Snapshot, city: str) -> list[str]:
    """The categories of the city's events in the snapshot (the names, not counts; memoised)."""
    return snapshot.memo(("categories", city), lambda: sorted(snapshot.events(city)["category"].unique().drop_nulls().to_list()))


_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
_SERIES_SCHEMA = pl.Schema(
    {
        "unit_id": pl.String(),
        "bin_start": pl.Datetime("us", "UTC"),
        "count": pl.Int64(),
        "suppressed": pl.Boolean(),
        "partial": pl.Boolean(),
    }
)


class Lens(param.Parameterized):
    """What the user is looking at: city, admin level, time window, category, bins and threshold.

    >>> lens = Lens(snapshot=store.current(), city="chicago", level="borough")   # doctest: +SKIP
    >>> lens.unit_counts().head()                                                # doctest: +SKIP
    """

    snapshot = param.ClassSelector(class_=Snapshot, allow_None=True, doc="The published snapshot the lens reads.")
    city = param.Selector[str](default="nyc", objects=["nyc"], check_on_set=False, doc="City whose events and geography are shown.")
    level = param.Selector[str](default="neighborhood", objects=list(LEVELS), doc="Admin level counts and anomalies are shown at.")
    since = param.Date[datetime | None](
        default=None, allow_None=True, doc="Start of the window (inclusive, UTC); default: 7 days before the newest event."
    )
    until = param.Date[datetime | None](
        default=None, allow_None=True, doc="End of the window (exclusive, UTC); default: the end of the newest event's day."
    )
    category = param.Selector[str](default=ALL, objects=[ALL], check_on_set=False, doc="One category, or 'All'.")
    kinds = param.ListSelector(default=list(KINDS), objects=list(KINDS), doc="Event kinds included: 311 requests, incidents, closures.")
    time_bin = param.Selector[str](
        default="day", objects=list(GRAINS), doc="Width of the bins shown; a level published at a coarser grain shows that grain."
    )
    min_z = param.Number(default=3.0, bounds=(0.0, 1000.0), doc="Smallest z-score (z = Phi^-1(1 - p)) listed as an anomaly.")
    q = param.Number(default=DEFAULT_Q, bounds=(1e-12, 1.0), doc="Largest false-discovery q-value listed as an anomaly.")
    dips = param.Boolean(default=False, doc="List unusually low cells (lower tail) instead of unusually high ones.")
    baseline_days = param.Integer(
        default=BASELINE_DAYS, bounds=(7, 91), constant=True, doc="Trailing baseline of the published scores (days)."
    )
    privacy_mode = param.Selector[str](
        default="suppress",
        objects=["none", "suppress", "dp"],
        doc="Release rule of the snapshot (read from it; setting it changes nothing).",
    )
    privacy_k = param.Integer(default=11, bounds=(1, None), doc="Smallest count published in 'suppress' mode (read from the snapshot).")
    selection = param.List(
        default=[], item_type=str, doc="Selected units at the lens level (tiles, map or keyboard); empty means all. One shared selection."
    )
    epsilon = param.Number(default=1.0, bounds=(0.01, 10.0), doc="Privacy-loss parameter of a 'dp' release (read from the snapshot).")

    def __init__(self, **params: Any) -> None:
        self._window_city: str | None = None
        self._selected_tracts_at_last_level: list[str] | None = None
        snapshot = params.pop("snapshot", None)
        city = params.pop("city", None)
        super().__init__(**params)
        # The snapshot first: it says which cities exist, so a city can be checked against it.
        if isinstance(snapshot, Snapshot):
            cities = snapshot.cities()
            if city is not None and cities and city not in cities:
                raise ValueError(f"unknown city {city!r}; this snapshot has: {', '.join(cities)}")
            if city is None and cities and self.city not in cities:
                city = cities[0]  # no city asked for: the snapshot's first
        self.param.update(snapshot=snapshot, **({"city": city} if city is not None else {}))
        self._sync_choices()

    @param.depends("snapshot", "city", watch=True)
    def _sync_choices(self) -> None:
        """Offer the snapshot's cities and categories, adopt its release rule, and default the
        window to its newest published week (again whenever the city changes)."""
        if self.snapshot is None:
            return
        cities = self.snapshot.cities()
        self.param.city.objects = cities or [self.city]
        if cities and self.city not in cities:  # a new snapshot without the city: show its first
            self.city = cities[0]
            return
        meta = self.snapshot.release_meta(self.city)
        if meta:
            self.param.update(privacy_mode=meta["mode"], privacy_k=int(meta["k"]), epsilon=float(meta["epsilon"] or self.epsilon))
        self.param.category.objects = [ALL, *city_categories(self.snapshot, self.city)]
        if self.category not in self.param.category.objects:
            self.category = ALL
        if self._window_city not in (None, self.city):
            self.param.update(since=None, until=None, selection=[])
        self._window_city = self.city
        newest = self.newest_event()
        if self.until is None and newest is not None:
            self.until = next_bin(floor_bin(newest, "day", self.tz), "day", self.tz)
        until = self.window()[1]
        if self.since is None and until is not None:
            self.since = floor_bin(until - timedelta(days=7) + timedelta(hours=12), "day", self.tz)

    # ---- facts of the release ---------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return self.snapshot.release_meta(self.city) if self.snapshot is not None else {}

    @property
    def tz(self) -> str:
        """The city's time zone (days and weeks are its local days and weeks)."""
        return str(self._meta().get("timezone") or "UTC")

    def grain_of(self, level: str | None = None) -> str:
        """The grain ``level`` (default: the lens level) is published at."""
        return str((self._meta().get("grains") or DEFAULT_GRAINS).get(level or self.level, "day"))

    def effective_bin(self) -> str:
        """The bin shown: the lens' time bin, or the level's published grain when that is coarser."""
        grain = self.grain_of()
        return self.time_bin if grain_rank(self.time_bin) >= grain_rank(grain) else grain

    def published_until(self, level: str | None = None) -> datetime | None:
        """Start of the level's first bin not yet published (its pair block is still filling)."""
        cutoff = self._meta().get("complete_until") or {}
        value = cutoff.get(level or self.level)
        return value if isinstance(value, datetime) else None

    def privacy_spent(self) -> tuple[float | None, float | None]:
        """Under ``dp``: the ε spent at the city's most-charged instant after this snapshot's
        release, and the budget (both None when the snapshot does not say)."""
        meta = self._meta()
        spent, budget = meta.get("epsilon_spent"), meta.get("privacy_budget")
        return (float(spent) if spent is not None else None, float(budget) if budget is not None else None)

    @property
    def policy(self) -> Policy:
        return Policy(self.privacy_mode, self.privacy_k, epsilon=self.epsilon)

    @property
    def bin_length(self) -> timedelta:
        """Nominal width of one shown bin (a local day may be 23 or 25 hours)."""
        return _STEP[self.effective_bin()]

    def window(self) -> tuple[datetime | None, datetime | None]:
        """``(since, until)`` as UTC datetimes (``param.Date`` also admits plain dates)."""
        bounds = []
        for value in (self.since, self.until):
            if value is not None and not isinstance(value, datetime):
                value = datetime(value.year, value.month, value.day, tzinfo=UTC)
            elif isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            bounds.append(value)
        return bounds[0], bounds[1]

    def grid_window(self) -> tuple[datetime, datetime] | None:
        """The window snapped outwards to whole shown bins (local days and weeks)."""
        since, until = self.window()
        if since is None or until is None or since >= until:
            return None
        grain = self.effective_bin()
        lo, hi = floor_bin(since, grain, self.tz), floor_bin(until, grain, self.tz)
        return lo, (hi if hi >= until else next_bin(hi, grain, self.tz))

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
        return filter_events(self.snapshot.events(self.city), since or start, end, cats, self.kinds, self.selected_tracts())

    def newest_event(self) -> datetime | None:
        """Time of the city's newest event (how fresh the data is; not a count); under ``dp`` the
        release's horizon (an exact event time would tell one event's time)."""
        if self.snapshot is None:
            return None
        snap, city = self.snapshot, self.city
        if self.privacy_mode == "dp":
            horizon = self._meta().get("horizon")
            return horizon if isinstance(horizon, datetime) else None
        newest = snap.memo(("newest-event", city), lambda: snap.events(city)["ts"].max())
        return newest if isinstance(newest, datetime) else None

    def selected_tracts(self) -> list[str] | None:
        """Tracts inside the selected units (None when nothing is selected)."""
        if not self.selection or self.snapshot is None:
            return None
        parents = self.parents()
        own = level_column(self.level)
        if own not in parents.columns:  # city level: the whole city
            return None
        return parents.filter(pl.col(own).is_in(self.selection))["tract_id"].to_list()

    def unit_at(self, lon: float, lat: float) -> str | None:
        """The unit of the lens level containing a point (None outside every unit)."""
        if self.snapshot is None:
            return None
        snap, city, level = self.snapshot, self.city, self.level
        ids, tree = snap.memo(("unit-tree", city, level), lambda: _unit_tree(snap, city, level))
        hits = tree.query(shapely.Point(lon, lat), predicate="intersects")
        return str(ids[int(hits[0])]) if len(hits) else None

    @param.depends("level", watch=True)
    def _carry_selection(self) -> None:
        """Keep the selection meaningful across levels: units containing, or contained in, the old selection."""
        old = self._selected_tracts_at_last_level
        self._selected_tracts_at_last_level = None
        if not old or self.snapshot is None or self.level == "city":
            self.selection = []
            return
        own = level_column(self.level)
        self.selection = sorted(self.parents().filter(pl.col("tract_id").is_in(old))[own].drop_nulls().unique().to_list())

    @param.depends("selection", watch=True, on_init=True)
    def _remember_selection(self) -> None:
        self._selected_tracts_at_last_level = self.selected_tracts()

    def points(self) -> pl.DataFrame:
        """Located event points (lon, lat) in the window: input of the heat raster, no counts."""
        return self.events().filter(pl.col("lon").is_not_null()).select("lon", "lat")

    # ---- the release, filtered and summed ----------------------------------------------------------
    def _memo(self, name: str, build: Any, *extra: object) -> Any:
        """``build()`` once per snapshot and the lens parameters it reads (``extra``)."""
        assert self.snapshot is not None
        return self.snapshot.memo((name, self.city, *extra), build)

    def _picked(self) -> list[str]:
        """Categories summed for the lens selection: one category, ``"*"``, or the chosen kinds'."""
        if self.category != ALL:
            return [self.category]
        if set(self.kinds) == set(KINDS):
            return [ALL_CATEGORIES]
        snap, city, kinds = self.snapshot, self.city, sorted(self.kinds)
        assert snap is not None
        return snap.memo(
            ("kind-categories", city, tuple(kinds)),
            lambda: sorted(snap.events(city).filter(pl.col("kind").is_in(kinds))["category"].unique().drop_nulls().to_list()),
        )

    def _level_cells(self, level: str) -> pl.DataFrame:
        assert self.snapshot is not None
        snap, city = self.snapshot, self.city
        cells: pl.DataFrame = self._memo("level-release", lambda: snap.release(city).filter(pl.col("level") == level), level)
        return cells

    def _binned(self, level: str, grain: str, lo: datetime | None, hi: datetime | None) -> pl.DataFrame:
        """Released counts of the selection per unit and ``grain`` bin of ``level`` in ``[lo, hi)``
        (all bins when unbounded): :data:`_SERIES_SCHEMA`; absent rows are zeros."""
        picked = self._picked()
        cells = self._level_cells(level).filter(pl.col("category").is_in(picked))
        if lo is not None and hi is not None:
            cells = cells.filter((pl.col("bin_start") >= lo) & (pl.col("bin_start") < hi))
        if cells.height == 0:
            return pl.DataFrame(schema=_SERIES_SCHEMA)
        cutoff = self.published_until(level)
        binned = cells.with_columns(bin_start=bin_expr("bin_start", grain, self.tz)) if grain != self.grain_of(level) else cells
        out = binned.group_by("unit_id", "bin_start").agg(
            count=pl.col("count").sum(), suppressed=pl.col("suppressed").any(), partial=pl.col("partial").any()
        )
        if cutoff is not None:  # a coarser bin reaching into unpublished bins is incomplete too
            out = out.with_columns(partial=pl.col("partial") | (pl.col("bin_start") >= floor_bin(cutoff, grain, self.tz)))
        hidden = pl.col("suppressed") | pl.col("partial")
        return out.with_columns(count=pl.when(hidden).then(None).otherwise(pl.col("count"))).sort("unit_id", "bin_start")

    def series(self) -> pl.DataFrame:
        """Released counts per unit and shown bin at the lens level in the window (``unit_id,
        bin_start, count, suppressed, partial``); absent rows are zeros."""
        grid = self.grid_window()
        if self.snapshot is None or grid is None:
            return pl.DataFrame(schema=_SERIES_SCHEMA)
        key = (self.level, self.effective_bin(), grid, self.category, tuple(sorted(self.kinds)))
        return self._memo("series", lambda: self._binned(self.level, self.effective_bin(), *grid), *key)  # type: ignore[no-any-return]

    def city_series(self) -> pl.DataFrame:
        """Released city-wide counts of the selection per shown bin over the whole history (the
        overview a window is brushed on): ``bin_start, count`` (null where withheld or incomplete)."""
        if self.snapshot is None or "city" not in set(self.snapshot.units(self.city)["level"].to_list()):
            return pl.DataFrame(schema={"bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64})
        grain = self.time_bin if grain_rank(self.time_bin) >= grain_rank(self.grain_of("city")) else self.grain_of("city")
        key = (grain, self.category, tuple(sorted(self.kinds)))
        out = self._memo("city-series", lambda: self._binned("city", grain, None, None), *key)
        return out.select("bin_start", "count").sort("bin_start")  # type: ignore[no-any-return]

    def unit_counts(self) -> pl.DataFrame:
        """Window totals per unit at the lens level with names and centroids: sums of released
        bins (withheld when any bin is), incomplete bins left out (``published_until`` says where
        the published data end; ``partial`` is then true: the total covers less than the window).
        A withheld unit carries its parent's released total (``rollup_level, rollup_unit_id,
        rollup_count``)."""
        assert self.snapshot is not None
        units = self.snapshot.units(self.city, self.level).select("unit_id", "name", "lon", "lat", "parent_id")
        mine = self._totals(self.level)
        grid, cutoff = self.grid_window(), self.published_until(self.level)
        short = grid is not None and cutoff is not None and grid[1] > cutoff
        out = units.join(mine, on="unit_id", how="left").with_columns(
            pl.col("count").fill_null(0), pl.col("suppressed").fill_null(False), partial=pl.lit(short)
        )
        out = out.with_columns(count=pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count")))
        up = _parent_level(self.level, self.snapshot.units(self.city))
        none = {"rollup_level": pl.lit(None, pl.String), "rollup_unit_id": pl.lit(None, pl.String), "rollup_count": pl.lit(None, pl.Int64)}
        if up is None:
            return out.drop("parent_id").with_columns(**none)
        parent = self._totals(up).filter(~pl.col("suppressed")).select(pl.col("unit_id").alias("parent_id"), pl.col("count").alias("_up"))
        out = out.join(parent, on="parent_id", how="left")
        rolled = pl.col("suppressed") & pl.col("_up").is_not_null()
        return out.with_columns(
            rollup_level=pl.when(rolled).then(pl.lit(up)),
            rollup_unit_id=pl.when(rolled).then(pl.col("parent_id")),
            rollup_count=pl.when(rolled).then(pl.col("_up")),
        ).drop("parent_id", "_up")

    def _totals(self, level: str) -> pl.DataFrame:
        """Window totals of the selection per unit of ``level``: ``unit_id, count, suppressed``."""
        grid = self.grid_window()
        if grid is None:
            return pl.DataFrame(schema={"unit_id": pl.String, "count": pl.Int64, "suppressed": pl.Boolean})
        cells = self._binned(level, self.grain_of(level), *grid).filter(~pl.col("partial"))
        return cells.group_by("unit_id").agg(count=pl.col("count").sum(), suppressed=pl.col("suppressed").any())

    # ---- scores ---------------------------------------------------------------------------------------
    def _scores(self, level: str, grain: str) -> pl.DataFrame:
        assert self.snapshot is not None
        snap, city = self.snapshot, self.city
        return self._memo(  # type: ignore[no-any-return]
            "level-scores", lambda: snap.scores(city).filter((pl.col("level") == level) & (pl.col("grain") == grain)), level, grain
        )

    def bands(self) -> pl.DataFrame:
        """The sparkbands of the lens level: per unit and shown bin, the released ``count`` (null
        where withheld or incomplete), ``suppressed``, ``partial``, the published expected value
        with ``lo, hi`` (expected +- 2 sd) and ``anomalous`` (a listed anomaly in that bin)."""
        schema = pl.Schema(
            {**dict(_SERIES_SCHEMA), "expected": pl.Float64(), "lo": pl.Float64(), "hi": pl.Float64(), "anomalous": pl.Boolean()}
        )
        grid = self.grid_window()
        if self.snapshot is None or grid is None:
            return pl.DataFrame(schema=schema)
        grain, (lo, hi) = self.effective_bin(), grid
        units = self.snapshot.units(self.city, self.level).select("unit_id")
        if self.selection:
            units = units.filter(pl.col("unit_id").is_in(self.selection))
        bins = _bin_frame(lo, hi, grain, self.tz)
        frame = units.join(bins, how="cross")
        picked = self._picked()
        if len(picked) == 1:
            sc = self._scores(self.level, grain).filter(
                (pl.col("category") == picked[0]) & pl.col("bin_start").is_between(lo, hi, closed="left")
            )
            band = sc.select(
                "unit_id",
                "bin_start",
                expected=pl.col("expected").round(2),
                lo=(pl.col("expected") - 2 * pl.col("variance").sqrt()).clip(lower_bound=0).round(2),
                hi=(pl.col("expected") + 2 * pl.col("variance").sqrt()).round(2),
            )
        else:
            band = pl.DataFrame(
                schema={
                    "unit_id": pl.String,
                    "bin_start": pl.Datetime("us", "UTC"),
                    "expected": pl.Float64,
                    "lo": pl.Float64,
                    "hi": pl.Float64,
                }
            )
        found, _ = self.anomalies()
        marks = (
            found.filter(pl.col("level") == self.level).select("unit_id", "bin_start").unique().with_columns(anomalous=pl.lit(True))
            if found.height
            else None
        )
        out = frame.join(self.series(), on=["unit_id", "bin_start"], how="left").join(band, on=["unit_id", "bin_start"], how="left")
        cutoff = self.published_until()
        late = pl.lit(False) if cutoff is None else (pl.col("bin_start") >= floor_bin(cutoff, grain, self.tz))
        out = out.with_columns(
            suppressed=pl.col("suppressed").fill_null(False), partial=pl.col("partial").fill_null(False) | late
        ).with_columns(count=pl.when(pl.col("suppressed") | pl.col("partial")).then(None).otherwise(pl.col("count").fill_null(0)))
        out = (
            out.join(marks, on=["unit_id", "bin_start"], how="left")
            if marks is not None
            else out.with_columns(anomalous=pl.lit(None, pl.Boolean))
        )
        return out.with_columns(pl.col("anomalous").fill_null(False)).select(schema.names()).sort("unit_id", "bin_start")

    def anomalies(self, everywhere: bool = False) -> tuple[pl.DataFrame, int]:
        """Published anomalies of the window at the lens level and shown bin, strongest first, and
        how many cells of the window the privacy rule withheld; only the selected units' unless
        ``everywhere``. Each is a scored released cell with q <= ``q`` and z >= ``min_z`` (with
        ``dips``: lower-tail q and z <= -``min_z``), with drivers and a narrative."""
        grid = self.grid_window()
        if self.snapshot is None or grid is None:
            return pl.DataFrame(), 0
        selection = () if everywhere else tuple(self.selection)
        key = (self.level, self.effective_bin(), grid, self.category, tuple(sorted(self.kinds)), self.q, self.min_z, self.dips, selection)
        return self._memo("anomalies", lambda: self._anomalies(grid, list(selection)), *key)  # type: ignore[no-any-return]

    def _anomalies(self, grid: tuple[datetime, datetime], selection: list[str]) -> tuple[pl.DataFrame, int]:
        assert self.snapshot is not None
        grain, (lo, hi) = self.effective_bin(), grid
        scores = self._scores(self.level, grain)
        window = scores.filter(pl.col("bin_start").is_between(lo, hi, closed="left"))
        if self.dips:
            found = window.filter(pl.col("scored") & (pl.col("q_low") <= self.q) & (pl.col("z_low") <= -self.min_z))
        else:
            found = window.filter(pl.col("scored") & (pl.col("q") <= self.q) & (pl.col("zscore") >= self.min_z))
        if self.category != ALL or set(self.kinds) != set(KINDS):
            found = found.filter(pl.col("category").is_in(self._picked()))
        if selection:
            found = found.filter(pl.col("unit_id").is_in(selection))
        withheld = self._binned(self.level, self.grain_of(), lo, hi).filter(pl.col("suppressed")).height
        if found.height == 0:
            return pl.DataFrame(), withheld
        explained = explain_published(found, scores)
        names = self.snapshot.units(self.city, self.level).select("unit_id", pl.col("name").alias("unit_name"))
        step = _STEP[grain]
        out = explained.join(names, on="unit_id", how="left").with_columns(
            level=pl.lit(self.level),
            name=pl.col("unit_name"),
            count=pl.col("observed"),
            time_bin=pl.lit(grain),
            bin_end=pl.col("bin_start") + step,
            baseline_start=pl.col("bin_start") - pl.duration(days=pl.col("baseline_days")),
            baseline_end=pl.col("bin_start"),
            expected=pl.col("expected").round(2),
            variance=pl.col("variance").round(2),
            zscore=(pl.col("z_low") if self.dips else pl.col("zscore")).round(2),
            p=(pl.col("p_low") if self.dips else pl.col("p")).round_sig_figs(4),
            q=(pl.col("q_low") if self.dips else pl.col("q")).round_sig_figs(4),
            rolled_up_from=pl.lit(None, pl.String),
        )
        if grain in ("day", "week"):  # a local day's bin ends at the next local midnight
            out = out.with_columns(bin_end=bin_expr(pl.col("bin_start") + step + timedelta(hours=12), grain, self.tz))
        local = out.with_columns(bin_start=pl.col("bin_start").dt.convert_time_zone(self.tz).dt.replace_time_zone(None))
        out = out.with_columns(narrative=narrate(local.with_columns(baseline_days=pl.col("baseline_days").floor().cast(pl.Int64))))
        order = ["zscore", "unit_id", "category", "bin_start"]
        return out.sort(order, descending=[not self.dips, False, False, False]), withheld


def _bin_frame(lo: datetime, hi: datetime, grain: str, tz: str) -> pl.DataFrame:
    starts = []
    b = floor_bin(lo, grain, tz)
    while b < hi:
        starts.append(b)
        b = next_bin(b, grain, tz)
    return pl.DataFrame({"bin_start": starts}, schema={"bin_start": pl.Datetime("us", "UTC")})


def _unit_tree(snapshot: Snapshot, city: str, level: str) -> tuple[list[str], shapely.STRtree]:
    """Unit ids and a spatial index of their polygons (built once per snapshot, city and level)."""
    frame = snapshot.unit_geometries(city, level)
    return frame["unit_id"].to_list(), shapely.STRtree(shapely.from_wkb(frame["geom_wkb"].to_numpy()))


def _parent_level(level: str, units: pl.DataFrame) -> str | None:
    """The next coarser level the city has below ``city`` (None at the top)."""
    present = [lvl for lvl in LEVELS if units.filter(pl.col("level") == lvl).height]
    order = [lvl for lvl in present if lvl != "city"]
    if level not in order or order.index(level) + 1 >= len(order):
        return None
    return order[order.index(level) + 1]
