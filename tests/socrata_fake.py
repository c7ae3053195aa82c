"""A small SODA 2.1 server for one dataset, served by a real HTTP server (pytest-httpserver), that
replays cassette rows with injected faults. It understands the SoQL the adapter sends (``$select``,
``$where`` with AND/OR/parentheses and comparisons, ``$order``, ``$limit``, ``$offset``), answers
with the documented headers (ETag, Last-Modified, X-SODA2-Fields/Types) and honours
``If-None-Match`` / ``If-Modified-Since``.
"""

from __future__ import annotations

import copy
import email.utils
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from replay import load_cassette
from werkzeug import Request, Response

from app.data.registry import get_source

SYSTEM_FIELDS = (":id", ":created_at", ":updated_at", ":version")


@dataclass
class Fault:
    """What to do instead of (or before) answering one request normally."""

    kind: str  # status | delay | truncate | empty | repeat | block
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    rows: int = 0
    started: threading.Event | None = None
    release: threading.Event | None = None


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", status=code, headers={"Retry-After": retry_after} if retry_after else {})


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds=seconds)


def truncate() -> Fault:
    return Fault("truncate")


def empty() -> Fault:
    return Fault("empty")


def repeat(rows: int) -> Fault:
    return Fault("repeat", rows=rows)


def block(started: threading.Event, release: threading.Event) -> Fault:
    return Fault("block", started=started, release=release)


class FakeSocrata:
    """One dataset's rows behind ``/resource/<dataset>.json``.

    >>> fake = FakeSocrata.from_cassette("nyc311")  # doctest: +SKIP
    >>> fake.install(httpserver); fake.inject(status(500), None, truncate())  # doctest: +SKIP
    """

    def __init__(self, dataset: str, rows: list[dict[str, Any]], types: dict[str, str], id_field: str, updated_field: str) -> None:
        self.dataset, self.types, self.id_field, self.updated_field = dataset, types, id_field, updated_field
        self.rows: dict[str, dict[str, Any]] = {str(r[id_field]): copy.deepcopy(r) for r in rows}
        self.version = 1
        self.modified = datetime(2024, 5, 27, 6, 0, tzinfo=UTC)
        self.faults: deque[Fault | None] = deque()
        self.requests: list[dict[str, Any]] = []  # query + headers of every data request, in order
        self.last_page: list[dict[str, Any]] = []
        self.on_page: Callable[[int, list[dict[str, Any]]], None] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_cassette(cls, name: str) -> FakeSocrata:
        """The cassette of registry source ``name`` as a live dataset (ids and cursor per the registry)."""
        spec = get_source(name)
        cassette = load_cassette(f"socrata/{name}.json")
        types = dict(zip(json.loads(cassette.headers["X-SODA2-Fields"]), json.loads(cassette.headers["X-SODA2-Types"]), strict=True))
        dataset = cassette.path.removeprefix("/resource/").removesuffix(".json")
        return cls(dataset, cassette.body, types, spec.fields.id, spec.fields.updated or spec.fields.time)

    # ---- test controls -----------------------------------------------------------------------------
    def install(self, httpserver: Any) -> str:
        """Route the dataset on ``httpserver``; returns the base URL for a registry entry."""
        httpserver.expect_request(re.compile(rf"^/resource/{re.escape(self.dataset)}\.json$")).respond_with_handler(self.handle)
        return str(httpserver.url_for("/")).rstrip("/")

    def inject(self, *faults: Fault | None) -> None:
        """Faults for the next requests in order (``None``: answer that one normally)."""
        self.faults.extend(faults)

    def update(self, ident: str, **changes: Any) -> None:
        """Change a row as the provider would: new values, a later update time, a new dataset version."""
        with self._lock:
            row = self.rows[ident]
            row.update(changes)
            self._touch(row)

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            row = copy.deepcopy(row)
            self.rows[str(row[self.id_field])] = row
            self._touch(row)

    def _touch(self, row: dict[str, Any]) -> None:
        self.version += 1
        self.modified += timedelta(minutes=5)
        newest = max((_when(r.get(self.updated_field)) or datetime.min for r in self.rows.values()), default=datetime.min)
        stamp = max(newest + timedelta(seconds=1), self.modified.replace(tzinfo=None))
        z = self.updated_field.startswith(":")
        row[self.updated_field] = stamp.isoformat(timespec="milliseconds") + ("Z" if z else "")

    def current(self) -> list[dict[str, Any]]:
        """The dataset as it stands (what a complete ingest must hold)."""
        with self._lock:
            return copy.deepcopy(list(self.rows.values()))

    @property
    def etag(self) -> str:
        return f'"{self.dataset}-v{self.version}--gzip"'

    # ---- serving -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        args = request.args
        with self._lock:
            self.requests.append({"args": dict(args), "headers": dict(request.headers)})
            fault = self.faults.popleft() if self.faults else None
            if fault and fault.kind == "status":
                return Response("server error" if fault.status >= 500 else "slow down", fault.status, headers=fault.headers)
            last_modified = email.utils.format_datetime(self.modified, usegmt=True)
            if request.headers.get("If-None-Match") == self.etag or (
                "If-None-Match" not in request.headers
                and (ims := request.headers.get("If-Modified-Since"))
                and email.utils.parsedate_to_datetime(ims) >= self.modified
            ):
                return Response(status=304, headers={"ETag": self.etag, "Last-Modified": last_modified})
            rows = self._select(args)
            if fault and fault.kind == "empty":
                rows = []
            if fault and fault.kind == "repeat":
                rows = self.last_page[-fault.rows :] + rows
            self.last_page = rows
            body = _wire(rows)
            headers = {
                "ETag": self.etag,
                "Last-Modified": last_modified,
                "X-SODA2-Fields": json.dumps(list(self.types)),
                "X-SODA2-Types": json.dumps(list(self.types.values())),
                "X-Socrata-RequestId": f"fake-{len(self.requests)}",
            }
            page_no = len(self.requests)
        if fault and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault and fault.kind == "block":
            assert fault.started is not None
            assert fault.release is not None
            fault.started.set()
            fault.release.wait(30)
        if fault and fault.kind == "truncate":
            body = body[: len(body) // 2]
        if self.on_page:
            self.on_page(page_no, rows)
        return Response(body, 200, headers=headers, content_type="application/json;charset=utf-8")

    def _select(self, args: Any) -> list[dict[str, Any]]:
        rows = list(self.rows.values())
        if where := args.get("$where"):
            predicate = _Parser(where, self.types).parse()
            rows = [r for r in rows if predicate(r)]
        if order := args.get("$order"):
            for name in reversed([p.strip().split()[0] for p in order.split(",")]):
                rows.sort(key=lambda r, n=name: _sort_key(r.get(n), self.types.get(n)))
        offset, limit = int(args.get("$offset", 0)), int(args.get("$limit", 1000))
        rows = rows[offset : offset + limit]
        system = ":*" in args.get("$select", "")
        return [{k: v for k, v in r.items() if system or k not in SYSTEM_FIELDS} for r in rows]


def _wire(rows: list[dict[str, Any]]) -> str:
    """SODA's wire format: ``[{...}\\n,{...}]`` (as in the recorded pages)."""
    return "[" + "\n,".join(json.dumps(r, separators=(",", ":")) for r in rows) + "]\n" if rows else "[]\n"


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.removesuffix("Z"))
    except ValueError:
        return None


def _sort_key(value: Any, soda_type: str | None) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if soda_type == "number":
        return (1, float(value))
    if soda_type in ("floating_timestamp", "fixed_timestamp", "meta_data") and (when := _when(value)):
        return (1, when.isoformat())
    return (1, str(value))


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>>=|<=|!=|=|>|<)|(?P<paren>[()])|(?P<word>[:@\w]+))")


class _Parser:
    """SoQL ``$where`` subset: ``expr := and (OR and)*``, ``and := atom (AND atom)*``,
    ``atom := ( expr ) | field op literal``; comparisons typed by the dataset's SODA types."""

    def __init__(self, text: str, types: dict[str, str]) -> None:
        self.tokens = [(m.lastgroup, m.group(m.lastgroup or "")) for m in _TOKEN.finditer(text)]
        self.types, self.i = types, 0

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        pred = self._or()
        assert self.i == len(self.tokens), f"unparsed SoQL from token {self.i}: {self.tokens}"
        return pred

    def _peek(self) -> tuple[str | None, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, "")

    def _or(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._and()]
        while self._peek()[1].upper() == "OR":
            self.i += 1
            parts.append(self._and())
        return lambda r: any(p(r) for p in parts)

    def _and(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._atom()]
        while self._peek()[1].upper() == "AND":
            self.i += 1
            parts.append(self._atom())
        return lambda r: all(p(r) for p in parts)

    def _atom(self) -> Callable[[dict[str, Any]], bool]:
        if self._peek() == ("paren", "("):
            self.i += 1
            inner = self._or()
            assert self._peek() == ("paren", ")")
            self.i += 1
            return inner
        (_, name), (_, op), (kind, lit) = self.tokens[self.i : self.i + 3]
        self.i += 3
        value = lit[1:-1].replace("''", "'") if kind == "str" else lit
        soda_type = self.types.get(name)
        right = _sort_key(value, soda_type)[1]
        compare = {
            "=": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
        }[op]
        return lambda r: r.get(name) is not None and compare(_sort_key(r[name], soda_type)[1], right)
