"""Detection quality on real background: the shared Chicago 2022 crimes with planted anomalies.

The demo's planted figures (``planted_*``) measure the detector on background simulated from the
model family the detector assumes. These figures measure it on a real city's month instead: the
crimes of October 2022 (with five weeks of history before it, for full 28-day baselines, and two
weeks after it, so the weeks holding the month are complete and published) are imported through
the product's file import (``--id-field @content``: the export has no id column; rows without
coordinates count in their community area, ``area_id``), a seeded design of spikes and mix shifts
(:mod:`bench.plant`, per day at the community-area level) is planted into a copy, both stores are
published, and what the lens lists on each is compared with the ground truth.

Detections are the lens' anomalies at the community-area level (``neighborhood``, the lens'
default level and the plants' level) at the grain the snapshot publishes it at: for this file the
automatic choice is *weeks* (sides by day, the city by hour), so a 1-3 day plant is judged by the week
cell holding it. Figures (see :func:`real_planted_figures`):

* ``real_planted_recall``, ``real_planted_precision``, ``real_planted_f1`` and
  ``real_background_anomalies_per_week`` of what a user gets by default (automatic grains,
  ``suppress`` with k = 11), and ``real_planted_plants``;
* the same four of the plain 28-day rolling z on the same released cells (``*_rolling_z``,
  z >= 3, no FDR), and ``real_planted_f1_ratio`` (engine F1 / rolling F1, when the latter is not 0);
* ``*_internal``: the default grains published without the release rule (``privacy_mode="none"``),
  which tells the detector's misses from the privacy gate's;
* ``*_daily`` and ``*_rolling_z_daily`` (only with ``RealRun(variants=...)`` naming ``_daily``):
  grains pinned to community areas by day (not what a user gets by default; the plants' own
  grain). Not in the default run (a user's default is the automatic choice); measured on
  2026-12-03: recall 0.36 at precision 1.0, below the weekly default's 0.5, because far more
  community-area days are withheld;
* ``window_invariance``: see :func:`window_invariance`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from app.config import Settings
from app.data.snapshot import Snapshot, query
from app.data.store import Store
from app.engine.evaluate import Evaluation
from app.engine.lens import Lens
from bench.plant import PlantDesign, Planting, plant

__all__ = [
    "CRIMES",
    "DAYS_PER_WEEK",
    "VARIANTS",
    "RealRun",
    "clean_store",
    "export_slice",
    "lens_detections",
    "planted_store",
    "real_data_figures",
    "real_planted_figures",
    "rolling_detections",
    "shared_data_dir",
    "window_invariance",
]

CITY = "chicago"
SOURCE = "chicago_crimes"
LEVEL = "neighborhood"
#: The shared export, relative to the shared data dir (its README describes it).
CRIMES = Path("events/chicago/chicago_crimes_2022_slim.csv.gz")
GEO = Path("geo/chicago")
DAYS_PER_WEEK = 7
_DAY = timedelta(days=1)
#: Grains pinned for the ``_daily`` variant (community areas by day).
DAILY_GRAINS = "tract=week,neighborhood=day,borough=day,city=day"
#: Each published variant of a store: figure suffix -> (privacy mode, grains setting).
VARIANTS: dict[str, tuple[str, str]] = {"": ("suppress", "auto"), "_internal": ("none", "auto"), "_daily": ("suppress", DAILY_GRAINS)}


def shared_data_dir() -> Path | None:
    """The read-only shared data beside the project (``CSH_SHARED_DATA`` overrides), or None."""
    path = Path(os.environ.get("CSH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return path if (path / CRIMES).is_file() and (path / GEO).is_dir() else None


@dataclass(frozen=True)
class RealRun:
    """One evaluation's settings: the month evaluated (``since`` .. ``until``, UTC midnights), the
    history imported before it (a week cell needs 28 days before its local Monday for a full
    baseline), the data imported after it (so the bins holding the month are complete), the plant
    seeds (one planted store per seed, figures pooled over them) and optionally a plant design
    other than :meth:`PlantDesign.standard` at the community-area level (its seed is replaced by
    each seed). ``variants``: which of :data:`VARIANTS` to publish and evaluate (``_daily`` is not
    among the defaults, see the module docstring)."""

    since: datetime = datetime(2022, 10, 1, tzinfo=UTC)
    until: datetime = datetime(2022, 11, 1, tzinfo=UTC)
    history: timedelta = timedelta(days=35)
    after: timedelta = timedelta(days=14)
    seeds: tuple[int, ...] = (0, 1, 2)
    design: PlantDesign | None = None
    invariance: tuple[tuple[datetime, datetime], tuple[datetime, datetime]] | None = None
    variants: tuple[str, ...] = ("", "_internal")

    def plant_designs(self) -> list[PlantDesign]:
        base = self.design or PlantDesign.standard(self.since, self.until, levels=(LEVEL,))
        return [replace(base, seed=seed) for seed in self.seeds]

    def invariance_windows(self) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
        """``invariance``, else two overlapping windows: the first two weeks, and from day 8 to the
        last day (exclusive), e.g. [Oct 1, Oct 15) and [Oct 8, Oct 31)."""
        week = DAYS_PER_WEEK * _DAY
        return self.invariance or ((self.since, self.since + 2 * week), (self.since + week, self.until - _DAY))


@contextmanager
def city_geography(geo_dir: Path) -> Iterator[None]:
    """Point ``CSH_GEO_DIR`` at ``geo_dir`` for the block (settings and geography caches cleared
    before and after), so Chicago's boundaries come from the shared files, never a download."""
    from app.config import get_settings
    from app.data.geography import load_geography

    old = os.environ.get("CSH_GEO_DIR")
    os.environ["CSH_GEO_DIR"] = str(geo_dir)
    get_settings.cache_clear()
    load_geography.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CSH_GEO_DIR", None)
        else:
            os.environ["CSH_GEO_DIR"] = old
        get_settings.cache_clear()
        load_geography.cache_clear()


def export_slice(src: Path, dst: Path, first_day: str, last_day: str) -> Path:
    """The export's rows of local dates ``first_day <= Date < last_day`` (ISO strings), every cell
    as in the file (so the content ids of ``--id-field @content`` are those of the whole file)."""
    raw = pl.read_csv(src, infer_schema=False)
    raw.filter((pl.col("Date") >= first_day) & (pl.col("Date") < last_day)).write_csv(dst)
    return dst


def _stored_events(store: Store, city: str) -> pl.DataFrame:
    """The working database's current incidents as the engine's event frame plus the store columns
    (``category`` is the table's ``type``), in a fixed order so the planting is reproducible."""
    with store.writer() as con:
        rows = query(con, "SELECT * FROM incident WHERE city = $c AND valid_to IS NULL ORDER BY ts, id", {"c": city})
    return rows.rename({"type": "category"}).with_columns(kind=pl.lit("incident"))


def _store_rows(changed: pl.DataFrame, severity: pl.DataFrame) -> pl.DataFrame:
    """Planted rows back in the ``incident`` table's shape: the relabelled type's severity, and the
    added rows' own ``source_id`` and ``source:source_id`` id."""
    new = pl.col("id").str.starts_with("plant-")
    return (
        changed.drop("kind", "plant_id", "severity")
        .rename({"category": "type"})
        .join(severity, on="type", how="left")
        .with_columns(
            source_id=pl.when(new).then(pl.col("id")).otherwise(pl.col("source_id")),
            id=pl.when(new).then(pl.concat_str("source", pl.lit(":"), "id")).otherwise(pl.col("id")),
        )
    )


def publish_variants(store: Store, built_by: str, variants: Sequence[str]) -> dict[str, Snapshot]:
    """One snapshot of ``store`` per variant (:data:`VARIANTS`), published in turn by the product's
    :func:`app.pipeline.publish` with that variant's privacy mode and grains."""
    from app.pipeline import publish

    out = {}
    for name in variants:
        mode, grains = VARIANTS[name]
        settings = Settings(data_dir=store.data_dir, privacy_mode=mode, grains=grains)
        out[name] = publish(store, {CITY}, built_by=f"{built_by}{name}", settings=settings)
    return out


def clean_store(shared: Path, work: Path, run: RealRun, export: Path | None = None) -> tuple[Store, dict[str, Snapshot], pl.DataFrame]:
    """Import the export (``export``, else the shared file cut to the run's history, month and the
    data after it) into a new store under ``work/clean`` with the product's file import
    (``id_field="@content"``) and publish each variant; returns the store, its snapshots and its
    events (engine frame + store columns)."""
    from app.data.registry import get_source
    from app.data.sources.export_file import CONTENT_ID, ingest_file

    spec = get_source(SOURCE)
    if export is None:
        first_day, last_day = (run.since - run.history).date().isoformat(), (run.until + run.after).date().isoformat()
        work.mkdir(parents=True, exist_ok=True)
        export = export_slice(shared / CRIMES, work / "crimes_slice.csv", first_day, last_day)
    store = Store(work / "clean", keep=len(VARIANTS) + 1)
    report = ingest_file(store, spec, export, id_field=CONTENT_ID)
    if report.rows == 0:
        raise RuntimeError(f"the import of {export.name} stored no rows")
    events = _stored_events(store, spec.city)
    return store, publish_variants(store, f"ingest:{spec.name}", run.variants), events


def planted_store(
    clean: Store, events: pl.DataFrame, design: PlantDesign, data_dir: Path, variants: Sequence[str] = tuple(VARIANTS)
) -> tuple[dict[str, Snapshot], Planting]:
    """Plant ``design`` into ``events`` (the clean store's) and publish a store at ``data_dir``: a
    copy of the clean working database with the added and relabelled rows upserted."""
    from app.data.geography import load_geography
    from app.data.registry import get_source

    spec = get_source(SOURCE)
    planting = plant(events, load_geography(spec.city).units, design)
    store = Store(data_dir, keep=len(VARIANTS) + 1)
    store.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clean.data_dir / "work.duckdb", store.data_dir / "work.duckdb")  # the layout Store documents
    severity = events.select(pl.col("category").alias("type"), "severity").unique("type")
    with store.writer() as con:
        Store.upsert(con, spec.table, _store_rows(planting.changed(), severity))
    return publish_variants(store, f"bench:planted:{design.seed}", variants), planting


_DETECTIONS = pl.Schema(
    {
        "level": pl.String(),
        "unit_id": pl.String(),
        "category": pl.String(),
        "window_start": pl.Datetime("us", "UTC"),
        "window_end": pl.Datetime("us", "UTC"),
    }
)


def lens_detections(snapshot: Snapshot, since: datetime, until: datetime, level: str = LEVEL) -> tuple[pl.DataFrame, float]:
    """What the lens lists at ``level`` (default thresholds) in ``[since, until)`` snapped to the
    level's published grain: ``level, unit_id, category, window_start, window_end, observed,
    expected, zscore, q``, and the weeks that snapped window spans."""
    lens = Lens(snapshot=snapshot, city=CITY, level=level, since=since, until=until, time_bin="day")
    grid = lens.grid_window()
    assert grid is not None
    weeks = (grid[1] - grid[0]) / timedelta(days=DAYS_PER_WEEK)
    found, _withheld = lens.anomalies()
    if found.height == 0:
        return pl.DataFrame(schema=_DETECTIONS), weeks
    cols = ["level", "unit_id", "category", "bin_start", "bin_end", "observed", "expected", "zscore", "q"]
    out = found.select(cols).rename({"bin_start": "window_start", "bin_end": "window_end"})
    return out.sort("window_start", "unit_id", "category"), weeks


def rolling_detections(snapshot: Snapshot, since: datetime, until: datetime, level: str = LEVEL) -> pl.DataFrame:
    """The plain rolling z (:func:`app.engine.evaluate.rolling_z_detections`) at ``level``, in the
    cells overlapping ``[since, until)``."""
    from app.engine.evaluate import rolling_z_detections

    hits = rolling_z_detections(snapshot, CITY)
    return hits.filter((pl.col("level") == level) & (pl.col("window_end") > since) & (pl.col("window_start") < until))


def window_invariance(
    snapshot: Snapshot, first: tuple[datetime, datetime], second: tuple[datetime, datetime], levels: Sequence[str] | None = None
) -> tuple[float, int]:
    """Share of the shared cells of two overlapping windows that read the same in both, at every
    published level (``levels``: default all but ``tract``) and its grain: the verdict (listed by
    :meth:`Lens.anomalies` or not), and the expected count and z at the lens' precision (2
    decimals). A cell is a scored (unit, category, bin) of the published scores inside both lens
    windows (snapped to whole bins); a listed cell's numbers are the lens' own. Returns (share,
    cells compared)."""
    meta = snapshot.release_meta(CITY)
    levels = [lvl for lvl in (levels or meta["grains"]) if lvl != "tract"] if levels is None else list(levels)
    keys = ["level", "unit_id", "category", "bin_start"]
    shares: list[pl.DataFrame] = []
    for level in levels:
        views = []
        for since, until in (first, second):
            lens = Lens(snapshot=snapshot, city=CITY, level=level, since=since, until=until, time_bin="day")
            grid, grain = lens.grid_window(), lens.effective_bin()
            assert grid is not None
            scores = snapshot.scores(CITY).filter(
                (pl.col("level") == level)
                & (pl.col("grain") == grain)
                & pl.col("scored")
                & pl.col("bin_start").is_between(*grid, closed="left")
            )
            cells = scores.select(*keys, expected=pl.col("expected").round(2), zscore=pl.col("zscore").round(2), anomaly=pl.lit(False))
            found, _ = lens.anomalies()
            if found.height:
                listed = found.select(*keys, "expected", "zscore", anomaly=pl.lit(True))
                cells = pl.concat([cells.join(listed, on=keys, how="anti"), listed], how="vertical_relaxed")
            views.append((grid, cells))
        (g1, c1), (g2, c2) = views
        lo, hi = max(g1[0], g2[0]), min(g1[1], g2[1])
        if lo >= hi:
            raise ValueError("the two windows do not overlap")
        inside = pl.col("bin_start").is_between(lo, hi, closed="left")
        both = c1.filter(inside).join(c2.filter(inside), on=keys, how="full", coalesce=True, suffix="_2")
        shares.append(
            both.select(
                same=(pl.col("anomaly") == pl.col("anomaly_2"))
                & (pl.col("expected") == pl.col("expected_2"))
                & (pl.col("zscore") == pl.col("zscore_2"))
            )
        )
    pooled = pl.concat(shares)
    if pooled.height == 0:
        raise RuntimeError("the two windows share no scored cell")
    return float(pooled["same"].fill_null(False).mean()), pooled.height  # type: ignore[arg-type]


def real_planted_figures(shared: Path, work: Path, run: RealRun | None = None) -> dict[str, tuple[float, str]]:
    """Every real-data figure of one run (see the module docstring); ``work`` is a scratch dir.

    Recall is over the placed plants of every seed; precision follows
    :func:`app.engine.evaluate.evaluate_against_background` (an unmatched anomaly counts against it
    only when the clean store reports that cell too), pooled over the seeds; background anomalies
    are those the clean store reports in the month's cells, per week those cells span."""
    from app.data.geography import tract_parents
    from app.engine.evaluate import evaluate_against_background

    run = run or RealRun()
    detectors: dict[str, tuple[str, Callable[[Snapshot], pl.DataFrame]]] = {}
    for variant in run.variants:
        detectors[variant] = (variant, lambda snap: lens_detections(snap, run.since, run.until)[0])
        if variant != "_internal":
            detectors["_rolling_z" + variant] = (variant, lambda snap: rolling_detections(snap, run.since, run.until))
    with city_geography(shared / GEO):
        store, clean, events = clean_store(shared, work, run)
        parents = tract_parents(clean[run.variants[0]].units(CITY))
        weeks = {variant: lens_detections(clean[variant], run.since, run.until)[1] for variant in run.variants}
        background = {name: detect(clean[variant]) for name, (variant, detect) in detectors.items()}
        scores: dict[str, list[Evaluation]] = {name: [] for name in detectors}
        plants = 0
        for design in run.plant_designs():
            snaps, planting = planted_store(store, events, design, work / f"planted-{design.seed}", run.variants)
            plants += planting.truth.height
            for name, (variant, detect) in detectors.items():
                scores[name].append(evaluate_against_background(detect(snaps[variant]), background[name], planting.truth, parents))
        invariance, _cells = window_invariance(clean[run.variants[0]], *run.invariance_windows())
    figures: dict[str, tuple[float, str]] = {"real_planted_plants": (plants, "plants")}
    for name in detectors:
        score = _pooled(scores[name])
        figures |= {
            f"real_planted_recall{name}": (round(score.recall, 4), "ratio"),
            f"real_planted_precision{name}": (round(score.precision, 4), "ratio"),
            f"real_planted_f1{name}": (round(score.f1, 4), "ratio"),
            f"real_background_anomalies_per_week{name}": (round(background[name].height / weeks[detectors[name][0]], 2), "per_week"),
        }
    if "real_planted_f1_rolling_z" in figures:
        f1, f1_rolling = figures["real_planted_f1"][0], figures["real_planted_f1_rolling_z"][0]
        if f1_rolling > 0:
            figures["real_planted_f1_ratio"] = (round(f1 / f1_rolling, 3), "x")
    figures["window_invariance"] = (round(invariance, 4), "ratio")
    return figures


def real_data_figures() -> dict[str, tuple[float, str]]:
    """The real-data figures of the default :class:`RealRun` in a scratch dir (removed after), or
    ``{}`` when the shared data are absent (:func:`shared_data_dir`)."""
    shared = shared_data_dir()
    if shared is None:
        return {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="csh-real-") as tmp:
        figures = real_planted_figures(shared, Path(tmp))
    figures["real_planted_seconds"] = (round(time.perf_counter() - t0, 1), "s")
    return figures


def _pooled(scores: Sequence[Evaluation]) -> Evaluation:
    """One evaluation of several plantings' counts together."""
    return Evaluation(
        detections=sum(s.detections for s in scores),
        true_detections=sum(s.true_detections for s in scores),
        planted=sum(s.planted for s in scores),
        found=sum(s.found for s in scores),
    )
