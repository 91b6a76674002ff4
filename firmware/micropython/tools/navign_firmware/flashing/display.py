"""What a technician watches while boards are flashed: one row per board (stage and progress),
live on a terminal (rich), or one line per change of stage on a pipe or log file.

Public: :class:`BoardProgress`.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

#: Plain output prints progress within a stage at most this often (seconds).
PLAIN_EVERY = 5.0


class BoardProgress:
    """Thread-safe progress of several boards, keyed by port."""

    def __init__(self, ports: list[str], stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._rows: dict[str, list[str]] = {p: ["waiting", ""] for p in ports}
        self._printed: dict[str, tuple[str, float]] = {}
        self._live: Live | None = None
        if self._stream.isatty():
            console = Console(file=self._stream)
            self._live = Live(self._table(), console=console, refresh_per_second=4, transient=True)

    def _table(self) -> Table:
        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("port")
        table.add_column("stage")
        table.add_column("progress", justify="right")
        for port, (stage, detail) in self._rows.items():
            table.add_row(port, stage, detail)
        return table

    def update(self, port: str, stage: str, detail: str = "") -> None:
        with self._lock:
            self._rows[port] = [stage, detail]
            if self._live is not None:
                self._live.update(self._table())
                return
            last = self._printed.get(port)
            now = time.monotonic()
            if last is None or last[0] != stage or now - last[1] >= PLAIN_EVERY:
                self._printed[port] = (stage, now)
                text = f"{port}: {stage}" + (f" {detail}" if detail else "")
                print(text, file=self._stream, flush=True)

    def __enter__(self) -> BoardProgress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
