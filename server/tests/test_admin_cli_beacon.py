"""``navign-admin beacon provisioned``, run in-process against a real server (uvicorn on loopback,
SQLite) holding the sample mall's plan. The CLI blocks, so each call runs in a thread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from navign_server.admin_cli import main

from .conftest import RunningServer, import_sample_mall
from .test_admin_cli import Run, assert_one_line_error

ENTITY = "mall-riverside"
BEACON = "b-1f-west-01"


@pytest.fixture(autouse=True)
def _no_admin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAVIGN_ADMIN_SERVER", "NAVIGN_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> Any:
    async def run(*argv: str, token: str | None = None) -> Run:
        capsys.readouterr()
        prefix = ["--server", server.base_url, "--token", token or server.admin_token]
        code = await asyncio.to_thread(main, [*prefix, *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


async def beacon(server: RunningServer, beacon_id: str = BEACON) -> dict[str, Any]:
    return await server.ctx.store.get_document(ENTITY, "beacons", beacon_id)


async def head(server: RunningServer) -> int:
    async with server.admin() as admin:
        response = await admin.get(f"/api/admin/entities/{ENTITY}")
    assert response.status_code == 200, response.text
    seq: int = response.json()["seq"]
    return seq


async def test_records_the_mac_numbers_and_chip_and_keeps_the_plan(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    before = await beacon(server)

    run = await cli(
        "beacon", "provisioned", ENTITY, BEACON,
        "--mac", "A4-CF-12-00-00-01", "--major", "7", "--minor", "100", "--device", "esp32s3",
    )  # fmt: skip

    assert run.code == 0, run
    assert run.lines == [
        f"beacon {BEACON} of {ENTITY} recorded: mac a4:cf:12:00:00:01, major 7 minor 100, "
        f"esp32s3 (seq {await head(server)})"
    ]
    after = await beacon(server)
    assert after == {
        **before,
        "mac": "a4:cf:12:00:00:01",
        "major": 7,
        "minor": 100,
        "device": "esp32s3",
    }
    actions = [r.action for r in await server.ctx.store.list_audit(limit=100)]
    assert "beacons.update" in actions


async def test_only_the_mac_and_again_is_already_recorded(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    before = await beacon(server)

    run = await cli("beacon", "provisioned", ENTITY, BEACON, "--mac", "a4cf12000002", "--json")
    assert run.code == 0, run
    answer = run.json()
    assert answer["changes"] == 1
    assert answer["document"] == {**before, "mac": "a4:cf:12:00:00:02"}
    assert await beacon(server) == answer["document"]
    seq = await head(server)

    run = await cli("beacon", "provisioned", ENTITY, BEACON, "--mac", "a4:cf:12:00:00:02")
    assert run.code == 0, run
    assert run.out.startswith(f"beacon {BEACON} of {ENTITY} already recorded: mac a4:cf:12")
    assert await head(server) == seq


async def test_a_beacon_not_in_the_plan_is_refused(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    seq = await head(server)
    run = await cli("beacon", "provisioned", ENTITY, "b-0100", "--mac", "a4:cf:12:00:00:01")
    assert_one_line_error(run, f"beacon b-0100 is not in the plan of {ENTITY}: add it to the mall")
    assert run.out == ""
    assert await head(server) == seq


async def test_an_unknown_entity_is_the_servers_refusal(server: RunningServer, cli: Any) -> None:
    run = await cli("beacon", "provisioned", "mall-nowhere", BEACON, "--mac", "a4:cf:12:00:00:01")
    assert_one_line_error(run, "ENTITY_NOT_FOUND: ")


async def test_a_mac_or_numbers_of_another_beacon_are_refused(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    seq = await head(server)
    other = await beacon(server, "b-1f-west-02")

    run = await cli("beacon", "provisioned", ENTITY, BEACON, "--mac", other["mac"])
    assert_one_line_error(run, f"MAC {other['mac']} is already recorded for beacon b-1f-west-02")

    run = await cli(
        "beacon", "provisioned", ENTITY, BEACON, "--mac", "a4:cf:12:00:00:01",
        "--major", str(other["major"]), "--minor", str(other["minor"]),
    )  # fmt: skip
    assert_one_line_error(
        run, f"major/minor {other['major']}/{other['minor']} belongs to beacon b-1f-west-02"
    )
    assert await head(server) == seq

    # Its own MAC and numbers again are no conflict.
    mine = await beacon(server)
    run = await cli("beacon", "provisioned", ENTITY, BEACON, "--mac", mine["mac"])
    assert run.code == 0, run
    assert "already recorded" in run.out


async def test_a_refusal_prints_the_envelope_with_json(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    run = await cli(
        "beacon", "provisioned", ENTITY, BEACON, "--mac", "a4:cf:12:00:00:01", "--json",
        token="nva_not-a-valid-token",
    )  # fmt: skip
    assert run.code == 1, run
    assert run.err.startswith("navign-admin: AUTH_"), run.err
    assert run.json()["error"]["code"] == run.err.split(":")[1].strip()


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--mac", "a4:cf:12:00:00"], "MAC address must be"),
        (["--mac", "ff:ff:ff:ff:ff:ff"], "broadcast"),
        (["--mac", "a4:cf:12:00:00:01", "--minor", "65536"], "not between 0 and 65535"),
        (["--mac", "a4:cf:12:00:00:01", "--device", "esp8266"], "invalid choice"),
        ([], "--mac"),
    ],
)
async def test_usage_errors_exit_2(
    server: RunningServer, cli: Any, extra: list[str], complaint: str
) -> None:
    run = await cli("beacon", "provisioned", ENTITY, BEACON, *extra)
    assert run.code == 2, run
    assert complaint in run.err
