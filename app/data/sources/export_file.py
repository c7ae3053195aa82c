"""Import of local Socrata exports, the offline analyst's path: CSV or JSON, optionally gzipped, with
portal headers (``Created Date``, ``05/01/2022 12:00:03 AM``) or API field names (``created_date``,
ISO). Rows come out shaped like API rows (API field names, empty cells absent, the location cell
as the JSON API's object, checkbox fields as booleans), so ``adapter_for(spec).normalize(rows)`` handles both paths.

JSON exports may be a SODA response (an array of row objects) or the portal's ``rows.json``
document (``meta.view.columns`` naming the positions of each ``data`` row).
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any

import structlog

from app.data.contract import CONTRACTS_DIR, load_contract
from app.data.ingest import IngestReport, canonical_rows, commit_page, read_state
from app.data.registry import SourceSpec
from app.data.sources.base import adapter_for
from app.data.sources.socrata import api_row
from app.data.store import Store

__all__ = ["CHUNK_ROWS", "CONTENT_ID", "ingest_file", "iter_export", "read_export"]

log = structlog.get_logger(__name__)
_WKT_POINT = re.compile(r"POINT\s*\(\s*([-+0-9.eE]+)\s+([-+0-9.eE]+)\s*\)", re.IGNORECASE)
_PAREN_PAIR = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)")
#: Rows per transaction when importing (a crash keeps whole chunks; a re-run replaces them).
CHUNK_ROWS = 50_000
#: ``id_field`` value for exports with no unique column at all (the shared Chicago 2022 "slim"
#: crimes file): each row's id is a hash of its cells, identical rows numbered in file order, so
#: re-importing the same rows replaces them instead of adding them again.
CONTENT_ID = "@content"


def read_export(spec: SourceSpec, path: Path, id_field: str | None = None) -> list[dict[str, Any]]:
    """All rows of the export at ``path`` as API-shaped dicts (see :func:`iter_export`)."""
    return [row for chunk in iter_export(spec, path, id_field=id_field) for row in chunk]


def iter_export(spec: SourceSpec, path: Path, chunk_rows: int = CHUNK_ROWS, id_field: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Chunks of API-shaped rows. ``id_field`` names the column to use as ``spec.fields.id`` when the
    export lacks it (a ``$select`` without ``id``, as in the shared Chicago crimes export)."""
    path = Path(path)
    if spec.provider == "highways_xml":  # the weekly planned-roadworks XML files (either generation)
        from app.data.sources.highways import parse_planned_xml

        works = parse_planned_xml(path.read_bytes())
        for start in range(0, len(works), chunk_rows):
            yield works[start : start + chunk_rows]
        return
    booleans = _boolean_fields(spec)
    rows = _json_rows(path) if ".json" in path.suffixes else _csv_rows(path)
    if id_field == CONTENT_ID:
        rows, id_field = _content_ids(rows, spec.fields.id), None
    checked = False
    while chunk := list(islice(rows, chunk_rows)):
        out = [_shape(api_row(r), spec, booleans, id_field) for r in chunk]
        if not checked:
            _check_id(spec, out, id_field, path)
            checked = True
        yield out


def ingest_file(store: Store, spec: SourceSpec, path: Path, chunk_rows: int = CHUNK_ROWS, id_field: str | None = None) -> IngestReport:
    """Upsert an export into the working database, one transaction per chunk, exactly as the ingest
    loop upserts a page (re-importing replaces rows, never duplicates them). The source's cursor,
    validators and freshness are left alone: an old export says nothing about the provider now."""
    adapter = adapter_for(spec)
    report = IngestReport(spec.name)
    now = datetime.now(UTC)
    with store.writer() as con:
        read_state(con, spec.name)
        for chunk in iter_export(spec, path, chunk_rows, id_field):
            rows, units, rejected = canonical_rows(spec, adapter.normalize(chunk), now)
            report.unlocated += commit_page(con, store, spec, rows, units)
            report.pages += 1
            report.rows += rows.height
            report.rejected += rejected
    log.info("ingest.file_done", source=spec.name, path=str(path), rows=report.rows, unlocated=report.unlocated, rejected=report.rejected)
    return report


# ---- readers -------------------------------------------------------------------------------------
def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as fh:
        yield from csv.DictReader(fh)  # quoted cells may hold newlines (the legacy location cell does)


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as fh:
        doc = json.load(fh)
    if isinstance(doc, dict) and "data" in doc:  # portal rows.json: positional rows + column metadata
        names = [c.get("fieldName") or c["name"] for c in doc["meta"]["view"]["columns"]]
        yield from (dict(zip(names, values, strict=False)) for values in doc["data"])
    elif isinstance(doc, list):
        yield from doc
    else:
        raise ValueError(f"{path}: not a Socrata JSON export (expected an array of rows or a rows.json document)")


def _content_ids(rows: Iterator[dict[str, Any]], id_name: str) -> Iterator[dict[str, Any]]:
    """Rows with ``id_name`` set to a digest of their cells (``#n`` added to the n-th repeat), for
    exports that carry no id: stable across re-imports of the same rows, whatever their order."""
    seen: Counter[str] = Counter()
    for row in rows:
        digest = hashlib.sha1(json.dumps(row, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()[:20]
        seen[digest] += 1
        yield {**row, id_name: digest if seen[digest] == 1 else f"{digest}#{seen[digest]}"}


# ---- shaping -------------------------------------------------------------------------------------
def _shape(row: dict[str, Any], spec: SourceSpec, booleans: frozenset[str], id_field: str | None) -> dict[str, Any]:
    """CSV cells as the API spells them: the location object from its printed form, checkboxes as
    booleans, and the export's stand-in id column under ``spec.fields.id``."""
    loc = spec.fields.location
    if loc and isinstance(value := row.get(loc), str):
        row[loc] = _location(value)
    for name in booleans & row.keys():
        if isinstance(value := row[name], str) and value.lower() in ("true", "false"):
            row[name] = value.lower() == "true"
    if id_field and spec.fields.id not in row and id_field in row:
        row[spec.fields.id] = row[id_field]
    return row


def _location(text: str) -> Any:
    """A location cell as the JSON API returns it: an object printed as JSON or by pandas
    (``{'latitude': '41.9', ...}``), WKT -> a GeoJSON point, the CSV endpoint's flattened legacy
    object ``(lat, lon)`` -> the legacy object. Anything else stays text (normalize still tries it)."""
    text = text.strip()
    try:
        if text.startswith("{"):
            return ast.literal_eval(text) if text.startswith("{'") else json.loads(text)
    except (ValueError, SyntaxError):
        return text
    if m := _WKT_POINT.fullmatch(text):
        return {"type": "Point", "coordinates": [float(m.group(1)), float(m.group(2))]}
    if m := _PAREN_PAIR.search(text):
        return {"latitude": m.group(1), "longitude": m.group(2)}
    return text


def _boolean_fields(spec: SourceSpec) -> frozenset[str]:
    """Fields the source's contract types as boolean (SODA checkbox columns)."""
    if not (CONTRACTS_DIR / f"{spec.name}.schema.json").exists():
        return frozenset()
    props = load_contract(spec.name).get("properties", {})
    return frozenset(k for k, p in props.items() if "boolean" in ([p["type"]] if isinstance(p.get("type"), str) else p.get("type", [])))


def _check_id(spec: SourceSpec, rows: list[dict[str, Any]], id_field: str | None, path: Path) -> None:
    """Refuse an export with no id column at all, rather than reject every row silently."""
    if rows and not any(spec.fields.id in r for r in rows):
        hint = (
            f"; column {id_field!r} is missing too"
            if id_field
            else f"; pass id_field= a unique column of the export, or {CONTENT_ID!r} when it has none (ids from each row's cells)"
        )
        raise ValueError(f"{path.name}: no {spec.fields.id!r} column for source {spec.name}{hint}")
