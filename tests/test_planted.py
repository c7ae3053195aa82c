"""The engine against the default demo city's planted anomalies (its ground-truth table), at the
product's default settings and through the privacy gate: what a user would actually be shown.

The default demo (1.2 M events) is built once per session (~10 s); the evaluation walks the
post-baseline history in the lens' default 7-day windows at tract and neighborhood level.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from app.data.demo import DemoSpec
from app.data.geography import tract_parents
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.evaluate import Evaluation, engine_detections, evaluate, match_planted, rolling_z_detections
from app.pipeline import PLANTED_FILE, build_demo


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Snapshot, pl.DataFrame]:
    data_dir: Path = tmp_path_factory.mktemp("default-demo")
    snap = build_demo(Store(data_dir), DemoSpec())
    return snap, pl.read_csv(data_dir / PLANTED_FILE, try_parse_dates=True)


@pytest.fixture(scope="module")
def published(default_demo: tuple[Snapshot, pl.DataFrame]) -> pl.DataFrame:
    return engine_detections(default_demo[0])


@pytest.fixture(scope="module")
def engine_score(default_demo: tuple[Snapshot, pl.DataFrame], published: pl.DataFrame) -> Evaluation:
    snap, truth = default_demo
    return evaluate(published, truth, tract_parents(snap.units("nyc")))


def test_default_demo_is_big_enough(default_demo: tuple[Snapshot, pl.DataFrame]) -> None:
    snap, truth = default_demo
    assert snap.events("nyc").height >= 1_000_000
    assert truth.height >= 20


def test_recall_and_precision_on_planted_anomalies(engine_score: Evaluation) -> None:
    assert engine_score.recall >= 0.95, engine_score
    assert engine_score.precision >= 0.90, engine_score


def test_the_engine_beats_a_plain_rolling_z_by_half_again(default_demo: tuple[Snapshot, pl.DataFrame], engine_score: Evaluation) -> None:
    snap, truth = default_demo
    plain = evaluate(rolling_z_detections(snap), truth, tract_parents(snap.units("nyc")))
    assert engine_score.f1 >= 1.5 * plain.f1, (engine_score, plain)


def test_mix_shifts_are_reported_as_mix_and_spikes_as_volume(default_demo: tuple[Snapshot, pl.DataFrame], published: pl.DataFrame) -> None:
    snap, truth = default_demo
    matches = match_planted(published, truth, tract_parents(snap.units("nyc")))
    effects = (
        matches.join(published.with_row_index("detection").select("detection", "effect"), on="detection")
        .join(truth.select("anomaly_id", "kind"), on="anomaly_id")
        .group_by("anomaly_id", "kind")
        .agg(pl.col("effect"))
    )
    assert effects.height >= 20
    for row in effects.iter_rows(named=True):
        if row["kind"] == "mix_shift":
            assert "mix" in row["effect"], row
        else:
            assert any(e.startswith("volume") for e in row["effect"]), row


def test_published_anomalies_carry_released_counts_only(published: pl.DataFrame) -> None:
    # Defaults: suppress, k = 11 -> no listed anomaly shows a count between 1 and 10.
    assert published.height > 0
    assert published["observed"].null_count() == 0
    assert published.filter(pl.col("observed").is_between(1, 10)).height == 0
    assert published["observed"].min() >= 11
