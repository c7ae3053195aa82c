"""Detection quality on real background: the shared Chicago 2022 crimes with planted anomalies.

The demo's planted figures (``planted_*``) measure the detector on background simulated from the
model family the detector assumes. These figures measure it on a real city's month instead: the
crimes of October 2022 (September is the baseline history) are ingested through the product's file
import, a seeded design of spikes and mix shifts (:mod:`bench.plant`) is planted into a copy, both
stores are published, and what the lens publishes on each is compared with the ground truth.

Figures (see :func:`real_planted_figures`): ``real_planted_recall``, ``real_planted_precision``,
``real_planted_f1`` and ``real_background_anomalies_per_week`` of the published anomalies, the same
four of the plain 28-day rolling z (``*_rolling_z``, z >= 3, same cells, no FDR, no privacy gate),
``real_planted_f1_ratio`` (engine F1 / rolling F1, when the latter is not 0), ``real_planted_plants``
and ``window_invariance``.

Two gaps of today's product path, bridged here in the open rather than patched in the product:

* The shared export has no ``ID`` column and no column unique per row (``--id-field`` has nothing
  to name), so the bench writes a temporary copy with ``ID`` = the 1-based row number of the file.
* The export has no coordinates, only ``Community Area``; the adapter keeps it in ``attrs`` but
  nothing places the row, so every row is stored unlocated (city level only). After the import
  each unlocated row is given a *placeholder tract*: the lowest-numbered tract the City assigns to
  its community area (``commarea``). Community-area (``neighborhood``) and coarser counts are then
  exact; tract counts are not, so nothing here is planted or evaluated at tract level.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from app.data.snapshot import Snapshot, query
from app.data.store import Store
from app.engine.evaluate import Evaluation
from app.engine.lens import Lens
from bench.plant import PlantDesign, Planting, plant

__all__ = [
    "CRIMES",
    "DAYS_PER_WEEK",
    "RealRun",
    "clean_store",
    "export_with_ids",
    "lens_detections",
    "open_lens",
    "place_by_community_area",
    "planted_store",
    "real_planted_figures",
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


def shared_data_dir() -> Path | None:
    """The read-only shared data beside the project (``CSH_SHARED_DATA`` overrides), or None."""
    path = Path(os.environ.get("CSH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return path if (path / CRIMES).is_file() and (path / GEO).is_dir() else None


@dataclass(frozen=True)
class RealRun:
    """One evaluation's settings: the month evaluated (``since`` .. ``until``, UTC midnights), the
    history imported before it (the baseline needs 28 days), the plant seeds (one planted store per
    seed, figures pooled over them) and optionally a plant design other than
    :meth:`PlantDesign.standard` at the community-area level (its seed is replaced by each seed)."""

    since: datetime = datetime(2022, 10, 1, tzinfo=UTC)
    until: datetime = datetime(2022, 11, 1, tzinfo=UTC)
    history: timedelta = timedelta(days=30)
    seeds: tuple[int, ...] = (0, 1, 2)
    design: PlantDesign | None = None
    invariance: tuple[tuple[datetime, datetime], tuple[datetime, datetime]] | None = None

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


def export_with_ids(src: Path, dst: Path, first_day: str | None = None, last_day: str | None = None) -> Path:
    """A copy of the export with an ``ID`` column (the file's 1-based row number, stable because
    the file is), optionally cut to local dates ``first_day <= Date < last_day`` (ISO strings)."""
    raw = pl.read_csv(src, infer_schema=False).with_row_index("ID", offset=1).with_columns(pl.col("ID").cast(pl.String))
    if first_day is not None:
        raw = raw.filter(pl.col("Date") >= first_day)
    if last_day is not None:
        raw = raw.filter(pl.col("Date") < last_day)
    raw.write_csv(dst)
    return dst


def place_by_community_area(store: Store, city: str = CITY) -> tuple[int, int]:
    """Give each unlocated event of ``city`` with a ``community_area`` attribute its area's
    placeholder tract (see the module docstring); returns (rows placed, rows left unlocated)."""
    from app.data.geography import load_geography, tract_parents

    parents = tract_parents(load_geography(city).units)
    placeholders = parents.group_by(community_area="neighborhood_id").agg(placeholder=pl.col("tract_id").min())
    with store.writer() as con:
        con.register("_placeholders", placeholders.to_arrow())
        before = query(con, "SELECT count(*) AS n FROM incident WHERE city = $c AND tract_id IS NULL", {"c": city})["n"][0]
        con.execute(
            """UPDATE incident SET tract_id = p.placeholder FROM _placeholders p
               WHERE incident.city = $c AND incident.tract_id IS NULL AND incident.lon IS NULL
                 AND json_extract_string(incident.attrs, '$.community_area') = p.community_area""",
            {"c": city},
        )
        after = query(con, "SELECT count(*) AS n FROM incident WHERE city = $c AND tract_id IS NULL", {"c": city})["n"][0]
        con.unregister("_placeholders")
    return int(before - after), int(after)


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


def clean_store(shared: Path, work: Path, run: RealRun, export: Path | None = None) -> tuple[Store, Snapshot, pl.DataFrame]:
    """Import the export (``export``, else the shared file cut to the run's history and month) into
    a new store under ``work/clean`` with the product's file import, place its rows by community
    area and publish; returns the store, its snapshot and its events (engine frame + store columns)."""
    from app.data.registry import get_source
    from app.data.sources.export_file import ingest_file
    from app.pipeline import publish

    spec = get_source(SOURCE)
    if export is None:
        first_day, last_day = (run.since - run.history).date().isoformat(), run.until.date().isoformat()
        work.mkdir(parents=True, exist_ok=True)
        export = export_with_ids(shared / CRIMES, work / "crimes_with_ids.csv", first_day, last_day)
    store = Store(work / "clean")
    report = ingest_file(store, spec, export)
    if report.rows == 0:
        raise RuntimeError(f"the import of {export.name} stored no rows")
    place_by_community_area(store, spec.city)
    events = _stored_events(store, spec.city)
    return store, publish(store, {spec.city}, built_by=f"ingest:{spec.name}"), events


def planted_store(clean: Store, events: pl.DataFrame, design: PlantDesign, data_dir: Path) -> tuple[Snapshot, Planting]:
    """Plant ``design`` into ``events`` (the clean store's) and publish a store at ``data_dir``: a
    copy of the clean working database with the added and relabelled rows upserted."""
    from app.data.geography import load_geography
    from app.data.registry import get_source
    from app.pipeline import publish

    spec = get_source(SOURCE)
    planting = plant(events, load_geography(spec.city).units, design)
    store = Store(data_dir)
    store.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clean.data_dir / "work.duckdb", store.data_dir / "work.duckdb")  # the layout Store documents
    severity = events.select(pl.col("category").alias("type"), "severity").unique("type")
    with store.writer() as con:
        Store.upsert(con, spec.table, _store_rows(planting.changed(), severity))
    return publish(store, {spec.city}, built_by=f"bench:planted:{design.seed}"), planting


def open_lens(snapshot: Snapshot, city: str, **params: Any) -> Lens:
    """``Lens(snapshot=..., city=..., **params)``; today's lens validates ``city`` against its
    default choices before it reads the snapshot's cities, so a non-default city is then set after
    construction (the call shape is kept for the rewritten lens)."""
    try:
        return Lens(snapshot=snapshot, city=city, **params)
    except ValueError:
        lens = Lens(snapshot=snapshot)
        lens.city = city
        lens.param.update(**params)
        return lens


def lens_detections(
    snapshot: Snapshot, windows: Sequence[tuple[datetime, datetime]], level: str = LEVEL, city: str = CITY, **lens_params: Any
) -> pl.DataFrame:
    """What the lens publishes at ``level`` (default settings, i.e. suppress with k = 11, unless
    ``lens_params`` say otherwise), window by window, de-duplicated per cell: ``level, unit_id,
    category, window_start, window_end, observed, expected, zscore, q`` (rolled-up anomalies carry
    their ancestor's level)."""
    frames = []
    for lo, hi in windows:
        lens = open_lens(snapshot, city, level=level, since=lo, until=hi, time_bin="day", **lens_params)
        found, _withheld = lens.anomalies()
        if found.height:
            frames.append(found.select("level", "unit_id", "category", "bin_start", "bin_end", "observed", "expected", "zscore", "q"))
    if not frames:
        return pl.DataFrame(
            schema={
                "level": pl.String,
                "unit_id": pl.String,
                "category": pl.String,
                "window_start": pl.Datetime("us", "UTC"),
                "window_end": pl.Datetime("us", "UTC"),
            }
        )
    found = pl.concat(frames).unique(["level", "unit_id", "category", "bin_start"], keep="first")
    return found.rename({"bin_start": "window_start", "bin_end": "window_end"}).sort("window_start", "level", "unit_id", "category")


def window_invariance(
    snapshot: Snapshot, first: tuple[datetime, datetime], second: tuple[datetime, datetime], level: str = LEVEL, city: str = CITY
) -> tuple[float, int]:
    """Share of the lens level's scored cells in the overlap of two windows whose verdict is the
    same in both: listed as an anomaly or not, and the expected count and z at the published
    precision (2 decimals). Returns (share, cells compared).

    Reads the scored cells from ``Lens.detection().scored``: the published list alone says nothing
    about the cells it leaves out."""
    lo, hi = max(first[0], second[0]), min(first[1], second[1])
    if lo >= hi:
        raise ValueError("the two windows do not overlap")
    keys = ["unit_id", "category", "bin_start"]
    verdicts = []
    for since, until in (first, second):
        lens = open_lens(snapshot, city, level=level, since=since, until=until, time_bin="day")
        det = lens.detection()
        found, _ = lens.anomalies()
        listed = found.filter(pl.col("level") == level).select(keys).with_columns(anomaly=pl.lit(True)) if found.height else None
        scored = det.scored.filter((pl.col("level") == level) & (pl.col("bin_start") >= lo) & (pl.col("bin_start") < hi)) if det else None
        if scored is None or scored.height == 0:
            raise RuntimeError(f"the lens scored no cell of {lo} .. {hi}")
        cells = scored.select(*keys, expected=pl.col("expected").round(2), zscore=pl.col("zscore").round(2))
        if listed is None:
            verdicts.append(cells.with_columns(anomaly=pl.lit(False)))
        else:
            verdicts.append(cells.join(listed, on=keys, how="left").with_columns(pl.col("anomaly").fill_null(False)))
    both = verdicts[0].join(verdicts[1], on=keys, how="full", coalesce=True, suffix="_2")
    same = (
        (pl.col("anomaly") == pl.col("anomaly_2")) & (pl.col("expected") == pl.col("expected_2")) & (pl.col("zscore") == pl.col("zscore_2"))
    )
    share = both.select(same.fill_null(False).mean()).item()
    return float(share), both.height


def real_planted_figures(shared: Path, work: Path, run: RealRun | None = None) -> dict[str, tuple[float, str]]:
    """Every real-data figure of one run (see the module docstring); ``work`` is a scratch dir.

    Recall is over the placed plants of every seed; precision follows
    :func:`app.engine.evaluate.evaluate_against_background` (an unmatched anomaly counts against it
    only when the clean store does not report that cell too), pooled over the seeds; background
    anomalies are those the clean store reports, per week of the month. Both detectors are asked
    in the lens' default 7-day windows ending at ``until`` (:func:`app.engine.evaluate.weekly_windows`).
    ``*_internal`` figures are the lens without the release rule (privacy ``none``), which tells
    the detector's misses from the privacy gate's."""
    from app.data.geography import tract_parents
    from app.engine.evaluate import evaluate_against_background, rolling_z_detections, weekly_windows

    run = run or RealRun()
    windows = weekly_windows(run.since, run.until)
    detectors: dict[str, Callable[[Snapshot], pl.DataFrame]] = {
        "": lambda snap: lens_detections(snap, windows),
        "_internal": lambda snap: lens_detections(snap, windows, privacy_mode="none"),
        "_rolling_z": lambda snap: rolling_z_detections(snap, CITY, levels=(LEVEL,), since=run.since, until=run.until),
    }
    with city_geography(shared / GEO):
        store, clean, events = clean_store(shared, work, run)
        parents = tract_parents(clean.units(CITY))
        background = {name: detect(clean) for name, detect in detectors.items()}
        scores: dict[str, list[Evaluation]] = {name: [] for name in detectors}
        plants = 0
        for design in run.plant_designs():
            snap, planting = planted_store(store, events, design, work / f"planted-{design.seed}")
            plants += planting.truth.height
            for name, detect in detectors.items():
                scores[name].append(evaluate_against_background(detect(snap), background[name], planting.truth, parents))
        invariance, _cells = window_invariance(clean, *run.invariance_windows())
    weeks = (run.until - run.since) / timedelta(days=DAYS_PER_WEEK)
    figures: dict[str, tuple[float, str]] = {"real_planted_plants": (plants, "plants")}
    for name in detectors:
        score = _pooled(scores[name])
        figures |= {
            f"real_planted_recall{name}": (round(score.recall, 4), "ratio"),
            f"real_planted_precision{name}": (round(score.precision, 4), "ratio"),
            f"real_planted_f1{name}": (round(score.f1, 4), "ratio"),
            f"real_background_anomalies_per_week{name}": (round(background[name].height / weeks, 2), "per_week"),
        }
    f1, f1_rolling = figures["real_planted_f1"][0], figures["real_planted_f1_rolling_z"][0]
    if f1_rolling > 0:
        figures["real_planted_f1_ratio"] = (round(f1 / f1_rolling, 3), "x")
    figures["window_invariance"] = (round(invariance, 4), "ratio")
    return figures


def _pooled(scores: Sequence[Evaluation]) -> Evaluation:
    """One evaluation of several plantings' counts together."""
    return Evaluation(
        detections=sum(s.detections for s in scores),
        true_detections=sum(s.true_detections for s in scores),
        planted=sum(s.planted for s in scores),
        found=sum(s.found for s in scores),
    )
