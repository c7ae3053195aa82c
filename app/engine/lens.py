"""The lens: all state of one screen (or one API request) as ``param`` parameters.

The lens only holds state; each method reads the snapshot's frames and calls the pure functions
in :mod:`app.engine.bins`, :mod:`app.engine.scores` and :mod:`app.engine.privacy`. Counts leave it
only through the privacy gate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import param
import polars as pl
import shapely

from app.data.geography import LEVELS, level_column, tract_parents
from app.data.snapshot import Snapshot
from app.engine.attribution import rounded_drivers
from app.engine.baselines import BIN_LENGTH, expectations, fit_baseline
from app.engine.bins import ALL_CATEGORIES, TIME_BINS, cube_counts, filter_events
from app.engine.detect import Detection, DetectionSettings, detect
from app.engine.explain import explain
from app.engine.narratives import narrate
from app.engine.privacy import BudgetLedger, Policy, gate_anomalies, release_cube, snap_window, window_totals
from app.engine.scores import DEFAULT_Q

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
    q = param.Number(default=DEFAULT_Q, bounds=(1e-9, 1.0), doc="Largest false-discovery q-value listed as an anomaly.")
    baseline_days = param.Integer(default=28, bounds=(7, 91), doc="Length of the trailing baseline window in days.")
    privacy_mode = param.Selector[str](
        default="suppress",
        objects=["none", "suppress", "dp"],
        doc="Release rule: 'none' (internal), 'suppress' (hide 1..k-1 plus complements), 'dp' (noisy counts, budgeted).",
    )
    privacy_k = param.Integer(default=11, bounds=(1, None), doc="Smallest count published in 'suppress' mode.")
    selection = param.List(
        default=[], item_type=str, doc="Selected units at the lens level (tiles, map or keyboard); empty means all. One shared selection."
    )
    epsilon = param.Number(default=1.0, bounds=(0.01, 10.0), doc="Privacy-loss parameter of one 'dp' release.")
    ledger = param.ClassSelector(class_=BudgetLedger, allow_None=True, doc="Budget ledger of 'dp' releases (required in 'dp' mode).")

    def __init__(self, **params: object) -> None:
        self._window_city: str | None = None
        self._selected_tracts_at_last_level: list[str] | None = None
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
            self.param.update(since=None, until=None, selection=[])
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
        return Policy(self.privacy_mode, self.privacy_k, epsilon=self.epsilon)

    @property
    def baseline(self) -> timedelta:
        return timedelta(days=self.baseline_days)

    def window(self) -> tuple[datetime | None, datetime | None]:
        """``(since, until)`` as UTC datetimes (``param.Date`` also admits plain dates)."""
        bounds = []
        for value in (self.since, self.until):
            if value is not None and not isinstance(value, datetime):
                value = datetime(value.year, value.month, value.day, tzinfo=UTC)
            bounds.append(value)
        return bounds[0], bounds[1]

    def grid_window(self) -> tuple[datetime, datetime] | None:
        """The window snapped outwards to the time-bin grid: every count is a whole-bin count, so
        two overlapping queries can never isolate part of a bin."""
        since, until = self.window()
        if since is None or until is None or since >= until:
            return None
        return snap_window(since, until, self.time_bin)

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
        """Time of the city's newest event (how fresh the data is; not a count)."""
        if self.snapshot is None:
            return None
        ts = self.snapshot.events(self.city)["ts"]
        newest = ts.max() if ts.len() else None
        return newest if isinstance(newest, datetime) else None

    @property
    def bin_length(self) -> timedelta:
        """Width of one time bin of the lens."""
        return BIN_LENGTH[self.time_bin]

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
        """Keep the selection meaningful across levels: units containing, or contained in, the old
        selection (the tracts it covers say which)."""
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

    # ---- the fixed cube and what of it may be released ------------------------------------------
    def _levels(self) -> tuple[str, ...]:
        return tuple(LEVELS)

    def cube(self) -> pl.DataFrame:
        """Raw counts of every level x category (and '*') x bin from the baseline's start to the
        end of the grid window. Engine-internal: only :meth:`released` numbers leave the lens."""
        snap, grid = self.snapshot, self.grid_window()
        if snap is None or grid is None:
            return pl.DataFrame()
        lo, hi = grid[0] - self.baseline, grid[1]
        city, time_bin = self.city, self.time_bin
        return snap.memo(
            ("cube", city, time_bin, lo, hi),
            lambda: cube_counts(filter_events(snap.events(city), lo, hi), tract_parents(snap.units(city)), time_bin, tuple(LEVELS)),
        )

    def _kind_of(self) -> pl.DataFrame:
        assert self.snapshot is not None
        snap, city = self.snapshot, self.city
        return snap.memo(("kind_of", city), lambda: snap.events(city).select("category", "kind").unique("category"))

    def released(self) -> pl.DataFrame:
        """Released cells of the grid window at every level: ``level, unit_id, parent_id,
        category, bin_start, count`` (null where withheld) and ``suppressed``.

        ``suppress`` and ``none`` release the fixed cube (``none`` unchanged); ``dp`` releases the
        lens' category (or '*') with noise, through the budget ledger.
        """
        snap, grid = self.snapshot, self.grid_window()
        if snap is None or grid is None:
            return pl.DataFrame()
        if self.privacy_mode == "dp":
            return self._dp_released(*grid)
        lo, hi = grid
        key = ("released", self.city, self.time_bin, lo, hi, self.privacy_mode, self.privacy_k)
        # The window is cut inside the memo: cutting it first cost a full cube filter per call.
        return snap.memo(
            key, lambda: release_cube(self.cube().filter((pl.col("bin_start") >= lo) & (pl.col("bin_start") < hi)), self.policy)
        )

    def _dp_released(self, lo: datetime, hi: datetime) -> pl.DataFrame:
        """Noisy counts of the lens category (all levels, bins from the baseline start) via the ledger."""
        if self.ledger is None:
            raise ValueError("privacy_mode 'dp' needs a budget ledger")
        assert self.snapshot is not None
        cat = ALL_CATEGORIES if self.category == ALL else self.category
        kinds = None if set(self.kinds) == set(KINDS) else sorted(self.kinds)
        events = filter_events(self.snapshot.events(self.city), lo - self.baseline, hi, None if cat == ALL_CATEGORIES else [cat], kinds)
        # The ledger keys a release by everything that selects its events.
        key = cat if kinds is None else f"{cat}|kinds={','.join(kinds)}"
        parents = self.parents()
        tracts = (
            events.filter(pl.col("tract_id").is_not_null())
            .group_by(unit_id=pl.col("tract_id"), bin_start=pl.col("ts").dt.truncate(TIME_BINS[self.time_bin]))
            .agg(count=pl.len().cast(pl.Int64))
        )
        step = BIN_LENGTH[self.time_bin]
        n = int((hi - (lo - self.baseline)) / step)
        bins = [lo - self.baseline + i * step for i in range(n)]
        noisy = self.ledger.release(self.city, key, self.time_bin, tracts, parents, bins, self.policy)
        return noisy.with_columns(category=pl.lit(cat), suppressed=pl.lit(False))

    def _selection(self, cells: pl.DataFrame) -> pl.DataFrame:
        """Cells of the lens' category selection per unit and bin: one category, '*' for all kinds,
        or the released sum of the chosen kinds' categories (withheld if any part is)."""
        if self.category != ALL or self.privacy_mode == "dp":
            cat = ALL_CATEGORIES if self.category == ALL else self.category
            return cells.filter(pl.col("category") == cat)
        if set(self.kinds) == set(KINDS):
            return cells.filter(pl.col("category") == ALL_CATEGORIES)
        cats = self._kind_of().filter(pl.col("kind").is_in(list(self.kinds)))["category"]
        return window_totals(cells.filter(pl.col("category").is_in(cats)), ["level", "unit_id", "parent_id", "bin_start"])

    def series(self) -> pl.DataFrame:
        """Released counts per unit and time bin at the lens level (``unit_id, bin_start, count,
        suppressed``); absent rows are zeros."""
        grid = self.grid_window()
        if self.snapshot is None or grid is None or self.privacy_mode == "dp":
            return self._series()
        # Several views read the same series on one change: build it once per state.
        return self.snapshot.memo(("series", *self._selection_key(), grid, self.level), self._series)

    def _series(self) -> pl.DataFrame:
        cells = self.released()
        if cells.height == 0:
            return pl.DataFrame(
                schema={"unit_id": pl.String, "bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64, "suppressed": pl.Boolean}
            )
        chosen = self._selection(cells.filter(pl.col("level") == self.level))
        return chosen.select("unit_id", "bin_start", "count", "suppressed").sort("unit_id", "bin_start")

    def _selection_key(self) -> tuple[object, ...]:
        """Everything :meth:`released` and :meth:`_selection` read, for memo keys (dp excluded)."""
        return (self.city, self.time_bin, self.privacy_mode, self.privacy_k, self.category, tuple(sorted(self.kinds)))

    def city_series(self) -> pl.DataFrame:
        """Released city-wide counts of the lens selection per bin over the whole history (the
        overview timeline a window is brushed on): ``bin_start, count``. ``dp`` shows the window's
        release only (more bins would spend more budget)."""
        snap = self.snapshot
        if snap is None:
            return pl.DataFrame(schema={"bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64})
        if self.privacy_mode == "dp":
            grid = self.grid_window()
            cells = self._dp_released(*grid).filter(pl.col("level") == "city") if grid else pl.DataFrame()
        else:
            city, time_bin = self.city, self.time_bin
            cube = snap.memo(
                ("city-cube", city, time_bin), lambda: cube_counts(snap.events(city), tract_parents(snap.units(city)), time_bin, ("city",))
            )
            cells = snap.memo(("city-released", city, time_bin, self.privacy_mode, self.privacy_k), lambda: release_cube(cube, self.policy))
        if cells.height == 0:
            return pl.DataFrame(schema={"bin_start": pl.Datetime("us", "UTC"), "count": pl.Int64})
        return self._selection(cells).select("bin_start", "count").sort("bin_start")

    def bands(self) -> pl.DataFrame:
        """The sparkbands of the lens level: per unit and bin of the grid window, the released
        ``count`` (null where withheld), the baseline band ``expected, lo, hi`` (expected +- 2
        standard deviations of the seasonal baseline, the same model the scores use) and
        ``anomalous`` (the unit has a published anomaly in that bin, any category).

        Counts come from :meth:`series` (the gate); the band is a model output over 28-day sums.
        """
        snap, grid = self.snapshot, self.grid_window()
        schema = pl.Schema(
            {
                "unit_id": pl.String(),
                "bin_start": pl.Datetime("us", "UTC"),
                "count": pl.Int64(),
                "suppressed": pl.Boolean(),
                "expected": pl.Float64(),
                "lo": pl.Float64(),
                "hi": pl.Float64(),
                "anomalous": pl.Boolean(),
            }
        )
        if snap is None or grid is None:
            return pl.DataFrame(schema=schema)
        since, until = grid
        if self.privacy_mode == "dp":
            band = self._band(since, until)
        else:
            # The model band reads raw cube cells only: thresholds, selection and release rule do
            # not change it, so a threshold change or a pick reuses it.
            key = ("band", self.city, self.level, grid, self.time_bin, self.baseline_days, self.category, tuple(sorted(self.kinds)))
            band = snap.memo(key, lambda: self._band(since, until))
        released = self.series()
        found, _ = self.anomalies()
        marks = (
            found.filter((pl.col("level") == self.level) if found.height else pl.lit(False))
            .select("unit_id", "bin_start")
            .unique()
            .with_columns(anomalous=pl.lit(True))
            if found.height
            else pl.DataFrame(schema={"unit_id": pl.String, "bin_start": pl.Datetime("us", "UTC"), "anomalous": pl.Boolean})
        )
        out = (
            band.join(released, on=["unit_id", "bin_start"], how="left")
            .with_columns(pl.col("suppressed").fill_null(False))
            .with_columns(count=pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count").fill_null(0)))
            .join(marks, on=["unit_id", "bin_start"], how="left")
            .with_columns(pl.col("anomalous").fill_null(False))
        )
        if self.selection:
            out = out.filter(pl.col("unit_id").is_in(self.selection))
        return out.select(schema.names()).sort("unit_id", "bin_start")

    def _band(self, since: datetime, until: datetime) -> pl.DataFrame:
        """Expected +- 2 sd of the seasonal baseline per unit and bin of the lens level."""
        assert self.snapshot is not None
        if self.privacy_mode == "dp":
            cells = self._dp_released(since, until).filter(pl.col("level") == self.level)
        else:
            cells = self._raw_selection(self.cube().filter(pl.col("level") == self.level))
        cells = cells.select("unit_id", pl.lit("selection").alias("category"), "bin_start", "count")
        model = fit_baseline(cells, self.time_bin, since, self.baseline)
        step = BIN_LENGTH[self.time_bin]
        bins = pl.datetime_range(since, until, step, closed="left", eager=True, time_zone="UTC").alias("bin_start")
        units = self.snapshot.units(self.city, self.level).select("unit_id")
        keys = units.join(bins.to_frame(), how="cross").with_columns(category=pl.lit("selection"))
        return expectations(keys, cells, model).select(
            "unit_id",
            "bin_start",
            expected=pl.col("expected").round(2),
            lo=(pl.col("expected") - 2 * pl.col("variance").sqrt()).clip(lower_bound=0).round(2),
            hi=(pl.col("expected") + 2 * pl.col("variance").sqrt()).round(2),
        )

    def _raw_selection(self, cells: pl.DataFrame) -> pl.DataFrame:
        """Raw (engine-internal) counts of the lens' category selection per unit and bin."""
        if self.category != ALL:
            return cells.filter(pl.col("category") == self.category)
        if set(self.kinds) == set(KINDS):
            return cells.filter(pl.col("category") == ALL_CATEGORIES)
        cats = self._kind_of().filter(pl.col("kind").is_in(list(self.kinds)))["category"]
        return cells.filter(pl.col("category").is_in(cats)).group_by("unit_id", "bin_start").agg(pl.col("count").sum())

    def unit_counts(self) -> pl.DataFrame:
        """Window totals per unit at the lens level with unit names and centroids.

        A total is the sum of released bins (withheld when any bin is), so no two windows can be
        differenced into a hidden bin. A withheld unit carries its parent's released total in
        ``rollup_level, rollup_unit_id, rollup_count``: the finest level that can be shown.
        """
        assert self.snapshot is not None
        units = self.snapshot.units(self.city, self.level).select("unit_id", "name", "lon", "lat", "parent_id")
        cells = self.released()
        if cells.height == 0:
            return units.drop("parent_id").with_columns(
                count=pl.lit(0, pl.Int64),
                suppressed=pl.lit(False),
                rollup_level=pl.lit(None, pl.String),
                rollup_unit_id=pl.lit(None, pl.String),
                rollup_count=pl.lit(None, pl.Int64),
            )
        chosen = self._selection(cells)
        totals = window_totals(chosen, ["level", "unit_id"])
        mine = totals.filter(pl.col("level") == self.level).select("unit_id", "count", "suppressed")
        out = units.join(mine, on="unit_id", how="left").with_columns(pl.col("count").fill_null(0), pl.col("suppressed").fill_null(False))
        out = out.with_columns(pl.when(pl.col("suppressed")).then(None).otherwise(pl.col("count")).alias("count"))
        up = _parent_level(self.level)
        if up is None:
            return out.drop("parent_id").with_columns(
                rollup_level=pl.lit(None, pl.String), rollup_unit_id=pl.lit(None, pl.String), rollup_count=pl.lit(None, pl.Int64)
            )
        parent = totals.filter((pl.col("level") == up) & ~pl.col("suppressed")).select(
            pl.col("unit_id").alias("parent_id"), pl.col("count").alias("rollup_count")
        )
        out = out.join(parent, on="parent_id", how="left")
        rolled = pl.col("suppressed") & pl.col("rollup_count").is_not_null()
        return out.with_columns(
            rollup_level=pl.when(rolled).then(pl.lit(up)),
            rollup_unit_id=pl.when(rolled).then(pl.col("parent_id")),
            rollup_count=pl.when(rolled).then(pl.col("rollup_count")),
        ).drop("parent_id")

    def _ancestors(self) -> pl.DataFrame:
        """``unit_id`` at the lens level with each coarser unit: ``anc_level, anc_id, depth``."""
        assert self.snapshot is not None
        parents = self.parents()
        own = level_column(self.level)
        frames = [
            parents.select(unit_id=pl.col(own), anc_level=pl.lit(up), anc_id=pl.col(level_column(up)), depth=pl.lit(i + 1)).unique()
            for i, up in enumerate(_coarser_levels(self.level))
        ]
        schema = {"unit_id": pl.String, "anc_level": pl.String, "anc_id": pl.String, "depth": pl.Int32}
        return pl.concat(frames, how="vertical_relaxed").drop_nulls() if frames else pl.DataFrame(schema=schema)

    # ---- anomalies -----------------------------------------------------------------------------
    def detection(self) -> Detection | None:
        """Scores of the grid window at the lens level and each coarser level up to borough (for
        roll-ups); memoised."""
        snap, grid = self.snapshot, self.grid_window()
        if snap is None or grid is None:
            return None
        levels = (self.level, *_coarser_levels(self.level))
        dp = self.privacy_mode == "dp"
        # Thresholds only filter the scored cells: keep them out of the memo key, so moving q or
        # min_z re-filters instead of re-scoring.
        settings = DetectionSettings(
            self.time_bin, self.baseline, 1.0, 0.0, self.policy.noise_variance(len(LEVELS)), totals=dp and self.category == ALL
        )
        n_units = {lvl: snap.units(self.city, lvl).height for lvl in levels}
        if dp:
            cube = self._dp_released(*grid).select("level", "unit_id", "category", "bin_start", "count")
            key: tuple[object, ...] = (
                "dp-detect",
                self.city,
                self.category,
                tuple(sorted(self.kinds)),
                grid,
                levels,
                settings,
                self.epsilon,
            )
        else:
            cube = self.cube()
            key = ("detect", self.city, grid, levels, settings)
        return snap.memo(key, lambda: detect(cube, n_units, levels, grid[0], grid[1], settings))

    def anomalies(self, everywhere: bool = False) -> tuple[pl.DataFrame, int]:
        """Released anomalies of the window, strongest first, and how many were withheld; only
        those of the selected units unless ``everywhere`` (the tilegram keeps colouring every tile
        while a few are selected, so the reader can still see where else it is unusual).

        An anomaly whose cell the privacy gate withholds is replaced by its nearest ancestor's anomaly
        in the same category and bin that is significant and publishable (``rolled_up_from`` says
        so; see :func:`app.engine.privacy.gate_anomalies`); drivers and shares use published cells
        only; the narrative is built last, from released numbers.
        """
        snap, grid = self.snapshot, self.grid_window()
        if snap is None or grid is None:
            return pl.DataFrame(), 0
        selection = () if everywhere else tuple(self.selection)
        key = (
            "anomalies",
            self.city,
            self.level,
            grid,
            self.category,
            tuple(sorted(self.kinds)),
            self.time_bin,
            self.baseline_days,
            self.q,
            self.min_z,
            self.privacy_mode,
            self.privacy_k,
            self.epsilon,
            selection,
        )
        # Several views ask for the same list on one change: compute it once per state.
        return snap.memo(key, lambda: self._anomalies(list(selection)))

    def _anomalies(self, selection: list[str]) -> tuple[pl.DataFrame, int]:
        det = self.detection()
        if det is None or det.scored.height == 0:
            return pl.DataFrame(), 0
        assert self.snapshot is not None
        found = det.scored.filter((pl.col("q") <= self.q) & (pl.col("zscore") >= self.min_z))
        if self.privacy_mode == "dp":
            pass  # the release holds the lens selection only
        elif self.category != ALL:
            found = found.filter(pl.col("category") == self.category)
        elif set(self.kinds) != set(KINDS):
            found = found.filter(pl.col("category").is_in(self._kind_of().filter(pl.col("kind").is_in(list(self.kinds)))["category"]))
        shown, withheld = gate_anomalies(found, self.released(), self.level, self._ancestors())
        if selection:
            chosen = self._ancestors().filter(pl.col("unit_id").is_in(selection))["anc_id"].to_list()
            shown = shown.filter(
                pl.col("unit_id").is_in(selection) & (pl.col("level") == self.level)
                | pl.col("rolled_up_from").is_not_null() & pl.col("unit_id").is_in(chosen)
            )
        withheld_cells = self.released().filter(pl.col("suppressed")).select("level", "unit_id", "category", "bin_start")
        if self.privacy_mode == "dp":
            explained = shown.with_columns(
                effect=pl.lit("volume"),
                drivers=pl.lit([], pl.List(pl.Struct({"category": pl.String, "excess": pl.Float64, "share": pl.Float64}))),
                share=pl.lit(None, pl.Float64),
            )
        else:
            explained = explain(det, shown, hidden=withheld_cells)
        names = self.snapshot.units(self.city).select("unit_id", pl.col("name").alias("unit_name"))
        out = explained.join(names, on="unit_id", how="left").with_columns(
            name=pl.col("unit_name"),
            count=pl.col("observed"),
            time_bin=pl.lit(self.time_bin),
            baseline_days=pl.lit(self.baseline_days),
            # Published precision (parallel float sums may differ in the last digits between runs).
            expected=pl.col("expected").round(2),
            variance=pl.col("variance").round(2),
            zscore=pl.col("zscore").round(2),
            p=pl.col("p").round_sig_figs(4),
            q=pl.col("q").round_sig_figs(4),
            share=pl.col("share").round(4),
            drivers=rounded_drivers(),
        )
        out = out.with_columns(narrative=narrate(out))
        return out.sort(["zscore", "unit_id", "category", "bin_start"], descending=[True, False, False, False]), withheld


def _unit_tree(snapshot: Snapshot, city: str, level: str) -> tuple[list[str], shapely.STRtree]:
    """Unit ids and a spatial index of their polygons (built once per snapshot, city and level)."""
    frame = snapshot.unit_geometries(city, level)
    return frame["unit_id"].to_list(), shapely.STRtree(shapely.from_wkb(frame["geom_wkb"].to_numpy()))


def _parent_level(level: str) -> str | None:
    """The next coarser admin level (None above borough: the city is one unit)."""
    coarser = _coarser_levels(level)
    return coarser[0] if coarser else None


def _coarser_levels(level: str) -> tuple[str, ...]:
    """Coarser admin levels up to borough (the city is one unit: nothing to roll up to)."""
    order = list(LEVELS)[:-1]
    return tuple(order[order.index(level) + 1 :]) if level in order else ()
