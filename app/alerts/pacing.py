"""When a due delivery may go, in its rule's own time zone: quiet hours hold it until they end
(then it is sent), a daily cap stops a rule's sends to an endpoint for the rest of the local day
(the rest are kept, marked ``capped``, visible and retryable), and a digest rule's items wait for
one message a day at the chosen local time. Pure functions of the clock and the rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["Pace", "digest_time", "local_day_start", "pace", "parse_hhmm", "quiet_until"]


@dataclass(frozen=True)
class Pace:
    """``send`` now, ``hold`` until ``until``, or ``cap`` (over the daily cap)."""

    action: str
    until: datetime | None = None
    reason: str | None = None


def parse_hhmm(text: str) -> time:
    """``"22:30"`` -> ``time(22, 30)``; ``ValueError`` naming the rule otherwise."""
    hours, sep, minutes = text.partition(":")
    if not (sep and len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()):
        raise ValueError("a local time is written HH:MM, e.g. 07:30")
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError("a local time is between 00:00 and 23:59")
    return time(int(hours), int(minutes))


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def local_day_start(now: datetime, zone: str) -> datetime:
    """The instant (UTC) the local day of ``now`` began in ``zone``."""
    tz = ZoneInfo(zone)
    return _at(now.astimezone(tz).date(), time(0, 0), tz)


def quiet_until(now: datetime, zone: str, start: str | None, end: str | None) -> datetime | None:
    """When the quiet hours that ``now`` falls in end (UTC), or None when it is not in them.
    ``start`` after ``end`` spans midnight (``22:00``-``07:00``); equal times mean no quiet hours."""
    if not start or not end or start == end:
        return None
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    begin, finish = parse_hhmm(start), parse_hhmm(end)
    clock = local.time().replace(tzinfo=None)
    today = local.date()
    if begin < finish:
        return _at(today, finish, tz) if begin <= clock < finish else None
    if clock >= begin:
        return _at(today + timedelta(days=1), finish, tz)
    return _at(today, finish, tz) if clock < finish else None


def digest_time(now: datetime, zone: str, at: str) -> tuple[str, datetime]:
    """The local date of ``now`` and the instant (UTC) of that day's digest."""
    tz = ZoneInfo(zone)
    day = now.astimezone(tz).date()
    return day.isoformat(), _at(day, parse_hhmm(at), tz)


def pace(now: datetime, zone: str, quiet_start: str | None, quiet_end: str | None, daily_cap: int | None, sent_today: int) -> Pace:
    """What to do with a due delivery of a rule that has sent ``sent_today`` to this endpoint since
    local midnight."""
    until = quiet_until(now, zone, quiet_start, quiet_end)
    if until is not None:
        return Pace("hold", until, f"quiet hours ({quiet_start}-{quiet_end} {zone}): held until they end")
    if daily_cap is not None and sent_today >= daily_cap:
        return Pace("cap", reason=f"not sent: the rule's daily cap of {daily_cap} was reached (a retry on another day sends it)")
    return Pace("send")
