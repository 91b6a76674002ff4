"""``navign-admin`` run in-process against a real server (uvicorn on loopback, SQLite).

The CLI blocks while the server runs in the test's event loop, so every CLI call runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from navign_proto import keys
from navign_server import admin_cli_http
from navign_server.admin_cli import main
from navign_server.admin_cli_input import task_location
from navign_server.storage.base import OrchestratorStatus

from .conftest import (
    RunningServer,
    TestGateway,
    import_sample_mall,
    run_server,
    sample_mall,
    server_settings,
)

ENTITY = "mall-riverside"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def _no_admin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAVIGN_ADMIN_SERVER", "NAVIGN_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> Any:
    async def run(*argv: str, connect: bool = True) -> Run:
        prefix = ["--server", server.base_url, "--token", server.admin_token] if connect else []
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*prefix, *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def assert_one_line_error(run: Run, start: str, code: int = 1) -> None:
    assert run.code == code, run
    assert run.err.startswith(f"navign-admin: {start}"), run.err
    assert run.err.endswith("\n"), run.err
    assert run.err.count("\n") == 1, run.err
    assert "Traceback" not in run.err


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


async def audit_actions(server: RunningServer) -> list[str]:
    return [r.action for r in await server.ctx.store.list_audit(limit=1000)]


# -- mall data --------------------------------------------------------------------------------


async def test_import_with_a_local_validation_error_sends_nothing(
    server: RunningServer, cli: Any, tmp_path: Path
) -> None:
    broken = sample_mall()
    broken["beacons"][0]["area_id"] = "no-such-area"
    path = write_json(tmp_path / "mall.json", broken)

    run = await cli("import", ENTITY, str(path))

    assert_one_line_error(run, f"invalid mall file {path}: ")
    assert "no-such-area" in run.err
    assert await server.ctx.store.list_entities() == []
    assert "mall.import" not in await audit_actions(server)


async def test_import_of_a_file_for_another_entity_is_refused_locally(
    server: RunningServer, cli: Any, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "mall.json", sample_mall())
    run = await cli("import", "mall-other", str(path))
    assert_one_line_error(run, f"{path} describes entity 'mall-riverside', not 'mall-other'")
    assert await server.ctx.store.list_entities() == []


async def test_import_then_entities_table_and_json(
    server: RunningServer, cli: Any, tmp_path: Path
) -> None:
    mall = sample_mall()
    path = write_json(tmp_path / "mall.json", mall)

    run = await cli("import", ENTITY, str(path))
    assert run.code == 0, run
    total = sum(len(mall[c]) for c in ("areas", "beacons", "merchants", "connections"))
    assert run.lines == [run.lines[0]]
    assert run.out.startswith(f"imported {total} documents into {ENTITY}: ")
    assert "mall.import" in await audit_actions(server)

    run = await cli("entities")
    assert run.code == 0, run
    header = next(line for line in run.lines if line.split()[:2] == ["id", "name"])
    assert header.split() == [
        "id", "name", "type", "city", "areas", "beacons", "merchants", "connections", "seq"
    ]  # fmt: skip
    row = next(line for line in run.lines if line.startswith(ENTITY))
    counts = [str(len(mall[c])) for c in ("areas", "beacons", "merchants", "connections")]
    # One change per document: the entity's sequence is the number of documents imported.
    assert row.split() == [ENTITY, "Riverside", "Plaza", "mall", "Shanghai", *counts, str(total)]

    run = await cli("entities", "--json")
    body = run.json()
    assert [e["id"] for e in body["entities"]] == [ENTITY]
    assert body["states"][ENTITY]["counts"]["beacons"] == len(mall["beacons"])

    run = await cli("--json", "entity", "show", ENTITY)
    assert run.json()["entity"]["name"] == "Riverside Plaza"
    run = await cli("entity", "show", ENTITY)
    assert any(line.split() == ["beacons", str(len(mall["beacons"]))] for line in run.lines)


async def test_entity_create_and_a_conflict_as_one_line(
    server: RunningServer, cli: Any, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "entity.json", sample_mall()["entity"])
    run = await cli("entity", "create", str(path))
    assert run.code == 0, run
    assert run.out == f"created entity {ENTITY} (Riverside Plaza)\n"

    run = await cli("entity", "create", str(path))
    assert_one_line_error(run, "CONFLICT: ")


async def test_docs_pages(server: RunningServer, cli: Any) -> None:
    mall = await import_sample_mall(server)
    beacons = sorted(b.id for b in mall.beacons)
    run = await cli("docs", ENTITY, "beacons", "--limit", "1")
    assert run.code == 0, run
    assert any(line.split()[:1] == [beacons[0]] for line in run.lines)
    assert run.lines[-1] == f"more: --after {beacons[0]}"

    run = await cli("docs", ENTITY, "beacons", "--after", beacons[0], "--json")
    assert [d["id"] for d in run.json()["documents"]] == beacons[1:]


async def test_task_create_and_config_push(server: RunningServer, cli: Any, tmp_path: Path) -> None:
    mall = await import_sample_mall(server)
    area = mall.areas[0].id
    run = await cli(
        "task", "create", ENTITY, "--type", "delivery", "--priority", "high",
        "--source", f"{area}:1.5:2", "--terminal", f"{area}:10:20:F2",
        "--meta", "order=42", "--json",
    )  # fmt: skip
    assert run.code == 0, run
    task = run.json()
    assert task["task_id"].startswith("task-")
    events = await server.ctx.store.events_since(ENTITY, task["seq"] - 1, limit=10)
    data = events[0].data
    assert data["priority"] == "high"
    assert data["sources"] == [{"area_id": area, "x": 1.5, "y": 2.0, "z": 0.0}]
    assert data["terminals"][0]["floor"] == "F2"
    assert data["metadata"] == {"order": "42"}

    config = write_json(tmp_path / "config.json", {"scan_interval_ms": 500})
    run = await cli("config", "push", ENTITY, "ble", str(config))
    assert run.code == 0, run
    assert run.out.startswith(f"config ble pushed to {ENTITY} as event ")


async def test_task_location_argument() -> None:
    assert task_location("hall-a:1:2") == {"area_id": "hall-a", "x": 1.0, "y": 2.0}
    assert task_location("hall:a:1:2:L2") == {
        "area_id": "hall:a",
        "x": 1.0,
        "y": 2.0,
        "floor": "L2",
    }


async def test_usage_errors_exit_2(server: RunningServer, cli: Any) -> None:
    run = await cli("task", "create", ENTITY, "--source", "only-an-area", "--terminal", "a:1:2")
    assert run.code == 2, run
    run = await cli("entities", connect=False)
    assert_one_line_error(run, "no admin token", code=2)
    run = await cli("entities", "--server", "ftp://example.com")
    assert_one_line_error(run, "--server must be an http(s) URL", code=2)


# -- gateways ---------------------------------------------------------------------------------


async def test_enroll_prints_the_token_last_and_it_registers(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    run = await cli("enroll", ENTITY, "gw-1", "--ttl", "600")
    assert run.code == 0, run
    assert f'entity_id = "{ENTITY}"' in run.out
    token = run.lines[-1]
    assert token.startswith("nve_")

    gateway = TestGateway(server, ENTITY, "gw-1")
    response = await gateway.register(token)
    assert response.status_code == 200, response.text

    run = await cli("gateways")
    assert run.code == 0, run
    row = next(line for line in run.lines if "gw-1" in line).split()
    assert row == [ENTITY, "gw-1", "active", "0.1.0", "never", "no"]

    run = await cli("gateways", "--entity", ENTITY, "--json")
    assert run.json()["orchestrators"][0]["status"] == "active"


async def test_disable_enable_and_gateway_show(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    run = await cli("enroll", ENTITY, "gw-1", "--json")
    gateway = TestGateway(server, ENTITY, "gw-1")
    assert (await gateway.register(run.json()["token"])).status_code == 200

    run = await cli("disable", ENTITY, "gw-1")
    assert run.out == f"gateway gw-1 of {ENTITY}: disabled\n"
    refused = await gateway.refresh()
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ORCHESTRATOR_DISABLED"

    run = await cli("enable", ENTITY, "gw-1")
    assert run.out == f"gateway gw-1 of {ENTITY}: active\n"
    assert (await gateway.refresh()).status_code == 200

    run = await cli("gateway", "show", ENTITY, "gw-1")
    assert run.code == 0, run
    assert ["status", "active"] in [line.split() for line in run.lines]


async def test_approve_a_pending_gateway(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    gateway = TestGateway(server, ENTITY, "gw-2")
    pending = await gateway.register()
    assert pending.json()["error"]["code"] == "ORCHESTRATOR_PENDING_APPROVAL"

    run = await cli("gateways", "--entity", ENTITY)
    assert "pending" in next(line for line in run.lines if "gw-2" in line).split()

    run = await cli("approve", ENTITY, "gw-2")
    assert run.out == f"gateway gw-2 of {ENTITY}: active\n"
    assert (await gateway.register()).status_code == 200
    orchestrator = await server.ctx.store.get_orchestrator(ENTITY, "gw-2")
    assert orchestrator.status is OrchestratorStatus.ACTIVE

    run = await cli("approve", ENTITY, "gw-nowhere")
    assert_one_line_error(run, "NOT_FOUND: ")


async def test_prekey_refuses_a_private_key_and_registers_a_public_one(
    server: RunningServer, cli: Any, tmp_path: Path
) -> None:
    await import_sample_mall(server)
    gateway = TestGateway(server, ENTITY, "gw-3")
    private = tmp_path / "identity.pem"
    keys.write_private_key(private, gateway.key)
    run = await cli("prekey", ENTITY, "gw-3", str(private))
    assert_one_line_error(run, f"{private} holds a private key")

    public = tmp_path / "identity.pub"
    public.write_text(keys.public_key_to_pem(gateway.key.public_key()))
    run = await cli("prekey", ENTITY, "gw-3", str(public))
    assert run.code == 0, run
    assert keys.fingerprint(gateway.key.public_key()) in run.out
    assert (await gateway.register()).status_code == 200


async def test_command_reaches_the_heartbeat_and_heartbeats_table(
    server: RunningServer, cli: Any
) -> None:
    await import_sample_mall(server)
    run = await cli("enroll", ENTITY, "gw-1", "--json")
    gateway = TestGateway(server, ENTITY, "gw-1")
    assert (await gateway.register(run.json()["token"])).status_code == 200

    run = await cli("command", ENTITY, "gw-1", "resync", "--param", "reason=test", "--json")
    assert run.code == 0, run
    command_id = run.json()["id"]

    beat = {
        "orchestrator_id": "gw-1",
        "entity_id": ENTITY,
        "status": "healthy",
        "version": "0.1.0",
        "uptime_seconds": 120,
        "connected_robots": 2,
        "active_tasks": 1,
        "pending_tasks": 0,
        "metrics": {
            "cpu_percent": 12.5,
            "memory_used_mb": 48.2,
            "disk_used_gb": 1.7,
            "cache_size_mb": 12.0,
        },
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    async with gateway.client() as client:
        response = await client.post("/api/orchestrators/heartbeat", json=beat)
    assert response.status_code == 200, response.text
    commands = response.json()["commands"]
    assert commands == [{"id": command_id, "type": "resync", "params": {"reason": "test"}}]

    run = await cli("heartbeats", ENTITY, "gw-1")
    assert run.code == 0, run
    row = next(line for line in run.lines if "healthy" in line).split()
    assert row[1:] == ["healthy", "0.1.0", "120", "2", "1/0", "12.5", "48.2"]

    run = await cli("gateways")
    assert next(line for line in run.lines if "gw-1" in line).split()[-1] == "yes"


async def test_audit_lists_admin_actions(server: RunningServer, cli: Any) -> None:
    await import_sample_mall(server)
    run = await cli("audit", "--entity", ENTITY, "--json")
    assert run.code == 0, run
    assert "mall.import" in [r["action"] for r in run.json()["records"]]
    run = await cli("audit")
    assert any("mall.import" in line for line in run.lines)


# -- failures ---------------------------------------------------------------------------------


async def test_a_server_error_envelope_is_one_line(server: RunningServer, cli: Any) -> None:
    run = await cli("entity", "show", "mall-nowhere")
    assert_one_line_error(run, "ENTITY_NOT_FOUND: ")
    assert run.out == ""

    run = await cli("entity", "show", "mall-nowhere", "--json")
    assert run.code == 1
    assert run.json()["error"]["code"] == "ENTITY_NOT_FOUND"

    run = await cli("entities", "--token", "not-the-admin-token")
    assert_one_line_error(run, "AUTH_")

    run = await cli("enroll", ENTITY, "gw-1")
    assert_one_line_error(run, "ENTITY_NOT_FOUND: ")


async def test_connection_refused_is_one_line(cli: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = await cli("entities", "--server", f"http://127.0.0.1:{port}")
    assert_one_line_error(run, f"cannot reach http://127.0.0.1:{port}: connection refused")


async def test_a_silent_server_times_out_in_one_line(cli: Any) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        run = await cli("entities", "--server", f"http://127.0.0.1:{port}", "--timeout", "0.5")
    assert_one_line_error(run, f"no answer from http://127.0.0.1:{port} within 0.5 s")


# -- releases ---------------------------------------------------------------------------------

RELEASE_ROUTES = (
    "POST /api/admin/releases, PUT /api/admin/releases/{id}/artifact and "
    "POST /api/admin/entities/{id}/firmware-assignments (api/admin_releases.py)"
)


@pytest.fixture
async def release_server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path]]:
    """A server that trusts one release key, with the sample mall; and that key's PEM file."""
    key = keys.generate_private_key()
    key_path = tmp_path / "release.pem"
    keys.write_private_key(key_path, key)
    settings = server_settings(
        tmp_path, release_public_keys=[keys.public_key_to_pem(key.public_key())]
    )
    async with run_server(settings, tmp_path) as running:
        async with running.admin() as admin:
            probe = await admin.get("/api/admin/releases")
        if probe.status_code == 404:
            pytest.skip(f"{RELEASE_ROUTES} not served yet")
        await import_sample_mall(running)
        yield running, key_path


@pytest.fixture
def release_cli(
    release_server: tuple[RunningServer, Path], capsys: pytest.CaptureFixture[str]
) -> Any:
    server, _ = release_server

    async def run(*argv: str) -> Run:
        capsys.readouterr()
        prefix = ["--server", server.base_url, "--token", server.admin_token]
        code = await asyncio.to_thread(main, [*prefix, *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


async def test_release_publish_app_list_assign_and_rollouts(
    release_server: tuple[RunningServer, Path], release_cli: Any, tmp_path: Path
) -> None:
    server, key_path = release_server
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "main.py").write_bytes(b"print('beacon')\n")
    (app / "lib" / "ble.py").write_bytes(b"ADV = 1\n")

    run = await release_cli(
        "release", "publish", "--key", str(key_path), "--name", "beacon-app",
        "--version", "1.2.0", "--target", "esp32c3", "--secure-version", "1",
        "--app-dir", str(app), "--channel", "beta", "--changelog", "faster scans", "--json",
    )  # fmt: skip
    assert run.code == 0, run
    body = run.json()
    release_id = body["release"]["release_id"]
    assert body["artifact"]["status"] == "available"
    stored = await server.ctx.store.get_release(release_id)
    # The app's artifact is its files in manifest (path) order.
    expected = hashlib.sha256(b"ADV = 1\n" + b"print('beacon')\n").hexdigest()
    assert stored.artifact_sha256 == expected
    assert stored.changelog == ("faster scans",)

    run = await release_cli("releases")
    row = next(line for line in run.lines if line.startswith(release_id)).split()
    assert row[1:8] == ["beacon-app", "1.2.0", "esp32c3", "beacon", "beta", "app", "available"]

    run = await release_cli(
        "assign", ENTITY, release_id, "--canary", "10%", "--batch", "5",
        "--failure-threshold", "5%", "--priority", "high",
    )  # fmt: skip
    assert run.code == 0, run
    assert run.out.startswith(f"release {release_id} assigned to {ENTITY} as fwa-")
    (assignment,) = await server.ctx.store.list_assignments(ENTITY)
    given = {"canary_size": {"percent": 10.0}, "batch_size": 5, "failure_threshold": 0.05}
    assert {k: assignment.policy.get(k) for k in given} == given
    assert assignment.priority == "high"

    run = await release_cli("rollouts", ENTITY)
    assert assignment.assignment_id in run.out

    run = await release_cli("release", "withdraw", release_id)
    assert run.out == f"release {release_id}: withdrawn\n"


async def test_release_publish_image_refused_for_an_untrusted_key(
    release_server: tuple[RunningServer, Path], release_cli: Any, tmp_path: Path
) -> None:
    server, _ = release_server
    other = tmp_path / "other.pem"
    keys.write_private_key(other, keys.generate_private_key())
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    run = await release_cli(
        "release", "publish", "--key", str(other), "--name", "beacon-fw", "--version", "2.0.0",
        "--target", "esp32", "--secure-version", "3", "--image", str(image), "--channel", "stable",
    )  # fmt: skip
    assert_one_line_error(run, "FIRMWARE_SIGNATURE_INVALID: ")
    assert await server.ctx.store.list_releases() == []


async def test_assign_checks_the_policy_locally(
    release_server: tuple[RunningServer, Path], release_cli: Any, tmp_path: Path
) -> None:
    server, _ = release_server
    policy = write_json(tmp_path / "policy.json", {"canary_size": {"count": 3}, "batchsize": 5})
    run = await release_cli("assign", ENTITY, "rel-anything", "--policy", str(policy))
    assert_one_line_error(run, "invalid rollout policy: batchsize: ")
    assert "firmware.assign" not in await audit_actions(server)


# -- transport details, against a scripted HTTP server -------------------------------------------


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers, body) of ``answers``."""

    answers: ClassVar[list[tuple[int, dict[str, str], bytes]]] = []
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, headers, body = self.answers.pop(0)
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    _Scripted.answers, _Scripted.seen = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _envelope(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "request_id": "r1"}}).encode()


def test_reads_are_retried_after_429_and_writes_are_not(
    scripted: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_cli_http, "sleep", lambda seconds: None)
    limited = (429, {"Retry-After": "1"}, _envelope("RATE_LIMIT_EXCEEDED", "slow down"))
    _Scripted.answers = [limited, (200, {}, b'{"entities": []}')]
    assert main(["--server", scripted, "--token", "t0ken-123", "entities"]) == 0
    assert [m for m, _ in _Scripted.seen] == ["GET", "GET"]

    _Scripted.answers, _Scripted.seen = [limited], []
    code = main(["--server", scripted, "--token", "t0ken-123", "approve", "m", "gw-1"])
    assert code == 1
    assert [m for m, _ in _Scripted.seen] == ["POST"]
    assert capsys.readouterr().err == "navign-admin: RATE_LIMIT_EXCEEDED: slow down\n"


def test_a_redirect_is_reported_not_followed(
    scripted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _Scripted.answers = [(307, {"Location": "http://elsewhere.example/api/admin/entities"}, b"")]
    assert main(["--server", scripted, "--token", "t0ken-123", "entities"]) == 1
    assert len(_Scripted.seen) == 1
    err = capsys.readouterr().err
    assert err == (
        "navign-admin: HTTP 307: redirected to http://elsewhere.example/api/admin/entities; "
        "use that --server\n"
    )


def test_an_error_without_an_envelope_is_one_line(
    scripted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _Scripted.answers = [(502, {"Content-Type": "text/html"}, b"<html>\nBad gateway\n</html>")]
    assert main(["--server", scripted, "--token", "t0ken-123", "entities"]) == 1
    assert capsys.readouterr().err == "navign-admin: HTTP 502: Bad Gateway\n"
