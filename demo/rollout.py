"""`make demo`, step 8: a firmware rollout you can watch, on this machine.

A second mall (``mall-harbour``) with a dozen beacons. Each is the real beacon firmware running
on the MicroPython unix port on a simulated ESP32 flash; half reach their gateway over Wi-Fi,
half only over BLE (through the simulated radio, :mod:`navign_firmware.bleak_backend`). The
real gateway process enrolls with the running server, the operator publishes a signed release
of the real app with ``navign-admin`` and assigns it with a canary of 2, and the progress is
shown live, as the server sees it, until every beacon confirmed the new version or failed.

    python demo/rollout.py WORK_DIR RELEASE_KEY.pem    (NAVIGN_ADMIN_SERVER / _TOKEN set)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from navign_firmware import build, fleet
from navign_firmware.air import Air, address_from_uid
from navign_proto import keys

ENTITY = "mall-harbour"
GATEWAY = "gw-harbour-1"
WIFI, BLE = 6, 6
TIMEOUT = 300.0
ROOT = Path(__file__).resolve().parents[1]
console = Console(highlight=False)


def admin(*args: str) -> str:
    run = subprocess.run(
        ["navign-admin", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if run.returncode != 0:
        sys.exit(f"demo: navign-admin {' '.join(args[:2])} failed: {run.stderr.strip()}")
    return run.stdout


def admin_json(*args: str) -> Any:
    return json.loads(admin(*args, "--json"))


def server_get(path: str) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the demo's own server, http on loopback
        os.environ["NAVIGN_ADMIN_SERVER"] + path,
        headers={"Authorization": f"Bearer {os.environ['NAVIGN_ADMIN_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - our server
        return json.load(reply)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mall(ids: list[str], uids: list[str]) -> dict[str, Any]:
    sample = (ROOT / "proto" / "examples" / "sample-mall.json").read_text()
    doc: dict[str, Any] = json.loads(sample.replace("mall-riverside", ENTITY))
    doc["entity"]["name"] = "Harbour Mall"
    area = doc["areas"][0]["id"]
    doc["beacons"] = [
        {
            "id": beacon_id,
            "entity_id": ENTITY,
            "area_id": area,
            "name": f"Ceiling beacon {i + 1}",
            "type": "navigation",
            "location": {"x": 4.0 * i, "y": 2.0},
            "device": "esp32",
            "mac": address_from_uid(uid).lower(),
            "major": 9,
            "minor": i + 1,
        }
        for i, (beacon_id, uid) in enumerate(zip(ids, uids, strict=True))
    ]
    return doc


def progress_table(release: str, ids: list[str], wifi: set[str]) -> tuple[Table, dict[str, str]]:
    status = server_get(f"/api/admin/entities/{ENTITY}/firmware-status?firmware_id={release}")
    beacons = status["beacons"]
    rollouts = server_get(f"/api/admin/entities/{ENTITY}/rollouts")["rollouts"]
    rollout = rollouts[0] if rollouts else {}
    table = Table(
        title=f"rollout {rollout.get('rollout_id', '…')}: {rollout.get('state', 'pending')}"
        f" (wave {rollout.get('current_wave', 0)} of {rollout.get('wave_count', '?')})"
        f" {rollout.get('state_reason', '')}"
    )
    for column in ("beacon", "transport", "status", "detail"):
        table.add_column(column)
    states: dict[str, str] = {}
    for beacon_id in ids:
        row = beacons.get(beacon_id, {})
        state = {"success": "confirmed"}.get(row.get("status", ""), row.get("status", "waiting"))
        states[beacon_id] = state
        colour = {"confirmed": "green", "failed": "red", "rolled_back": "red"}.get(state, "yellow")
        table.add_row(
            beacon_id,
            "Wi-Fi" if beacon_id in wifi else "BLE",
            f"[{colour}]{state}[/{colour}]",
            row.get("error_code") or "",
        )
    return table, states


def main() -> int:
    work, key_file = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    key = keys.load_private_key_pem(key_file.read_bytes())
    point = keys.public_key_to_point(key.public_key()).hex()
    ids = [f"hb-{i:02d}" for i in range(1, WIFI + BLE + 1)]
    uids = [f"a4cf1300{i:04x}" for i in range(1, WIFI + BLE + 1)]
    wifi = set(ids[:WIFI])

    (work / "harbour.json").write_text(json.dumps(mall(ids, uids)))
    admin("import", ENTITY, str(work / "harbour.json"))
    enrollment = admin("enroll", ENTITY, GATEWAY, "--ttl", "3600").strip().splitlines()[-1]
    http, grpc_port = free_port(), free_port()
    air = work / "air"
    air.mkdir(exist_ok=True)
    config = work / "harbour.toml"
    config.write_text(
        f'server_url = "{os.environ["NAVIGN_ADMIN_SERVER"]}"\n'
        f'entity_id = "{ENTITY}"\norchestrator_id = "{GATEWAY}"\n'
        f'enrollment_token = "{enrollment}"\ndata_dir = "{work / "gateway-state"}"\n'
        "heartbeat_interval = 10\n"
        f'[listen]\nhttp = "127.0.0.1:{http}"\ngrpc = "127.0.0.1:{grpc_port}"\n'
        f'[firmware]\nrelease_public_keys = ["{point}"]\n'
        '[ble]\nenabled = true\nbackend = "navign_firmware.bleak_backend"\n'
        "[mdns]\nenabled = false\n"
    )
    config.chmod(0o600)
    env = {**os.environ, "NAVIGN_SIM_AIR": str(air)}
    with (work / "gateway.log").open("ab") as log:
        gateway = subprocess.Popen(
            ["navign-gateway", "--config", str(config), "run"], stdout=log, stderr=log, env=env
        )
    beacons: fleet.Fleet | None = None
    try:
        console.print(f"   gateway pid {gateway.pid} (BLE through the simulated radio in {air})")
        files = build.device_files(version="1.0.0")
        boards = [
            fleet.provision_board(
                work / "boards" / beacon_id,
                beacon_id=beacon_id,
                uid=uid,
                release_keys=[point],
                wifi=beacon_id in wifi,
                gateway_url=f"http://127.0.0.1:{http}" if beacon_id in wifi else None,
                minor=i + 1,
                device_files=files,
                config={"ota": {"trial_boots": 3, "health_timeout_s": 30, "report_interval_s": 5}},
            )
            for i, (beacon_id, uid) in enumerate(zip(ids, uids, strict=True))
        ]
        beacons = fleet.Fleet(boards, air=Air(air)).start()
        beacons.wait_advertising(timeout=120)
        console.print(
            f"   {len(ids)} simulated beacons running app 1.0.0: {WIFI} on Wi-Fi, {BLE} on BLE"
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = {
                b["beacon_id"]
                for b in server_get(f"/api/admin/entities/{ENTITY}/beacon-status")["beacons"]
            }
            if seen >= set(ids):
                break
            time.sleep(1)
        else:
            sys.exit("demo: the gateway did not see every beacon; see gateway.log")
        console.print("   the gateway sees every beacon and reports them to the server")

        app = work / "app-1.1.0"
        build.build_app(app, version="1.1.0")
        published = admin_json(
            "release", "publish", "--key", str(key_file), "--name", "navign-beacon-app",
            "--version", "1.1.0", "--target", "esp32", "--secure-version", "1",
            "--app-dir", str(app), "--channel", "stable", "--changelog", "faster scans",
        )  # fmt: skip
        release = published["release"]["release_id"]
        console.print(f"   published {release} (the real app, compiled with mpy-cross, signed)")
        admin("assign", ENTITY, release, "--canary", "2", "--failure-threshold", "20%")
        deadline = time.monotonic() + TIMEOUT
        states: dict[str, str] = {}
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                table, states = progress_table(release, ids, wifi)
                live.update(table)
                if all(s in ("confirmed", "failed", "rolled_back") for s in states.values()):
                    break
                time.sleep(0.5)
        confirmed = sum(1 for s in states.values() if s == "confirmed")
        console.print(admin("rollouts", ENTITY).rstrip())
        console.print(
            f"[bold]rollout of {release}: confirmed on {confirmed} of {len(ids)} beacons[/bold]"
        )
        return 0 if confirmed == len(ids) else 1
    finally:
        if beacons is not None:
            beacons.stop()
        gateway.terminate()
        try:
            gateway.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.kill()


if __name__ == "__main__":
    sys.exit(main())
