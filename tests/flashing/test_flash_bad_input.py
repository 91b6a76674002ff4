"""``flash.sh`` refuses what it cannot do: a clear line, a non-zero exit, no board reported as
done, and (for what can be checked before a board is touched) a board that saw no byte."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from navign_firmware.devsim.board import BoardProcess

from .conftest import flash_sh

MakeBoard = Callable[..., BoardProcess]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flash.sh: error: "), stderr
    return lines[0]


@pytest.mark.parametrize("command", [[], ["beacon"], ["sd"], ["bench"]])
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    result = flash_sh(*command, "--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = flash_sh("beacons", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "unknown command 'beacons'" in _one_error_line(result.stderr)


def _beacon(tmp_path: Path, port: str, fw: Path, config: Path, *extra: str) -> tuple[int, str, str]:
    result = flash_sh(
        "beacon",
        "--port",
        port,
        "--chip",
        "esp32",
        "--micropython",
        fw,
        "--config",
        config,
        *extra,
        cwd=tmp_path,
    )
    assert "PASS" not in result.stdout
    return result.returncode, result.stdout, result.stderr


def test_a_missing_port_or_a_file_is_refused(
    tmp_path: Path, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    fw = firmware_dir / "micropython-esp32.bin"
    code, _, err = _beacon(tmp_path, "/dev/ttyUSB-navign-none", fw, template())
    assert code == 1
    assert "port /dev/ttyUSB-navign-none does not exist" in _one_error_line(err)
    code, _, err = _beacon(tmp_path, str(fw), fw, template())
    assert code == 1
    assert "is not a serial port" in _one_error_line(err)


@pytest.mark.slow
def test_what_is_checked_before_a_board_is_touched(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    board = boards()
    fw = firmware_dir / "micropython-esp32.bin"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 1024)
    cases = [
        (junk, template(), "is not a MicroPython image for esp32: it does not start with"),
        (firmware_dir / "micropython-esp32c3.bin", template(), "its bootloader is for esp32c3"),
        (fw, template(major="7"), "fails the firmware's validation for board 0"),
        (fw, template(entity_uuid="not-a-uuid"), "entity_uuid: bad_format"),
        (fw, template(beacon_id="b-{serial}"), "bad placeholder"),
        (fw, template(chip="esp32s3"), "is for chip 'esp32s3', not --chip esp32"),
    ]
    for firmware, config, message in cases:
        code, _, err = _beacon(tmp_path, board.port, firmware, config)
        assert code == 1
        assert message in _one_error_line(err)
    broken = tmp_path / "broken.json"
    broken.write_text('{"beacon_id": ')
    code, _, err = _beacon(tmp_path, board.port, fw, broken)
    assert "not valid JSON" in _one_error_line(err)

    stats = board.stop()
    assert stats["rx_bytes"] == 0  # not one byte reached the board


@pytest.mark.slow
def test_two_boards_without_their_own_identity_are_refused(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    a, b = boards(), boards()
    result = flash_sh(
        "beacon",
        "--port",
        a.port,
        "--port",
        b.port,
        "--chip",
        "esp32",
        "--micropython",
        firmware_dir / "micropython-esp32.bin",
        "--config",
        template(),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "give --minor-start" in _one_error_line(result.stderr)


@pytest.mark.slow
def test_the_wrong_chip_fails_that_board_and_writes_nothing(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    board = boards(chip="esp32c3")
    code, out, _ = _beacon(tmp_path, board.port, firmware_dir / "micropython-esp32.bin", template())
    assert code == 1
    fail = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1
    assert "ESP32-C3" in fail[0], fail
    assert "beacon: 0 of 1 boards provisioned" in out
    board.stop()
    assert set(board.flash_path.read_bytes()) == {0xFF}


@pytest.mark.slow
def test_a_board_that_stops_answering_mid_write_is_a_failure(
    tmp_path: Path, boards: MakeBoard, firmware_dir: Path, template: Callable[..., Path]
) -> None:
    dead = boards(faults=("die:FLASH_DEFL_DATA:3",))
    record = tmp_path / "flashed.csv"
    code, out, _ = _beacon(
        tmp_path,
        dead.port,
        firmware_dir / "micropython-esp32.bin",
        template(),
        "--record",
        str(record),
    )
    assert code == 1
    fail = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1, out
    assert "esptool" in fail[0], out
    rows = list(csv.DictReader(record.open()))
    assert [r["result"][:4] for r in rows] == ["FAIL"]
    assert rows[0]["beacon_id"] == ""


def test_the_config_validator_is_the_firmwares(tmp_path: Path) -> None:
    from navign_firmware.flashing import provision

    good = json.dumps(
        {
            "beacon_id": "b-1",
            "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
            "major": 1,
            "minor": 2,
        }
    ).encode()
    bad = json.dumps({"beacon_id": "b 1", "major": 70000, "minor": 2, "tx_pwr": 3}).encode()
    verdicts = provision.validate([good, bad])
    assert verdicts[0] == []
    assert "beacon_id: bad_format" in verdicts[1]
    assert "major: out_of_range" in verdicts[1]
    assert "tx_pwr: unknown" in verdicts[1]
