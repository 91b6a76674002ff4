"""Retry pacing and quiet failure logging for loops that never give up (protocol §1.9).

:class:`Backoff` spaces retries with capped exponential growth and "equal jitter": each delay is
drawn uniformly from the upper half of the current step, so thousands of gateways that lost the
server together do not come back in lockstep, yet none retries sooner than half its step. A
server's own lower bound (SSE ``retry:``, ``Retry-After``) wins over the cap.

:class:`FailureLog` logs the first failure of an outage at WARNING and the repeats at DEBUG, then
one INFO line when it recovers: a gateway offline for days must not fill its SD card and journal
with the same line.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")
    return float(value)


class Backoff:
    """Delays between attempts: ``initial``, then × ``multiplier`` per failure up to ``maximum``,
    each jittered within [step/2, step]."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = _positive_finite("initial", initial)
        self.maximum = _positive_finite("maximum", maximum)
        self.multiplier = _positive_finite("multiplier", multiplier)
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({maximum}) must not be below initial ({initial})")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {multiplier}")
        # Jitter is not security-sensitive; a seeded Random makes tests reproducible.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._step = self.initial
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last :meth:`reset` (failed attempts so far)."""
        return self._attempts

    def next_delay(self, floor: float | None = None) -> float:
        """The delay, in seconds, before the next attempt; advances the step.

        ``floor`` is the server's lower bound in seconds (SSE ``retry:`` / 1000, ``Retry-After``):
        the result is never below it, even when it exceeds ``maximum``.
        """
        if floor is not None:
            if isinstance(floor, bool) or not isinstance(floor, int | float):
                raise TypeError(f"floor must be a number, not {type(floor).__name__}")
            if not math.isfinite(floor) or floor < 0:
                raise ValueError(f"floor must be a finite number >= 0, not {floor!r}")
        step = self._step
        delay = self._rng.uniform(step / 2, step)
        # Growing the step by multiplication (not initial * multiplier ** attempts) cannot
        # overflow however long the outage lasts.
        self._step = min(step * self.multiplier, self.maximum)
        self._attempts += 1
        if floor is not None and floor > delay:
            return float(floor)
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._step = self.initial
        self._attempts = 0


def _describe(failure: BaseException | str) -> str:
    if isinstance(failure, BaseException):
        text = str(failure)
        return f"{type(failure).__name__}: {text}" if text else type(failure).__name__
    return failure


class FailureLog:
    """Logs an outage of ``what`` (e.g. "event stream") once loudly, then quietly."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.logger = logger
        self.what = what
        self._clock = clock
        self._failures = 0
        self._first_at: datetime | None = None

    @property
    def failures(self) -> int:
        """Failures since the last recovery."""
        return self._failures

    def failed(self, failure: BaseException | str) -> None:
        """Record a failure: WARNING for the first of an outage, DEBUG for the repeats."""
        self._failures += 1
        detail = _describe(failure)
        if self._failures == 1:
            self._first_at = self._clock()
            self.logger.warning(
                "%s failed: %s (repeats are logged at DEBUG until it recovers)", self.what, detail
            )
        else:
            self.logger.debug(
                "%s failed again (%d failures): %s", self.what, self._failures, detail
            )

    def recovered(self) -> None:
        """Record a success: one INFO line if there was an outage, nothing otherwise."""
        if self._failures == 0:
            return
        first = self._first_at.isoformat() if self._first_at is not None else "unknown"
        self.logger.info(
            "%s recovered after %d failure%s (first at %s)",
            self.what,
            self._failures,
            "" if self._failures == 1 else "s",
            first,
        )
        self._failures = 0
        self._first_at = None
