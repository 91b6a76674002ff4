"""sd_notify over real AF_UNIX datagram sockets (a path in tmp_path and the abstract namespace)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from navign_gateway.sdnotify import Notifier, watchdog_period

LOGGER = "navign_gateway.sdnotify"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in tmp_path, standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    assert len(os.fsencode(path)) < 108, "AF_UNIX path limit"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_each_notification_arrives_as_its_exact_datagram(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    with Notifier.from_environment({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.socket_name == path
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        assert notifier.ready("serving mall-demo")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving mall-demo"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.status("syncing: 3/7 collections")
        assert sock.recv(4096) == b"STATUS=syncing: 3/7 collections"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_time(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_status_cannot_inject_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        assert notifier.status("upstream failed:\nREADY=1\r\nx\0y")
    assert sock.recv(4096) == b"STATUS=upstream failed: READY=1 x y"


def test_a_malformed_assignment_is_refused_before_sending(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    sock.setblocking(False)
    with Notifier(path) as notifier:
        for bad in ("READY", "READY=1\nSTOPPING=1", "A=\0"):
            with pytest.raises(ValueError, match="KEY=value"):
                notifier.notify("STATUS=ok", bad)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # nothing was sent, not even the good half


def test_the_abstract_namespace() -> None:
    name = f"navign-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        with Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.enabled
            assert notifier.ready()
            assert notifier.watchdog()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_silent_no_op(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        notifier = Notifier.from_environment(environ)
        assert not notifier.enabled
        assert notifier.socket_name is None
        assert not notifier.ready("x")
        assert not notifier.watchdog()
        assert not notifier.stopping()
        assert not notifier.status("x")
        assert not notifier.reloading()
        notifier.close()
    assert records(caplog) == []


@pytest.mark.parametrize("value", ["relative/notify.sock", "@", "vsock:2:1234"])
def test_an_unusable_notify_socket_disables_with_a_warning(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    notifier = Notifier(value)
    assert not notifier.enabled
    assert not notifier.ready()
    assert [level for level, _ in records(caplog)] == [logging.WARNING]
    assert "systemd notifications are off" in records(caplog)[0][1]


def test_a_missing_socket_is_logged_once_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    path = tmp_path / "gone.sock"
    with Notifier(str(path)) as notifier:
        assert notifier.enabled
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        levels = [level for level, _ in records(caplog)]
        assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        assert "FileNotFoundError" in records(caplog)[0][1]
        # systemd comes back: the next notification goes through, and the recovery is noted.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.settimeout(5)
            assert notifier.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
        finally:
            sock.close()
    level, message = records(caplog)[-1]
    assert level == logging.INFO
    assert message.startswith("systemd notification recovered after 3 failures (first at ")


def test_a_full_queue_drops_instead_of_blocking(receiver: tuple[socket.socket, str]) -> None:
    """Nobody reads the socket: once its queue is full, sending fails at once (non-blocking)."""
    _, path = receiver
    with Notifier(path) as notifier:
        for _ in range(100_000):
            if not notifier.watchdog():
                break
        else:
            pytest.fail("the receiver's queue never filled")


# --- watchdog_period ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_period(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_period(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "30s"},
        {"WATCHDOG_USEC": " 30000000"},
        {"WATCHDOG_USEC": "1.5"},
        {"WATCHDOG_USEC": "\uff13"},
        {"WATCHDOG_USEC": "9" * 50},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""},
    ],
)
def test_watchdog_period_bad_values_mean_no_watchdog(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert watchdog_period(environ) is None
    assert [level for level, _ in records(caplog)] == [logging.WARNING]


def test_watchdog_period_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_period() == 4.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_period() is None
