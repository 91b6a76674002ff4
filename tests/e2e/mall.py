"""A whole mall on one machine, for the rollout's end-to-end tests: the real server, the real
gateway (with BLE through the simulated radio), and simulated beacons running the real firmware,
some reaching the gateway over Wi-Fi and the others only over BLE.

Releases are published and assigned with the real ``navign-admin`` CLI; what the tests check is
what the server shows (per-beacon firmware status, rollout reports) and what the beacons did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from navign_firmware import build, flash, fleet
from navign_firmware.air import Air, address_from_uid
from navign_firmware.fleet import Fleet, LiveBeacon
from navign_proto import keys
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2_grpc as pb_grpc
from navign_proto.testing import OWN_SUBCHANNELS
from navign_server.testing import ServerProcess

from ..conftest import ENTITY, EXAMPLE_MALL, GatewayProcess
from ..test_gateway_e2e import enrollment_token, import_mall

ADMIN_CLI = [sys.executable, "-m", "navign_server.admin_cli"]


def mall_document(beacons: list[tuple[str, str]]) -> dict[str, Any]:
    """The sample mall with its beacons replaced by ``beacons`` ((id, uid) pairs, esp32)."""
    mall: dict[str, Any] = json.loads(EXAMPLE_MALL.read_text())
    area = mall["areas"][0]["id"]
    mall["beacons"] = [
        {
            "id": beacon_id,
            "entity_id": ENTITY,
            "area_id": area,
            "name": f"Beacon {beacon_id}",
            "type": "navigation",
            "location": {"x": float(i), "y": 1.0},
            "device": "esp32",
            "mac": address_from_uid(uid).lower(),
            "major": 7,
            "minor": i + 1,
        }
        for i, (beacon_id, uid) in enumerate(beacons)
    ]
    return mall


@dataclass
class Mall:
    """Server, gateway and beacons in ``root``; :meth:`start` brings them up in order."""

    root: Path
    wifi: int = 10
    ble: int = 10
    #: The simulated BLE link of the gateway (``NAVIGN_SIM_BLE_LINK``), e.g. throughput.
    link: dict[str, Any] = field(default_factory=dict)
    report_interval_s: int = 5
    release_key: ec.EllipticCurvePrivateKey = field(default_factory=keys.generate_private_key)
    server: ServerProcess | None = None
    gateway: GatewayProcess | None = None
    fleet: Fleet | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.air_dir = self.root / "air"
        self.air_dir.mkdir(exist_ok=True)
        self.key_file = self.root / "release-key.pem"
        self.key_file.write_bytes(keys.private_key_to_pem(self.release_key))
        self.key_file.chmod(0o600)
        self.point = keys.public_key_to_point(self.release_key.public_key()).hex()
        count = self.wifi + self.ble
        self.ids = [f"b-{i:04d}" for i in range(1, count + 1)]
        self.uids = [f"a4cf12{i:06x}" for i in range(1, count + 1)]
        self.wifi_ids = set(self.ids[: self.wifi])
        #: An operator token of the gateway's navign.gateway.v1 API (its digest is configured).
        self.grpc_token = secrets.token_urlsafe(24)

    # -- bringing it up ---------------------------------------------------------------------

    def start(self) -> Mall:
        pem = keys.public_key_to_pem(self.release_key.public_key())
        self.server = ServerProcess(
            self.root / "server",
            environment={"NAVIGN_SERVER_RELEASE_PUBLIC_KEYS": json.dumps([pem])},
        )
        self.server.start()
        import_mall(self.server, mall_document(list(zip(self.ids, self.uids, strict=True))))
        self.gateway = self.new_gateway(token=enrollment_token(self.server))
        self.gateway.start()
        self.gateway.wait_until(
            lambda s: s is not None and s.get("uplink") == "CONNECTED", 60, "connect"
        )
        self.fleet = Fleet(self.provision(), air=Air(self.air_dir))
        self.fleet.start()
        self.fleet.wait_advertising(timeout=120)
        return self

    def new_gateway(self, token: str | None = None) -> GatewayProcess:
        assert self.server is not None
        link = {"NAVIGN_SIM_BLE_LINK": json.dumps(self.link)} if self.link else {}
        digest = hashlib.sha256(self.grpc_token.encode()).hexdigest()
        return GatewayProcess(
            self.root / "gateway",
            self.server.base_url,
            enrollment_token=token,
            environment={"NAVIGN_SIM_AIR": str(self.air_dir), **link},
            extra_config=f'[firmware]\nrelease_public_keys = ["{self.point}"]',
            ble='enabled = true\nbackend = "navign_firmware.bleak_backend"\nmax_connections = 3',
            grpc=f'operator_token_sha256 = ["{digest}"]',
        )

    def provision(self) -> list[Any]:
        assert self.gateway is not None
        gateway_url = self.gateway.base_url
        files = build.device_files(version="1.0.0")

        def one(index: int) -> Any:
            beacon_id = self.ids[index]
            wifi = beacon_id in self.wifi_ids
            return fleet.provision_board(
                self.root / "boards" / beacon_id,
                beacon_id=beacon_id,
                uid=self.uids[index],
                release_keys=[self.point],
                wifi=wifi,
                gateway_url=gateway_url if wifi else None,
                minor=index + 1,
                device_files=files,
                config={
                    "ota": {
                        "trial_boots": 3,
                        "health_timeout_s": 20,
                        "report_interval_s": self.report_interval_s,
                    }
                },
            )

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, range(len(self.ids))))

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.gateway is not None:
            self.gateway.kill()
        if self.server is not None:
            self.server.stop()

    def beacon(self, beacon_id: str) -> LiveBeacon:
        assert self.fleet is not None
        return self.fleet.beacons[self.ids.index(beacon_id)]

    # -- the server's view ----------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        assert self.server is not None
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {self.server.admin_token}"},
            timeout=60.0,
        )

    def admin_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._client() as client:
            reply = client.post(path, json=body)
        assert reply.status_code in (200, 201), reply.text
        result: dict[str, Any] = reply.json()
        return result

    def admin_get(self, path: str, **params: Any) -> dict[str, Any]:
        with self._client() as client:
            reply = client.get(path, params=params)
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def beacon_statuses(self) -> dict[str, dict[str, Any]]:
        body = self.admin_get(f"/api/admin/entities/{ENTITY}/beacon-status")
        return {b["beacon_id"]: b for b in body["beacons"]}

    def firmware_status(self, release_id: str) -> dict[str, Any]:
        return self.admin_get(
            f"/api/admin/entities/{ENTITY}/firmware-status", firmware_id=release_id, limit=1000
        )

    def rollouts(self) -> list[dict[str, Any]]:
        body = self.admin_get(f"/api/admin/entities/{ENTITY}/rollouts")
        return list(body["rollouts"])

    def pinned(self, release_id: str) -> bool | None:
        """Whether the gateway's cache pins the release (read-only look at its database)."""
        database = self.root / "gateway" / "data" / "gateway.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT pinned FROM firmware_releases WHERE firmware_id = ?", (release_id,)
            ).fetchone()
        return None if row is None else bool(row[0])

    # -- the gateway's operator API (navign.gateway.v1) ------------------------------------------

    def grpc_beacons(self) -> list[Any]:
        assert self.gateway is not None
        metadata = (("authorization", f"Bearer {self.grpc_token}"),)
        with grpc.insecure_channel(
            f"127.0.0.1:{self.gateway.grpc_port}", options=[OWN_SUBCHANNELS]
        ) as channel:
            stub = pb_grpc.BeaconServiceStub(channel)
            reply = stub.ListBeacons(pb.ListBeaconsRequest(page_size=1000), metadata=metadata)
        return list(reply.beacons)

    def grpc_rollout(self, rollout_id: str) -> Any:
        """The gateway's rollout with its entries, or None while it does not know it."""
        assert self.gateway is not None
        metadata = (("authorization", f"Bearer {self.grpc_token}"),)
        with grpc.insecure_channel(
            f"127.0.0.1:{self.gateway.grpc_port}", options=[OWN_SUBCHANNELS]
        ) as channel:
            stub = pb_grpc.RolloutServiceStub(channel)
            try:
                reply = stub.GetRollout(
                    pb.GetRolloutRequest(rollout_id=rollout_id), metadata=metadata, timeout=10
                )
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    return None
                raise
        return reply.rollout

    # -- navign-admin -----------------------------------------------------------------------

    def admin_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.server is not None
        env = {
            "NAVIGN_ADMIN_SERVER": self.server.base_url,
            "NAVIGN_ADMIN_TOKEN": self.server.admin_token,
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            [*ADMIN_CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False
        )

    def publish_app(
        self, version: str, *, patch: dict[str, bytes] | None = None, key: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``navign-admin release publish`` of the real app at ``version`` (``patch`` replaces
        files of the built app, e.g. a broken ``navign/app.py``)."""
        app = self.root / f"app-{version}-{len(list(self.root.glob('app-*')))}"
        build.build_app(app, version=version)
        for name, data in (patch or {}).items():
            (app / name).write_bytes(data)
        return self.admin_cli(
            "release", "publish", "--key", str(key or self.key_file),
            "--name", "navign-beacon-app", "--version", version, "--target", "esp32",
            "--secure-version", "0", "--app-dir", str(app), "--channel", "stable", "--json",
        )  # fmt: skip

    def publish_image(self, version: str, size: int) -> subprocess.CompletedProcess[str]:
        """``navign-admin release publish`` of a simulated MicroPython image of ``size`` bytes."""
        image = self.root / f"image-{version}.bin"
        image.write_bytes(flash.make_image(version, "esp32", size))
        return self.admin_cli(
            "release", "publish", "--key", str(self.key_file),
            "--name", "navign-beacon-fw", "--version", version, "--target", "esp32",
            "--secure-version", "0", "--image", str(image), "--channel", "stable", "--json",
        )  # fmt: skip

    def release_id(self, published: subprocess.CompletedProcess[str]) -> str:
        assert published.returncode == 0, published.stderr
        return str(json.loads(published.stdout)["release"]["release_id"])

    def assign(self, release_id: str, *args: str) -> str:
        run = self.admin_cli("assign", ENTITY, release_id, *args, "--json")
        assert run.returncode == 0, run.stderr
        return str(json.loads(run.stdout)["assignment_id"])


def wait_for(what: str, check: Callable[[], Any], timeout: float, *, every: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def started(root: Path, **kwargs: Any) -> Iterator[Mall]:
    mall = Mall(root, **kwargs)
    try:
        yield mall.start()
    finally:
        mall.stop()
