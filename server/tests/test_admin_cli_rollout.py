"""``navign-admin rollouts`` (gateway-reported progress) and ``navign-admin rollout
pause|resume|abort|approve``, run in-process against a real server (uvicorn on loopback, SQLite)
with gateways that register and heartbeat as the protocol says. The CLI blocks, so each call runs
in a thread."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from navign_server.admin_cli import main

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall
from .test_admin_cli import Run, assert_one_line_error

ENTITY = "mall-riverside"
REPORTS = "/api/orchestrators/reports/rollouts"


@pytest.fixture(autouse=True)
def _no_admin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAVIGN_ADMIN_SERVER", "NAVIGN_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> Any:
    async def run(*argv: str) -> Run:
        capsys.readouterr()
        prefix = ["--server", server.base_url, "--token", server.admin_token]
        code = await asyncio.to_thread(main, [*prefix, *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def summary(rollout_id: str, state: str, **changes: Any) -> dict[str, Any]:
    counts = {
        "total": 10,
        "pending": 4,
        "offered": 0,
        "transferring": 1,
        "verifying": 0,
        "installing": 0,
        "rebooting": 0,
        "confirmed": 3,
        "failed": 1,
        "rolled_back": 1,
    }
    body: dict[str, Any] = {
        "entity_id": ENTITY,
        "rollout_id": rollout_id,
        "firmware_id": "fw-esp32c3-1.2.0-5e1ecb55ccfc",
        "state": state,
        "state_reason": "",
        "current_wave": 2,
        "wave_count": 3,
        "counts": counts,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    body.update(changes)
    return body


async def report(gateway: TestGateway, body: dict[str, Any]) -> None:
    async with gateway.client() as client:
        response = await client.post(REPORTS, json=body)
    assert response.status_code == 200, response.text


async def heartbeat_commands(gateway: TestGateway) -> list[dict[str, Any]]:
    """The commands a heartbeat delivers to ``gateway`` now."""
    beat = {
        "orchestrator_id": gateway.orchestrator_id,
        "entity_id": gateway.entity_id,
        "status": "healthy",
        "version": "0.1.0",
        "uptime_seconds": 60,
        "connected_robots": 0,
        "active_tasks": 0,
        "pending_tasks": 0,
        "metrics": {
            "cpu_percent": 1.0,
            "memory_used_mb": 40.0,
            "disk_used_gb": 1.0,
            "cache_size_mb": 0.0,
        },
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    async with gateway.client() as client:
        response = await client.post("/api/orchestrators/heartbeat", json=beat)
    assert response.status_code == 200, response.text
    commands: list[dict[str, Any]] = response.json()["commands"]
    return commands


async def command_audit(server: RunningServer) -> list[dict[str, Any]]:
    records = await server.ctx.store.list_audit(entity_id=ENTITY, limit=1000)
    return [r.details for r in records if r.action == "command.enqueue"]


# -- rollouts: what the gateways report ---------------------------------------------------------


async def test_rollouts_lists_assignments_and_reported_rollouts(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    gateway = await enrolled_gateway(server)
    await report(
        gateway,
        summary("fwa-0123456789abcdef", "halted", state_reason="wave 2: 2 of 5 beacons\nfailed"),
    )
    done = {
        "total": 4,
        "pending": 0,
        "offered": 0,
        "transferring": 0,
        "verifying": 0,
        "installing": 0,
        "rebooting": 0,
        "confirmed": 4,
        "failed": 0,
        "rolled_back": 0,
    }
    await report(gateway, summary("ro-7", "completed", current_wave=1, wave_count=1, counts=done))

    run = await cli("rollouts", ENTITY)
    assert run.code == 0, run
    assert f"(firmware assignments of {ENTITY}: none)" in run.lines
    header = next(line for line in run.lines if line.split()[:2] == ["rollout", "release"])
    assert header.split() == [
        "rollout", "release", "state", "wave", "confirmed/failed/rolled_back", "reason", "updated",
        "gateway",
    ]  # fmt: skip
    halted = next(line for line in run.lines if line.startswith("fwa-0123456789abcdef"))
    assert halted.split()[1:5] == ["fw-esp32c3-1.2.0-5e1ecb55ccfc", "halted", "2/3", "3/1/1"]
    assert "3/1/1 of 10" in halted
    assert "wave 2: 2 of 5 beacons failed" in halted  # the reason on one line
    assert halted.split()[-2:] in (["0s", "gw-1"], ["1s", "gw-1"])
    completed = next(line for line in run.lines if line.startswith("ro-7"))
    assert completed.split()[2:6] == ["completed", "1/1", "4/0/0", "of"]

    run = await cli("rollouts", ENTITY, "--state", "completed", "--json")
    assert run.code == 0, run
    body = run.json()
    assert body["assignments"] == []
    (only,) = body["rollouts"]
    assert (only["rollout_id"], only["reported_by"], only["counts"]) == ("ro-7", "gw-1", done)

    run = await cli("rollouts", "mall-nowhere")
    assert_one_line_error(run, "ENTITY_NOT_FOUND: ")
    run = await cli("rollouts", ENTITY, "--state", "exploded")
    assert run.code == 2, run


async def test_rollouts_with_release_still_shows_beacon_statuses(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    gateway = await enrolled_gateway(server)
    async with gateway.client() as client:
        response = await client.post(
            "/api/orchestrators/reports/firmware",
            json={
                "entity_id": ENTITY,
                "firmware_id": "fw-1",
                "beacon_id": "b-1",
                "status": "rolled_back",
                "error_code": "trial_failed",
                "message": "fwa-1: trial_failed",
                "at": datetime.now(UTC).isoformat(),
            },
        )
        assert response.status_code == 200, response.text
    run = await cli("rollouts", ENTITY, "--release", "fw-1")
    assert run.code == 0, run
    assert run.lines[0] == f"release fw-1 on {ENTITY}: rolled_back 1"
    row = next(line for line in run.lines if line.startswith("b-1")).split()
    assert row[1:3] == ["rolled_back", "trial_failed"]


# -- rollout pause | resume | abort | approve ----------------------------------------------------


async def test_pause_reaches_every_active_gateway_by_heartbeat(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    first = await enrolled_gateway(server, ENTITY, "gw-1")
    second = await enrolled_gateway(server, ENTITY, "gw-2")
    pending = TestGateway(server, ENTITY, "gw-3")
    refused = await pending.register()  # awaits approval: not sent to
    assert refused.json()["error"]["code"] == "ORCHESTRATOR_PENDING_APPROVAL"
    await report(first, summary("fwa-0123456789abcdef", "running"))

    run = await cli("rollout", "pause", ENTITY, "fwa-0123456789abcdef", "--reason", "mall event")
    assert run.code == 0, run
    assert run.lines[0] == (
        f"rollout_pause of rollout fwa-0123456789abcdef queued for 2 gateways of {ENTITY}, "
        "delivered with their next heartbeat:"
    )
    assert [line.split()[0] for line in run.lines[1:3]] == ["gw-1", "gw-2"]
    assert run.lines[3] == "not sent to gw-3: pending"
    assert len(run.lines) == 4  # the rollout is known: no note

    expected = {
        "type": "rollout_pause",
        "params": {"rollout_id": "fwa-0123456789abcdef", "reason": "mall event"},
    }
    for gateway, line in ((first, run.lines[1]), (second, run.lines[2])):
        (command,) = await heartbeat_commands(gateway)
        assert command == {"id": line.split()[1], **expected}
    audited = await command_audit(server)
    assert sorted(d["orchestrator_id"] for d in audited) == ["gw-1", "gw-2"]
    assert all(d["params"] == expected["params"] for d in audited)


async def test_resume_abort_and_approve_as_json(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    gateway = await enrolled_gateway(server)

    run = await cli("rollout", "approve", ENTITY, "ro-12", "--wave", "2", "--json")
    assert run.code == 0, run
    body = run.json()
    assert body["type"] == "rollout_approve"
    assert body["params"] == {"rollout_id": "ro-12", "reason": "", "wave": 2}
    assert body["reported"] is False
    assert body["skipped"] == []
    (queued,) = body["queued"]
    assert queued["orchestrator_id"] == "gw-1"

    run = await cli("rollout", "resume", ENTITY, "ro-12")
    assert run.code == 0, run
    assert run.lines[-1] == "note: no gateway has reported rollout ro-12 yet"
    run = await cli("rollout", "abort", ENTITY, "ro-12", "--reason", "bad build", "--ttl", "600")
    assert run.code == 0, run

    commands = await heartbeat_commands(gateway)
    assert [(c["type"], c["params"]) for c in commands] == [
        ("rollout_approve", {"rollout_id": "ro-12", "reason": "", "wave": 2}),
        ("rollout_resume", {"rollout_id": "ro-12", "reason": ""}),
        ("rollout_abort", {"rollout_id": "ro-12", "reason": "bad build"}),
    ]
    pending = await server.ctx.store.pending_commands(ENTITY, "gw-1", datetime.now(UTC))
    (abort,) = [c for c in pending if c.type == "rollout_abort"]
    assert 590 <= (abort.expires_at - abort.created_at).total_seconds() <= 600


async def test_refusals_are_one_line_and_queue_nothing(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)

    run = await cli("rollout", "pause", ENTITY, "fwa-1")
    assert_one_line_error(run, f"entity {ENTITY} has no active gateway: rollout_pause was not")

    run = await cli("rollout", "pause", "mall-nowhere", "fwa-1")
    assert_one_line_error(run, "ENTITY_NOT_FOUND: ")

    await enrolled_gateway(server)
    for argv in (
        ("rollout", "approve", ENTITY, "fwa-1"),  # --wave is required
        ("rollout", "approve", ENTITY, "fwa-1", "--wave", "0"),
        ("rollout", "pause", ENTITY, "../fwa-1"),
        ("rollout", "pause", ENTITY, "fwa-1", "--reason", "x" * 1001),
        ("rollout", "abort", ENTITY, "fwa-1", "--ttl", "10"),
        ("rollout", "restart", ENTITY, "fwa-1"),
    ):
        run = await cli(*argv)
        assert run.code == 2, (argv, run)
        assert "Traceback" not in run.err
    assert await command_audit(server) == []
    assert await server.ctx.store.pending_commands(ENTITY, "gw-1", datetime.now(UTC)) == []


async def test_the_command_endpoint_checks_rollout_params(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    await enrolled_gateway(server)
    path = f"/api/admin/orchestrators/{ENTITY}/gw-1/commands"
    async with server.admin() as admin:
        for params, where in (
            ({}, "params.rollout_id"),
            ({"rollout_id": "a/b"}, "params.rollout_id"),
            ({"rollout_id": "ro-1", "wave": "2"}, "params.wave"),
            ({"rollout_id": "ro-1", "wave": 0}, "params.wave"),
            ({"rollout_id": "ro-1", "wave": 2, "colour": "red"}, "params.colour"),
        ):
            response = await admin.post(path, json={"type": "rollout_approve", "params": params})
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == "VALIDATION_ERROR"
            assert error["message"].startswith(f"{where}: "), error
        pause = {"type": "rollout_pause", "params": {"rollout_id": "ro-1", "reason": 5}}
        assert (await admin.post(path, json=pause)).status_code == 422
        # Other command types keep taking any params.
        other = {"type": "resync", "params": {"rollout_id": 5}}
        assert (await admin.post(path, json=other)).status_code == 201
    run = await cli("command", ENTITY, "gw-1", "rollout_abort", "--param", "reason=x")
    assert_one_line_error(run, "VALIDATION_ERROR: params.rollout_id: ")
    commands = await server.ctx.store.pending_commands(ENTITY, "gw-1", datetime.now(UTC))
    assert [c.type for c in commands] == ["resync"]
