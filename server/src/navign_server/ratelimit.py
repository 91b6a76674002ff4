"""In-process token-bucket rate limits, keyed by client address or orchestrator.

Per process: with several server instances each enforces its own share, which is the usual
trade-off (a shared limiter would put the database on every request's path).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``seconds``, with bursts up to ``count``."""

    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


class RateLimiter:
    """Token buckets for many keys, holding at most ``max_keys`` (least recently used go)."""

    def __init__(
        self,
        rate: Rate,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str) -> float:
        """Take one token for ``key``. Returns 0.0 when allowed, else the seconds to wait."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.rate.count), now))
        tokens = min(float(self.rate.count), tokens + (now - last) * self.rate.per_second)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate.per_second

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


def retry_after_header(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}
