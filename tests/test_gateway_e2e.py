"""The gateway and the server end to end, each as its own process on loopback.

enrollment → registration → full sync → admin edits → delta sync through events → equal
checksums; the server killed and restarted mid-stream; the gateway killed with SIGKILL at many
moments of a sync; an offline start from the local copy; a disabled gateway; tasks from the
server reaching a robot tower over gRPC; systemd's notify protocol; the one-shot commands.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.checksums import MallChecksums
from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2_grpc as pb_grpc
from navign_proto.mall import COLLECTIONS, Chip
from navign_proto.manifest import ImageEntry, ReleaseManifest, sign_manifest
from navign_proto.testing import OWN_SUBCHANNELS, Issued, issue, tls_credentials
from navign_server.testing import ServerProcess

from .conftest import ENTITY, EXAMPLE_MALL, GatewayProcess

SYNC_TIMEOUT = 60.0
Gateways = Callable[..., GatewayProcess]


def admin(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=60.0,
    )


def import_mall(server: ServerProcess, mall: dict[str, Any] | None = None) -> None:
    with admin(server) as client:
        body = mall if mall is not None else json.loads(EXAMPLE_MALL.read_text())
        response = client.post(f"/api/admin/entities/{ENTITY}/import", json=body)
        assert response.status_code == 200, response.text


def enrollment_token(server: ServerProcess, orchestrator_id: str = "gw-1") -> str:
    with admin(server) as client:
        response = client.post(
            "/api/admin/enrollment-tokens",
            json={"entity_id": ENTITY, "orchestrator_id": orchestrator_id, "ttl_seconds": 600},
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token


def publish_image(
    server: ServerProcess, key: ec.EllipticCurvePrivateKey, image: bytes, version: str
) -> tuple[str, str]:
    """An esp32 image release signed with ``key``, uploaded and assigned to the mall: its id
    and its manifest_sha256 (the SHA-256 of the signed payload, §6.3), computed here."""
    manifest = ReleaseManifest(
        name="navign-beacon-fw",
        version=version,
        secure_version=1,
        target=Chip.ESP32,
        kind="image",
        image=ImageEntry(size=len(image), sha256=hashlib.sha256(image).hexdigest()),
        created_at="2026-11-27T10:00:00Z",
    )
    with admin(server) as client:
        created = client.post(
            "/api/admin/releases",
            json={"envelope": sign_manifest(manifest, [key]), "channel": "stable"},
        )
        assert created.status_code == 201, created.text
        release_id: str = created.json()["release_id"]
        uploaded = client.put(
            f"/api/admin/releases/{release_id}/artifact",
            content=image,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert uploaded.status_code == 200, uploaded.text
        assigned = client.post(
            f"/api/admin/entities/{ENTITY}/firmware-assignments", json={"release_id": release_id}
        )
        assert assigned.status_code == 201, assigned.text
    return release_id, hashlib.sha256(manifest.to_bytes()).hexdigest()


def server_checksum(server: ServerProcess) -> str:
    """The server's global checksum, computed here from every document the admin API lists."""
    data: dict[str, list[dict[str, Any]]] = {}
    with admin(server) as client:
        for collection in COLLECTIONS:
            documents: list[dict[str, Any]] = []
            after: str | None = None
            for _ in range(1000):
                params = {"limit": "1000", **({"after": after} if after else {})}
                page = client.get(f"/api/admin/entities/{ENTITY}/{collection}", params=params)
                assert page.status_code == 200, page.text
                documents += page.json()["documents"]
                after = page.json()["next_after"]
                if after is None:
                    break
            data[collection] = documents
    return MallChecksums.of(data).global_checksum


def rename_beacon(server: ServerProcess, index: int, name: str) -> None:
    with admin(server) as client:
        listing = client.get(f"/api/admin/entities/{ENTITY}/beacons").json()["documents"]
        beacon = {**listing[index % len(listing)], "name": name}
        response = client.put(f"/api/admin/entities/{ENTITY}/beacons/{beacon['id']}", json=beacon)
        assert response.status_code == 200, response.text


def in_step(server: ServerProcess) -> Callable[[dict[str, Any] | None], bool]:
    expected = server_checksum(server)
    return lambda status: status is not None and status.get("checksum") == expected


def connected(status: dict[str, Any] | None) -> bool:
    return status is not None and status.get("uplink") == "CONNECTED"


def connected_gateway(server: ServerProcess, gateways: Gateways) -> GatewayProcess:
    """The sample mall on ``server``, and a gateway enrolled to it, connected and in step."""
    import_mall(server)
    gateway = gateways(server.base_url, enrollment_token=enrollment_token(server))
    gateway.start()
    gateway.wait_until(connected, SYNC_TIMEOUT, "connect")
    return gateway


def local(gateway: GatewayProcess, path: str) -> httpx.Response:
    with httpx.Client(base_url=gateway.base_url, timeout=10.0) as client:
        return client.get(path)


def test_enrollment_full_sync_and_live_edits(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    gateway = connected_gateway(server_process, gateways)
    gateway.wait_until(in_step(server_process), SYNC_TIMEOUT, "match the server's checksum")
    assert "enrollment_token" not in gateway.config_path.read_text()
    # An admin edit reaches the gateway through a data_update event and a delta sync.
    rename_beacon(server_process, 0, "Renamed by the e2e test")
    gateway.wait_until(in_step(server_process), SYNC_TIMEOUT, "apply the edit")
    listing = local(gateway, "/local/v1/beacons").json()["documents"]
    assert "Renamed by the e2e test" in {b["name"] for b in listing}
    metrics = local(gateway, "/metrics").text
    for name in (  # the seed's names, and more
        "orchestrator_events_received_total",
        "orchestrator_sync_duration_seconds",
        "orchestrator_firmware_downloads_total",
        "orchestrator_uplink_connected 1.0",
    ):
        assert name in metrics, name
    assert 'orchestrator_events_received_total{type="data_update"}' in metrics
    assert gateway.stop() == 0


def test_server_killed_mid_stream_loses_nothing(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    import_mall(server_process)
    gateway = gateways(server_process.base_url, enrollment_token=enrollment_token(server_process))
    gateway.start()
    gateway.wait_until(in_step(server_process), SYNC_TIMEOUT, "sync")
    gateway.wait_until(connected, SYNC_TIMEOUT, "connect")
    for round_ in range(3):
        rename_beacon(server_process, round_, f"before crash {round_}")
        server_process.kill()  # the events of that edit may or may not have gone out
        gateway.wait_until(lambda s: s is not None and s["uplink"] != "CONNECTED", 60, "notice")
        assert local(gateway, "/local/v1/areas").status_code == 200  # still serving the mall
        server_process.start()
        rename_beacon(server_process, round_ + 5, f"after restart {round_}")
        gateway.wait_until(in_step(server_process), 90, "catch up after the restart")


def big_mall(beacons: int) -> dict[str, Any]:
    mall: dict[str, Any] = json.loads(EXAMPLE_MALL.read_text())
    template = mall["beacons"][0]
    for i in range(beacons):
        mall["beacons"].append(
            {
                **template,
                "id": f"beacon-bulk-{i:05d}",
                "name": f"Bulk beacon {i}",
                "minor": 1000 + i,
                "mac": f"24:6f:28:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            }
        )
    return mall


def test_sigkill_at_random_moments_of_sync_never_corrupts_the_copy(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    import_mall(server_process, big_mall(5000))
    gateway = gateways(server_process.base_url, enrollment_token=enrollment_token(server_process))
    rng = random.Random(20261127)
    kills = 50
    for moment in range(kills):
        if moment % 5 == 0:
            # New changes keep the next restarts busy with delta pages, not only full syncs.
            for i in range(20):
                rename_beacon(server_process, rng.randrange(5000), f"kill {moment} change {i}")
        gateway.start(wait=False)
        time.sleep(rng.uniform(0.2, 2.5))
        gateway.kill()
    gateway.start()
    gateway.wait_until(in_step(server_process), 120, "match the server after 50 kills")
    status = gateway.status()
    assert status is not None
    assert status["local_copy"] == "ready"


def test_the_gateway_starts_and_serves_while_the_server_is_down(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    import_mall(server_process)
    gateway = gateways(server_process.base_url, enrollment_token=enrollment_token(server_process))
    gateway.start()
    gateway.wait_until(in_step(server_process), SYNC_TIMEOUT, "sync")
    gateway.stop()
    server_process.stop()
    gateway.start()
    status = gateway.wait_until(lambda s: s is not None, SYNC_TIMEOUT, "start offline")
    assert status is not None
    assert status["uplink"] != "CONNECTED"
    assert status["local_copy"] == "ready"
    areas = local(gateway, "/local/v1/areas")
    assert areas.status_code == 200
    assert len(areas.json()["documents"]) == 6
    assert local(gateway, "/local/v1/entity").json()["document"]["id"] == ENTITY
    # The CLI says the same, from the running gateway.
    done = subprocess.run(
        [*gateway.command("status"), "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["local_copy"] == "ready"


def test_a_disabled_gateway_stops_its_uplink_and_keeps_serving(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    gateway = connected_gateway(server_process, gateways)
    with admin(server_process) as client:
        response = client.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
        assert response.status_code == 200, response.text
    status = gateway.wait_until(
        lambda s: s is not None and s["uplink"] == "REFUSED", SYNC_TIMEOUT, "stop its uplink"
    )
    assert status is not None
    assert "ORCHESTRATOR_DISABLED" in status["refused"]
    assert local(gateway, "/local/v1/merchants").status_code == 200


def test_tasks_from_the_server_reach_a_robot_tower_over_grpc(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    gateway = connected_gateway(server_process, gateways)
    with grpc.insecure_channel(
        f"127.0.0.1:{gateway.grpc_port}", options=[OWN_SUBCHANNELS]
    ) as channel:
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        robot = task_pb2.RobotInfo(
            id="robot-7",
            entity_id=ENTITY,
            state=task_pb2.ROBOT_STATE_IDLE,
            battery_level=90.0,
            current_location=task_pb2.Location(x=1.0, y=2.0, z=0.0, floor="1"),
            last_seen=int(time.time()),
        )
        answer = stub.ReportRobotStatus(task_pb2.RobotReportRequest(robot=robot), timeout=10)
        assert answer.success
        assignments = stub.GetTaskAssignment(
            task_pb2.RobotDistributionRequest(entity_id=ENTITY), timeout=60
        )
        with admin(server_process) as client:
            response = client.post(
                f"/api/admin/entities/{ENTITY}/tasks",
                json={
                    "task_id": "task-e2e-1",
                    "type": "delivery",
                    "sources": [{"area_id": "area-atrium", "x": 3.0, "y": 4.0}],
                    "terminals": [{"area_id": "area-food-court", "x": 9.0, "y": 9.0}],
                },
            )
            assert response.status_code == 201, response.text
        first = next(iter(assignments))
        assert first.task.id == "task-e2e-1"
        assert first.robot_id == "robot-7"
        assignments.cancel()


def test_the_grpc_port_over_tls_with_client_certificates(
    server_process: ServerProcess, gateways: Gateways, tmp_path: Path
) -> None:
    """The gateway process serves gRPC over TLS: a tower presenting a certificate from the
    configured CA reaches OrchestratorService, one without is refused at the handshake; an
    operator's token works over it; status and metrics show the certificate's expiry."""
    port_pair, towers = issue(tmp_path, "gateway"), issue(tmp_path, "towers", ca=True)
    tower = issue(tmp_path, "tower", issuer=towers)
    token = "operator-token-for-the-tls-test"
    import_mall(server_process)
    gateway = gateways(
        server_process.base_url,
        enrollment_token=enrollment_token(server_process),
        grpc=(
            f'operator_token_sha256 = ["{hashlib.sha256(token.encode()).hexdigest()}"]\n'
            f'tls_cert = "{port_pair.cert}"\ntls_key = "{port_pair.key}"\n'
            f'tls_client_ca = "{towers.cert}"'
        ),
    )
    gateway.start()
    status = gateway.wait_until(connected, SYNC_TIMEOUT, "connect")
    assert status is not None
    assert status["grpc_tls"]["client_certificates"] is True
    expiry = port_pair.certificate.not_valid_after_utc
    assert status["grpc_tls"]["not_after"] == expiry.isoformat()
    shown = subprocess.run(gateway.command("status"), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert '"client_certificates": true' in shown.stdout

    def tls_channel(client: Issued | None) -> grpc.Channel:
        credentials = tls_credentials(port_pair, client)
        return grpc.secure_channel(
            f"127.0.0.1:{gateway.grpc_port}", credentials, options=[OWN_SUBCHANNELS]
        )

    robot = task_pb2.RobotInfo(id="robot-tls", entity_id=ENTITY, last_seen=int(time.time()))
    with tls_channel(tower) as channel:
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        assert stub.ReportRobotStatus(task_pb2.RobotReportRequest(robot=robot), timeout=10).success
        ops = pb_grpc.GatewayServiceStub(channel)
        reply = ops.GetStatus(
            pb.GetStatusRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
        assert reply.status.gateway_id == "gw-1"
    with tls_channel(None) as channel:
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportRobotStatus(task_pb2.RobotReportRequest(robot=robot), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    lines = local(gateway, "/metrics").text.splitlines()
    gauge = [line for line in lines if line.startswith("orchestrator_grpc_tls_not_after_seconds ")]
    assert len(gauge) == 1, lines
    assert abs(float(gauge[0].split()[1]) - expiry.timestamp()) < 1
    assert gateway.stop() == 0  # the TLS checker stops with the rest


def test_systemd_notify_ready_watchdog_and_stopping(
    server_process: ServerProcess, gateways: Gateways, tmp_path: Path
) -> None:
    import_mall(server_process)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        gateway = gateways(
            server_process.base_url,
            enrollment_token=enrollment_token(server_process),
            environment={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"},
        )
        gateway.start(wait=False)
        messages: list[str] = []
        for _ in range(50):
            messages.append(sock.recv(4096).decode())
            if any("WATCHDOG=1" in m for m in messages) and any("READY=1" in m for m in messages):
                break
        assert any("READY=1" in m for m in messages)
        assert any("WATCHDOG=1" in m for m in messages)
        started = time.monotonic()
        assert gateway.stop() == 0
        assert time.monotonic() - started < 10  # systemd's TimeoutStopSec; the gateway aims at 5
        rest: list[str] = []
        sock.settimeout(1)
        for _ in range(100):
            try:
                rest.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        assert any("STOPPING=1" in m for m in rest)


def test_sync_now_and_a_refused_config(server_process: ServerProcess, gateways: Gateways) -> None:
    import_mall(server_process)
    gateway = gateways(server_process.base_url, enrollment_token=enrollment_token(server_process))
    gateway.start()
    gateway.wait_until(in_step(server_process), SYNC_TIMEOUT, "sync")
    gateway.stop()
    rename_beacon(server_process, 2, "changed while the gateway was stopped")
    done = subprocess.run(gateway.command("sync-now"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "delta sync: 1 changes" in done.stdout
    broken = gateway.config_path.read_text().replace('entity_id = "', 'entity_id = "bad id ')
    gateway.config_path.write_text(broken)
    refused = subprocess.run(gateway.command("run"), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "entity_id" in refused.stderr


def test_tokens_expire_and_are_refreshed_without_losing_events(
    tmp_path: Path, gateways: Gateways
) -> None:
    # One-minute tokens: the server ends the stream at expiry, the gateway refreshes at ~80 %.
    server = ServerProcess(
        tmp_path / "short-tokens", environment={"NAVIGN_SERVER_TOKEN_TTL_SECONDS": "60"}
    )
    server.start()
    try:
        import_mall(server)
        gateway = gateways(server.base_url, enrollment_token=enrollment_token(server))
        gateway.start()
        gateway.wait_until(connected, SYNC_TIMEOUT, "connect")
        time.sleep(75)  # past the first token's expiry
        rename_beacon(server, 1, "after the first token expired")
        gateway.wait_until(in_step(server), SYNC_TIMEOUT, "apply an edit with a refreshed token")
        assert "token refreshed" in gateway.log(400)
    finally:
        server.stop()


def test_an_assigned_release_is_cached_verified_and_served(
    tmp_path: Path, gateways: Gateways
) -> None:
    release_key = keys.generate_private_key()
    pem = keys.public_key_to_pem(release_key.public_key())
    server = ServerProcess(
        tmp_path / "firmware", environment={"NAVIGN_SERVER_RELEASE_PUBLIC_KEYS": json.dumps([pem])}
    )
    server.start()
    try:
        import_mall(server)
        point = keys.public_key_to_point(release_key.public_key()).hex()
        gateway = gateways(
            server.base_url,
            enrollment_token=enrollment_token(server),
            extra_config=f'[firmware]\nrelease_public_keys = ["{point}"]',
        )
        gateway.start()
        gateway.wait_until(connected, SYNC_TIMEOUT, "connect")
        image = bytes(random.Random(7).getrandbits(8) for _ in range(300_000))
        release_id, _ = publish_image(server, release_key, image, "1.2.0")
        deadline = time.monotonic() + SYNC_TIMEOUT
        served = local(gateway, f"/firmware/{release_id}")
        while served.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            served = local(gateway, f"/firmware/{release_id}")
        assert served.status_code == 200, gateway.log()
        assert served.content == image
        assert served.headers["etag"] == f'"{hashlib.sha256(image).hexdigest()}"'
        with httpx.Client(base_url=gateway.base_url, timeout=10.0) as client:
            part = client.get(f"/firmware/{release_id}", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.content == image[1000:2000]
        with admin(server) as client:
            reports = client.get(
                f"/api/admin/entities/{ENTITY}/firmware-status",
                params={"firmware_id": release_id},
            )
        assert reports.status_code == 200, reports.text
        assert '"success"' in reports.text
    finally:
        server.stop()


def test_heartbeats_carry_metrics_and_commands_are_run_once(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    gateway = connected_gateway(server_process, gateways)
    path = f"/api/admin/orchestrators/{ENTITY}/gw-1"
    with admin(server_process) as client:
        command = client.post(f"{path}/commands", json={"type": "resync"})
        assert command.status_code == 201, command.text
        command_id = command.json()["id"]
        unknown = client.post(f"{path}/commands", json={"type": "make_coffee"})
        assert unknown.status_code == 201, unknown.text
        # Heartbeats every 10 s (the test config): the commands go out with the next answer,
        # and the one after acknowledges them.
        beats: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            beats = client.get(f"{path}/heartbeats").json()["heartbeats"]
            if any(command_id in beat.get("acked_commands", []) for beat in beats):
                break
            time.sleep(0.5)
    assert any(command_id in beat.get("acked_commands", []) for beat in beats), beats
    latest = beats[0]
    assert latest["status"] in ("healthy", "degraded")
    assert latest["metrics"]["memory_used_mb"] > 0
    assert latest["metrics"]["disk_used_gb"] > 0
    assert "full sync at seq" in gateway.log(400)  # the resync ran (after the first sync)
    assert gateway.log(400).count("full sync at seq") == 2  # once at start, once for the command
    assert "make_coffee" in gateway.log(400)  # unknown: logged and skipped


def test_a_restart_command_ends_the_process_for_systemd_to_restart(
    server_process: ServerProcess, gateways: Gateways
) -> None:
    gateway = connected_gateway(server_process, gateways)
    with admin(server_process) as client:
        path = f"/api/admin/orchestrators/{ENTITY}/gw-1/commands"
        assert client.post(path, json={"type": "restart"}).status_code == 201
    assert gateway.process is not None
    code = gateway.process.wait(timeout=60)
    assert code == 75  # EX_TEMPFAIL: systemd's Restart=always starts it again
    # Acknowledged before exiting: the restarted gateway does not restart again.
    gateway.start()
    gateway.wait_until(connected, SYNC_TIMEOUT, "connect again")
    time.sleep(12)  # one more heartbeat interval
    assert gateway.process is not None
    assert gateway.process.poll() is None


def test_a_port_in_use_is_one_line_and_a_prompt_exit(tmp_path: Path, gateways: Gateways) -> None:
    gateway = gateways("http://127.0.0.1:9")  # never reached: the start fails first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gateway.http_port))
        taken.listen()
        done = subprocess.run(
            gateway.command("run"), capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("navign-gateway: address already in use")
