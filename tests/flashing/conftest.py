"""Fixtures for the bench tools' tests: simulated boards (each its own process, on its own pty),
MicroPython firmware files, beacon config templates and release keys, and running ``flash.sh``
itself (bash, then the real esptool and mpremote CLIs) with a timeout."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from navign_firmware.devsim.board import BoardProcess
from navign_firmware.devsim.firmware import write_firmware

ROOT = Path(__file__).resolve().parents[2]
FLASH_SH = ROOT / "flash.sh"
#: Whole-command budget: no flash.sh run in a test may take longer.
FLASH_TIMEOUT = 240.0

TEMPLATE: dict[str, Any] = {
    "beacon_id": "riverside-{mac_suffix}",
    "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
    "major": 7,
    "minor": 42,
    "wifi": {"ssid": "mall-ops", "password": "correct horse"},
    "gateway": {"host": "gw.local", "port": 8080},
}


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[Callable[..., BoardProcess]]:
    """``boards(chip=..., mac=..., faults=[...])`` starts a simulated board; all are stopped
    at the end of the test."""
    started: list[BoardProcess] = []

    def make(
        chip: str = "esp32", mac: str | None = None, faults: tuple[str, ...] = ()
    ) -> BoardProcess:
        n = len(started) + 1
        board = BoardProcess(
            tmp_path / f"board{n}",
            chip=chip,
            mac=mac or f"a4:cf:12:00:00:{n:02x}",
            faults=faults,
        )
        started.append(board)
        return board

    yield make
    for board in started:
        board.stop()


@pytest.fixture(scope="session")
def firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("firmware")
    for chip in ("esp32", "esp32c3", "esp32s3"):
        write_firmware(out / f"micropython-{chip}.bin", chip)
    return out


@pytest.fixture
def release_key_pem(tmp_path: Path) -> tuple[Path, str]:
    """A release public key file and its point in hex (as the beacon's config holds it)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "release.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return path, point.hex()


@pytest.fixture
def template(tmp_path: Path) -> Callable[..., Path]:
    def write(**overrides: Any) -> Path:
        doc = {**TEMPLATE, **overrides}
        path = tmp_path / f"beacon-{len(list(tmp_path.glob('beacon-*.json')))}.json"
        path.write_text(json.dumps(doc))
        return path

    return write


def flash_sh(
    *args: str | Path,
    cwd: Path,
    timeout: float = FLASH_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``flash.sh ARGS`` in ``cwd`` (esptool and mpremote configuration isolated there, and no
    ``NAVIGN_ADMIN_*`` of the caller's), with ``env`` added."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_ADMIN_")}
    environment.update(env or {})
    environment["HOME"] = str(cwd)
    cfg = cwd / "esptool.cfg"
    cfg.touch()
    environment["ESPTOOL_CFGFILE"] = str(cfg)
    return subprocess.run(
        ["bash", str(FLASH_SH), *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
