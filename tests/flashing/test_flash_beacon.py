"""``flash.sh beacon`` end to end: bash, the real esptool and mpremote CLIs, simulated boards
(the ROM loader, then the real MicroPython with the board's littlefs in its flash file)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from navign_firmware import build
from navign_firmware.devsim.board import BoardProcess
from navign_firmware.flashing.fwimage import BOOTLOADER_OFFSET
from navign_firmware.sim import SimBeacon
from navign_firmware.unix import SRC

from .conftest import TEMPLATE, flash_sh

pytestmark = pytest.mark.slow

MakeBoard = Callable[..., BoardProcess]


def _app_version() -> str:
    found = re.search(r'APP_VERSION = "([^"]+)"', (SRC / "navign/__init__.py").read_text())
    assert found
    return found.group(1)


def _expected_files(chip: str) -> dict[str, bytes]:
    files = build.device_files(target=chip)
    return {"/" + name: data for name, data in files.items()}


def _board_files(board: BoardProcess) -> dict[str, int]:
    """The board's littlefs, read from its flash file with the real littlefs (board stopped)."""
    sim = SimBeacon(board.workdir, chip=board.chip)
    return {name: size for name, size in sim.listing().items() if not name.endswith("/")}


def _flash_at(board: BoardProcess, offset: int, length: int) -> bytes:
    with board.flash_path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_one_board_gets_micropython_the_app_its_config_and_keys(
    chip: str,
    tmp_path: Path,
    boards: MakeBoard,
    firmware_dir: Path,
    template: Callable[..., Path],
    release_key_pem: tuple[Path, str],
) -> None:
    board = boards(chip=chip, mac="a4:cf:12:3a:bc:01")
    fw = firmware_dir / f"micropython-{chip}.bin"
    key_path, key_hex = release_key_pem
    record = tmp_path / "flashed.csv"
    result = flash_sh(
        "beacon",
        "--port",
        board.port,
        "--chip",
        chip,
        "--micropython",
        fw,
        "--config",
        template(),
        "--release-key",
        key_path,
        "--record",
        record,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 1
    assert lines[0].startswith(f"PASS  {board.port}  {chip}  a4:cf:12:3a:bc:01  riverside-3abc01")
    assert f"app {_app_version()}" in lines[0]
    stats = board.stop()

    # esptool wrote exactly the MicroPython bytes at the chip's offset.
    image = fw.read_bytes()
    assert _flash_at(board, BOOTLOADER_OFFSET[chip], len(image)) == image
    assert stats["commands"], stats

    # The board's filesystem (littlefs in the flash file) holds exactly the app and the config.
    sim = SimBeacon(board.workdir, chip=chip)
    expected = _expected_files(chip)
    listing = _board_files(board)
    assert set(listing) == set(expected) | {"/config.json"}
    for name, data in expected.items():
        assert sim.read(name) == data, name
    config = json.loads(sim.read("/config.json"))
    assert config["beacon_id"] == "riverside-3abc01"
    assert config["chip"] == chip
    assert config["release_keys"] == [key_hex]
    assert config["wifi"] == TEMPLATE["wifi"]

    rows = list(csv.DictReader(record.open()))
    assert len(rows) == 1
    assert rows[0]["mac"] == "a4:cf:12:3a:bc:01"
    assert rows[0]["beacon_id"] == "riverside-3abc01"
    assert rows[0]["result"] == "PASS"
    assert rows[0]["config_sha256"] == hashlib.sha256(sim.read("/config.json")).hexdigest()


def test_four_boards_are_flashed_in_parallel_with_their_own_identity(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    four = [boards(chip="esp32s3") for _ in range(4)]
    ports: list[str | Path] = []
    for b in four:
        ports += ["--port", b.port]
    result = flash_sh(
        "beacon",
        *ports,
        "--chip",
        "esp32s3",
        "--micropython",
        firmware_dir / "micropython-esp32s3.bin",
        "--config",
        template(beacon_id="riverside-{minor:04d}"),
        "--minor-start",
        "100",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "beacon: 4 of 4 boards provisioned" in result.stdout
    image = (firmware_dir / "micropython-esp32s3.bin").read_bytes()
    ids = set()
    for i, board in enumerate(four):
        board.stop()
        assert _flash_at(board, 0, len(image)) == image
        config = json.loads(SimBeacon(board.workdir, chip="esp32s3").read("/config.json"))
        assert config["minor"] == 100 + i
        ids.add(config["beacon_id"])
    assert ids == {"riverside-0100", "riverside-0101", "riverside-0102", "riverside-0103"}


def test_a_reflashed_board_keeps_nothing_from_its_earlier_life(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    board = boards()
    args: list[str | Path] = [
        "beacon",
        "--port",
        board.port,
        "--chip",
        "esp32",
        "--micropython",
        firmware_dir / "micropython-esp32.bin",
    ]
    assert flash_sh(*args, "--config", template(), cwd=tmp_path).returncode == 0
    # Leave something behind, then flash again with --erase and another identity.
    second = flash_sh(*args, "--erase", "--config", template(minor=43), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    board.stop()
    assert set(_board_files(board)) == set(_expected_files("esp32")) | {"/config.json"}
    config = json.loads(SimBeacon(board.workdir).read("/config.json"))
    assert config["minor"] == 43


def test_bench_passes_a_provisioned_beacon_and_fails_a_bare_board(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    good, bare = boards(mac="a4:cf:12:00:00:aa"), boards(chip="esp32c3")
    flashed = flash_sh(
        "beacon",
        "--port",
        good.port,
        "--chip",
        "esp32",
        "--micropython",
        firmware_dir / "micropython-esp32.bin",
        "--config",
        template(),
        cwd=tmp_path,
    )
    assert flashed.returncode == 0, flashed.stdout + flashed.stderr

    result = flash_sh("bench", "--port", good.port, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["result"] == "PASS"
    assert report["chip"] == "esp32"
    assert report["mac"] == "a4:cf:12:00:00:aa"
    assert report["flash_manufacturer"]
    assert report["selftest"]["checks"] == {"config": True, "adv": True, "signature": True}
    assert report["selftest"]["beacon_id"] == "riverside-0000aa"

    human = flash_sh("bench", "--port", good.port, cwd=tmp_path)
    assert human.returncode == 0
    assert human.stdout.strip().endswith("bench: PASS")

    # A board with nothing on it: esptool sees it, MicroPython does not answer.
    result = flash_sh("bench", "--port", bare.port, "--json", cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["result"] == "FAIL"
    assert report["chip"] == "esp32c3"
    assert report["reasons"] == [
        "MicroPython: no MicroPython prompt within 8 s (it printed: invalid header: 0xffffffff)"
    ]
