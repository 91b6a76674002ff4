"""Build the beacon app: ``src/navign/*.py`` compiled to ``.mpy`` with mpy-cross for a target chip,
and a file list with sizes and SHA-256.

An app release is exactly this folder (``navign/*.mpy``), and the device image of a new board is
``boot.py`` and ``main.py`` (kept as source: MicroPython runs them as files) plus the app in
``/app/a/``. The same Python runs on every chip; ``-march`` only tags the architecture, since the
app has no native code.

Public: :data:`TARGETS`, :class:`BuildError`, :func:`build_app`, :func:`device_files`,
:func:`file_list`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from navign_firmware.unix import SRC

#: mpy-cross architecture per chip (ESP32 and ESP32-S3 are Xtensa LX6/LX7, ESP32-C3 RISC-V).
TARGETS: Final = {"esp32": "xtensawin", "esp32s3": "xtensawin", "esp32c3": "rv32imc", "unix": None}
_VERSION_RE = re.compile(r'^APP_VERSION = "[^"]*"$', re.MULTILINE)


class BuildError(RuntimeError):
    """mpy-cross is missing or refused a file."""


def _mpy_cross() -> str:
    found = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpy-cross"
    )
    if found is None:
        raise BuildError("mpy-cross is not installed (uv sync installs it)")
    return found


def build_app(out: Path, *, version: str | None = None, target: str = "esp32") -> dict[str, int]:
    """Compile ``src/navign`` into ``out/navign/*.mpy``; with ``version``, ``APP_VERSION`` says
    so. Returns {relative path: size}. Raises :class:`BuildError`."""
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    tool = _mpy_cross()
    march = TARGETS[target]
    package = SRC / "navign"
    dest = out / "navign"
    dest.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(package.glob("*.py")):
            text = source.read_text()
            if source.name == "__init__.py" and version is not None:
                text, count = _VERSION_RE.subn(f'APP_VERSION = "{version}"', text)
                if count != 1:
                    raise BuildError("src/navign/__init__.py must hold one APP_VERSION line")
            staged = Path(tmp) / source.name
            staged.write_text(text)
            target_file = dest / (source.stem + ".mpy")
            argv = [tool, "-o", str(target_file), "-s", f"navign/{source.name}"]
            if march:
                argv.append(f"-march={march}")
            proc = subprocess.run([*argv, str(staged)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"mpy-cross {source.name}: {proc.stderr.strip()}")
            sizes[f"navign/{target_file.name}"] = target_file.stat().st_size
    return sizes


def file_list(root: Path) -> list[dict[str, object]]:
    """Every file under ``root`` with its size and SHA-256, sorted by path."""
    out: list[dict[str, object]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out.append(
            {
                "path": path.relative_to(root).as_posix(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return out


def device_files(
    *, version: str | None = None, target: str = "esp32", config: bytes | None = None
) -> dict[str, bytes]:
    """What a new board's filesystem holds: /boot.py, /main.py, the compiled app in /app/a/
    and, when given, /config.json."""
    files = {
        "boot.py": (SRC / "boot.py").read_bytes(),
        "main.py": (SRC / "main.py").read_bytes(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        build_app(Path(tmp), version=version, target=target)
        for entry in file_list(Path(tmp)):
            path = str(entry["path"])
            files[f"app/a/{path}"] = (Path(tmp) / path).read_bytes()
    if config is not None:
        files["config.json"] = config
    return files


def write_build(out: Path, *, target: str, version: str | None = None) -> Path:
    """``out/<target>/``: the app, boot.py and main.py, and ``files.json`` (the file list)."""
    root = out / target
    if root.exists():
        shutil.rmtree(root)
    build_app(root / "app", version=version, target=target)
    shutil.copy2(SRC / "boot.py", root / "boot.py")
    shutil.copy2(SRC / "main.py", root / "main.py")
    listing = file_list(root)
    (root / "files.json").write_text(json.dumps(listing, indent=1) + "\n")
    return root
