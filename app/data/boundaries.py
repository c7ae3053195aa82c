"""Declarative boundary sets: which file holds each admin level and which columns hold its ids, names
and parent links, so a new city is a :class:`BoundarySet` entry and not a new loader.

Files are GeoJSON (also ``.geojson.gz``), GeoPackage or Shapefile, read with pyogrio, reprojected to
WGS84 and made valid. A file is looked up in the given directories, then in the download cache, and
only then fetched once from its ``url``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import numpy as np
import polars as pl
import shapely
from numpy.typing import NDArray

__all__ = ["BoundarySet", "Level", "LevelSource", "LookupLevel", "build_levels", "read_level", "resolve_file"]

_POLYGONAL = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)


@dataclass(frozen=True)
class LevelSource:
    """One admin level read from a boundary file.

    >>> LevelSource("tracts.shp", id_col="GEOID", name_col="NAMELSAD", parent_col="COUNTY")  # doctest: +ELLIPSIS
    LevelSource(file='tracts.shp', ...)

    ``parent_col`` names the column holding the parent unit's id; without it (and for values that
    name no parent) a unit's parent is the next level's polygon holding its representative point.
    """

    file: str
    id_col: str
    name_col: str | None = None
    parent_col: str | None = None
    layer: str | int | None = None
    crs: str | None = None  # assumed when the file declares none
    url: str | None = None  # fetched once (and cached) when the file is in no directory


@dataclass(frozen=True)
class LookupLevel:
    """A level with no polygons of its own: a CSV maps each child id to a parent name, and each
    parent's polygon is the union of its children. Ids are slugs of the names ("Far North Side" ->
    ``far-north-side``). ``file`` may be absolute (e.g. a table shipped with the app)."""

    file: str
    child_col: str
    name_col: str


@dataclass(frozen=True)
class BoundarySet:
    """A city's boundary files for the ``tract``, ``neighborhood`` and ``borough`` levels (finest first);
    the ``city`` level is the union of the boroughs."""

    city: str
    name: str
    levels: tuple[LevelSource | LookupLevel, LevelSource | LookupLevel, LevelSource | LookupLevel]


@dataclass
class Level:
    """One level's units as aligned arrays; ``parents`` are resolved ids of the next level up."""

    ids: list[str]
    names: list[str]
    parents: list[str | None]
    geoms: NDArray[np.object_]


def resolve_file(
    name: str, dirs: Sequence[Path | None], cache_dir: Path | None, url: str | None = None, client: httpx.Client | None = None
) -> Path:
    """The local path of boundary file ``name``: absolute, in one of ``dirs``, in ``cache_dir``, or
    downloaded from ``url`` into ``cache_dir`` (gzipped when ``name`` ends in ``.gz``)."""
    if Path(name).is_absolute() and Path(name).exists():
        return Path(name)
    for d in (*dirs, cache_dir):
        if d is not None and (d / name).exists():
            return d / name
    if url is None or cache_dir is None:
        raise FileNotFoundError(f"boundary file {name!r} not found in {[str(d) for d in dirs if d]} (set CSH_GEO_DIR)")
    own = client is None
    client = client or httpx.Client(timeout=120.0, follow_redirects=True)
    try:
        response = client.get(url)
        response.raise_for_status()
        body = response.content
    finally:
        if own:
            client.close()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / name
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(gzip.compress(body) if name.endswith(".gz") and not body.startswith(b"\x1f\x8b") else body)
    tmp.replace(target)  # atomic: a half-written download is never taken for the cache
    return target


def read_level(source: LevelSource, path: Path) -> tuple[list[str], list[str], list[str | None], NDArray[np.object_]]:
    """Ids, names, raw parent ids and valid WGS84 polygons of one boundary file."""
    columns = [c for c in (source.id_col, source.name_col, source.parent_col) if c]
    target = f"/vsigzip/{path.resolve()}" if path.suffix == ".gz" else str(path)
    frame = gpd.read_file(target, layer=source.layer, columns=columns, engine="pyogrio")
    if frame.crs is None:
        frame = frame.set_crs(source.crs or "EPSG:4326")
    frame = frame.to_crs("EPSG:4326")
    ids = _as_ids(frame[source.id_col])
    if None in ids:
        raise ValueError(f"{path.name}: {ids.count(None)} features have no {source.id_col!r}")
    names = [str(v) for v in frame[source.name_col]] if source.name_col else list(ids)
    parents = _as_ids(frame[source.parent_col]) if source.parent_col else [None] * len(ids)
    return ids, names, parents, _valid_polygons(np.asarray(frame.geometry.values, dtype=object))  # type: ignore[return-value]


def build_levels(
    bset: BoundarySet, dirs: Sequence[Path | None], cache_dir: Path | None = None, client: httpx.Client | None = None
) -> list[Level]:
    """Read the three levels of ``bset`` (finest first) with every parent link resolved."""
    levels: list[Level] = []
    for i, spec in enumerate(bset.levels):
        if isinstance(spec, LookupLevel):
            if i == 0:
                raise ValueError("the finest level needs polygons")
            levels.append(_lookup_level(spec, levels[-1], resolve_file(spec.file, dirs, cache_dir)))
            continue
        ids, names, parents, geoms = read_level(spec, resolve_file(spec.file, dirs, cache_dir, spec.url, client))
        levels.append(Level(ids, names, parents, geoms))
        if i > 0:
            _link_parents(levels[-2], levels[-1])
    top = levels[-1]
    top.parents = [bset.city] * len(top.ids)
    return levels


def _link_parents(child: Level, parent: Level) -> None:
    """Keep the column's parent ids that name a parent unit; join the rest spatially."""
    known = set(parent.ids)
    missing = np.asarray([p is None or p not in known for p in child.parents])
    if not missing.any():
        return
    points = shapely.point_on_surface(child.geoms[missing])
    tree = shapely.STRtree(parent.geoms)
    pt_i, par_i = tree.query(points, predicate="within")
    hit = np.full(len(points), -1)
    hit[pt_i[::-1]] = par_i[::-1]  # the first parent found wins
    if (hit < 0).any():  # outside every parent polygon (e.g. a sliver off the coast): nearest parent
        near_pt, near_par = tree.query_nearest(points[hit < 0])
        nearest = np.flatnonzero(hit < 0)
        hit[nearest[near_pt[::-1]]] = near_par[::-1]
    for j, k in zip(np.flatnonzero(missing), hit, strict=True):
        child.parents[j] = parent.ids[k]


def _lookup_level(spec: LookupLevel, child: Level, path: Path) -> Level:
    table = pl.read_csv(path, comment_prefix="#", infer_schema=False).select(spec.child_col, spec.name_col).drop_nulls()
    side_of = dict(zip(_as_ids(table[spec.child_col].to_list()), table[spec.name_col].to_list(), strict=True))
    child.parents = [_slug(side_of[c]) if c in side_of else None for c in child.ids]
    names = sorted({side_of[c] for c in child.ids if c in side_of})
    geoms = [shapely.union_all(child.geoms[[p == _slug(n) for p in child.parents]]) for n in names]
    return Level([_slug(n) for n in names], names, [None] * len(names), np.asarray(geoms, dtype=object))


def _as_ids(values: Any) -> list[str | None]:
    """Ids as strings; integral floats (shapefile numbers) lose their ``.0``; blanks become None."""
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, float | np.floating) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip() or None)
    return out


def _valid_polygons(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    """Repaired polygons; a repair that yields a collection keeps only its polygonal parts."""
    fixed: NDArray[np.object_] = shapely.make_valid(geoms, method="structure", keep_collapsed=False)
    for i in np.flatnonzero(~np.isin(shapely.get_type_id(fixed), _POLYGONAL)):
        parts = shapely.get_parts(fixed[i])
        fixed[i] = shapely.union_all(parts[np.isin(shapely.get_type_id(parts), _POLYGONAL)])
    return fixed


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
