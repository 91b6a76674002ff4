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

import httpx
import pytest

from navign_server.testing import ServerProcess

from ..conftest import ENTITY, EXAMPLE_MALL
from .conftest import BUILD_TIMEOUT, NEEDS, ROOT
from .qemu import SERVER_ADDRESS, BootedGateway, fat_list, fat_read, fat_write

# The first test builds the image in its fixture (about 15 minutes cold): beyond pytest's default.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires(*NEEDS),
    pytest.mark.timeout(BUILD_TIMEOUT + 2 * 600),
]

#: From power-on to the first heartbeat, under emulation (about 2 minutes here).
BOOT_TIMEOUT = 600.0
ORCHESTRATOR = "gw-qemu"


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


def _copy(image: Path, card: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(image), str(card)], timeout=300, check=True)


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
    # The card: a file of the image's size, written and provisioned by flash.sh sd.
    card = tmp_path / "card.img"
    subprocess.run(["truncate", "-s", str(built_image.stat().st_size), str(card)], check=True)
    written = subprocess.run(
        [str(ROOT / "flash.sh"), "sd", str(built_image), str(card), "--config", str(config)],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert written.returncode == 0, written.stdout + written.stderr

    gateway = BootedGateway(card, tmp_path / "qemu", server.port)
    try:
        registered_after = None
        with _admin(server) as client:
            while time.monotonic() - gateway.started < BOOT_TIMEOUT and gateway.running():
                answer = client.get(f"/api/admin/orchestrators/{ENTITY}/{ORCHESTRATOR}")
                if answer.status_code == 200 and answer.json().get("last_heartbeat"):
                    registered_after = time.monotonic() - gateway.started
                    break
                time.sleep(2)
        console = gateway.console_text()
        assert registered_after is not None, f"no heartbeat; console:\n{console[-6000:]}"
        # The power button: systemd stops everything and powers off (the journal is synced).
        assert gateway.shut_down(), f"no clean shutdown; console:\n{gateway.console_text()[-3000:]}"
    finally:
        gateway.power_off()
    # For docs/benchmarks.md (an emulation figure, not a Pi's).
    (built_image.parent / "boot-to-registered.txt").write_text(f"{registered_after:.1f}\n")

    assert "navign-firstboot: installed the configuration" in console
    journal = gateway.journal(tmp_path / "journal")
    messages = [e.get("MESSAGE", "") for e in journal]
    assert not [m for m in messages if m.startswith("Failed to start")], [
        m for m in messages if "Failed" in m
    ]
    # systemd armed the (virtual) hardware watchdog, as it does the Pi's.
    assert any("hardware watchdog" in m.lower() for m in messages), "no hardware watchdog"
    # The gateway ran as its own user, and stopped within its 5 s on the way down.
    ours = [e for e in journal if e.get("SYSLOG_IDENTIFIER") == "navign-gateway"]
    assert ours, "the gateway logged nothing"
    said = [e.get("MESSAGE", "") for e in ours]
    # It synced the mall (through QEMU's forwarding to the server on the host) without a fault.
    assert any("full sync at seq" in m for m in said), said[-20:]
    assert not [m for m in said if "uplink failed" in m or "unexpected failure" in m]
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
    # The provisioning file was consumed; the token is no longer on the card.
    names = fat_list(card, "navign")
    assert "gateway.toml" not in names, names
    report = fat_read(card, "navign/firstboot-report.txt")
    assert report is not None
    assert report.startswith(b"navign first boot: OK"), report
    installed = fat_read(card, "navign/gateway.toml.installed")
    assert installed is not None
    assert token.encode() not in installed
    assert b'orchestrator_id = "gw-qemu"' in installed


def test_a_bad_provisioning_file_leaves_a_report_and_no_gateway(
    built_image: Path, server: ServerProcess, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    _copy(built_image, card)
    bad = _gateway_toml("x" * 32).replace(f"http://{SERVER_ADDRESS}", "ftp://nowhere")
    fat_write(card, "navign/gateway.toml", bad.encode(), tmp_path)

    gateway = BootedGateway(card, tmp_path / "qemu", server.port)
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
    finally:
        gateway.power_off()
    assert report.startswith(b"navign first boot: FAILED"), report
    assert b"server_url" in report
    # Nothing was consumed: the file is still there to be corrected.
    assert "gateway.toml" in fat_list(card, "navign")
