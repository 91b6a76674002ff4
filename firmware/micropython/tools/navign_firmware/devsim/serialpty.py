"""The device end of a pseudo-terminal: what a host tool opens as a serial port is :attr:`path`.

The slave end is put in raw mode and kept open by the device, so that the port exists (and
nothing is echoed) before and between the host tool's runs; the master end is non-blocking.
Bytes the host never reads are dropped after a bounded wait, as a UART drops them when nobody
listens. Counters tell how many bytes crossed the wire each way (for the benchmarks).

Public: :class:`PtyPort`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import termios
import time
import tty
from typing import Final

#: How long :meth:`PtyPort.write` waits for a host that reads nothing before dropping bytes.
WRITE_WAIT: Final = 2.0


class PtyPort:
    """A pty pair; the device reads and writes the master, the host opens :attr:`path`."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.path: str = os.ttyname(self._slave)
        #: Bytes received from the host, and sent to it.
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.dropped = 0

    def fileno(self) -> int:
        return self.master

    def read(self, timeout: float | None = None) -> bytes:
        """What the host sent (``b""`` when nothing came within ``timeout`` seconds)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO: no host has the port open right now
            if exc.errno == errno.EIO:
                time.sleep(0.005)
                return b""
            raise
        self.rx_bytes += len(data)
        return data

    def write(self, data: bytes) -> None:
        """Send ``data`` to the host; what it does not take within :data:`WRITE_WAIT` is
        dropped."""
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_WAIT
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                n = 0
            self.tx_bytes += n
            view = view[n:]
            if not view:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.dropped += len(view)
                return
            select.select([], [self.master], [], min(left, 0.05))

    def discard_input(self) -> None:
        """Drop what the host sent and the device has not read."""
        while self.read(0):
            pass

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
