"""The tilegram: layouts (one cell per unit, near home, cached) over the tiny snapshot's real NYC
geography and synthetic lattices, the viewer's tiles and colours, and the client-side morph (its
script, and in Chromium when installed: it plays, within budget, and not under reduced motion)."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import panel as pn
import polars as pl
import pytest
from bokeh.models import ColumnDataSource, CustomJS, Ngon
from bokeh.models.renderers import GlyphRenderer
from bokeh.plotting import figure
from playwright.sync_api import Browser
from scipy.stats import spearmanr

from app.config import Settings
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.lens import Lens
from app.views.base import level_words
from app.views.tilegram import MORPH_JS, MORPH_MS, NEUTRAL, PALETTE, Tilegram, morph_plan, short_label, unit_scores, z_colors
from app.views.tilegram_layout import (
    KM_PER_DEGREE,
    Shape,
    TileLayout,
    cached_layout,
    clear_layout_cache,
    footprint_area,
    geography_key,
    parent_positions,
    tile_layout,
)

LEVELS = ("tract", "neighborhood", "borough")
SHAPES: tuple[Shape, Shape] = ("hex", "square")


def _origin(snap: Snapshot) -> tuple[float, float]:
    units = snap.units("nyc")
    return float(units["lon"].mean()), float(units["lat"].mean())  # type: ignore[arg-type]  # mean of a Float64 column is a float


@pytest.fixture(scope="module")
def layouts(tiny_snap: Snapshot) -> dict[tuple[str, str], TileLayout]:
    """Layouts of every level and shape, sized like the viewer sizes them (by the tract footprint)."""
    origin = _origin(tiny_snap)
    out: dict[tuple[str, str], TileLayout] = {}
    for shape in SHAPES:
        area = footprint_area(tiny_snap.units("nyc", "tract"), shape, origin=origin)
        for level in LEVELS:
            out[level, shape] = tile_layout(tiny_snap.units("nyc", level), shape, origin=origin, area=area)
    return out


def _lattice(shape: str, n: int, spacing_km: float) -> pl.DataFrame:
    """Units on an ``n x n`` lattice of the tile grid itself (hexagons: odd rows shifted half a step),
    as lon/lat about (0, 0) so the layout's projection maps them straight back."""
    rows, cols = np.divmod(np.arange(n * n), n)
    if shape == "hex":
        x, y = (cols + 0.5 * (rows % 2)) * spacing_km, rows * spacing_km * math.sqrt(3) / 2
    else:
        x, y = cols * spacing_km, rows * spacing_km
    return pl.DataFrame({"unit_id": [f"u{i}" for i in range(n * n)], "lon": x / KM_PER_DEGREE, "lat": y / KM_PER_DEGREE})


# ---- layouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", LEVELS)
def test_every_unit_gets_exactly_one_tile_of_its_own(
    tiny_snap: Snapshot, layouts: dict[tuple[str, str], TileLayout], level: str, shape: str
) -> None:
    units = tiny_snap.units("nyc", level)
    layout = layouts[level, shape]
    tiles = layout.tiles
    assert layout.shape == shape
    assert tiles.height == units.height > 0
    assert sorted(tiles["unit_id"].to_list()) == sorted(units["unit_id"].to_list())
    assert not tiles.select("col", "row").is_duplicated().any()
    assert tiles["col"].min() == 0
    assert tiles["row"].min() == 0
    # No two tiles overlap: centres are at least a tile width apart (hex and square grids alike).
    if tiles.height > 1:
        xy = tiles.select("x", "y").to_numpy()
        gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(gaps, np.inf)
        assert gaps.min() >= layout.size * (1 - 1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_city_itself_is_one_tile(tiny_snap: Snapshot, shape: Shape) -> None:
    layout = tile_layout(tiny_snap.units("nyc", "city"), shape)
    assert layout.tiles.height == 1
    assert layout.displacement == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_points_on_the_grid_keep_their_cells(shape: Shape) -> None:
    units = _lattice(shape, 12, 0.8)
    layout = tile_layout(units, shape, origin=(0.0, 0.0))
    assert layout.size == pytest.approx(0.8)
    assert layout.displacement < 1e-6
    assert layout.max_displacement < 1e-6
    want = units.with_columns(x=pl.col("lon") * KM_PER_DEGREE, y=pl.col("lat") * KM_PER_DEGREE).select("unit_id", "x", "y")
    got = layout.tiles.select("unit_id", "x", "y")
    assert np.allclose(got.join(want, on="unit_id").select(pl.col("x") - pl.col("x_right"), pl.col("y") - pl.col("y_right")).to_numpy(), 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", ["tract", "neighborhood"])
def test_layout_preserves_geography(tiny_snap: Snapshot, layouts: dict[tuple[str, str], TileLayout], level: str, shape: Shape) -> None:
    """East stays east and north stays north (rank correlation), and tiles stay close to home."""
    layout = layouts[level, shape]
    joined = layout.tiles.join(tiny_snap.units("nyc", level), on="unit_id")
    assert spearmanr(joined["x"], joined["lon"]).statistic > 0.8
    assert spearmanr(joined["y"], joined["lat"]).statistic > 0.8
    assert layout.displacement < 2.0  # tile widths, on average


def test_levels_sized_by_the_finest_cover_the_same_ground(layouts: dict[tuple[str, str], TileLayout]) -> None:
    """Sized by the tract footprint, every level spans about the same box, so a morph stays in one picture."""
    for shape in SHAPES:
        spans = [(b[1] - b[0], b[3] - b[2]) for b in (layouts[level, shape].extent() for level in LEVELS)]
        for w, h in spans[1:]:
            assert w == pytest.approx(spans[0][0], rel=0.35)
            assert h == pytest.approx(spans[0][1], rel=0.35)


def test_hexagons_and_squares_differ_in_grid_and_glyph(layouts: dict[tuple[str, str], TileLayout]) -> None:
    hexes, squares = layouts["neighborhood", "hex"], layouts["neighborhood", "square"]
    assert (hexes.sides, squares.sides) == (6, 4)
    assert hexes.radius == pytest.approx(hexes.size / math.sqrt(3))
    assert squares.radius == pytest.approx(squares.size / math.sqrt(2))
    # Hexagon rows sit sqrt(3)/2 of a tile apart; odd rows are offset half a tile.
    rows = hexes.tiles.sort("row").group_by("row", maintain_order=True).agg(pl.col("y").first(), pl.col("x").first(), pl.col("col").first())
    dy = np.diff(rows["y"].to_numpy()) / np.diff(rows["row"].to_numpy())
    assert np.allclose(dy, hexes.size * math.sqrt(3) / 2)
    frac = ((rows["x"].to_numpy() - rows["col"].to_numpy() * hexes.size) / hexes.size) % 1.0
    parity = rows["row"].to_numpy() % 2
    assert np.ptp(np.round(frac[parity == 0], 6) % 1) < 1e-6
    assert np.ptp(np.round(frac[parity == 1], 6) % 1) < 1e-6
    assert (frac[parity == 1][0] - frac[parity == 0][0]) % 1.0 == pytest.approx(0.5)


def test_cache_returns_the_same_layout_per_key_and_shape(tiny_snap: Snapshot) -> None:
    clear_layout_cache()
    units = tiny_snap.units("nyc", "neighborhood")
    key = ("nyc", "neighborhood", geography_key(units))
    first = cached_layout(key, units, "hex")
    assert cached_layout(key, units, "hex") is first
    assert cached_layout(key, units, "square") is not first
    assert cached_layout(("elsewhere", *key[1:]), units, "hex") is not first
    clear_layout_cache()
    assert cached_layout(key, units, "hex") is not first


def test_geography_key_follows_the_units(tiny_snap: Snapshot) -> None:
    units = tiny_snap.units("nyc", "borough")
    assert geography_key(units) == geography_key(units.reverse())  # order does not matter
    assert geography_key(units) != geography_key(units.with_columns(pl.col("lon") + 0.01))


def test_parent_positions_map_every_child_to_its_parent_tile(tiny_snap: Snapshot, layouts: dict[tuple[str, str], TileLayout]) -> None:
    child, parent = layouts["tract", "hex"], layouts["neighborhood", "hex"]
    links = tiny_snap.units("nyc", "tract").select("unit_id", "parent_id")
    targets = parent_positions(child, parent, links)
    assert targets["unit_id"].to_list() == child.tiles["unit_id"].to_list()
    centres = parent.tiles.select(parent_id="unit_id", px="x", py="y")
    joined = targets.join(centres, on="parent_id")
    assert joined.height == child.tiles.height
    assert (joined["x"] == joined["px"]).all()
    assert (joined["y"] == joined["py"]).all()


def test_parent_positions_leave_orphans_in_place(layouts: dict[tuple[str, str], TileLayout]) -> None:
    child, parent = layouts["neighborhood", "hex"], layouts["borough", "hex"]
    links = pl.DataFrame({"unit_id": child.tiles["unit_id"][:1], "parent_id": ["nowhere"]})
    targets = parent_positions(child, parent, links)
    assert targets.row(0, named=True)["x"] == child.tiles.row(0, named=True)["x"]
    assert targets["parent_id"].null_count() == child.tiles.height - 1


def test_bad_inputs_are_refused_and_no_units_is_no_tiles() -> None:
    units = pl.DataFrame({"unit_id": ["a", "b"], "lon": [0.0, None], "lat": [0.0, 0.1]})
    with pytest.raises(ValueError, match="representative point"):
        tile_layout(units, "hex")
    with pytest.raises(ValueError, match="shape"):
        tile_layout(units.drop_nulls(), "triangle")  # type: ignore[arg-type]  # the point of the test
    empty = tile_layout(pl.DataFrame(schema={"unit_id": pl.String, "lon": pl.Float64, "lat": pl.Float64}), "square")
    assert empty.tiles.is_empty()
    assert empty.tiles.columns == ["unit_id", "col", "row", "x", "y"]


# ---- colours and labels ------------------------------------------------------------------------
def test_colours_diverge_from_a_neutral_grey() -> None:
    colors = z_colors(np.array([np.nan, 0.0, 3.0, 10.0, 1000.0, -3.0]))
    assert colors[0] == NEUTRAL
    assert NEUTRAL not in colors[1:]
    middle = (len(PALETTE) - 1) / 2
    index = [PALETTE.index(c) for c in colors[1:]]
    assert abs(index[0] - middle) <= 1  # z = 0 sits at the centre of the diverging scale
    assert index[1] < index[2] < index[3] == len(PALETTE) - 1  # stronger is further out, clipped at the end
    assert index[1] - middle > 0.3 * middle  # the usual threshold already reads as coloured
    assert index[4] < middle  # below expected goes the other way


def test_labels_shorten_to_fit() -> None:
    assert short_label("Bronx", 8) == "Bronx"
    assert short_label("Staten Island", 10, lines=2) == "Staten\nIsland"
    assert short_label("Staten Island", 10) == "Staten Is…"
    assert short_label("Bronx Census Tract 1 (Rikers Island)", 20) == "Bronx Census Tract 1"
    assert short_label("Greenpoint", 2) == ""


def test_unit_scores_take_the_strongest_anomaly_at_the_level_only() -> None:
    found = pl.DataFrame({"level": ["tract", "tract", "neighborhood"], "unit_id": ["t1", "t1", "n1"], "zscore": [3.5, 7.0, 9.0]})
    assert unit_scores(found, "tract").rows() == [("t1", 7.0)]
    assert unit_scores(pl.DataFrame(), "tract").is_empty()


# ---- the viewer --------------------------------------------------------------------------------
@pytest.fixture
def lens(tiny_store: Store, tiny_settings: Settings) -> Lens:
    """A fresh lens per test, made the way ``build_dashboard`` makes one."""
    return Lens(snapshot=tiny_store.current(), privacy_mode=tiny_settings.privacy_mode, privacy_k=tiny_settings.privacy_k)


def _parts(panel: Any) -> tuple[figure, ColumnDataSource, ColumnDataSource]:
    panes = panel.select(pn.pane.Bokeh)
    assert len(panes) == 1
    fig = panes[0].object
    tiles, ghost = fig.select_one({"name": "tiles"}), fig.select_one({"name": "ghost"})
    assert isinstance(tiles, ColumnDataSource)
    assert isinstance(ghost, ColumnDataSource)
    return fig, tiles, ghost


@pytest.mark.parametrize("level", LEVELS)
def test_viewer_draws_one_tile_per_unit_coloured_by_released_z(lens: Lens, level: str) -> None:
    lens.level = level
    panel: Any = Tilegram(lens=lens).__panel__()
    _, tiles, _ = _parts(panel)
    assert lens.snapshot is not None
    units = lens.snapshot.units(lens.city, level)
    assert len(tiles.data["x"]) == len(tiles.data["unit_id"]) == units.height
    assert sorted(tiles.data["unit_id"]) == sorted(units["unit_id"].to_list())
    scores = dict(unit_scores(lens.anomalies()[0], level).iter_rows())
    assert scores, "the tiny demo plants anomalies at every level"
    color = dict(zip(tiles.data["unit_id"], tiles.data["color"], strict=True))
    assert all(color[u] != NEUTRAL for u in scores)
    assert all(c == NEUTRAL for u, c in color.items() if u not in scores)
    assert f"{units.height:,} {level_words(lens)} units" in panel.select(pn.pane.Markdown)[-1].object  # as the city names the level


def test_labels_only_where_tiles_are_big_enough(lens: Lens) -> None:
    lens.level = "borough"
    panel: Any = Tilegram(lens=lens).__panel__()
    _, tiles, _ = _parts(panel)
    assert all(tiles.data["label"])
    assert "Manhattan" in tiles.data["label"]
    lens.level = "tract"
    assert not any(tiles.data["label"])


def test_city_level_shows_a_message_not_a_plot(lens: Lens) -> None:
    panel: Any = Tilegram(lens=lens).__panel__()
    lens.level = "city"
    plot = next(c for c in panel.select(pn.Column) if c.objects and isinstance(c.objects[0], pn.pane.Bokeh))
    assert not plot.visible
    assert any(m.visible and "below the city" in str(m.object) for m in panel.select(pn.pane.Markdown))
    lens.level = "borough"
    assert plot.visible


def test_morph_script_is_client_side_short_and_respects_reduced_motion(lens: Lens) -> None:
    _, tiles, _ = _parts(Tilegram(lens=lens).__panel__())
    callbacks = tiles.js_property_callbacks["change:data"]
    assert len(callbacks) == 1
    assert isinstance(callbacks[0], CustomJS)
    morph = callbacks[0]
    assert morph.code == MORPH_JS
    assert "prefers-reduced-motion: reduce" in morph.code
    assert "requestAnimationFrame" in morph.code
    assert morph.args["duration"] == MORPH_MS <= 600


def test_merging_sends_children_to_their_parents_and_refining_back(lens: Lens) -> None:
    assert lens.snapshot is not None
    lens.level = "neighborhood"
    view = Tilegram(lens=lens)
    _, tiles, ghost = _parts(view.__panel__())
    hoods = view.layout()
    lens.level = "borough"
    boroughs = view.layout()
    # Merge: the neighborhoods are the ghost, each gliding from its own tile to its borough's.
    parent = dict(lens.snapshot.units("nyc", "neighborhood").select("unit_id", "parent_id").iter_rows())
    centre = {u: (x, y) for u, x, y in boroughs.tiles.select("unit_id", "x", "y").iter_rows()}
    assert len(ghost.data["x0"]) == hoods.tiles.height
    assert list(ghost.data["x0"]) == hoods.tiles["x"].to_list()
    targets = [centre[parent[u]] for u in hoods.tiles["unit_id"]]
    assert list(zip(ghost.data["x1"], ghost.data["y1"], strict=True)) == targets
    assert set(ghost.data["a1"]) == {0.0}
    assert set(tiles.data["a0"]) == {0.0}
    assert set(tiles.data["a1"]) == {1.0}
    # The server always sends the end state, so a reload or reduced motion shows it at once.
    assert list(tiles.data["x"]) == list(tiles.data["x1"]) == boroughs.tiles["x"].to_list()
    # Refine: the neighborhoods start at their borough's centre and glide home.
    lens.level = "neighborhood"
    assert list(zip(tiles.data["x0"], tiles.data["y0"], strict=True)) == targets
    assert list(tiles.data["x1"]) == hoods.tiles["x"].to_list()
    assert len(ghost.data["x"]) == boroughs.tiles.height


def test_selection_changes_patch_colours_without_cutting_a_morph(lens: Lens) -> None:
    """A level change moves the selection too; that second update must not replace the data the
    morph is playing (it only patches outlines and colours)."""
    lens.level = "neighborhood"
    _, tiles, _ = _parts(Tilegram(lens=lens).__panel__())
    lens.level = "borough"
    start = list(tiles.data["a0"])
    lens.selection = ["MN"]
    assert list(tiles.data["a0"]) == start  # the merge plan is still there
    line = dict(zip(tiles.data["unit_id"], tiles.data["line"], strict=True))
    assert line["MN"] != "white"
    assert line["BK"] == "white"


def test_shape_toggle_glides_tiles_to_the_other_grid(lens: Lens) -> None:
    lens.level = "neighborhood"
    view = Tilegram(lens=lens)
    fig, tiles, ghost = _parts(view.__panel__())
    hexes = list(tiles.data["x"])
    view.shape = "square"
    renderers = [r for r in fig.renderers if isinstance(r, GlyphRenderer) and r.data_source is tiles and isinstance(r.glyph, Ngon)]
    assert len(renderers) == 1
    glyph = renderers[0].glyph
    assert glyph.n == 4
    assert list(tiles.data["x0"]) == hexes
    assert list(tiles.data["x1"]) == view.layout().tiles["x"].to_list()
    assert len(ghost.data["x"]) == 0


def test_morph_plan_without_history_stands_still(layouts: dict[tuple[str, str], TileLayout]) -> None:
    tiles, ghost = morph_plan(None, layouts["borough", "hex"], "none")
    assert ghost.is_empty()
    assert (tiles["x0"] == tiles["x1"]).all()
    assert (tiles["a0"] == 1.0).all()


# ---- in a browser ------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
#: Samples the first tile every animation frame after the tile data changes; returns the samples.
SAMPLE_JS = """async (n0) => {
  const find = (name) => [...Bokeh.documents[0].all_models].find(m => m.name === name);
  const src = find("tiles");
  const t0 = performance.now();
  while (src.data.x.length === n0) {
    if (performance.now() - t0 > 20000) { return null; }
    await new Promise(r => requestAnimationFrame(r));
  }
  const out = [];
  const start = performance.now();
  while (performance.now() - start < 1200) {
    const d = src.data;
    out.push({t: performance.now() - start, x: d.x[0], x0: d.x0[0], x1: d.x1[0], a: d.alpha[0]});
    await new Promise(r => requestAnimationFrame(r));
  }
  return out;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tilegram_url(tiny_dir: Path) -> Iterator[str]:
    """A Bokeh server with just a level picker and the tilegram over the tiny snapshot."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install -y chromium` to run the browser tests")
    store = Store(tiny_dir)

    def app() -> pn.viewable.Viewable:
        lens = Lens(snapshot=store.current(), level="neighborhood")
        return pn.Column(pn.widgets.Select.from_param(lens.param.level, name="Level"), Tilegram(lens=lens))

    port = _free_port()
    server = pn.serve(app, port=port, address="127.0.0.1", threaded=True, show=False, start=True, websocket_origin=[f"127.0.0.1:{port}"])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.parametrize("motion", ["no-preference", "reduce"])
def test_morph_plays_in_the_browser_unless_motion_is_reduced(chromium: Browser, tilegram_url: str, motion: str) -> None:
    context = chromium.new_context(reduced_motion=motion)  # type: ignore[arg-type]  # parametrised literal
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(tilegram_url)
        page.wait_for_function(
            "() => window.Bokeh !== undefined && Bokeh.documents.length > 0"
            " && [...Bokeh.documents[0].all_models].some(m => m.name === 'tiles' && m.data.x.length > 0)",
            timeout=60_000,
        )
        n0 = page.evaluate("() => [...Bokeh.documents[0].all_models].find(m => m.name === 'tiles').data.x.length")
        page.select_option("select", "borough")
        samples = page.evaluate(SAMPLE_JS, n0)
    finally:
        context.close()
    assert samples, "the tile data never changed"
    assert not errors, errors
    end = samples[-1]
    assert end["x"] == end["x1"]
    assert end["a"] == 1.0
    moving = [s for s in samples if s["a"] < 1.0]
    if motion == "reduce":
        assert not moving, "reduced motion must jump straight to the end"
    else:
        assert moving, "the morph did not play"
        assert moving[-1]["t"] <= 600 + 100  # the budget, plus a frame or so of sampling slack


def test_picking_tiles_sets_the_shared_selection(lens: Lens) -> None:
    lens.level = "borough"
    _, tiles, _ = _parts(Tilegram(lens=lens).__panel__())
    ids = list(tiles.data["unit_id"])
    tiles.selected.indices = [ids.index("BK"), ids.index("QN")]  # what a click + shift-click sends
    assert lens.selection == ["BK", "QN"]
    tiles.selected.indices = []
    assert lens.selection == []


def test_an_update_that_changes_no_tile_sends_nothing(lens: Lens, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tiles, _ = _parts(Tilegram(lens=lens).__panel__())
    sent: list[set[str]] = []
    original = ColumnDataSource.patch

    def recording(source: ColumnDataSource, patches: Any, *args: Any, **kwargs: Any) -> None:
        if source is tiles:
            sent.append(set(patches))
        original(source, patches, *args, **kwargs)

    monkeypatch.setattr(ColumnDataSource, "patch", recording)
    lens.param.trigger("min_z")  # the same state again: every tile looks as it did
    assert sent == []
    lens.selection = [str(tiles.data["unit_id"][0])]
    assert len(sent) == 1
    assert {"line", "lw"} <= sent[0] <= {"z", "z_text", "color", "line", "lw"}  # looks only, never positions


def test_selected_tiles_do_not_grey_out_the_others(lens: Lens) -> None:
    _, tiles, _ = _parts(Tilegram(lens=lens).__panel__())
    before = list(tiles.data["color"])
    hot = [u for u, c in zip(tiles.data["unit_id"], before, strict=True) if c != NEUTRAL]
    cold = [u for u, c in zip(tiles.data["unit_id"], before, strict=True) if c == NEUTRAL]
    assert len(hot) >= 2, "the tiny demo has several units with anomalies"
    lens.selection = [cold[0]]  # a quiet unit: the table and narratives leave the hot ones out
    found = lens.anomalies()[0]
    assert found.is_empty() or set(found["unit_id"]).isdisjoint(hot)
    assert list(tiles.data["color"]) == before  # the map of where it is unusual stays
