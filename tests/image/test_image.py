"""The appliance image end to end: built by image/build, provisioned by flash.sh sd, booted in
QEMU with its own kernel and initrd. The first boot installs the configuration from the FAT
partition and the gateway registers with a real server on the host's loopback and sends
heartbeats; a bad provisioning file leaves a report on the card and no gateway."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.testing import OWN_SUBCHANNELS, Issued, issue, tls_credentials
from navign_server.testing import ServerProcess, free_port

from ..conftest import ENTITY, EXAMPLE_MALL
from .conftest import BUILD_TIMEOUT, NEEDS, ROOT
from .qemu import SERVER_ADDRESS, BootedGateway, fat_list, fat_read, fat_write, ssh

# The first test builds the image in its fixture (about 15 minutes cold): beyond pytest's default.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires(*NEEDS),
    pytest.mark.timeout(BUILD_TIMEOUT + 2 * 600),
]

#: From power-on to the first heartbeat, under emulation (about 2 minutes here).
BOOT_TIMEOUT = 600.0
ORCHESTRATOR = "gw-qemu"
#: The stand-in SD card: larger than the image, so that /var has room to grow.
CARD_SIZE = 3 * 1024**3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server")
    process.start()
    try:
        with _admin(process) as client:
            mall = json.loads(EXAMPLE_MALL.read_text())
            assert client.post(f"/api/admin/entities/{ENTITY}/import", json=mall).status_code == 200
        yield process
    finally:
        process.stop()


def _admin(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=30.0,
    )


def _gateway_toml(token: str) -> str:
    return "\n".join([
        f'server_url = "http://{SERVER_ADDRESS}"',
        f'entity_id = "{ENTITY}"',
        f'orchestrator_id = "{ORCHESTRATOR}"',
        f'enrollment_token = "{token}"',
        "heartbeat_interval = 10",
        # Plain HTTP to the host through QEMU's forwarding: the test has no TLS server.
        "allow_insecure_http = true",
        "[ble]",
        "enabled = false",
        "[mdns]",
        "enabled = false",
        "",
    ])  # fmt: skip


def _tower_call(port: int, trust: Issued, client: Issued | None) -> str:
    """A robot report to the appliance's gRPC port over TLS: "ok", or the status code's name."""
    credentials = tls_credentials(trust, client)
    robot = task_pb2.RobotInfo(id="robot-qemu", entity_id=ENTITY, last_seen=int(time.time()))
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[OWN_SUBCHANNELS]) as ch:
        stub = task_pb2_grpc.OrchestratorServiceStub(ch)
        try:
            answer = stub.ReportRobotStatus(task_pb2.RobotReportRequest(robot=robot), timeout=60)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "ok" if answer.success else "refused"


def _copy(image: Path, card: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(image), str(card)], timeout=300, check=True)


def _heartbeats(client: httpx.Client) -> int:
    answer = client.get(f"/api/admin/orchestrators/{ENTITY}/{ORCHESTRATOR}/heartbeats?limit=1000")
    return len(answer.json()["heartbeats"]) if answer.status_code == 200 else 0


def _wait_for_heartbeats(client: httpx.Client, gateway: BootedGateway, more_than: int) -> float:
    """Seconds from QEMU's start until the server has more than ``more_than`` heartbeats."""
    while time.monotonic() - gateway.started < BOOT_TIMEOUT and gateway.running():
        if _heartbeats(client) > more_than:
            return time.monotonic() - gateway.started
        time.sleep(2)
    raise AssertionError(f"no heartbeat; console:\n{gateway.console_text()[-6000:]}")


def test_first_boot_installs_the_config_and_the_gateway_registers(
    built_image: Path, server: ServerProcess, tmp_path: Path
) -> None:
    with _admin(server) as client:
        created = client.post(
            "/api/admin/enrollment-tokens",
            json={"entity_id": ENTITY, "orchestrator_id": ORCHESTRATOR, "ttl_seconds": 3600},
        )
        assert created.status_code == 201, created.text
        token = str(created.json()["token"])
    config = tmp_path / "gateway.toml"
    config.write_text(_gateway_toml(token))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # TLS for the gRPC port, with client certificates from the towers' CA.
    tls = tmp_path / "tls"
    tls.mkdir()
    port_pair, towers = issue(tmp_path, "port"), issue(tmp_path, "towers", ca=True)
    tower = issue(tmp_path, "tower", issuer=towers)
    for source, name in ((port_pair.cert, "grpc.crt"), (port_pair.key, "grpc.key"),
                         (towers.cert, "clients.pem")):  # fmt: skip
        (tls / name).write_bytes(source.read_bytes())
    # The card: a file larger than the image, written and provisioned by flash.sh sd, SSH on.
    card = tmp_path / "card.img"
    subprocess.run(["truncate", "-s", str(CARD_SIZE), str(card)], check=True)
    written = subprocess.run(
        [str(ROOT / "flash.sh"), "sd", str(built_image), str(card), "--config", str(config),
         "--ssh-authorized-keys", f"{key}.pub", "--grpc-tls", str(tls)],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert written.returncode == 0, written.stdout + written.stderr

    ssh_port, grpc_port = free_port(), free_port()
    first = BootedGateway(card, tmp_path / "boot1", server.port, ssh_port, grpc_port)
    try:
        with _admin(server) as client:
            registered_after = _wait_for_heartbeats(client, first, 0)
        # The gRPC port speaks TLS with the card's certificate and wants the towers' certificates.
        assert _tower_call(grpc_port, port_pair, tower) == "ok"
        assert _tower_call(grpc_port, port_pair, None) == "UNAVAILABLE"
        # Inside: the root is read-only, the config is the gateway's alone, the hostname is set.
        inside = ssh(
            key, ssh_port,
            "findmnt -no OPTIONS /; findmnt -no FSTYPE /var; "
            "stat -c %a:%U /etc/navign/gateway.toml /etc/navign/tls/grpc.key; hostname; "
            "systemctl is-active navign-gateway; touch /x 2>&1 || true; "
            "df -B1 --output=size /var | tail -n 1",
        )  # fmt: skip
        assert inside.returncode == 0, inside.stderr
        lines = inside.stdout.splitlines()
        assert lines[0].split(",")[0] == "ro", lines
        assert lines[1:6] == ["ext4", "600:navign", "600:navign", "navign-gw-qemu", "active"], lines
        assert "Read-only file system" in lines[6], lines
        # /var grew to the rest of the card at first boot.
        assert int(lines[7]) > CARD_SIZE - built_image.stat().st_size, lines
    finally:
        first.power_off()  # a power cut, in the middle of the gateway's work
    console = first.console_text()
    # For docs/benchmarks.md (an emulation figure, not a Pi's).
    (built_image.parent / "boot-to-registered.txt").write_text(f"{registered_after:.1f}\n")
    assert "navign-firstboot: installed the configuration" in console

    # After the power cut: the gateway comes back by itself, with its key (the token is gone).
    with _admin(server) as client:
        before = _heartbeats(client)
        second = BootedGateway(card, tmp_path / "boot2", server.port, ssh_port)
        try:
            _wait_for_heartbeats(client, second, before)
            # Its copy of the mall survived the cut, and it serves it on the mall network.
            served = ssh(
                key, ssh_port,
                "python3 -c \"import urllib.request as u; "
                "print(u.urlopen('http://127.0.0.1:8080/local/v1/beacons').read().decode())\"",
            )  # fmt: skip
            assert served.returncode == 0, served.stderr
            beacons = json.loads(served.stdout)["documents"]
            assert len(beacons) == len(json.loads(EXAMPLE_MALL.read_text())["beacons"])
            # The power button: systemd stops everything and powers off (the journal is synced).
            assert second.shut_down(), f"no clean shutdown:\n{second.console_text()[-3000:]}"
        finally:
            second.power_off()
    assert "navign-firstboot" not in second.console_text().replace("Navign gateway first", "")

    # The provisioning file was consumed; the token is no longer on the card.
    names = fat_list(card, "navign")
    assert "gateway.toml" not in names, names
    assert "tls" not in names, names  # the port's private key left the card too
    report = fat_read(card, "navign/firstboot-report.txt")
    assert report is not None
    assert report.startswith(b"navign first boot: OK"), report
    assert b"TLS for the gRPC port installed in /etc/navign/tls/" in report
    installed = fat_read(card, "navign/gateway.toml.installed")
    assert installed is not None
    assert token.encode() not in installed
    assert b'orchestrator_id = "gw-qemu"' in installed

    journal = second.journal(tmp_path / "journal")
    messages = [e.get("MESSAGE", "") for e in journal]
    assert not [m for m in messages if m.startswith("Failed to start")], [
        m for m in messages if "Failed" in m
    ]
    # systemd armed the (virtual) hardware watchdog, as it does the Pi's.
    assert any("hardware watchdog" in m.lower() for m in messages), "no hardware watchdog"
    ours = [e for e in journal if e.get("SYSLOG_IDENTIFIER") == "navign-gateway"]
    said = [e.get("MESSAGE", "") for e in ours]
    # After the power cut it came back without a fault (its own key; the token was gone).
    assert any("ready: http :8080" in m for m in said), said[-20:]
    assert not [m for m in said if "uplink failed" in m or "unexpected failure" in m]
    # It ran as its own user, and stopped within its 5 s on the way down.
    uids = {e.get("_UID") for e in ours}
    assert uids
    assert "0" not in uids, uids
    times = {
        m: int(e["__REALTIME_TIMESTAMP"])
        for e in journal
        if e.get("UNIT") == "navign-gateway.service"
        and (m := e.get("MESSAGE", "")).split(" ")[0] in ("Stopping", "Stopped")
    }
    stopping = [t for m, t in times.items() if m.startswith("Stopping")]
    stopped = [t for m, t in times.items() if m.startswith("Stopped")]
    assert stopping
    assert stopped
    assert (max(stopped) - max(stopping)) / 1e6 < 5.0


def test_a_bad_provisioning_file_leaves_a_report_and_no_gateway(
    built_image: Path, server: ServerProcess, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    _copy(built_image, card)
    bad = _gateway_toml("x" * 32).replace(f"http://{SERVER_ADDRESS}", "ftp://nowhere")
    fat_write(card, "navign/gateway.toml", bad.encode(), tmp_path)

    ssh_port = free_port()
    gateway = BootedGateway(card, tmp_path / "qemu", server.port, ssh_port)
    try:
        report = None
        while time.monotonic() - gateway.started < BOOT_TIMEOUT and gateway.running():
            if "navign-firstboot: navign/gateway.toml is not valid" in gateway.console_text():
                time.sleep(5)  # the report is synced before the message
                report = fat_read(card, "navign/firstboot-report.txt")
                break
            time.sleep(2)
        console = gateway.console_text()
        assert report is not None, f"no report; console:\n{console[-6000:]}"
        # The gateway's unit stays down: give it the time it would need to register.
        time.sleep(30)
        with _admin(server) as client:
            listed = client.get("/api/admin/orchestrators").json()
        assert ORCHESTRATOR not in json.dumps(listed)
        # No `ssh` file on the card: no SSH server (the forwarded port leads nowhere).
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        refused = ssh(key, ssh_port, "true")
        assert refused.returncode == 255, refused
    finally:
        gateway.power_off()
    assert report.startswith(b"navign first boot: FAILED"), report
    assert b"server_url" in report
    # Nothing was consumed: the file is still there to be corrected.
    assert "gateway.toml" in fat_list(card, "navign")
