"""``POST /beacons/{id}/report`` (protocol §8.2) on a real aiohttp server on loopback, with the
real inventory and rollout engine behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from aiohttp import web

from navign_gateway.beacon_http import add_beacon_routes
from navign_gateway.beacons import BeaconInventory
from navign_gateway.db import Database
from navign_gateway.rollout import RolloutEngine

from .conftest import ENTITY, Clock
from .test_rollout_engine import SHA, event, release, report, result


class Served:
    def __init__(self, base: str, inventory: BeaconInventory, engine: RolloutEngine) -> None:
        self.base = base
        self.inventory = inventory
        self.engine = engine

    def post(self, beacon_id: str, body: Any, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.base}/beacons/{beacon_id}/report", content=content, **kwargs)


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with Database(tmp_path / "gateway.sqlite3") as db:
        clock = Clock()
        inventory = BeaconInventory(db, clock=clock)
        await inventory.open()
        engine = RolloutEngine(db, inventory, lambda _fid: release(), ENTITY, clock=clock)
        await engine.open()
        app = web.Application()
        add_beacon_routes(app, inventory, engine.on_report)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield Served(f"http://127.0.0.1:{port}", inventory, engine)
        finally:
            await runner.cleanup()


async def post(served: Served, beacon_id: str, body: Any, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(
            f"{served.base}/beacons/{beacon_id}/report", content=content, **kwargs
        )


async def test_a_report_enters_the_inventory_and_gets_its_assignment(served: Served) -> None:
    answer = await post(served, "b-01", report("b-01", uptime_s=31, free_heap=41216))
    assert answer.status_code == 200
    assert answer.json() == {"assignment": None, "ack": None}
    record = served.inventory.get("b-01")
    assert record is not None
    assert record.chip == "esp32"
    assert record.transport == "wifi"
    await served.engine.submit(event({"canary_size": {"percent": 100}}), seq=1)
    await served.engine.step()
    answer = await post(served, "b-01", report("b-01"))
    assert answer.json()["assignment"] == {
        "firmware_id": "fw-esp32-1.1.0-abababababab",
        "manifest_sha256": SHA,
    }
    answer = await post(served, "b-01", report("b-01", result=result("committed")))
    assert answer.json() == {"assignment": None, "ack": SHA}
    assert served.engine.get("fwa-1").entries["b-01"].state.value == "confirmed"


async def test_bad_reports_get_the_error_envelope_and_change_nothing(served: Served) -> None:
    cases: list[tuple[str, bytes, int, str]] = [
        ("b-01", b"{not json", 422, "not JSON"),
        ("b-01", json.dumps([1]).encode(), 422, ""),
        ("b-01", json.dumps(report("b-01", secure_version="two")).encode(), 422, "secure_version"),
        ("b-01", json.dumps(report("b-01", ota_state="dancing")).encode(), 422, "ota_state"),
        ("b-01", json.dumps(report("b-02")).encode(), 422, "path"),
        (
            "b-01",
            json.dumps(report("b-01", result={"outcome": "committed"})).encode(),
            422,
            "result",
        ),
        ("b 01", json.dumps(report("b-01")).encode(), 422, "malformed"),
        ("b-01", json.dumps(report("b-01", pad="x" * 5000)).encode(), 413, "4096"),
    ]
    for beacon_id, body, status, words in cases:
        answer = await post(served, beacon_id.replace(" ", "%20"), body)
        assert answer.status_code == status, (body[:60], answer.text)
        envelope = answer.json()["error"]
        assert envelope["code"] in ("VALIDATION_ERROR", "PAYLOAD_TOO_LARGE")
        assert words in envelope["message"]
        assert answer.headers["X-Request-ID"]
    assert len(served.inventory) == 0


async def test_an_oversized_body_without_a_length_is_refused_too(served: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{served.base}/beacons/b-01/report", content=chunks())
    assert answer.status_code == 413
    assert len(served.inventory) == 0
