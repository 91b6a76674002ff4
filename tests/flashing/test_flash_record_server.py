"""``flash.sh beacon --record-server ENTITY``: each PASS board's MAC, major, minor and chip land in
the mall's plan on a real server process (``navign-server serve``, SQLite), through the real
``navign-admin``; simulated boards flashed by the real esptool and mpremote."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from navign_firmware.devsim.board import BoardProcess
from navign_server.testing import ServerProcess

from ..conftest import ENTITY, EXAMPLE_MALL
from .conftest import flash_sh

pytestmark = pytest.mark.slow

MakeBoard = Callable[..., BoardProcess]
ADMIN_TIMEOUT = 60.0
#: The plan's two beacons the bench flashes: placeholders for what only the board knows.
PLANNED = ("b-0100", "b-0101")


def _mall() -> dict[str, Any]:
    """The sample mall with beacons b-0100 and b-0101 added (placeholder MACs and numbers)."""
    mall: dict[str, Any] = json.loads(EXAMPLE_MALL.read_text())
    first = mall["beacons"][0]
    for n, beacon_id in enumerate(PLANNED):
        beacon = copy.deepcopy(first)
        beacon.update(
            id=beacon_id,
            name=f"Bench beacon {n}",
            device="esp32c3",
            mac=f"02:00:00:00:01:{n:02x}",
            major=9,
            minor=900 + n,
        )
        mall["beacons"].append(beacon)
    return mall


def _admin(server: ServerProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real navign-admin (next to this Python) against ``server``."""
    admin = Path(sys.executable).with_name("navign-admin")
    return subprocess.run(
        [str(admin), *argv, "--server", server.base_url, "--token", server.admin_token],
        capture_output=True,
        text=True,
        timeout=ADMIN_TIMEOUT,
        check=False,
    )


def _beacon(server: ServerProcess, beacon_id: str) -> dict[str, Any]:
    done = _admin(server, "docs", ENTITY, "beacons", "--json", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    found = [d for d in json.loads(done.stdout)["documents"] if d["id"] == beacon_id]
    assert found, beacon_id
    document: dict[str, Any] = found[0]
    return document


@pytest.fixture
def mall_server(server_process: ServerProcess, tmp_path: Path) -> ServerProcess:
    path = tmp_path / "mall.json"
    path.write_text(json.dumps(_mall()))
    done = _admin(server_process, "import", ENTITY, str(path))
    assert done.returncode == 0, done.stderr
    return server_process


def _connection(server: ServerProcess) -> dict[str, str]:
    return {"NAVIGN_ADMIN_SERVER": server.base_url, "NAVIGN_ADMIN_TOKEN": server.admin_token}


def _beacon_args(
    ports: list[str], firmware_dir: Path, config: Path, *extra: str
) -> list[str | Path]:
    args: list[str | Path] = ["beacon"]
    for port in ports:
        args += ["--port", port]
    args += ["--chip", "esp32", "--micropython", firmware_dir / "micropython-esp32.bin"]
    return [*args, "--config", config, *extra]


def test_two_boards_are_recorded_in_the_plan(
    tmp_path: Path,
    mall_server: ServerProcess,
    boards: MakeBoard,
    firmware_dir: Path,
    template: Callable[..., Path],
) -> None:
    planned = {beacon_id: _beacon(mall_server, beacon_id) for beacon_id in PLANNED}
    first, second = boards(), boards()
    config = template(beacon_id="b-{minor:04d}")

    result = flash_sh(
        *_beacon_args([first.port, second.port], firmware_dir, config),
        "--minor-start", "100", "--record-server", ENTITY,
        cwd=tmp_path,
        env=_connection(mall_server),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("PASS") for line in lines) == 2, result.stdout
    assert lines[-1] == f"record: 2 of 2 beacons recorded on the server ({ENTITY})"
    for n, beacon_id in enumerate(PLANNED):
        recorded = _beacon(mall_server, beacon_id)
        # What the bench knows replaced the placeholders; the plan's own fields are kept.
        assert recorded == {
            **planned[beacon_id],
            "mac": f"a4:cf:12:00:00:{n + 1:02x}",
            "device": "esp32",
            "major": 7,  # the template's
            "minor": 100 + n,
        }
    audit = _admin(mall_server, "audit", "--json")
    assert audit.returncode == 0, audit.stderr
    assert audit.stdout.count('"beacons.update"') == 2, audit.stdout


def test_an_unknown_entity_is_refused_before_a_board_is_touched(
    tmp_path: Path,
    mall_server: ServerProcess,
    boards: MakeBoard,
    firmware_dir: Path,
    template: Callable[..., Path],
) -> None:
    board = boards()
    result = flash_sh(
        *_beacon_args([board.port], firmware_dir, template(beacon_id="b-{minor:04d}")),
        "--record-server", "mall-nowhere",
        cwd=tmp_path,
        env=_connection(mall_server),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flash.sh: error: --record-server mall-nowhere: ENTITY_NOT_FOUND")
    assert "PASS" not in result.stdout
    assert board.stop()["rx_bytes"] == 0  # not one byte reached the board


def test_a_wrong_token_file_is_refused_before_a_board_is_touched(
    tmp_path: Path,
    mall_server: ServerProcess,
    boards: MakeBoard,
    firmware_dir: Path,
    template: Callable[..., Path],
) -> None:
    board = boards()
    token_file = tmp_path / "admin.token"
    token_file.write_text("nva_not-the-token\n")
    result = flash_sh(
        *_beacon_args([board.port], firmware_dir, template(beacon_id="b-{minor:04d}")),
        "--record-server", ENTITY,
        "--admin-server", mall_server.base_url, "--admin-token-file", token_file,
        cwd=tmp_path,
        env={},
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"flash.sh: error: --record-server {ENTITY}: AUTH_"), (
        result.stderr
    )
    assert board.stop()["rx_bytes"] == 0


def test_a_beacon_not_in_the_plan_passes_but_is_not_recorded(
    tmp_path: Path,
    mall_server: ServerProcess,
    boards: MakeBoard,
    firmware_dir: Path,
    template: Callable[..., Path],
) -> None:
    board = boards()
    result = flash_sh(
        *_beacon_args([board.port], firmware_dir, template(beacon_id="b-{minor:04d}")),
        "--minor-start", "200", "--record-server", ENTITY,
        cwd=tmp_path,
        env=_connection(mall_server),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"PASS  {board.port}  esp32  a4:cf:12:00:00:01  b-0200 "), lines
    assert (
        f"record: b-0200 on the server: beacon b-0200 is not in the plan of {ENTITY}: "
        "add it to the mall first"
    ) in result.stdout
    assert lines[-1] == f"record: 0 of 1 beacons recorded on the server ({ENTITY})"
    assert "error" not in result.stderr  # the boards' progress only
    assert _beacon(mall_server, "b-0100")["mac"] == "02:00:00:00:01:00"  # nothing else changed
