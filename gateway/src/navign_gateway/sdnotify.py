"""The systemd notify protocol (sd_notify(3)), spoken directly over an ``AF_UNIX`` datagram.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, and the service tells it ``READY=1`` once
it serves, ``WATCHDOG=1`` periodically when ``WatchdogSec=`` is set, ``STOPPING=1`` on the way
out and a free-form ``STATUS=`` line that ``systemctl status`` shows. The protocol is a handful
of ``KEY=value`` lines in one datagram, so no library is needed.

A notification that cannot be sent is logged (WARNING once, then DEBUG until one succeeds) and
never raised: the gateway must keep serving the mall even if systemd or journald hiccups. The
socket is non-blocking, so a full queue drops a notification instead of stalling the event loop.

Public: :class:`Notifier`, :func:`watchdog_period`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

from navign_gateway.backoff import FailureLog

logger = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes:
    """``/path`` as is; ``@name`` is the Linux abstract namespace (a leading NUL byte)."""
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    return value


class Notifier:
    """Sends notifications to systemd; a no-op when not started by systemd with a socket."""

    def __init__(self, socket_name: str | None) -> None:
        """``socket_name`` is the value of ``NOTIFY_SOCKET`` (``None``: disabled)."""
        self._address: str | bytes | None = None
        if socket_name:
            if socket_name.startswith(("/", "@")) and len(socket_name) > 1:
                self._address = _socket_address(socket_name)
            else:
                # systemd also knows vsock: addresses (VMs); a gateway on a Pi never gets one.
                logger.warning(
                    "NOTIFY_SOCKET=%r is neither an absolute path nor @abstract; "
                    "systemd notifications are off",
                    socket_name,
                )
        self.socket_name = socket_name if self._address is not None else None
        self._socket: socket.socket | None = None
        self._failures = FailureLog(logger, "systemd notification")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, through ``NOTIFY_SOCKET``."""
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True if it was sent.

        An assignment without ``=`` or with a line break is a programming error (ValueError):
        it would corrupt the message systemd parses.
        """
        for assignment in assignments:
            if "=" not in assignment or "\n" in assignment or "\0" in assignment:
                raise ValueError(f"not a single KEY=value assignment: {assignment!r}")
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            self._failures.failed(exc)
            return False
        self._failures.recovered()
        return True

    def ready(self, status: str | None = None) -> bool:
        """The service is up (``Type=notify`` units count as started from here)."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status(status))

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``; see :func:`watchdog_period` for how often."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """The service is shutting down."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """The service reloads its configuration; call :meth:`ready` when done. systemd (≥ 253)
        wants the monotonic time with it, to tell this reload from an earlier one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``; line breaks become spaces (the text often comes
        from an exception message, and a stray newline must not inject an assignment)."""
        return self.notify(_status(text))

    def close(self) -> None:
        """Release the socket (notifying again reopens it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _status(text: str) -> str:
    flat = " ".join(text.replace("\0", " ").splitlines())
    return f"STATUS={flat}"


def watchdog_period(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    recommends, or None when systemd wants no watchdog from this process.

    ``WATCHDOG_PID``, when present, names the process meant; another process's value (inherited
    through a fork or exec) is not ours. A malformed value is logged and treated as no watchdog.
    """
    usec_text = environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text is not None:
        if not (pid_text.isascii() and pid_text.isdigit()):
            logger.warning("WATCHDOG_PID=%r is not a process id; no watchdog", pid_text)
            return None
        if int(pid_text) != os.getpid():
            return None
    if not (usec_text.isascii() and usec_text.isdigit()) or len(usec_text) > 20:
        logger.warning("WATCHDOG_USEC=%r is not a number of microseconds; no watchdog", usec_text)
        return None
    usec = int(usec_text)
    if usec == 0:
        return None
    return usec / 2 / 1_000_000
