"""The grep-level check of the privacy gate: API routes and views get counts only from the lens,
and the lens gets every count and score it returns from what the snapshot published
(:meth:`Snapshot.release` and :meth:`Snapshot.scores`, computed by :mod:`app.engine.publish`),
never by counting events. A new shortcut around the release fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
EDGE = sorted([*(APP / "api").rglob("*.py"), *(APP / "views").rglob("*.py")])
#: Modules that read or compute raw counts or scores; only the publish step and the lens may use them.
RAW = {
    "app.engine.bins",
    "app.engine.layers",
    "app.engine.suppression",
    "app.engine.fill",
    "app.engine.scoring",
    "app.engine.publish",
    "app.engine.evaluate",
    "app.data.snapshot",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


@pytest.mark.parametrize("path", EDGE, ids=[str(p.relative_to(APP)) for p in EDGE])
def test_routes_and_views_never_import_raw_count_code(path: Path) -> None:
    raw = _imports(path) & (RAW - {"app.data.snapshot"})
    assert not raw, f"{path.name} imports {raw}: counts must come through the lens and the privacy gate"
    source = path.read_text()
    # (``tree.query`` of a spatial index is geometry, not SQL: only the snapshot's SQL helper is banned.)
    banned = r"\.events\(|\.cube\(|\.detection\(|duckdb|snapshot import[^\n]*\bquery\b|\.sql\("
    assert not re.search(banned, source), f"{path.name} reads raw events or SQL"


def test_the_lens_returns_counts_only_from_the_release() -> None:
    source = (APP / "engine" / "lens.py").read_text()
    tree = ast.parse(source)
    # The published tables are read in exactly one place each (filtered by level, and grain).
    assert source.count(".release(city)") == 1
    assert source.count(".scores(city)") == 1
    # Events are read for the window's points (the heat raster), the categories on offer and the
    # newest event's time, never counted: no row counts, and no engine module that computes counts.
    assert "pl.len()" not in source
    assert not re.search(r"\.len\(\)|\.count\(\)|\.height\b.*events|value_counts", source)
    imported = _imports(APP / "engine" / "lens.py")
    assert not imported & {"app.engine.layers", "app.engine.suppression", "app.engine.fill", "app.engine.publish"}
    from_scoring = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "app.engine.scoring" for a in n.names}
    assert from_scoring <= {"BASELINE_DAYS"}  # a constant, not the scorer
    public = [
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in {"unit_counts", "series", "anomalies", "bands"}
    ]
    assert sorted(public) == ["anomalies", "bands", "series", "unit_counts"]


def test_there_are_edge_modules_to_check() -> None:
    assert len(EDGE) >= 8
