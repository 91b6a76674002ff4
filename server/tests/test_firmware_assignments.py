"""Assigning a release to an entity: the assignment and its ``firmware_update`` event, read by a
gateway's SSE stream; refused assignments write nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.wire import FirmwareUpdateEvent, parse_event

from .conftest import RunningServer, TestGateway
from .firmware_helpers import ENTITY, Releases, firmware_server, image_manifest, payload
from .test_events import collect
from .test_registration import assert_error

Setup = tuple[RunningServer, Releases, TestGateway]
IMAGE = payload(5_000, "assign")
POLICY: dict[str, Any] = {
    "targets": {"chips": ["esp32"], "device_types": ["beacon"], "beacon_ids": ["beacon-1"]},
    "canary": ["beacon-7"],
    "canary_size": {"percent": 5},
    "batch_size": 20,
    "hold_seconds": 600,
    "manual_approval": True,
    "failure_threshold": 0.1,
    "waves": [{"percent": 25, "hold_seconds": 60}, {"percent": 100}],
    "maintenance_windows": [
        {"days": ["mon", "tue"], "start": "22:00", "end": "05:00", "timezone": "Europe/Berlin"}
    ],
}


@pytest.fixture(scope="module")
def release_key() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture
async def setup(tmp_path: Path, release_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[Setup]:
    async with firmware_server(tmp_path, release_key) as running:
        yield running


async def assign(server: RunningServer, body: dict[str, Any], entity: str = ENTITY) -> Any:
    async with server.admin() as admin:
        return await admin.post(f"/api/admin/entities/{entity}/firmware-assignments", json=body)


async def test_assignment_reaches_the_gateway_as_firmware_update(setup: Setup) -> None:
    server, releases, gateway = setup
    release = await releases.publish(
        image_manifest(IMAGE, version="2.1.0"), IMAGE, changelog=["Mesh fixes"]
    )
    responses: list[httpx.Response] = []

    async def on_open() -> None:
        body = {"release_id": release["release_id"], "policy": POLICY, "priority": "high"}
        responses.append(await assign(server, body))

    events = await collect(gateway, 1, on_open=on_open)
    created = responses[0]
    assert created.status_code == 201, created.text
    assignment = created.json()
    assert assignment["release_id"] == release["release_id"]
    assert assignment["assignment_id"].startswith("fwa-")

    assert events[0].event == "firmware_update"
    assert int(events[0].id) == assignment["seq"]
    event = parse_event(events[0].event, events[0].data)
    assert isinstance(event, FirmwareUpdateEvent)
    assert event.firmware_id == release["release_id"]
    assert (event.version, event.target, event.kind, event.secure_version) == (
        "2.1.0",
        "esp32",
        "image",
        1,
    )
    assert event.checksum == release["checksum"]
    assert event.size_bytes == len(IMAGE)
    assert event.changelog == ["Mesh fixes"]
    assert event.priority == "high"
    assert event.download_url.endswith(f"/api/firmware/{release['release_id']}/download")
    assert event.rollout_strategy is not None
    assert event.rollout_strategy.batch_size == 20
    assert event.rollout_strategy.canary == ["beacon-7"]
    assert event.rollout_strategy.failure_threshold == 0.1
    # The keys beyond the wire model travel as they were given.
    strategy = events[0].json()["rollout_strategy"]
    for key in ("targets", "canary_size", "manual_approval", "maintenance_windows"):
        assert strategy[key] == POLICY[key], key

    async with server.admin() as admin:
        listed = await admin.get(f"/api/admin/entities/{ENTITY}/firmware-assignments")
    assert listed.status_code == 200
    assert listed.json()["assignments"] == [assignment]
    assert assignment["policy"] == strategy
    stored = await server.ctx.store.events_since(ENTITY, assignment["seq"] - 1, 10)
    assert [(e.seq, e.type) for e in stored] == [(assignment["seq"], "firmware_update")]


async def test_a_minimal_assignment(setup: Setup) -> None:
    server, releases, _ = setup
    release = await releases.publish(image_manifest(IMAGE), IMAGE)
    response = await assign(server, {"release_id": release["release_id"]})
    assert response.status_code == 201, response.text
    assert (response.json()["priority"], response.json()["policy"]) == ("normal", {})


def bad_policies() -> list[dict[str, Any]]:
    return [
        {"surprise": 1},
        {"batch_size": 0},
        {"failure_threshold": 1.5},
        {"canary_size": {"count": 5, "percent": 10}},
        {"canary_size": {}},
        {"targets": {"chips": ["esp8266"]}},
        {"targets": {"chips": ["esp32s3"]}},  # leaves out the release's own target
        {"targets": {"device_types": ["tag"]}},
        {"targets": {"planets": ["mars"]}},
        {"maintenance_windows": [{"start": "25:00", "end": "05:00"}]},
        {"maintenance_windows": [{"start": "05:00", "end": "05:00"}]},
        {"maintenance_windows": [{"start": "01:00", "end": "05:00", "timezone": "Mars/Olympus"}]},
        {"maintenance_windows": [{"start": "01:00", "end": "05:00", "timezone": "../../etc"}]},
        {"maintenance_windows": [{"days": ["mon", "mon"], "start": "01:00", "end": "05:00"}]},
        {"maintenance_windows": [{"days": ["someday"], "start": "01:00", "end": "05:00"}]},
    ]


async def test_refused_assignments_write_nothing(setup: Setup) -> None:
    server, releases, _ = setup
    release = await releases.publish(image_manifest(IMAGE), IMAGE)
    pending = await releases.create(releases.envelope(image_manifest(IMAGE, version="3.0.0")))
    head = (await server.ctx.store.entity_state(ENTITY)).head

    for policy in bad_policies():
        response = await assign(server, {"release_id": release["release_id"], "policy": policy})
        assert_error(response, 422, "VALIDATION_ERROR")
    assert_error(await assign(server, {"release_id": "fw-none"}), 404, "FIRMWARE_NOT_FOUND")
    assert_error(
        await assign(server, {"release_id": release["release_id"]}, entity="mall-none"),
        404,
        "ENTITY_NOT_FOUND",
    )
    assert_error(
        await assign(server, {"release_id": pending.json()["release_id"]}), 409, "CONFLICT"
    )
    async with server.admin() as admin:
        await admin.post(f"/api/admin/releases/{release['release_id']}/withdraw")
    assert_error(await assign(server, {"release_id": release["release_id"]}), 409, "CONFLICT")
    assert_error(await assign(server, {"policy": {}}), 422, "VALIDATION_ERROR")

    assert (await server.ctx.store.entity_state(ENTITY)).head == head
    assert await server.ctx.store.list_assignments(ENTITY) == []
    async with server.admin() as admin:
        unknown = await admin.get("/api/admin/entities/mall-none/firmware-assignments")
    assert_error(unknown, 404, "ENTITY_NOT_FOUND")
