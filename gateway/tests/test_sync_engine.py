"""The sync engine against the real server (in-process uvicorn, real SQLite on both sides):
first full sync, delta paging, repair of a corrupted collection, 410 → full sync."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from navign_gateway.credentials import Credentials
from navign_gateway.db import Database
from navign_gateway.mallcopy import MallCopy
from navign_gateway.sync import SyncEngine
from navign_gateway.upstream import Upstream
from navign_server.testing import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    import_sample_mall,
    run_server,
    server_settings,
)

ENTITY = "mall-riverside"


class FixedToken:
    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def refresh(self, stale: str) -> str:
        return self._token


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningServer, TestGateway, SyncEngine, MallCopy, Database]]:
    async with run_server(server_settings(tmp_path / "s"), tmp_path / "s") as server:
        await import_sample_mall(server)
        gateway = await enrolled_gateway(server)
        assert gateway.token is not None
        async with aiohttp.ClientSession() as session, Database(tmp_path / "gw.db") as db:
            copy = MallCopy(db, ENTITY)
            await copy.migrate()
            tokens = cast(Credentials, FixedToken(gateway.token))
            upstream = Upstream(session, server.base_url, ENTITY, "gw-1", tokens)
            yield server, gateway, SyncEngine(upstream, copy), copy, db


async def server_global(gateway: TestGateway) -> str:
    async with gateway.client() as client:
        response = await client.get(
            "/api/orchestrators/sync/checksum", params={"entity_id": ENTITY}
        )
        value: str = response.json()["checksums"]["global"]
        return value


async def rename(server: RunningServer, collection: str, index: int, name: str) -> None:
    async with server.admin() as admin:
        listing = (await admin.get(f"/api/admin/entities/{ENTITY}/{collection}")).json()
        document: dict[str, Any] = {**listing["documents"][index], "name": name}
        url = f"/api/admin/entities/{ENTITY}/{collection}/{document['id']}"
        assert (await admin.put(url, json=document)).status_code == 200


async def test_full_then_deltas_keep_the_copy_equal_to_the_server(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, gateway, engine, copy, _ = setup
    first = await engine.delta()  # no copy yet: a full sync
    assert first.kind == "full"
    assert (await copy.checksums()).global_checksum == await server_global(gateway)
    for i in range(3):
        await rename(server, "beacons", i, f"beacon renamed {i}")
    with caplog.at_level(logging.INFO, logger="navign_gateway.sync"):
        result = await engine.delta()
    assert result.kind == "delta"
    assert result.changes == 3
    assert f"delta sync: 3 changes applied, now at seq {result.seq}" in caplog.text
    assert (await copy.checksums()).global_checksum == await server_global(gateway)
    assert (await engine.delta()).kind == "current"
    assert await engine.catch_up(0) is None  # an old data_update does nothing


async def test_a_diverged_collection_is_repaired_by_a_partial_full_sync(setup: Any) -> None:
    server, gateway, engine, copy, db = setup
    await engine.full()
    # The copy's merchants diverge from the server's: one document and its digest changed
    # together, as if a change had been applied here that the server never made.
    async with db.transaction() as conn:
        await conn.execute(
            "DELETE FROM mall_merchants WHERE id = (SELECT min(id) FROM mall_merchants)"
        )
        await conn.execute(
            "UPDATE mall_digests SET count = count - 1 WHERE collection = 'merchants'"
        )
    await rename(server, "areas", 1, "area renamed")
    result = await engine.delta()  # the page's base checksum does not match: repaired
    assert result.changes >= 0
    assert (await copy.checksums()).global_checksum == await server_global(gateway)
    assert (await copy.counts())["merchants"] == 6


async def test_a_copy_corrupted_on_disk_is_rebuilt(setup: Any) -> None:
    _, gateway, engine, copy, db = setup
    await engine.full()
    # Bit rot on the SD card: a document row changes, its digest does not.
    async with db.transaction() as conn:
        await conn.execute("UPDATE mall_beacons SET doc = replace(doc, 'a', 'b') WHERE rowid = 1")
    assert not await copy.verify()
    assert not await engine.verify_local()  # found at start-up: the next sync is a full one
    result = await engine.delta()
    assert result.kind == "full"
    assert await copy.verify()
    assert (await copy.checksums()).global_checksum == await server_global(gateway)


async def test_an_expired_cursor_falls_back_to_a_full_sync(setup: Any) -> None:
    server, gateway, engine, copy, _ = setup
    await engine.full()
    await rename(server, "areas", 0, "area renamed")
    # The server prunes its history past the copy's cursor: the delta answers 410.
    await server.ctx.store.prune_history(ENTITY, datetime.now(UTC) + timedelta(seconds=1))
    await rename(server, "areas", 1, "area renamed again")
    result = await engine.delta()
    assert result.kind == "full"
    assert (await copy.checksums()).global_checksum == await server_global(gateway)
