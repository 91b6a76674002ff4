"""What ``navign-admin`` prints: rich tables for people, JSON for scripts, errors as one line.

Everything the server sent is shown through :func:`shown`, which escapes control characters: a
mall name cannot move the cursor or recolour the operator's terminal. Rich markup is off for
the same reason.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

#: Width used when stdout is not a terminal (a pipe or a file): wide enough not to fold ids.
PIPE_WIDTH = 200


def shown(value: Any) -> str:
    """A value as one safe line: None is ``-``, control and format characters escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    text = str(value)
    return "".join(
        ch if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") else f"\\x{ord(ch):02x}"
        for ch in text
    )


def one_line(text: str, limit: int = 500) -> str:
    """``text`` as a single line, at most ``limit`` characters."""
    flat = " ".join(shown(part) for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from the server, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(then: datetime | None, now: datetime) -> str:
    """``then`` as a short age: ``42s``, ``5m``, ``3h``, ``2d``, or ``never``."""
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Output:
    """Where a command's result goes: a table or lines for people, JSON with ``--json``."""

    def __init__(self, *, as_json: bool, stdout: TextIO | None = None) -> None:
        self.as_json = as_json
        self._stdout = stdout
        self._console: Console | None = None

    @property
    def stream(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def console(self) -> Console:
        if self._console is None:
            stream = self.stream
            terminal = stream.isatty()
            self._console = Console(
                file=stream,
                width=None if terminal else PIPE_WIDTH,
                markup=False,
                highlight=False,
                emoji=False,
                soft_wrap=not terminal,
            )
        return self._console

    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        """A line of text for people (already made safe by the caller with :func:`shown`)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
    ) -> None:
        table = Table(
            title=title, title_justify="left", box=None, header_style="bold", pad_edge=False
        )
        for name in columns:
            table.add_column(name, overflow="fold")
        count = 0
        for row in rows:
            table.add_row(*(shown(cell) for cell in row))
            count += 1
        if count == 0:
            self.line(f"({title or 'nothing'}: none)")
            return
        with self.console.capture() as captured:
            self.console.print(table)
        for text in captured.get().splitlines():
            self.line(text.rstrip())

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """Aligned ``name  value`` lines (one record)."""
        items = list(pairs)
        width = max((len(k) for k, _ in items), default=0)
        for key, value in items:
            self.line(f"{key:<{width}}  {shown(value)}")


def error(message: str) -> None:
    """The one line a failure prints on stderr."""
    sys.stderr.write(f"navign-admin: {one_line(message)}\n")
    sys.stderr.flush()
