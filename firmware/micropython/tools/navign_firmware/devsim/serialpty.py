"""The device end of a pseudo-terminal: what a host tool opens as a serial port is :attr:`path`.

The slave end is put in raw mode and kept open by the device, so that the port exists (and
nothing is echoed) before and between the host tool's runs; the master end is non-blocking.
Bytes the host never reads are dropped after a bounded wait, as a UART drops them when nobody
listens. Counters tell how many bytes crossed the wire each way (for the benchmarks).

A pty moves bytes as fast as the CPU allows. With ``paced=True`` the port moves them at the line
rate the host set on its end (the baud rate pyserial puts in the pty's termios, which changes
when esptool switches speed): 10 bits per byte (8N1), each direction on its own, as a UART
does. The benchmarks use it; the tests do not.

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
#: A UART byte: start bit, 8 data bits, stop bit.
BITS_PER_BYTE: Final = 10
_BAUDS: Final = {
    getattr(termios, f"B{rate}"): rate
    for rate in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1500000, 2000000)
    if hasattr(termios, f"B{rate}")
}


class PtyPort:
    """A pty pair; the device reads and writes the master, the host opens :attr:`path`."""

    def __init__(self, *, paced: bool = False) -> None:
        self.paced = paced
        self._rx_free = 0.0
        self._tx_free = 0.0
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

    def baud(self) -> int | None:
        """The baud rate the host set on the port (``None`` when unknown)."""
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return None
        return _BAUDS.get(int(speed))

    def _pace(self, free_at: float, count: int) -> float:
        """Wait until the line has carried ``count`` more bytes; returns when it is free."""
        baud = self.baud() if self.paced else None
        if not baud:
            return free_at
        now = time.monotonic()
        done = max(now, free_at) + count * BITS_PER_BYTE / baud
        if done > now:
            time.sleep(done - now)
        return done

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
        self._rx_free = self._pace(self._rx_free, len(data))
        return data

    def write(self, data: bytes) -> None:
        """Send ``data`` to the host; what it does not take within :data:`WRITE_WAIT` is
        dropped."""
        self._tx_free = self._pace(self._tx_free, len(data))
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
