"""Beacons find their gateway over real multicast (protocol §8.3), between two network
namespaces this test creates and joins with a veth pair.

Namespace A (10.77.0.1) holds the real server and the real gateway (``navign-gateway run``, HTTP
on 10.77.0.1, mDNS on that interface only); the gateway's firmware cache fills the only way it
can, from the server: releases published, assigned, downloaded and verified. Namespace B
(10.77.0.2) holds the other side of the mall network:

- python-zeroconf's browser (``mdns_peer.py``), an independent check of the service, port,
  address and TXT, of the TXT following the cache, and of the goodbye at stop. The peer first
  claims the gateway's instance name itself, so the gateway's probing has a real conflict to
  resolve across the wire;
- a simulated beacon: the real firmware on the MicroPython unix port, configured without a
  ``gateway`` hint, which finds the gateway with its own querier and POSTs its §8.2 report to
  the address and port it learnt.

The test process enters namespace A itself (``setns`` on its own thread, restored at the end),
so its HTTP calls and the processes it starts live there; B is reached through ``ip netns
exec``. Both namespaces are deleted at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from navign_firmware import build, flash
from navign_firmware.sim import SimBeacon
from navign_firmware.testing import public_point_hex, release_key
from navign_proto import keys
from navign_server.testing import ServerProcess

from ..conftest import ENTITY, GatewayProcess
from ..test_gateway_e2e import connected, enrollment_token, import_mall, publish_image

pytestmark = pytest.mark.requires("root", "netns")

SERVICE_TYPE = "_navign-fw._tcp.local."
GATEWAY_IP, BEACON_IP = "10.77.0.1", "10.77.0.2"
PEER = Path(__file__).with_name("mdns_peer.py")
CLONE_NEWNET = 0x40000000
STEP_TIMEOUT = 30.0
BEACON_ID = "b-netns-1"


# -- the network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Namespaces:
    gateway: str  # A
    beacon: str  # B


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Two network namespaces joined by a veth pair, each with loopback up and a multicast
    route; names unique to this run; deleted at the end even on failure."""
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(2)}"
    pair = Namespaces(f"navign-mdns-{tag}-a", f"navign-mdns-{tag}-b")
    devices = {pair.gateway: (f"nv{tag}a", GATEWAY_IP), pair.beacon: (f"nv{tag}b", BEACON_IP)}
    created: list[str] = []
    try:
        for name in (pair.gateway, pair.beacon):
            ip("netns", "add", name)
            created.append(name)
        (dev_a, _), (dev_b, _) = devices.values()
        ip("link", "add", dev_a, "netns", pair.gateway, "type", "veth",
           "peer", "name", dev_b, "netns", pair.beacon)  # fmt: skip
        for name, (dev, address) in devices.items():
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
            ip("-n", name, "route", "add", "224.0.0.0/4", "dev", dev)
        yield pair
    finally:
        for name in created:  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run this thread (and what it starts) in ``namespace``; back where it was afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int) -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns: {os.strerror(error)}")

    home = os.open(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


# -- the processes -------------------------------------------------------------------------------


class NamespacedGateway(GatewayProcess):
    """The real gateway with its HTTP port on ``host`` and mDNS announced on that interface."""

    def __init__(self, workdir: Path, server_url: str, *, host: str, **kwargs: Any) -> None:
        super().__init__(workdir, server_url, **kwargs)
        self.host = host
        self.env.update(
            NAVIGN_GATEWAY_LISTEN__HTTP=f"{host}:{self.http_port}",
            NAVIGN_GATEWAY_MDNS__ENABLED="true",
            NAVIGN_GATEWAY_MDNS__INTERFACES=json.dumps([host]),
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def status(self) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = httpx.get(f"{self.base_url}/healthz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body


class MdnsPeer:
    """``mdns_peer.py`` in the beacon's namespace; its events as they come (bounded waits)."""

    def __init__(self, namespace: str, address: str, log: Path) -> None:
        with log.open("ab") as errors:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, str(PEER), address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        self.wait_for(lambda e: e["ev"] == "ready")

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = STEP_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"the peer saw no such event; it saw {self.events}")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def publish_and_assign(server: ServerProcess, key: ec.EllipticCurvePrivateKey, version: str) -> str:
    """An esp32 image release (32 KiB) signed, uploaded and assigned to the mall; its
    manifest_sha256."""
    image = hashlib.sha256(version.encode()).digest() * 1024
    return publish_image(server, key, image, version)[1]


def inventory_record(db: Path, beacon_id: str) -> dict[str, Any] | None:
    """The gateway's inventory record of a beacon as written to its database (flushed every
    few seconds), or None; read-only, beside the running gateway."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute(
                "SELECT record FROM beacon_inventory WHERE beacon_id = ?", (beacon_id,)
            ).fetchone()
    except sqlite3.Error:  # not created yet, or busy: ask again later
        return None
    return None if row is None else dict(json.loads(row[0]))


def make_beacon(workdir: Path, namespace: str) -> SimBeacon:
    """A provisioned board with WiFi and no ``gateway`` hint (so it asks mDNS), run in
    ``namespace``."""
    config = {
        "beacon_id": BEACON_ID,
        "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
        "major": 7,
        "minor": 42,
        "chip": "esp32",
        "wifi": {"ssid": "mall-ops", "password": "correct horse"},
        "release_keys": [public_point_hex(release_key())],
    }
    board = SimBeacon(
        workdir,
        env={"NAVIGN_SIM_WIFI": "mall-ops:correct horse"},
        launcher=["ip", "netns", "exec", namespace],
    )
    files = build.device_files(version="1.0.0", config=json.dumps(config).encode())
    board.create(flash.make_image("1.0.0"), files)
    return board


# -- the test ------------------------------------------------------------------------------------


def test_a_beacon_finds_the_gateway_by_multicast_dns(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    release_signer = keys.generate_private_key()
    pem = keys.public_key_to_pem(release_signer.public_key())
    point = keys.public_key_to_point(release_signer.public_key()).hex()
    board = make_beacon(tmp_path / "beacon", namespaces.beacon)  # built before the clock runs
    with inside(namespaces.gateway):
        server = ServerProcess(
            tmp_path / "server",
            environment={"NAVIGN_SERVER_RELEASE_PUBLIC_KEYS": json.dumps([pem])},
        )
        peer: MdnsPeer | None = None
        gateway: NamespacedGateway | None = None
        try:
            server.start()
            import_mall(server)
            peer = MdnsPeer(namespaces.beacon, BEACON_IP, tmp_path / "peer.log")
            # The gateway's instance name is taken on the network before it starts.
            peer.send("claim gw-1 9")
            squatter = peer.wait_for(lambda e: e["ev"] == "claimed")["name"]
            assert squatter == f"gw-1.{SERVICE_TYPE}"

            gateway = NamespacedGateway(
                tmp_path / "gateway",
                server.base_url,
                host=GATEWAY_IP,
                enrollment_token=enrollment_token(server),
                extra_config=f'[firmware]\nrelease_public_keys = ["{point}"]',
            )
            gateway.start()
            gateway.wait_until(connected, STEP_TIMEOUT, "connect")
            gateway_db = gateway.workdir / "data" / "gateway.sqlite3"

            # Probing found the conflict across the wire: the gateway renamed itself.
            name = f"gw-1-2.{SERVICE_TYPE}"
            seen = peer.wait_for(lambda e: e["ev"] == "added" and e.get("name") == name)
            assert seen["port"] == gateway.http_port
            assert seen["addresses"] == [GATEWAY_IP]
            assert seen["server"] == "gw-1.local."
            assert {k: seen["txt"][k] for k in ("txtvers", "gw", "entity")} == {
                "txtvers": "1", "gw": "gw-1", "entity": ENTITY}  # fmt: skip

            # A release the gateway caches (from the server, verified) appears in the TXT ...
            first = publish_and_assign(server, release_signer, "1.2.0")
            peer.wait_for(
                lambda e: (
                    e.get("name") == name
                    and e.get("txt", {}).get("fw.esp32.image") == f"1.2.0 {first}"
                )
            )
            # ... and a newer one (SemVer: 1.10.0 > 1.2.0, though not as text) replaces it.
            newer = publish_and_assign(server, release_signer, "1.10.0")
            update = peer.wait_for(
                lambda e: (
                    e["ev"] == "updated"
                    and e.get("name") == name
                    and e["txt"].get("fw.esp32.image") == f"1.10.0 {newer}"
                )
            )
            assert update["port"] == gateway.http_port

            # The squatter leaves; the beacon asks, finds the gateway and reports to it.
            peer.send("unclaim")
            peer.wait_for(lambda e: e["ev"] == "removed" and e.get("name") == squatter)
            boot = board.power_on(
                timeout=STEP_TIMEOUT,
                until=lambda _event: inventory_record(gateway_db, BEACON_ID) is not None,
            )
            console = board.log_path.read_text(errors="replace")
            assert boot.end == "stopped", console
            assert "gateway: not found" not in console
            # The §8.2 report reached the gateway at the address and port the beacon learnt
            # over mDNS, and the gateway recorded it in its beacon inventory.
            record = inventory_record(gateway_db, BEACON_ID)
            assert record is not None
            assert (record["transport"], record["chip"]) == ("wifi", "esp32"), record
            assert (record["app_version"], record["firmware_version"]) == ("1.0.0", "1.0.0")

            assert gateway.stop() == 0
            gateway = None
            peer.wait_for(lambda e: e["ev"] == "removed" and e.get("name") == name)  # goodbye
        finally:
            if gateway is not None:
                gateway.kill()
            if peer is not None:
                peer.close()
            server.stop()
