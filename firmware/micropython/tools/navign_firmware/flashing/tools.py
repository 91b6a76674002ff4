"""Running esptool and mpremote (the real CLIs) for the bench tools: found next to this Python,
every call bounded by a timeout, output streamed to a callback (for progress) and kept.

Public: :class:`ToolError`, :class:`ToolResult`, :func:`executable`, :func:`run_tool`,
:func:`last_error`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: How much output of one call is kept (the tail; esptool's progress is long on a slow line).
KEEP_OUTPUT = 256 * 1024


class ToolError(RuntimeError):
    """A tool is missing, or a call failed (the message is one readable line)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    code: int
    output: str
    seconds: float
    timed_out: bool


def executable(name: str) -> str:
    """``name`` installed next to this Python (the project's environment), or on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise ToolError(f"{name} is not installed (run `make env` in the repository)")
    return found


def _clean_env(env: dict[str, str] | None) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    # Our own stdout is often a pipe: ask the tools for plain, unbuffered output.
    out.setdefault("PYTHONUNBUFFERED", "1")
    out.setdefault("NO_COLOR", "1")
    out.setdefault("TERM", "dumb")
    return out


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    on_output: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ToolResult:
    """Run ``argv`` with stdin closed, stdout and stderr merged; ``on_output`` sees each chunk as
    it comes. After ``timeout`` seconds the process (and its group) is killed."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=_clean_env(env),
        start_new_session=True,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    chunks: list[str] = []
    kept = 0
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                timed_out = True
                break
            if not sel.select(min(left, 0.5)):
                continue
            data = proc.stdout.read(65536)
            if not data:
                break
            text = data.decode("utf-8", "replace")
            chunks.append(text)
            kept += len(text)
            while kept > KEEP_OUTPUT and len(chunks) > 1:
                kept -= len(chunks.pop(0))
            if on_output is not None:
                on_output(text)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=10)
    proc.stdout.close()
    return ToolResult(code, "".join(chunks), time.monotonic() - started, timed_out)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def last_error(output: str) -> str:
    """The line of a tool's output that says what went wrong (esptool's "A fatal error
    occurred", mpremote's "mpremote: ...", a traceback's last line), or its last line."""
    lines = [_ANSI.sub("", line).strip() for line in re.split(r"[\r\n]+", output)]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith("A fatal error occurred:"):
            return line.removeprefix("A fatal error occurred:").strip()
        if line.startswith("mpremote:") or line.startswith("Error:"):
            return line
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else "no output"


def esptool_argv(port: str, chip: str, baud: int, *command: str) -> list[str]:
    """esptool on ``port``: reset into the loader before, a hard reset (into the app) after."""
    return [
        executable("esptool"),
        "--chip",
        chip,
        "--port",
        port,
        "--baud",
        str(baud),
        "--before",
        "default-reset",
        "--after",
        "hard-reset",
        *command,
    ]


def mpremote_argv(port: str, *command: str) -> list[str]:
    return [executable("mpremote"), "connect", port, *command]


_MAC = re.compile(r"MAC:\s*((?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2})")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d)?) ?%")


def parse_mac(output: str) -> bytes | None:
    found = _MAC.search(output)
    return bytes.fromhex(found.group(1).replace(":", "")) if found else None


def last_percent(chunk: str) -> float | None:
    found = _PERCENT.findall(chunk)
    return float(found[-1]) if found else None


def json_lines(output: str) -> list[dict[str, object]]:
    """Every line of ``output`` that is a JSON object (what the board's self-test prints)."""
    out: list[dict[str, object]] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


#: How long a board may take to show MicroPython's prompt after a reset.
REPL_PROBE_TIMEOUT = 8.0
#: How often the probe sends Ctrl-C (a beacon's main.py runs until interrupted).
REPL_POKE_EVERY = 0.5
_PROMPTS = (b">>> ", b"raw REPL; CTRL-B to exit")


def probe_repl(port: str, timeout: float = REPL_PROBE_TIMEOUT) -> str | None:
    """Wait until the board on ``port`` shows a MicroPython prompt (interrupting what runs).
    ``None`` when it does; otherwise the last line the board printed, to say why (mpremote
    itself would wait forever on a board that never answers)."""
    import serial

    seen = bytearray()
    try:
        with serial.Serial(port, 115200, timeout=0.1) as line:
            started = time.monotonic()
            next_poke = started
            while time.monotonic() - started < timeout:
                if time.monotonic() >= next_poke:
                    line.write(b"\r\x03")
                    next_poke = time.monotonic() + REPL_POKE_EVERY
                seen += line.read(4096)
                if any(prompt in seen for prompt in _PROMPTS):
                    return None
                del seen[:-4096]
    except (OSError, serial.SerialException) as exc:
        return f"cannot open {port}: {exc}"
    lines = [ln.strip() for ln in seen.decode("ascii", "replace").splitlines() if ln.strip()]
    printed = f" (it printed: {lines[-1][:80]})" if lines else " (it printed nothing)"
    return f"no MicroPython prompt within {timeout:.0f} s{printed}"
