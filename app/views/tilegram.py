"""The tilegram: one equal tile per unit of the lens level, coloured by its strongest released anomaly.

On a map, big sparse units dominate and dense ones vanish; in a tilegram each unit gets the same
tile, placed near its true position (:mod:`app.views.tilegram_layout`), so a hot tract in Manhattan
is as visible as one on Staten Island. Only released anomaly z-scores are drawn: the view reads the
lens (after the privacy gate), never counts.

Switching the level morphs one tilegram into the other in the browser: child tiles glide into their
parent's tile and merge (or burst out of it going finer). Bokeh has no tweening, so a ``CustomJS``
on the tile source interpolates positions and opacity with ``requestAnimationFrame``. The server
always sends the *final* state (plus where each tile starts), so a page load, a reconnect or a
browser that asks for reduced motion simply shows the end state; the script only plays the way there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import colorcet
import numpy as np
import panel as pn
import param
import polars as pl
from bokeh.models import (
    BoxSelectTool,
    ColumnDataSource,
    CustomJS,
    CustomJSTickFormatter,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    Ngon,
    Range1d,
    TapTool,
)
from bokeh.models.annotations import ColorBar
from bokeh.models.renderers import GlyphRenderer
from bokeh.plotting import figure
from numpy.typing import NDArray

from app.data.cities import city_name
from app.data.geography import LEVELS, level_column
from app.engine.lens import Lens
from app.views.base import LENS_STATE, LensView, edits_models, level_words
from app.views.scripts import script
from app.views.tilegram_layout import Shape, TileLayout, cached_layout, footprint_area, geography_key, parent_positions

__all__ = [
    "MORPH_JS",
    "MORPH_MS",
    "NEUTRAL",
    "PALETTE",
    "TILE_KEYS_JS",
    "Tilegram",
    "morph_plan",
    "short_label",
    "unit_scores",
    "z_colors",
]

#: Diverging, protanopia/deuteranopia-safe (colorcet CET_CBD1, blue-white-yellow): above-expected
#: counts run to ochre, below-expected to blue, and both stay apart for the commonest colour-vision deficiencies.
PALETTE: list[str] = list(colorcet.palette["CET_CBD1"])
#: Units with no released anomaly: a grey darker than the palette's near-white centre, because "no
#: anomaly released" (perhaps withheld) is not the same statement as "exactly as expected" (z = 0).
NEUTRAL = "#cfcfcf"
#: |z| at which the colour saturates; the scale is logarithmic below it, so z = 3 is already clearly tinted.
Z_CLIP = 20.0
#: Length of the level morph. Short enough not to hold up the reader (and within the 600 ms budget).
MORPH_MS = 550
#: Tiles narrower than this many pixels get no label (a label must be readable or absent).
LABEL_MIN_PX = 28
#: Above this many tiles no labels, however big: hover tells names, and a wall of text hides colour.
LABEL_MAX_TILES = 250
_FRAME_H = 460
_FRAME_W = (320, 760)
_TEXT = "#1a1a1a"  # dark text: every palette colour and the neutral grey are light enough for it
_SELECTED = "#1a1a1a"  # also in TILE_KEYS_JS
_Relation = Literal["none", "same", "refine", "merge"]
#: Columns a non-structural update patches in place (positions and labels stay as they are).
_PATCHED = ("z", "z_text", "color", "line", "lw")

#: The morph, run in the browser whenever the server replaces the tile data. Columns ``x0, y0, a0``
#: are where a tile starts, ``x1, y1, a1`` where it ends (the server also sent the end in ``x, y,
#: alpha``), ``f0, f1`` the part of the run over which its opacity changes. Arrays are edited in place
#: and only redrawn (``change.emit``): nothing goes back to the server.
MORPH_JS = script("tilegram_morph.js")

#: Keyboard access to the tiles, installed once per page (on ``document_ready``, at document level,
#: so it also serves a tilegram drawn later). Every chart canvas takes focus (Bokeh gives it a tab
#: stop) and gets a name here; while the tilegram's has focus the arrow keys move a cursor to the nearest tile in that
#: direction, Enter or Space adds or removes the tile from the selection (as a click does, through
#: the tile source's selection), Escape clears it; the cursor's tile is named in the canvas label
#: and a polite live region. The cursor is drawn client side only (in-place edits, like the morph).
TILE_KEYS_JS = script("tilegram_keys.js")

#: Colour-bar tick labels: the bar runs over the signed-log position, the labels show z.
_TICK_JS = "const z = Math.sign(tick) * Math.expm1(Math.abs(tick) * Math.log1p(zclip)); return z.toFixed(0);"


def _position(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """z -> position on the diverging scale in [-1, 1], logarithmic in |z| up to :data:`Z_CLIP`."""
    return np.sign(z) * np.log1p(np.minimum(np.abs(z), Z_CLIP)) / math.log1p(Z_CLIP)


def z_colors(z: NDArray[np.float64]) -> list[str]:
    """Tile colours for anomaly z-scores; NaN (no released anomaly) is :data:`NEUTRAL`.

    Logarithmic so that the threshold (z of 3 or so) already stands out and z of 40 does not wash
    every other tile to the palette's pale centre.
    """
    z = np.asarray(z, dtype=np.float64)
    index = np.rint((_position(np.nan_to_num(z)) + 1.0) / 2.0 * (len(PALETTE) - 1)).astype(int)
    return [NEUTRAL if math.isnan(v) else PALETTE[i] for v, i in zip(z.tolist(), index.tolist(), strict=True)]


def short_label(name: str, max_chars: int, lines: int = 1) -> str:
    """``name`` fitted to ``lines`` lines of ``max_chars``: parenthesised asides dropped first, then
    words wrapped onto a second line when allowed, then an ellipsis. Empty when not even three
    characters fit, since a one-letter stub says nothing (hover still names every tile)."""
    if max_chars < 3:
        return ""
    if len(name) > max_chars and " (" in name:
        name = name.split(" (")[0].strip()
    if len(name) <= max_chars:
        return name
    words = name.split()
    if lines >= 2 and len(words) > 1 and len(words[0]) <= max_chars:
        first = words[0]
        rest = words[1:]
        while rest and len(first) + 1 + len(rest[0]) <= max_chars:
            first = f"{first} {rest.pop(0)}"
        return f"{first}\n{short_label(' '.join(rest), max_chars)}"
    return name[: max_chars - 1].rstrip() + "…"


def unit_scores(anomalies: pl.DataFrame, level: str) -> pl.DataFrame:
    """``unit_id, zscore``: the strongest released anomaly z per unit of ``level``.

    Roll-ups (an ancestor's anomaly standing in for a withheld one) carry the ancestor's level, so
    they colour nothing here: painting them onto the child would claim the child was unusual.
    """
    if anomalies.is_empty() or not {"level", "unit_id", "zscore"}.issubset(anomalies.columns):
        return pl.DataFrame(schema={"unit_id": pl.String, "zscore": pl.Float64})
    return anomalies.filter(pl.col("level") == level).group_by("unit_id").agg(pl.col("zscore").cast(pl.Float64).max()).sort("unit_id")


def _level_rank(level: str) -> int:
    return list(LEVELS).index(level)


@dataclass(frozen=True)
class _Shown:
    """What the browser shows now: enough to plan the next morph from it."""

    city: str
    level: str
    geography: int
    layout: TileLayout
    colors: pl.DataFrame  # unit_id, color


def morph_plan(
    old: TileLayout | None, new: TileLayout, relation: _Relation, links: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Start and end of every tile for one transition: ``(tiles, ghost)``.

    ``tiles`` (the new level, one row per tile of ``new``) and ``ghost`` (tiles of ``old`` leaving)
    have ``unit_id, x0, y0, x1, y1, a0, a1, f0, f1``. ``relation`` says how ``new`` follows ``old``:

    * ``merge`` (coarser): old child tiles glide to their parent's centre and fade out late while the
      parents fade in: the children merge into the parent.
    * ``refine`` (finer): the old parent fades out early while the new children glide out of its centre.
    * ``same`` (same level, other tile shape): tiles glide from their old to their new cell.
    * ``none``: no motion (first draw, another city, the city level).

    ``links`` maps ``unit_id`` (child) to ``parent_id`` between the two levels (merge and refine).
    """
    end = new.tiles.select("unit_id", x1="x", y1="y")
    still = end.with_columns(x0=pl.col("x1"), y0=pl.col("y1"), a0=pl.lit(1.0), a1=pl.lit(1.0), f0=pl.lit(0.0), f1=pl.lit(1.0))
    columns = ["unit_id", "x0", "y0", "x1", "y1", "a0", "a1", "f0", "f1"]
    none = pl.DataFrame(schema={c: pl.String if c == "unit_id" else pl.Float64 for c in columns})
    if old is None or relation == "none":
        return still.select(columns), none
    if relation == "same":
        before = old.tiles.select("unit_id", x0="x", y0="y")
        moved = end.join(before, on="unit_id", how="left", maintain_order="left").with_columns(
            x0=pl.coalesce("x0", "x1"), y0=pl.coalesce("y0", "y1"), a0=pl.lit(1.0), a1=pl.lit(1.0), f0=pl.lit(0.0), f1=pl.lit(1.0)
        )
        return moved.select(columns), none
    assert links is not None, "merge and refine need the child -> parent links"
    if relation == "refine":
        start = parent_positions(new, old, links).select("unit_id", x0="x", y0="y")
        tiles = end.join(start, on="unit_id", how="left", maintain_order="left").with_columns(
            a0=pl.lit(0.0), a1=pl.lit(1.0), f0=pl.lit(0.0), f1=pl.lit(0.35)
        )
        ghost = old.tiles.select("unit_id", x0="x", y0="y", x1="x", y1="y", a0=pl.lit(1.0), a1=pl.lit(0.0), f0=pl.lit(0.0), f1=pl.lit(0.35))
        return tiles.select(columns), ghost.select(columns)
    targets = parent_positions(old, new, links).select("unit_id", x1="x", y1="y")
    ghost = (
        old.tiles.select("unit_id", x0="x", y0="y")
        .join(targets, on="unit_id", how="left", maintain_order="left")
        .with_columns(a0=pl.lit(1.0), a1=pl.lit(0.0), f0=pl.lit(0.6), f1=pl.lit(1.0))
    )
    tiles = still.with_columns(a0=pl.lit(0.0), f0=pl.lit(0.5), f1=pl.lit(1.0))
    return tiles.select(columns), ghost.select(columns)


class Tilegram(LensView):
    """Equal tiles per unit of the lens level, coloured by released anomaly z, morphing between levels.

    >>> pn.panel(Tilegram(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    shape = param.Selector[str](default="hex", objects=["hex", "square"], doc="Tile shape: hexagons or squares.")

    # ---- what is drawn (pure reads of the lens) ---------------------------------------------
    def origin(self) -> tuple[float, float]:
        """One plane for every level of the city: the mean of all its units' points."""
        lens = self.bound
        assert lens.snapshot is not None
        units = lens.snapshot.units(lens.city)
        return float(units["lon"].mean()), float(units["lat"].mean())  # type: ignore[arg-type]  # mean of a Float64 column is a float

    def layout(self, level: str | None = None, shape: str | None = None) -> TileLayout:
        """The (cached) layout of ``level`` (default: the lens level) in ``shape`` (default: the view's).

        Every level is sized by the finest level's footprint, so all levels cover the same area and
        a morph moves tiles within one picture rather than zooming between two.
        """
        lens = self.bound
        assert lens.snapshot is not None
        level = level or lens.level
        tile: Shape = "square" if (shape or self.shape) == "square" else "hex"
        origin = self.origin()
        snap, city = lens.snapshot, lens.city
        finest = snap.units(city, LEVELS[0])
        area = snap.memo(("tilegram-area", city, tile), lambda: footprint_area(finest, tile, origin=origin))
        return cached_layout((city, level, self.geography()), snap.units(city, level), tile, origin=origin, area=area)

    def geography(self) -> int:
        """Fingerprint of the city's units at every level: layouts are cached by it rather than by
        snapshot, since a refresh publishes a new snapshot over the same geography."""
        lens = self.bound
        assert lens.snapshot is not None
        return geography_key(lens.snapshot.units(lens.city))

    def _links(self, fine: str, coarse: str) -> pl.DataFrame:
        parents = self.bound.parents()
        return parents.select(unit_id=pl.col(level_column(fine)), parent_id=pl.col(level_column(coarse))).unique("unit_id")

    def __panel__(self) -> pn.viewable.Viewable:
        return _TileFigure(self).panel


class _TileFigure:
    """One rendering of a :class:`Tilegram`: a Bokeh figure kept for the page's lifetime and
    updated in place, because the morph script runs when the browser sees the tile data *change*;
    a new figure per level would arrive with no "before" to move from."""

    def __init__(self, view: Tilegram) -> None:
        self.view = view
        self.shown: _Shown | None = None
        self.tile_px = 10.0  # width of one tile on screen, set with each new layout
        self.tiles = ColumnDataSource(name="tiles", data=_empty_tiles())
        self.ghost = ColumnDataSource(name="ghost", data=_empty_ghost())
        self.fig = figure(
            x_range=Range1d(start=0, end=1),
            y_range=Range1d(start=0, end=1),
            frame_height=_FRAME_H,
            frame_width=_FRAME_H,
            tools="pan,wheel_zoom,reset",
            toolbar_location="right",
            background_fill_color="white",
            outline_line_color=None,
            name="tilegram",
        )
        self.fig.toolbar.logo = None
        self.fig.axis.visible = False
        self.fig.grid.visible = False
        self.ghost_glyph = self.fig.ngon(
            "x", "y", radius=1.0, n=6, source=self.ghost, fill_color="color", fill_alpha="alpha", line_color="white", line_alpha="alpha"
        )
        self.tile_glyph = self.fig.ngon(
            "x",
            "y",
            radius=1.0,
            n=6,
            source=self.tiles,
            fill_color="color",
            fill_alpha="alpha",
            line_color="line",
            line_width="lw",
            line_alpha="alpha",
        )
        self.labels = self.fig.text(
            "x", "y", text="label", source=self.tiles, text_align="center", text_baseline="middle", text_color=_TEXT, text_alpha="alpha"
        )
        self.fig.add_tools(HoverTool(renderers=[self.tile_glyph], tooltips=[("unit", "@name"), ("z", "@z_text")]))
        # Click (shift-click adds) or box-select tiles -> the lens' shared selection; the selected
        # tiles keep their colours (the selection outline marks them), nothing is dimmed.
        self.fig.add_tools(TapTool(renderers=[self.tile_glyph]), BoxSelectTool(renderers=[self.tile_glyph]))
        self.tile_glyph.selection_glyph = self.tile_glyph.glyph
        self.tile_glyph.nonselection_glyph = self.tile_glyph.glyph
        self.tiles.selected.on_change("indices", self._picked)
        mapper = LinearColorMapper(palette=PALETTE, low=-1.0, high=1.0)
        ticks = [float(v) for v in _position(np.array([-10.0, -3.0, 0.0, 3.0, 10.0, Z_CLIP]))]
        self.fig.add_layout(
            ColorBar(
                color_mapper=mapper,
                ticker=FixedTicker(ticks=ticks),
                formatter=CustomJSTickFormatter(code=_TICK_JS, args={"zclip": Z_CLIP}),
                title="strongest released anomaly z (grey: none released)",
                orientation="horizontal",
                height=10,
            ),
            "below",
        )
        self.morph = CustomJS(name="morph", args={"tiles": self.tiles, "ghost": self.ghost, "duration": MORPH_MS}, code=MORPH_JS)
        self.tiles.js_on_change("data", self.morph)
        self.caption = pn.pane.Markdown("", styles={"font-size": "12px"}, margin=(0, 10), sizing_mode="stretch_width")
        self.message = pn.pane.Markdown("", visible=False, margin=(0, 10))
        # Visibility is toggled on a wrapper: a Bokeh pane's own ``visible`` reverts to its figure's
        # when set back to the default (Panel 1.9 syncs pane and model layout props both ways).
        self.plot = pn.Column(pn.pane.Bokeh(self.fig), margin=0)
        shape = pn.widgets.RadioButtonGroup.from_param(view.param.shape, name="Tiles")
        self.panel = pn.Column("## Tilegram", shape, self.message, self.plot, self.caption, sizing_mode="stretch_width")
        lens = view.bound
        lens.param.watch(self.update, list(LENS_STATE))
        view.param.watch(self.update, ["shape"])
        self.update()

    def _picked(self, _attr: str, _old: list[int], new: list[int]) -> None:
        """Tiles picked in the browser become the lens selection (the heat map, table and
        sparkbands follow); an empty pick clears it."""
        ids = self.tiles.data.get("unit_id", [])
        self.view.bound.selection = sorted({str(ids[i]) for i in new if 0 <= i < len(ids)})

    @edits_models
    def update(self, *_: Any) -> None:
        """Redraw for the current lens and shape.

        A new level, shape, city or geography replaces the tile data (which plays the morph in the
        browser); anything else (window, filters, selection) only patches colours and outlines, so
        it cannot cut short a morph still playing. That matters: a level change also moves the
        selection, and the two arrive as two calls here.
        """
        view, lens = self.view, self.view.bound
        problem = _no_tiles_reason(lens)
        if problem is not None:
            self.message.object, self.message.visible, self.plot.visible = problem, True, False
            self.caption.object = ""
            self.shown = None
            return
        layout = view.layout()
        geography = view.geography()
        old = self.shown
        same = old is not None and (old.city, old.level, old.geography, old.layout) == (lens.city, lens.level, geography, layout)
        if not same:
            relation, links = self._relation(lens.city, lens.level, geography)
            ranges, size = self._frame(layout, old.layout if old is not None and relation != "none" else None)
            self.tile_px = layout.size * size[0] / (ranges[1] - ranges[0])
        look = self._look(layout)
        if same:
            # Only the columns that changed go to the browser (a threshold or window change often
            # leaves every tile as it was).
            changed = {
                name: values for name, values in look.items() if name in _PATCHED and not _same_column(values, self.tiles.data[name])
            }
            if changed:
                self.tiles.patch({name: [(slice(0, layout.tiles.height), values)] for name, values in changed.items()})
        else:
            self._replace(layout, look, morph_plan(old.layout if old else None, layout, relation, links), ranges, size)
        self.message.visible, self.plot.visible = False, True
        self.caption.object = _caption(layout, level_words(lens), int(np.isfinite(look["z"]).sum()))
        self.shown = _Shown(lens.city, lens.level, geography, layout, pl.DataFrame({"unit_id": look["unit_id"], "color": look["color"]}))

    def _look(self, layout: TileLayout) -> dict[str, Any]:
        """Per-tile appearance in layout order: names, released z, colour and selection outline."""
        lens = self.view.bound
        assert lens.snapshot is not None
        units = lens.snapshot.units(lens.city, lens.level).select("unit_id", "name")
        scores = unit_scores(lens.anomalies(everywhere=True)[0], lens.level)  # every tile, selected or not
        frame = (
            layout.tiles.select("unit_id")
            .join(units, on="unit_id", how="left", maintain_order="left")
            .join(scores, on="unit_id", how="left", maintain_order="left")
            .with_columns(pl.col("name").fill_null(pl.col("unit_id")))
        )
        z = frame["zscore"].fill_null(float("nan")).to_numpy().astype(np.float64)
        chosen = frame["unit_id"].is_in(lens.selection).to_numpy() if lens.selection else np.zeros(frame.height, bool)
        return {
            "unit_id": frame["unit_id"].to_list(),
            "name": frame["name"].to_list(),
            "z": z,
            "z_text": [("none released" if math.isnan(v) else f"{v:.1f}") for v in z.tolist()],
            "color": z_colors(z),
            "line": np.where(chosen, _SELECTED, "white").tolist(),
            # Outlines scale with the tile: a fixed pixel width would swallow 5-pixel tract tiles.
            "lw": np.where(chosen, min(2.5, 0.2 * self.tile_px), min(1.0, 0.08 * self.tile_px)),
        }

    def _replace(
        self,
        layout: TileLayout,
        look: dict[str, Any],
        plan: tuple[pl.DataFrame, pl.DataFrame],
        ranges: tuple[float, float, float, float],
        size: tuple[int, int],
    ) -> None:
        """New tile data with the morph ``plan`` from what is shown (ghost first: the script reads it
        when the tile data arrives), new ranges, tile shape and labels."""
        old, (tiles, ghost) = self.shown, plan
        (x0, x1, y0, y1), (w, h) = ranges, size
        font_px = int(min(15, max(9, self.tile_px * 0.2)))
        room = int(self.tile_px * 0.9 / (0.55 * font_px))  # characters per line at ~0.55 em average width
        lines = 2 if self.tile_px * 0.75 >= 2.4 * font_px else 1
        show_labels = self.tile_px >= LABEL_MIN_PX and layout.tiles.height <= LABEL_MAX_TILES
        labels = [short_label(n, room, lines) for n in look["name"]] if show_labels else [""] * layout.tiles.height
        ghost_data = _motion(ghost)
        ghost_data["color"] = []
        if old is not None and ghost.height:
            colors = ghost.select("unit_id").join(old.colors, on="unit_id", how="left", maintain_order="left")["color"]
            ghost_data["color"] = colors.fill_null(NEUTRAL).to_list()
            _set_shape(self.ghost_glyph, old.layout)
            self.ghost_glyph.glyph.line_width = min(1.0, 0.08 * old.layout.size * w / (x1 - x0))
        _set_shape(self.tile_glyph, layout)
        self.labels.glyph.text_font_size = f"{font_px}px"
        self.fig.x_range.update(start=x0, end=x1, reset_start=x0, reset_end=x1)
        self.fig.y_range.update(start=y0, end=y1, reset_start=y0, reset_end=y1)
        self.fig.update(frame_width=w, frame_height=h)
        self.ghost.data = ghost_data
        self.tiles.data = {**look, "label": labels, **_motion(tiles)}

    def _relation(self, city: str, level: str, geography: int) -> tuple[_Relation, pl.DataFrame | None]:
        old = self.shown
        if old is None or old.city != city or old.geography != geography:
            return "none", None
        if old.level == level:
            return "same", None
        if _level_rank(level) < _level_rank(old.level):
            return "refine", self.view._links(level, old.level)
        return "merge", self.view._links(old.level, level)

    @staticmethod
    def _frame(layout: TileLayout, old: TileLayout | None) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        """Ranges covering the new (and, during a morph, the old) tiles with equal x and y scales,
        and the frame size in pixels: ranges and frame share one aspect, so tiles stay regular."""
        boxes = [layout.extent()] + ([old.extent()] if old is not None and not old.tiles.is_empty() else [])
        x0, x1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
        y0, y1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
        pad = 0.03 * max(x1 - x0, y1 - y0)
        x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
        w = int(min(_FRAME_W[1], max(_FRAME_W[0], round(_FRAME_H * (x1 - x0) / (y1 - y0)))))
        h = _FRAME_H
        if (x1 - x0) / (y1 - y0) > w / h:  # too wide for the frame: add height
            grow = (x1 - x0) * h / w - (y1 - y0)
            y0, y1 = y0 - grow / 2, y1 + grow / 2
        else:
            grow = (y1 - y0) * w / h - (x1 - x0)
            x0, x1 = x0 - grow / 2, x1 + grow / 2
        return (x0, x1, y0, y1), (w, h)


def _same_column(new: Any, old: Any) -> bool:
    """Whether a tile column's new values equal what the browser holds (NaN equals NaN)."""
    a, b = np.asarray(new), np.asarray(old)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _set_shape(renderer: GlyphRenderer[Any], layout: TileLayout) -> None:
    """Tile size and shape on every glyph of an ``ngon`` renderer (the selection variants too)."""
    for glyph in (renderer.glyph, renderer.selection_glyph, renderer.nonselection_glyph):
        if isinstance(glyph, Ngon):
            glyph.update(radius=layout.radius, n=layout.sides, angle=layout.angle)


def _motion(plan: pl.DataFrame) -> dict[str, Any]:
    """Source columns from a :func:`morph_plan` frame: the end state in ``x, y, alpha`` plus the run."""
    cols = {c: plan[c].to_numpy().astype(np.float64) for c in ("x0", "y0", "x1", "y1", "a0", "a1", "f0", "f1")}
    return {"x": cols["x1"].copy(), "y": cols["y1"].copy(), "alpha": cols["a1"].copy(), **cols}


def _empty_tiles() -> dict[str, Any]:
    data: dict[str, Any] = {c: [] for c in ("unit_id", "name", "label", "z", "z_text", "color", "line", "lw")}
    return {**data, **_empty_ghost()}


def _empty_ghost() -> dict[str, Any]:
    return {c: [] for c in ("x", "y", "alpha", "x0", "y0", "x1", "y1", "a0", "a1", "f0", "f1", "color")}


def _no_tiles_reason(lens: Lens) -> str | None:
    """Why there is nothing to tile (None when there is)."""
    if lens.snapshot is None:
        return "*No snapshot yet.*"
    if lens.level not in LEVELS[:-1]:
        return f"*The tilegram shows units below the city: pick {', '.join(LEVELS[:-1])}.*"
    if lens.snapshot.units(lens.city, lens.level).is_empty():
        return f"*No {level_words(lens)} units for {city_name(lens.city)}.*"
    return None


def _caption(layout: TileLayout, level: str, hot: int) -> str:
    kind = "hexagon" if layout.shape == "hex" else "square"
    n = layout.tiles.height
    return (
        f"{n:,} {level} units, one {kind} each ({hot:,} with a released anomaly), placed near their true position: "
        f"tiles sit {layout.displacement:.1f} tile widths from home on average, {layout.max_displacement:.1f} at most."
    )
