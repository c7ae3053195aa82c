"""The lens state in the page URL: what a shared link carries, how it is read back (value by
value, each bad value named in a notice and left at its default) and how the URL follows the lens,
Back/Forward included. A link can state the release rule but never lower the server's.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import panel as pn
from bokeh.models import CustomJS

from app.engine.lens import EARLIEST, KINDS, LATEST, Lens
from app.views.provenance import privacy_rule
from app.views.scripts import script

__all__ = [
    "HISTORY_JS",
    "NO_KINDS",
    "URL_KEYS",
    "URL_PARAMS",
    "apply_url_state",
    "follow_url",
    "privacy_state",
    "restore_url_state",
    "url_notice",
    "url_query",
    "url_state",
    "window_problem",
]


def window_problem(start: datetime | None, end: datetime | None) -> str:
    """Why a picked window cannot be applied ('' when it can)."""
    if start is None or end is None:
        return "Pick both a start and an end."
    if not (EARLIEST <= _utc(start) <= LATEST and EARLIEST <= _utc(end) <= LATEST):
        return f"Dates must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}: the window was not changed."
    if start >= end:
        return "The start must be before the end: the window was not changed."
    return ""


#: Query keys a shared link carries. Lens parameters keep their names; ``sel`` is the selection (unit
#: ids at the link's level, sorted, comma-separated; absent when nothing is selected) and
#: ``privacy`` the release rule the view was seen under, with its ``privacy_k`` (suppress) or
#: ``epsilon`` (dp). The server's rule always applies: a link can state it, never lower it.
URL_KEYS = ("city", "level", "since", "until", "category", "kinds", "time_bin", "min_z", "q", "sel", "privacy", "privacy_k", "epsilon")
#: Lens parameters whose change rewrites the URL.
URL_PARAMS = (*URL_KEYS[: URL_KEYS.index("sel")], "selection", "privacy_mode", "privacy_k", "epsilon")
#: ``kinds`` value of an empty selection (an empty query value would be dropped, i.e. read as "all").
NO_KINDS = "none"


def _iso(value: datetime) -> str:
    """A UTC instant as ISO 8601: the bare date at midnight (the common case), else with ``Z``."""
    value = value.astimezone(UTC)
    return (
        value.date().isoformat()
        if value == datetime(value.year, value.month, value.day, tzinfo=UTC)
        else value.isoformat().replace("+00:00", "Z")
    )


def _number(value: float) -> str:
    """Shortest text that reads back as exactly ``value``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def privacy_state(lens: Lens) -> dict[str, str]:
    """The release rule as query values: the mode, plus the one parameter that matters for it."""
    if lens.privacy_mode == "suppress":
        return {"privacy": "suppress", "privacy_k": str(lens.privacy_k)}
    if lens.privacy_mode == "dp":
        return {"privacy": "dp", "epsilon": _number(lens.epsilon)}
    return {"privacy": lens.privacy_mode}


def url_state(lens: Lens) -> dict[str, str]:
    """The lens state as query values: plain text, ISO dates, kinds and selection comma-separated.

    Panel's own parameter (de)serialisation is not used: it drops the UTC offset of dates, and a
    naive date read back into the lens breaks every comparison with the tz-aware events.
    """
    since, until = lens.window()
    kinds = ",".join(k for k in KINDS if k in lens.kinds) or NO_KINDS
    values = {
        "city": lens.city,
        "level": lens.level,
        "since": _iso(since) if since is not None else None,
        "until": _iso(until) if until is not None else None,
        "category": lens.category,
        "kinds": kinds,
        "time_bin": lens.time_bin,
        "min_z": _number(lens.min_z),
        "q": _number(lens.q),
        "sel": ",".join(sorted(lens.selection)) or None,
        **privacy_state(lens),
    }
    return {k: v for k, v in values.items() if v is not None}


def url_query(state: Mapping[str, str]) -> str:
    """Query values as a query string; commas stay literal (``sel=BK0101,BK0102``): a link stays
    short and readable, and a comma is legal in a query."""
    return urlencode(state, safe=",")


def _utc(value: datetime) -> datetime:
    """Naive is UTC; an instant with no UTC value (0001-01-01T00:00+05:00) is clamped to the
    earliest, which every bounds check refuses."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def _parse_instant(text: str) -> datetime:
    """ISO date or date-time; without an offset it is UTC (as the pickers are)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO date such as 2026-10-25 or 2026-10-25T06:00Z") from None
    value = _utc(value)
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"dates must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}")
    return value


def _bounded(lens: Lens, name: str) -> Callable[[str], float]:
    """A parser of one numeric lens parameter that keeps to its bounds."""
    low, high = lens.param[name].bounds

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(value) or value < low or value > high:
            raise ValueError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _choice(options: list[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"not one of: {', '.join(options)}")
        return text

    return check


def _kinds(text: str) -> list[str]:
    chosen = [] if text == NO_KINDS else [k.strip() for k in text.split(",") if k.strip()]
    if text != NO_KINDS and (not chosen or any(k not in KINDS for k in chosen)):
        raise ValueError(f"kinds are {', '.join(KINDS)} (comma-separated) or {NO_KINDS!r}")
    return [k for k in KINDS if k in chosen]


def _quoted(text: str) -> str:
    """A value from the URL made inert for the Markdown notice: anyone can craft a link, so its
    text is shortened, HTML-escaped and its Markdown syntax escaped before it is shown."""
    short = text if len(text) <= 60 else text[:59] + "…"
    return "“" + re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", html.escape(short)) + "”"


def apply_url_state(lens: Lens, query: Mapping[str, str]) -> list[str]:
    """Set the lens from a link's query values; return one problem per value that was not applied.

    Each value is checked on its own, so one bad value (a typo, an edited link, a category another
    snapshot no longer has) keeps its default and cannot take the rest of the link down with it.
    The city goes first: it decides the categories on offer and resets the window; the selection
    goes last: a level change carries the old selection over to the new level and would overwrite
    it. The release rule is the server's whatever the link says (a difference is reported). Keys
    that are not lens state are left alone (they may belong to whoever shared the link).
    """
    problems: list[str] = []

    def parsed(name: str, parse: Callable[[str], Any]) -> Any:
        try:
            return parse(query[name])
        except ValueError as exc:
            problems.append(f"{name} = {_quoted(query[name])} ({exc})")
            return None

    if "city" in query and (city := parsed("city", _choice(list(lens.param.city.objects)))) is not None:
        lens.city = city
    checks: dict[str, Callable[[str], Any]] = {
        "level": _choice(list(lens.param.level.objects)),
        "category": _choice(list(lens.param.category.objects)),
        "kinds": _kinds,
        "time_bin": _choice(list(lens.param.time_bin.objects)),
        "min_z": _bounded(lens, "min_z"),
        "q": _bounded(lens, "q"),
    }
    updates = {name: value for name, check in checks.items() if name in query and (value := parsed(name, check)) is not None}
    since = parsed("since", _parse_instant) if "since" in query else None
    until = parsed("until", _parse_instant) if "until" in query else None
    if since is not None or until is not None:
        start, end = lens.window()
        start, end = since or start, until or end
        if window_problem(start, end):
            window = f"since = {_quoted(query.get('since', ''))}, until = {_quoted(query.get('until', ''))}"
            problems.append(f"{window} (the start must be before the end)")
        else:
            updates.update(since=start, until=end)
    if updates:
        lens.param.update(**updates)
    problems.extend(_privacy_problems(lens, query))
    if "sel" in query:
        chosen, unknown = _selection(lens, query["sel"])
        if unknown:
            problems.append(f"sel = {_quoted(','.join(unknown))} (no such {lens.level} in {lens.city})")
        lens.selection = chosen
    return problems


def _selection(lens: Lens, text: str) -> tuple[list[str], list[str]]:
    """The ids of ``text`` that are units of the lens level (sorted, once each), and the others."""
    ids = list(dict.fromkeys(i.strip() for i in text.split(",") if i.strip()))
    known = set(lens.snapshot.units(lens.city, lens.level)["unit_id"].to_list()) if lens.snapshot is not None else set()
    return sorted(i for i in ids if i in known), [i for i in ids if i not in known]


def _privacy_problems(lens: Lens, query: Mapping[str, str]) -> list[str]:
    """A link's release rule that is not the server's, as problems (the server's rule stays).

    A link cannot lower privacy (``privacy=none`` on a server that suppresses), and neither can it
    raise it: the server publishes one rule, so two links never show the same cells differently.
    """
    rule = f"this server publishes with {privacy_rule(lens)}"
    if "privacy" in query and query["privacy"] != lens.privacy_mode:
        return [f"privacy = {_quoted(query['privacy'])} ({rule})"]
    ours = privacy_state(lens)
    problems = []
    for key in ("privacy_k", "epsilon"):
        if key not in query:
            continue
        try:
            same = key in ours and float(query[key]) == float(ours[key])
        except ValueError:
            same = False
        if not same:
            problems.append(f"{key} = {_quoted(query[key])} ({rule})")
    return problems


def url_notice(problems: list[str]) -> str:
    """The page's notice about ignored link values ('' when every value was applied)."""
    return "This link holds values the dashboard cannot use, so their defaults are shown: " + "; ".join(problems) + "." if problems else ""


def restore_url_state(lens: Lens, query: Mapping[str, str]) -> None:
    """Show exactly the view of a history entry's query: what it leaves out is the default (a fresh
    lens of the same snapshot and rule), not whatever the session shows now, so Back to a bare
    link also clears the category or selection chosen since."""
    target = Lens(snapshot=lens.snapshot, privacy_mode=lens.privacy_mode, privacy_k=lens.privacy_k, epsilon=lens.epsilon)
    apply_url_state(target, query)
    apply_url_state(lens, url_state(target))
    lens.selection = list(target.selection)


#: Browser half of Back/Forward. Panel's Location model writes each server-side URL change with
#: ``history.pushState`` (one history entry per view) but never listens for ``popstate``, so Back
#: would change the address bar and leave the view as it was. This listener reports the URL the
#: browser went to through that Location model (the server then shows that entry's view), holding
#: ``pushState`` off meanwhile: the Location view would otherwise push the entry it is on again and
#: cut off Forward.
HISTORY_JS = script("history.js")


class _UrlFollower:
    """Keeps one session's URL and lens in step: the lens writes the URL on every change (a new
    history entry each time, Panel's doing) and Back/Forward (:data:`HISTORY_JS`) set the lens."""

    def __init__(self, lens: Lens, location: Any) -> None:
        self.lens, self.location = lens, location
        self.writing = False  # our own write: its echo on the ``search`` watcher is not a Back
        self.restoring = False  # showing a history entry: its URL is already right, write nothing
        self.listening = False  # browser reports before the page has loaded are its initial URL

    def push(self, *_: Any) -> None:
        if self.restoring:
            return
        # Other keys are kept as text after the lens state (``Location.update_query`` would re-parse
        # them into numbers and keep a stale key order).
        others = {k: v for k, v in parse_qsl(self.location.search.lstrip("?")) if k not in URL_KEYS}
        self.writing = True
        try:
            self.location.search = "?" + url_query({**url_state(self.lens), **others})
        finally:
            self.writing = False

    def loaded(self) -> None:
        # After the browser has reported its own URL: a link without (or with bad) values then
        # shows the full state at once, ready to be copied.
        self.push()
        self.listening = True

    def popped(self, event: Any) -> None:
        """The browser went Back or Forward: show that entry's view without writing the URL."""
        if self.writing or self.restoring or not self.listening:
            return
        self.restoring = True
        try:
            restore_url_state(self.lens, dict(parse_qsl(str(event.new).lstrip("?"))))
        finally:
            self.restoring = False


def follow_url(lens: Lens) -> list[str]:
    """Apply the session's URL to the lens and keep the URL following the lens (full state each time).

    Deliberately not ``pn.state.location.sync(lens, ...)``: it re-applies the raw query through
    Panel's parameter deserialisation whenever the browser reports its URL (which it does once on
    connecting), setting naive datetimes and half-applying a link with one bad value. Here the
    query is read once, value by value; after that the URL is written, and read again only when
    the browser goes Back or Forward.
    """
    location = pn.state.location
    if location is None:
        return []
    problems = apply_url_state(lens, dict(parse_qsl(location.search.lstrip("?"))))
    follower = _UrlFollower(lens, location)
    lens.param.watch(follower.push, list(URL_PARAMS))
    location.param.watch(follower.popped, "search")
    pn.state.onload(follower.loaded)
    if pn.state.curdoc is not None:
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=HISTORY_JS))
    return problems
