"""The publish-time ``dp`` release: dense, non-negative, consistent across space and time, noised
once per cell (re-served from the ledger, charged once per cell-instant), with scores that are
post-processing of the noisy release only."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from pathlib import Path

import panel as pn
import polars as pl
import pytest
from fastapi.testclient import TestClient
from polars.testing import assert_frame_equal

from app import pipeline
from app.api.main import create_app
from app.config import Settings
from app.data.geography import tract_parents
from app.data.store import Store
from app.engine.bins import ALL_CATEGORIES
from app.engine.dp_publish import level_epsilon, noise_variance, series_key
from app.engine.grains import DEFAULT_GRAINS, bin_expr, bin_range
from app.engine.layers import layer_cells
from app.engine.ledger import LEDGER_FILE, BudgetExceeded, BudgetLedger
from app.engine.lens import Lens
from app.engine.privacy import Policy
from app.engine.publish import Published, publish_city
from app.pipeline import build_demo
from app.views.provenance import ProvenancePanel
from conftest import TINY_GRAINS, TINY_SPEC
from tests.release_fixtures import CitySpec, city_events, city_units

POLICY = Policy("dp", epsilon=1.0)
SPEC = CitySpec(weeks=3, events=30_000, unlocated_share=0.05, seed=3)
LEVELS = ["tract", "neighborhood", "borough", "city"]


@pytest.fixture(scope="module")
def city() -> tuple[pl.DataFrame, pl.DataFrame]:
    units = city_units(SPEC)
    return units, city_events(SPEC, units)


def publish(events: pl.DataFrame, units: pl.DataFrame, ledger: BudgetLedger | None = None, seed: int = 7) -> Published:
    """One dp publish of ``events``; with a ledger, through it (re-served bins, then recorded)."""
    series = series_key(POLICY, DEFAULT_GRAINS, LEVELS)
    stored = ledger.published("x", series, DEFAULT_GRAINS) if ledger is not None else None
    pub = publish_city(events, units, SPEC.tz, POLICY, stored=stored, rng_seed=seed)
    if ledger is not None:
        assert pub.dp is not None
        ledger.record("x", series, pub.grains, pub.dp.new, pub.dp.new_bins, pub.dp.epsilon)
    return pub


def test_release_is_dense_non_negative_and_adds_up(city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    units, events = city
    pub = publish(events, units)
    rel = pub.release
    assert rel["count"].null_count() == 0
    assert rel["count"].min() >= 0
    assert not rel["suppressed"].any()
    assert not rel["partial"].any()
    cats = events["category"].n_unique() + 1
    for level in LEVELS:
        mine = rel.filter(pl.col("level") == level)
        grain = DEFAULT_GRAINS[level]
        bins = bin_range(pub.history_start, pub.complete_until[level], grain, SPEC.tz)  # type: ignore[arg-type]
        n_units = units.filter(pl.col("level") == level).height
        assert mine.height == n_units * cats * len(bins), level  # zeros are released (noisy) too
        assert set(mine["bin_start"].unique().to_list()) == set(bins)
        assert mine["grain"].unique().to_list() == [grain]
    # across space: per category, a level's children add up to no more than the parent over the
    # child's bin (the rest is the parent's events in no child, e.g. unlocated ones: not published)
    for child, parent in itertools.pairwise(LEVELS):
        grain = DEFAULT_GRAINS[child]
        kids = rel.filter(pl.col("level") == child).group_by("parent_id", "category", "bin_start").agg(kids=pl.col("count").sum())
        up = (
            rel.filter(pl.col("level") == parent)
            .with_columns(bin_start=bin_expr("bin_start", grain, SPEC.tz))
            .group_by(pl.col("unit_id").alias("parent_id"), "category", "bin_start")
            .agg(up=pl.col("count").sum())
        )
        joined = kids.join(up, on=["parent_id", "category", "bin_start"], how="left")
        assert joined["up"].null_count() == 0
        assert (joined["kids"] <= joined["up"]).all(), child
        assert (joined["kids"] == joined["up"]).mean() > 0.5  # type: ignore[operator]  # the rest is small
    # noise was drawn: the release is not the truth
    truth = layer_cells(events, tract_parents(units), DEFAULT_GRAINS, SPEC.tz, LEVELS)
    both = rel.join(truth, on=["level", "unit_id", "category", "bin_start"], how="inner", suffix="_true")
    assert (both["count"] != both["count_true"]).mean() > 0.5  # type: ignore[operator]


def test_noise_has_the_variance_the_scores_assume(city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Where the top level's counts are far from 0 (no clipping), released - true has the variance
    of the discrete Laplace of scale 2 L / ε that the scores add."""
    units, events = city
    rel = publish(events, units, seed=11).release.filter((pl.col("level") == "city") & (pl.col("category") == ALL_CATEGORIES))
    truth = layer_cells(events, tract_parents(units), DEFAULT_GRAINS, SPEC.tz, LEVELS).filter(pl.col("level") == "city")
    both = rel.join(truth, on=["unit_id", "category", "bin_start"], suffix="_true").filter(pl.col("count_true") > 40)
    assert both.height > 200
    err = (both["count"] - both["count_true"]).cast(pl.Float64)
    assert err.var() == pytest.approx(noise_variance(POLICY, 4), rel=0.25)
    assert abs(err.mean()) < 2.0  # type: ignore[arg-type]


def test_bins_are_noised_once_re_served_and_charged_once_per_instant(tmp_path: Path, city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    units, events = city
    cut = events["ts"].min() + timedelta(days=10)  # type: ignore[operator]
    with BudgetLedger(tmp_path / "ledger.duckdb", budget=1.5) as ledger:
        first = publish(events.filter(pl.col("ts") < cut), units, ledger, seed=1)
        assert ledger.peak("x") == pytest.approx(POLICY.epsilon, rel=1e-6)  # every level's bin: ε / L each
        assert level_epsilon(POLICY, 4) == pytest.approx(POLICY.epsilon / 4, rel=1e-6)
        # late events inside bins already released, and a later horizon
        late = events.filter(pl.col("ts") < cut).sample(fraction=0.2, seed=5)
        second = publish(pl.concat([events, late]), units, ledger, seed=2)
        assert ledger.peak("x") == pytest.approx(POLICY.epsilon, rel=1e-6)  # new bins only, once each
        key = ["level", "unit_id", "category", "bin_start"]
        old = first.release.select(*key, "count")
        again = second.release.join(old, on=key, how="inner", suffix="_first")
        assert again.height == old.height
        assert (again["count"] == again["count_first"]).all()  # re-served as released, late events or not
        assert second.release.height > first.release.height
        assert second.dp is not None
        assert all(f.join(old, on=key, how="inner").height == 0 for f in second.dp.new.values())
        with pytest.raises(ValueError, match="already released"):
            ledger.record("x", second.dp.series, second.grains, second.dp.new, second.dp.new_bins, second.dp.epsilon)


def test_scores_are_post_processing_of_the_release(tmp_path: Path, city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Once every bin is in the ledger, different true events give the same release and scores."""
    units, events = city
    with BudgetLedger(tmp_path / "ledger.duckdb") as ledger:
        first = publish(events, units, ledger, seed=1)
        fewer = events.filter(
            (pl.col("ts") == pl.col("ts").min()) | (pl.col("ts") == pl.col("ts").max()) | (pl.int_range(pl.len()) % 3 != 0)
        )
        second = publish(fewer, units, ledger, seed=2)
    assert second.dp is not None
    assert all(f.height == 0 for f in second.dp.new.values())
    assert second.release.sort(second.release.columns).equals(first.release.sort(first.release.columns))
    key, cols = ["level", "grain", "unit_id", "category", "bin_start"], first.scores.columns
    # equal up to the order of float sums
    assert_frame_equal(second.scores.sort(key).select(cols), first.scores.sort(key).select(cols), rel_tol=1e-9, abs_tol=1e-12)
    scored = first.scores.filter(pl.col("scored"))
    # noise alone is not an anomaly (a negative binomial with the noise's variance would call a noisy
    # 1 against 0.03 expected z = 4): nothing noise-sized is flagged, and no more than exact counts
    # of the same city flag
    flagged = scored.filter((pl.col("q") <= 0.05) & (pl.col("zscore") >= 3.0))
    assert flagged.filter(pl.col("observed") < 3 * math.sqrt(noise_variance(POLICY, 4))).height == 0
    exact = publish_city(events, units, SPEC.tz, Policy("none")).scores
    assert flagged.height <= exact.filter(pl.col("scored") & (pl.col("q") <= 0.05) & (pl.col("zscore") >= 3.0)).height
    assert scored.height > 0
    assert scored["variance"].min() > noise_variance(POLICY, 4)


def test_another_epsilon_is_a_new_release_of_every_level(tmp_path: Path, city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Bins of one configuration are never re-served under another (their noise scale and their
    consistency belong to it): a changed ε noises and charges everything again."""
    units, events = city
    other = Policy("dp", epsilon=2.0)
    with BudgetLedger(tmp_path / "ledger.duckdb") as ledger:
        first = publish(events, units, ledger)
        series = series_key(other, DEFAULT_GRAINS, LEVELS)
        assert series != series_key(POLICY, DEFAULT_GRAINS, LEVELS)
        assert all(f.height == 0 for f in ledger.published("x", series, DEFAULT_GRAINS).values())
        again = publish_city(events, units, SPEC.tz, other, stored=ledger.published("x", series, DEFAULT_GRAINS), rng_seed=3)
        assert again.dp is not None
        assert sum(f.height for f in again.dp.new.values()) == first.release.height
        ledger.record("x", series, again.grains, again.dp.new, again.dp.new_bins, again.dp.epsilon)
        assert ledger.peak("x") == pytest.approx(3.0, rel=1e-6)


def test_an_overspending_publish_records_nothing(tmp_path: Path, city: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    units, events = city
    with BudgetLedger(tmp_path / "ledger.duckdb", budget=0.75) as ledger:
        with pytest.raises(BudgetExceeded, match=r"budget 0\.75"):
            publish(events, units, ledger)
        assert ledger.peak("x") == 0.0
        assert all(f.height == 0 for f in ledger.published("x", series_key(POLICY, DEFAULT_GRAINS, LEVELS), DEFAULT_GRAINS).values())


def test_a_dp_server_publishes_serves_and_spends_once(tmp_path: Path) -> None:
    """Through the user's path: a dp demo build, a second publish of the same data (re-served, not
    charged again), one over the budget (refused: the previous release stays), the API and the
    provenance panel reading the ε spent from the snapshot, and no exact count or event time."""
    settings = Settings(
        data_dir=tmp_path, privacy_mode="dp", privacy_epsilon=1.0, privacy_budget=1.5, grains=TINY_GRAINS, scheduler_enabled=False
    )
    store = Store(tmp_path)
    first = build_demo(store, TINY_SPEC, settings=settings)
    meta = first.release_meta("nyc")
    assert meta["mode"] == "dp"
    assert meta["epsilon_spent"] == pytest.approx(1.0)
    assert meta["privacy_budget"] == 1.5
    assert (tmp_path / LEDGER_FILE).exists()
    second = pipeline.publish(store, {"nyc"}, built_by="test", settings=settings)
    assert second.id != first.id
    assert second.release_meta("nyc")["epsilon_spent"] == pytest.approx(1.0)
    cols = first.release("nyc").columns
    assert second.release("nyc").sort(cols).equals(first.release("nyc").sort(cols))
    # other grains are a new release of every level: 1 more per instant, over the budget of 1.5
    coarser = settings.model_copy(update={"grains": "tract=week,neighborhood=week,borough=day,city=day"})
    third = pipeline.publish(store, {"nyc"}, built_by="test", settings=coarser)
    assert third.release_meta("nyc")["grains"] == second.release_meta("nyc")["grains"]
    assert third.release("nyc").sort(cols).equals(first.release("nyc").sort(cols))
    with BudgetLedger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.peak("nyc") == pytest.approx(1.0)
    with TestClient(create_app(settings)) as client:
        for path in ("/heat", "/anomalies"):
            res = client.get(path, params={"city": "nyc", "level": "neighborhood", "min_z": 0, "q": 1})
            assert res.status_code == 200, res.text
            privacy = res.json()["privacy"]
            assert privacy["mode"] == "dp"
            assert privacy["epsilon"] == 1.0
            assert privacy["epsilon_spent"] == pytest.approx(1.0)
        found = client.get("/anomalies", params={"city": "nyc", "level": "borough", "min_z": 0, "q": 1}).json()
        assert found["items"], "a dp release is scored"
        health = client.get("/healthz").json()
        assert health["snapshot"]["rows"] is None  # exact counts would undo the noise
        assert all(s["rows_total"] is None for s in health["sources"])
        (nyc,) = [c for c in client.get("/cities").json()["cities"] if c["id"] == "nyc"]
        assert datetime.fromisoformat(nyc["first_event"]) == meta["history_start"]
        assert datetime.fromisoformat(nyc["last_event"]) == meta["horizon"]
    lens = Lens(snapshot=store.current())
    assert lens.privacy_mode == "dp"
    texts = [str(m.object) for m in ProvenancePanel(lens=lens).__panel__().select(pn.pane.Markdown) if "Snapshot" in str(m.object)]
    assert "ε spent: 1 of the budget 1.5 at nyc's most-charged instant" in texts[0]
    assert "rows: withheld (differential privacy)" in texts[0]
