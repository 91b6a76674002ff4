"""Fixtures of the firmware tests: a simulated board running the real firmware, and a small
gateway (navign_firmware.testing) on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from navign_firmware import build, flash
from navign_firmware.sim import SimBeacon
from navign_firmware.testing import BeaconGateway, public_point_hex, release_key

BEACON_ID = "b-0001"
WIFI = "mall-ops:correct horse"


def beacon_config(port: int | None = None, **overrides: Any) -> dict[str, Any]:
    """A provisioned beacon's config: WiFi, the gateway hint on ``port``, the test release key."""
    config: dict[str, Any] = {
        "beacon_id": BEACON_ID,
        "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
        "major": 7,
        "minor": 42,
        "chip": "esp32",
        "wifi": {"ssid": "mall-ops", "password": "correct horse"},
        "release_keys": [public_point_hex(release_key())],
        "ota": {"trial_boots": 3, "health_timeout_s": 20},
    }
    if port is not None:
        config["gateway"] = {"host": "127.0.0.1", "port": port}
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def device_files() -> dict[str, bytes]:
    """boot.py, main.py and the compiled app 1.0.0 in /app/a (built once per session)."""
    return build.device_files(version="1.0.0")


@pytest.fixture
def gateway() -> Iterator[BeaconGateway]:
    with BeaconGateway() as gw:
        yield gw


@pytest.fixture
def make_beacon(tmp_path: Path, device_files: dict[str, bytes]) -> Callable[..., SimBeacon]:
    """A new board: image 1.0.0 in ota_0, the app 1.0.0, and ``config`` as /config.json."""

    def make(
        config: dict[str, Any] | None,
        *,
        name: str = "b1",
        image_version: str = "1.0.0",
        files: dict[str, bytes] | None = None,
    ) -> SimBeacon:
        board = SimBeacon(tmp_path / name, env={"NAVIGN_SIM_WIFI": WIFI})
        contents = dict(device_files)
        if config is not None:
            contents["config.json"] = json.dumps(config).encode()
        contents.update(files or {})
        board.create(flash.make_image(image_version), contents)
        return board

    return make
