"""The gateway's BLE pusher (``navign_gateway.ble.push``) against a simulated beacon running the
real firmware, through bleak's public API and the simulated radio: a push over a lossy link that
drops twice resumes where the beacon's flash stands and ends committed after the check-in; a
tampered artifact is refused by the beacon at COMMIT."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from navign_firmware import build, fleet
from navign_firmware.air import Air, address_from_uid
from navign_firmware.bleak_backend import SimBleakClient, SimBleakScanner
from navign_firmware.fleet import LiveBeacon
from navign_firmware.testing import Release, app_release, public_point_hex, release_key
from navign_gateway.ble.push import BleCentral, BlePusher, PushLimits
from navign_gateway.firmware import CachedRelease
from navign_gateway.rollout import EntryState

pytestmark = pytest.mark.slow
UID = "a4cf12bb0001"


@pytest.fixture
def beacon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveBeacon]:
    air = tmp_path / "air"
    air.mkdir()
    monkeypatch.setenv("NAVIGN_SIM_AIR", str(air))
    board = fleet.provision_board(
        tmp_path / "board",
        beacon_id="b-push",
        uid=UID,
        release_keys=[public_point_hex(release_key())],
        device_files=build.device_files(version="1.0.0"),
    )
    live = LiveBeacon(board, air=Air(air)).start()
    live.wait_for(lambda e: e.get("ev") == "adv", 60)
    try:
        yield live
    finally:
        live.stop()


def cached(release: Release, directory: Path) -> CachedRelease:
    """The release as the gateway's cache holds it (envelope and artifact files)."""
    directory.mkdir(parents=True)
    (directory / "envelope.json").write_bytes(release.envelope)
    (directory / "artifact.bin").write_bytes(release.artifact)
    now = datetime.now(UTC)
    return CachedRelease(
        firmware_id=release.firmware_id,
        name=release.manifest.name,
        version=release.manifest.version,
        target="esp32",
        kind="app",
        secure_version=0,
        device_type="beacon",
        channel="stable",
        size=len(release.artifact),
        sha256="00" * 32,
        manifest_sha256=release.manifest_sha256,
        cached_at=now,
        last_used_at=now,
        pinned=True,
        directory=directory,
    )


def pusher() -> BlePusher:
    central = BleCentral(
        max_connections=1, client_backend=SimBleakClient, scanner_backend=SimBleakScanner
    )
    return BlePusher(central, PushLimits(reply=10.0, connect=10.0, after_reboot=90.0))


async def test_a_push_over_a_dropping_lossy_link_resumes_and_commits(
    beacon: LiveBeacon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About 48 KB of app: the link drops after each 20 KB and loses 2 % of the DATA frames.
    link = {"disconnect_after_bytes": 20_000, "loss": 0.02, "seed": 3}
    monkeypatch.setenv("NAVIGN_SIM_BLE_LINK", json.dumps(link))
    release = cached(app_release("1.1.0"), tmp_path / "release")
    states: list[tuple[EntryState, int]] = []
    result = await pusher().push(
        address_from_uid(UID), release, lambda state, sent: states.append((state, sent))
    )
    assert result.outcome == "committed", result
    offers = [sent for state, sent in states if state is EntryState.OFFERED]
    assert len(offers) >= 3  # two drops, two reconnections
    resumed = [sent for state, sent in states if state is EntryState.TRANSFERRING]
    assert resumed[-1] == release.size
    # The beacon runs 1.1.0, committed, and says so in its advertisement's status frame.
    frames = [
        bytes.fromhex(e["resp"]) for e in beacon.events if e.get("ev") == "adv" and e.get("resp")
    ]
    assert frames[-1][28:31] == bytes((1, 1, 0))
    assert not frames[-1][19] & 0x02


async def test_a_tampered_artifact_is_refused_by_the_beacon(
    beacon: LiveBeacon, tmp_path: Path
) -> None:
    release = app_release("1.1.0")
    artifact = bytearray(release.artifact)
    artifact[len(artifact) // 3] ^= 0x01
    bad = cached(dataclasses.replace(release, artifact=bytes(artifact)), tmp_path / "release")
    result = await pusher().push(address_from_uid(UID), bad, lambda _s, _n: None)
    assert result.outcome == "refused"
    assert result.reason == "artifact_mismatch"
