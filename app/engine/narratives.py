"""Narratives: one plain English sentence per anomaly, for people who will not read a z-score table.

The sentence must be the same for the same row on every machine (golden tests, cached exports,
diffable reports), so nothing here depends on the locale: weekday and month names come from
tables below, not from ``strftime``, and numbers are formatted with fixed rules:

* observed counts as integers; expected values with no decimals from 10 up, one below (2.4 expected
  events is a real difference from 2, 24.4 from 24 is noise); z with one decimal; shares in whole
  percent;
* when fewer than 0.5 events were expected the ratio is meaningless (48 / 0.02 = "2400x"), so the
  sentence says "48 vs under 1 expected" instead.

Privacy: a row whose ``observed`` is ``None`` was withheld by the privacy gate. Its sentence prints
neither the count nor anything computed from it: no ratio, no z (with the published expected and
standard deviation z gives the count back), no driver shares or excesses (shares times the excess
would too), and the wording does not depend on them either.

Bins are labelled in UTC, as they are cut (see :mod:`app.engine.bins`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

__all__ = ["baseline_phrase", "narrate", "narrate_row", "when_phrase"]

# Written as escapes because ruff's RUF001 (ambiguous unicode) rejects the literal characters, and
# the typographic signs read better on a dashboard than "x" and "-".
TIMES = "\u00d7"  # MULTIPLICATION SIGN
EN_DASH = "\u2013"  # EN DASH, for time ranges

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: Next coarser level, to name where a rolled-up anomaly is shown when the row does not say.
_PARENT_LEVEL = {"tract": "neighborhood", "neighborhood": "borough", "borough": "city"}
#: Below this expectation a ratio is not worth printing.
_MIN_RATIO_EXPECTED = 0.5
#: At most this many drivers are named: a sentence, not a table.
_MAX_NAMED_DRIVERS = 2


def _utc(ts: datetime) -> datetime:
    """Wall clock in UTC; naive datetimes are taken to be UTC already, as the bins are."""
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts


def _one_decimal(x: float) -> str:
    """One decimal without a "-0.0" for tiny negatives."""
    return f"{round(float(x), 1) + 0.0:.1f}"


def _expected(x: float) -> str:
    return f"{float(x):.0f}" if x >= 10 else _one_decimal(x)


def _percent(share: float) -> str:
    return f"{round(float(share) * 100):d} %"


def baseline_phrase(baseline_days: int) -> str:
    """``"4-week"`` for 28 days, ``"2-week"`` for 14: whole weeks (from two up) read better than
    days; anything else is ``"N-day"``."""
    if baseline_days >= 14 and baseline_days % 7 == 0:
        return f"{baseline_days // 7}-week"
    return f"{baseline_days}-day"


def when_phrase(time_bin: str, bin_start: datetime) -> str:
    """The bin as people say it: ``"Saturday"`` (day), ``"Saturday 14:00-15:00"`` (hour, en dash),
    ``"week of 16 Nov"`` (week).

    Day and hour bins are compared with the same weekday (and hour) of the baseline, so the weekday
    is what the reader needs; a week has no seasonal slot, so it is named by its first day.
    """
    ts = _utc(bin_start)
    day = _WEEKDAYS[ts.weekday()]
    if time_bin == "day":
        return day
    if time_bin == "hour":
        return f"{day} {ts.hour:02d}:00{EN_DASH}{(ts.hour + 1) % 24:02d}:00"
    if time_bin == "week":
        return f"week of {ts.day} {_MONTHS[ts.month - 1]}"
    raise ValueError(f"unknown time_bin {time_bin!r}")


def _drivers(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    drivers = row.get("drivers")
    return list(drivers) if drivers else []


def _driver_clause(drivers: Sequence[Mapping[str, Any]]) -> str:
    """``"; A is 71 % of the excess"`` or ``"; A is 71 % and B 20 % of the excess"``."""
    named = drivers[:_MAX_NAMED_DRIVERS]
    if not named:
        return ""
    first = f"{named[0]['category']} is {_percent(named[0]['share'])}"
    rest = "".join(f" and {d['category']} {_percent(d['share'])}" for d in named[1:])
    return f"; {first}{rest} of the excess"


def _effect_clause(effect: str, drivers: Sequence[Mapping[str, Any]], withheld: bool) -> str:
    """What kind of anomaly it is, when that is more than "more events than usual".

    The mix is said to shift towards the top driver: with the total unchanged, the category with
    the largest excess is the one that gained share. Its gain is left out when the count is withheld.
    """
    top = drivers[0] if drivers else None
    if effect == "mix":
        if top is None:
            return "; total activity is normal; the category mix shifted"
        gain = "" if withheld else f" (+{_expected(top['excess'])})"
        return f"; total activity is normal; the mix shifted towards {top['category']}{gain}"
    if effect == "volume+mix":
        return f"; the mix also shifted towards {top['category']}" if top is not None else "; the category mix also shifted"
    return ""


def _rollup_clause(row: Mapping[str, Any]) -> str:
    finer = row.get("rolled_up_from")
    if not finer:
        return ""
    level = row.get("level") or _PARENT_LEVEL.get(str(finer), "a coarser")
    return f" (shown at {level} level: {finer} counts are too small to publish)"


def narrate_row(row: Mapping[str, Any]) -> str:
    """One sentence for one anomaly row (fields as in :func:`narrate`)."""
    category = str(row["category"])
    subject = "All activity" if category == "*" else category
    where = f"{subject} in {row['unit_name']}"
    time_bin = str(row["time_bin"])
    when = when_phrase(time_bin, row["bin_start"])
    slot, after = (f"{when} ", "") if time_bin in ("day", "hour") else ("", f" in the {when}")
    baseline = f"its {baseline_phrase(int(row['baseline_days']))} {slot}baseline{after}"
    expected = float(row["expected"])
    expected_text = "under 1" if expected < _MIN_RATIO_EXPECTED else _expected(expected)
    observed = row.get("observed")
    effect = str(row.get("effect") or "none")
    drivers = _drivers(row)

    if observed is None:
        named = " and ".join(str(d["category"]) for d in drivers[:_MAX_NAMED_DRIVERS])
        driver_text = f"; the excess is led by {named}" if named and effect != "mix" else ""
        lead = f"{where} is flagged as unusual against {baseline} ({expected_text} expected; the count is withheld because it is too small to publish)"
        return f"{lead}{driver_text}{_effect_clause(effect, drivers, withheld=True)}{_rollup_clause(row)}."

    count = int(observed)
    if expected >= _MIN_RATIO_EXPECTED:
        verb = f"is {_one_decimal(count / expected)}{TIMES}"
    else:
        verb = "is far above" if count > expected else "is in line with"
    lead = f"{where} {verb} {baseline} ({count} vs {expected_text} expected, z = {_one_decimal(row['zscore'])})"
    driver_text = "" if effect == "mix" else _driver_clause(drivers)
    return f"{lead}{driver_text}{_effect_clause(effect, drivers, withheld=False)}{_rollup_clause(row)}."


def narrate(rows: pl.DataFrame) -> pl.Series:
    """``narrative``: one sentence per row of ``rows``, in order.

    Columns: ``unit_name, category ("*" = all), observed (null when withheld), expected, zscore, q,
    time_bin, bin_start, baseline_days, effect, drivers (list of {category, excess, share}),
    rolled_up_from`` and optionally ``level`` (the level the row is shown at; without it a rolled-up
    row names the level above ``rolled_up_from``). ``q`` is accepted but not printed: the anomaly
    list already passed the FDR cut, and a second significance number only competes with z.
    """
    return pl.Series("narrative", [narrate_row(r) for r in rows.iter_rows(named=True)], dtype=pl.String)
