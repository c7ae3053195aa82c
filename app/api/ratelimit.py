"""Per-client token buckets for the alert API: ``burst`` requests at once, refilled at ``rate``
per minute. In-process on purpose (one server process owns the alert API; PostgreSQL deployments
with several processes get one bucket per process). The ``limits`` package offers fixed, moving
and sliding windows but no token bucket, and a bucket is a few lines.

>>> buckets = TokenBuckets(rate_per_minute=60, burst=2, clock=lambda: 0.0)
>>> [buckets.take("key:1").allowed for _ in range(3)]
[True, True, False]
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBuckets", "Verdict"]

#: Buckets kept at most; the least recently used is dropped (a dropped bucket is a full one).
MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Verdict:
    """One request's answer and the ``RateLimit-*`` numbers to send with it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one request is allowed (0 when it is)

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``-Remaining``, ``-Reset`` (and ``Retry-After`` when refused)."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining), "RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class TokenBuckets:
    """A token bucket per client id; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate, self.burst, self._clock = rate_per_minute / 60.0, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> Verdict:
        """Spend one token of ``client``'s bucket if it has one."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        return Verdict(
            allowed=allowed,
            limit=self.burst,
            remaining=int(tokens),
            reset_s=math.ceil((self.burst - tokens) / self.rate),
            retry_after_s=0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate)),
        )
