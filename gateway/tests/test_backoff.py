"""Backoff bounds and growth with a seeded Random; FailureLog levels with caplog."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from navign_gateway.backoff import Backoff, FailureLog


def steps(initial: float, maximum: float, multiplier: float, n: int) -> list[float]:
    """The expected upper bounds, computed independently of the implementation."""
    return [min(maximum, initial * multiplier**k) for k in range(n)]


def test_defaults_grow_from_one_second_to_the_one_minute_cap() -> None:
    backoff = Backoff(rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    for delay, step in zip(delays, steps(1.0, 60.0, 2.0, 12), strict=True):
        assert step / 2 <= delay <= step
    assert max(delays) <= 60.0
    assert delays[-1] >= 30.0  # at the cap, the lower half is cut off
    assert backoff.attempts == 12


def test_with_multiplier_two_delays_never_decrease_up_to_the_cap() -> None:
    """Equal jitter with x2 growth: step k+1's lower bound is step k's upper bound. Once at the
    cap, delays stay within its upper half."""
    for seed in range(20):
        backoff = Backoff(initial=0.5, maximum=64.0, rng=random.Random(seed))
        growing = [backoff.next_delay() for _ in range(8)]  # steps 0.5, 1, ..., 64
        assert growing == sorted(growing)
        assert all(32.0 <= backoff.next_delay() <= 64.0 for _ in range(20))


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    initial=st.floats(min_value=0.01, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    multiplier=st.floats(min_value=1, max_value=5),
)
def test_every_delay_lies_in_the_upper_half_of_its_step(
    seed: int, initial: float, extra: float, multiplier: float
) -> None:
    maximum = initial + extra
    backoff = Backoff(initial, maximum, multiplier, rng=random.Random(seed))
    slack = 1e-9  # repeated multiplication and ** may differ in the last bits
    for step in steps(initial, maximum, multiplier, 30):
        delay = backoff.next_delay()
        assert step / 2 * (1 - slack) <= delay <= step * (1 + slack)
        assert delay <= maximum


def test_jitter_spreads_gateways_apart() -> None:
    first = [Backoff(rng=random.Random(seed)).next_delay() for seed in range(50)]
    assert len(set(first)) == 50
    # The whole [0.5, 1] range is used.
    assert min(first) < 0.6
    assert max(first) > 0.9


def test_the_same_seed_gives_the_same_delays() -> None:
    a = Backoff(rng=random.Random(7))
    b = Backoff(rng=random.Random(7))
    assert [a.next_delay() for _ in range(8)] == [b.next_delay() for _ in range(8)]


def test_reset_starts_again_from_initial() -> None:
    backoff = Backoff(initial=2.0, maximum=100.0, rng=random.Random(3))
    for _ in range(6):
        backoff.next_delay()
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.attempts == 0
    assert 1.0 <= backoff.next_delay() <= 2.0
    assert 2.0 <= backoff.next_delay() <= 4.0


def test_a_floor_raises_the_delay_even_above_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, rng=random.Random(5))
    assert backoff.next_delay(floor=3.342) == 3.342  # SSE retry: 3342 ms beats [0.5, 1]
    assert backoff.next_delay(floor=120.0) == 120.0  # Retry-After: 120 beats the 60 s cap
    assert backoff.attempts == 2
    # A floor below the jittered delay changes nothing.
    delay = backoff.next_delay(floor=0.1)
    assert 2.0 <= delay <= 4.0
    assert backoff.next_delay(floor=0) >= 4.0


def test_the_step_keeps_growing_under_floors_and_never_overflows() -> None:
    backoff = Backoff(rng=random.Random(9))
    for _ in range(5000):
        delay = backoff.next_delay(floor=2.0)
        assert 2.0 <= delay <= 60.0
    assert backoff.attempts == 5000
    assert backoff.next_delay() >= 30.0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial": 0}, ValueError),
        ({"initial": -1}, ValueError),
        ({"initial": float("nan")}, ValueError),
        ({"maximum": float("inf")}, ValueError),
        ({"initial": 10, "maximum": 5}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"initial": "1"}, TypeError),
        ({"maximum": True}, TypeError),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("floor", [-1.0, float("nan"), float("inf")])
def test_a_bad_floor_is_refused_and_changes_nothing(floor: float) -> None:
    backoff = Backoff(rng=random.Random(2))
    with pytest.raises(ValueError, match="floor"):
        backoff.next_delay(floor=floor)
    assert backoff.attempts == 0
    assert 0.5 <= backoff.next_delay() <= 1.0


# --- FailureLog --------------------------------------------------------------------------------

LOGGER = "navign_gateway.test_backoff"
FIRST = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_first_failure_warns_repeats_debug_recovery_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = FailureLog(logging.getLogger(LOGGER), "event stream", clock=lambda: FIRST)
    log.failed(ConnectionRefusedError(111, "Connection refused"))
    log.failed("HTTP 503")
    log.failed(TimeoutError())
    assert log.failures == 3
    log.recovered()
    log.recovered()  # a second success says nothing more
    assert levels(caplog) == [
        (
            logging.WARNING,
            "event stream failed: ConnectionRefusedError: [Errno 111] Connection refused"
            " (repeats are logged at DEBUG until it recovers)",
        ),
        (logging.DEBUG, "event stream failed again (2 failures): HTTP 503"),
        (logging.DEBUG, "event stream failed again (3 failures): TimeoutError"),
        (
            logging.INFO,
            "event stream recovered after 3 failures (first at 2026-11-27T10:00:00+00:00)",
        ),
    ]
    assert log.failures == 0


def test_success_without_failure_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = FailureLog(logging.getLogger(LOGGER), "heartbeat")
    log.recovered()
    assert levels(caplog) == []


def test_a_new_outage_warns_again_with_its_own_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    times = iter([FIRST, FIRST.replace(hour=12)])
    log = FailureLog(logging.getLogger(LOGGER), "heartbeat", clock=lambda: next(times))
    log.failed("a")
    log.recovered()
    log.failed("b")
    log.recovered()
    records = levels(caplog)
    assert [level for level, _ in records] == [
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
    assert (
        records[1][1] == "heartbeat recovered after 1 failure (first at 2026-11-27T10:00:00+00:00)"
    )
    assert records[3][1].endswith("(first at 2026-11-27T12:00:00+00:00)")


def test_a_quiet_logger_keeps_repeats_out_of_the_journal(caplog: pytest.LogCaptureFixture) -> None:
    """At the production level (INFO), a long outage leaves exactly one line until recovery."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = FailureLog(logging.getLogger(LOGGER), "uplink")
    for attempt in range(1000):
        log.failed(f"attempt {attempt}")
    assert len(levels(caplog)) == 1
    log.recovered()
    assert levels(caplog)[-1][1].startswith("uplink recovered after 1000 failures (first at ")
