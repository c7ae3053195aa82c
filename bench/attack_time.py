"""Time bins as the attacker (and its truth) sees them: hours, local days, local weeks.

Every bin of every grain starts on a whole UTC hour (city offsets are whole hours), so a bin is an
interval ``[h0, h1)`` of *hour indices* (hours since the Unix epoch). A day starts at local midnight
and a week on local Monday midnight in the city's :class:`Clock` (UTC when the server announces
no time zone and its day bins start at midnight UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["GRAINS", "Clock", "hour_index", "iso"]

GRAINS = ("hour", "day", "week")


def hour_index(ts: datetime) -> int:
    """Hours since the epoch of an hour-aligned aware datetime."""
    return int(ts.timestamp()) // 3600


def iso(ts: datetime) -> str:
    """ISO 8601 with a ``Z`` (what the API accepts and echoes)."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Clock:
    """Bin boundaries of one city: an IANA zone name, a fixed offset, or UTC."""

    def __init__(self, zone: str | None = None, offset_hours: int | None = None) -> None:
        self.tz: tzinfo
        if zone:
            self.tz = ZoneInfo(zone)
        elif offset_hours:
            self.tz = timezone(timedelta(hours=offset_hours))
        else:
            self.tz = UTC
        self.name = zone or (f"UTC{offset_hours:+d}" if offset_hours else "UTC")

    def floor(self, ts: datetime, grain: str) -> datetime:
        """Start of the ``grain`` bin holding ``ts`` (UTC)."""
        if grain == "hour":
            return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        local = ts.astimezone(self.tz)
        day = datetime(local.year, local.month, local.day, tzinfo=self.tz)
        if grain == "week":
            day = _local(day.date().toordinal() - day.weekday(), self.tz)
        return day.astimezone(UTC)

    def next(self, start: datetime, grain: str) -> datetime:
        """Start of the bin after the one starting at ``start`` (DST-aware: 23- and 25-hour days)."""
        if grain == "hour":
            return start + timedelta(hours=1)
        local = start.astimezone(self.tz)
        days = 1 if grain == "day" else 7
        return _local(local.date().toordinal() + days, self.tz).astimezone(UTC)

    def snap(self, since: datetime, until: datetime, grain: str) -> tuple[datetime, datetime]:
        """``[since, until)`` widened to whole ``grain`` bins."""
        lo, hi = self.floor(since, grain), self.floor(until, grain)
        if hi < until:
            hi = self.next(hi, grain)
        return lo, hi

    def bins(self, since: datetime, until: datetime, grain: str) -> list[tuple[int, int]]:
        """Hour intervals of the ``grain`` bins covering ``[since, until)``."""
        out: list[tuple[int, int]] = []
        cur, hi = self.snap(since, until, grain)
        while cur < hi:
            nxt = self.next(cur, grain)
            out.append((hour_index(cur), hour_index(nxt)))
            cur = nxt
        return out

    def inside(self, since: datetime, until: datetime, grain: str) -> list[tuple[int, int]]:
        """Bins lying wholly inside ``[since, until)`` (a lens surely counts them in full)."""
        lo = hour_index(since) + (0 if since == self.floor(since, "hour") else 1)
        hi = hour_index(until)
        return [b for b in self.bins(since, until, grain) if b[0] >= lo and b[1] <= hi]


def _local(ordinal: int, tz: tzinfo) -> datetime:
    from datetime import date

    d = date.fromordinal(ordinal)
    return datetime(d.year, d.month, d.day, tzinfo=tz)
