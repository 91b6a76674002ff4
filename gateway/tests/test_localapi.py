"""The local read API through a real aiohttp server on 127.0.0.1: documents, filters, paging,
ETags, the error envelope for bad input, reads during a sync, and serving while the central
server is down."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from navign_gateway.db import Database
from navign_gateway.localapi import add_local_api
from navign_gateway.mallcopy import MallCopy
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.mall import MallData
from navign_proto.wire import ErrorEnvelope, SyncFullResponse
from navign_server.testing import (
    enrolled_gateway,
    import_sample_mall,
    run_server,
    sample_mall,
    server_settings,
)

ENTITY = "mall-riverside"
WORKER = Path(__file__).with_name("mallcopy_crash_worker.py")


def snapshot_of(mall: MallData, seq: int) -> SyncFullResponse:
    data = mall.documents()
    return SyncFullResponse.model_validate(
        {
            "entity_id": mall.entity.id,
            "sync_id": "local-test",
            "timestamp": datetime(2026, 11, 27, tzinfo=UTC),
            "checksum": MallChecksums.of(data).global_checksum,
            "data": data,
            "metadata": {f"total_{name}": len(data[name]) for name in COLLECTIONS},
            "seq": seq,
            "entity": mall.entity.document(),
        }
    )


@pytest.fixture
def mall() -> MallData:
    return MallData.model_validate(sample_mall())


@pytest.fixture
async def copy(tmp_path: Path) -> AsyncIterator[MallCopy]:
    async with Database(tmp_path / "gateway.sqlite3") as db:
        local = MallCopy(db, ENTITY)
        await local.migrate()
        yield local


@pytest.fixture
async def api(copy: MallCopy) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the local API, served by a real aiohttp server on 127.0.0.1."""
    app = web.Application()
    add_local_api(app, copy)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(str(server.make_url(""))) as session:
            yield session
    finally:
        await server.close()


async def get(
    session: aiohttp.ClientSession, path: str, method: str = "GET", **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with session.request(method, path, headers=headers) as response:
        body = await response.read()
        return response.status, json.loads(body) if body else None, response


def assert_error(status: int, body: Any, response: aiohttp.ClientResponse, expected: int) -> str:
    assert status == expected, body
    envelope = ErrorEnvelope.model_validate(body)
    assert envelope.http_status == expected
    assert envelope.error.request_id == response.headers["X-Request-ID"]
    assert response.content_type == "application/json"
    return envelope.error.code


async def test_documents_filters_and_paging(
    api: aiohttp.ClientSession, copy: MallCopy, mall: MallData
) -> None:
    await copy.apply_full(snapshot_of(mall, 27))
    status, body, response = await get(api, "/local/v1/entity")
    assert status == 200
    assert body == {"seq": 27, "document": mall.entity.document()}
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["ETag"].startswith('"27-')

    beacon = mall.beacons[0].document()
    status, body, _ = await get(api, f"/local/v1/beacons/{beacon['id']}")
    assert (status, body) == (200, {"collection": "beacons", "seq": 27, "document": beacon})

    ids: list[str] = []
    after = ""
    for _ in range(20):
        status, body, _ = await get(api, f"/local/v1/beacons?limit=5{after}")
        assert status == 200
        assert body["seq"] == 27
        ids += [doc["id"] for doc in body["documents"]]
        if body["next"] is None:
            break
        after = f"&after={body['next']}"
    assert ids == sorted(b.id for b in mall.beacons)

    upstairs = sorted(a.id for a in mall.areas if a.floor.number == 2)
    status, body, _ = await get(api, "/local/v1/areas?floor=F2")
    assert [doc["id"] for doc in body["documents"]] == upstairs
    status, body, _ = await get(api, "/local/v1/merchants?floor=F2")
    assert {doc["area_id"] for doc in body["documents"]} <= set(upstairs)
    assert len(body["documents"]) == sum(1 for m in mall.merchants if m.area_id in upstairs)
    escalator = mall.connections[0]
    end = escalator.connected_areas[0].area_id
    status, body, _ = await get(api, f"/local/v1/connections?area_id={end}")
    assert escalator.id in [doc["id"] for doc in body["documents"]]
    first = mall.beacons[0]
    status, body, _ = await get(api, f"/local/v1/beacons?major={first.major}&minor={first.minor}")
    assert [doc["id"] for doc in body["documents"]] == [first.id]
    status, body, _ = await get(api, f"/local/v1/merchants?q={mall.merchants[0].name[2:6]}")
    assert mall.merchants[0].id in [doc["id"] for doc in body["documents"]]


async def test_etag_revalidation(
    api: aiohttp.ClientSession, copy: MallCopy, mall: MallData
) -> None:
    await copy.apply_full(snapshot_of(mall, 27))
    path = "/local/v1/beacons?limit=3"
    status, body, response = await get(api, path)
    etag = response.headers["ETag"]
    for offered in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, body, response = await get(api, path, **{"If-None-Match": offered})
        assert (status, body) == (304, None)
        assert response.headers["ETag"] == etag
    status, body, response = await get(api, "/local/v1/beacons?limit=3", method="HEAD")
    assert (status, body, response.headers["ETag"]) == (200, None, etag)
    # Any change of the copy, even one that keeps the cursor, gives a new ETag.
    await copy.apply_full(snapshot_of(mall, 27))
    status, body, response = await get(api, path, **{"If-None-Match": etag})
    assert status == 200
    assert response.headers["ETag"] != etag
    assert len(body["documents"]) == 3


async def test_no_copy_yet(api: aiohttp.ClientSession) -> None:
    for path in ("/local/v1/entity", "/local/v1/beacons", "/local/v1/beacons/b-1"):
        status, body, response = await get(api, path, **{"If-None-Match": "*"})
        assert assert_error(status, body, response, 503) == "SERVICE_UNAVAILABLE"
        assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("path", "method", "status", "code"),
    [
        ("/local/v1/robots", "GET", 404, "NOT_FOUND"),
        ("/local/v1/robots/r-1", "GET", 404, "NOT_FOUND"),
        ("/local/v1/beacons/no-such-beacon", "GET", 404, "NOT_FOUND"),
        ("/local/v1/beacons/a%20b", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons/b-1/deeper", "GET", 404, "NOT_FOUND"),
        ("/local/v1", "GET", 404, "NOT_FOUND"),
        ("/local/v1/beacons?limit=0", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?limit=1001", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?limit=ten", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?limit=1&limit=2", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?colour=red", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/areas?floor=2", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?after=a%20b", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?mac=zz", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?major=70000", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/merchants?q=", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/merchants?q=%00", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?area_id=%ff", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons/%ff", "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons?after=" + "x" * 5000, "GET", 422, "VALIDATION_ERROR"),
        ("/local/v1/beacons", "POST", 405, "METHOD_NOT_ALLOWED"),
        ("/local/v1/beacons/b-1f-west-01", "DELETE", 405, "METHOD_NOT_ALLOWED"),
        ("/local/v1/entity", "PUT", 405, "METHOD_NOT_ALLOWED"),
        ("/local/v1/whatever", "PATCH", 405, "METHOD_NOT_ALLOWED"),
    ],
)
async def test_bad_requests_get_the_error_envelope(
    api: aiohttp.ClientSession,
    copy: MallCopy,
    mall: MallData,
    path: str,
    method: str,
    status: int,
    code: str,
) -> None:
    await copy.apply_full(snapshot_of(mall, 27))
    before = await copy.version()
    got, body, response = await get(api, path, method, **{"X-Request-ID": "kiosk-7-request-42"})
    assert assert_error(got, body, response, status) == code
    assert body["error"]["request_id"] == "kiosk-7-request-42"
    if status == 422:
        assert body["error"]["details"]["errors"][0]["loc"][0] in ("query", "path")
    if status == 405:
        assert response.headers["Allow"] == "GET, HEAD"
    assert await copy.version() == before


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mallcopy_crash_worker", WORKER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_each_answer_is_one_snapshot_while_deltas_apply(tmp_path: Path) -> None:
    """A kiosk polling during a sync gets documents exactly as they were at the ``seq`` the
    answer reports (the worker's model says what that is)."""
    model = load_worker()
    async with Database(tmp_path / "gateway.sqlite3") as db:
        copy = MallCopy(db, model.ENTITY)
        await copy.migrate()
        await copy.apply_full(model.full_at(model.START))
        app = web.Application()
        add_local_api(app, copy)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()

        async def sync() -> None:
            for _ in range(60):
                cursor = await copy.cursor()
                await copy.apply_delta(model.page_after(cursor))
                await asyncio.sleep(0)

        async def poll(session: aiohttp.ClientSession) -> int:
            status, body, _ = await get(session, "/local/v1/beacons?limit=1000")
            assert status == 200
            expected = sorted(model.state_at(body["seq"])["beacons"], key=lambda d: d["id"])
            assert body["documents"] == expected
            return int(body["seq"])

        writer = asyncio.create_task(sync())
        seen: set[int] = set()
        try:
            async with aiohttp.ClientSession(str(server.make_url(""))) as session:
                for _ in range(300):
                    done = writer.done()
                    seen.update(await asyncio.gather(*(poll(session) for _ in range(4))))
                    if done:
                        break
            await asyncio.wait_for(writer, 60)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await server.close()
    assert len(seen) >= 3, "the reads did not overlap the sync"


async def test_served_while_the_central_server_is_down(tmp_path: Path) -> None:
    async with Database(tmp_path / "gateway" / "gateway.sqlite3") as db:
        copy = MallCopy(db, ENTITY)
        await copy.migrate()
        async with run_server(server_settings(tmp_path), tmp_path) as central:
            mall = await import_sample_mall(central)
            gateway = await enrolled_gateway(central, ENTITY)
            async with gateway.client() as client:
                response = await client.get("/api/orchestrators/sync/full")
                await copy.apply_full(SyncFullResponse.model_validate_json(response.content))
            base_url = central.base_url
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(base_url=base_url, timeout=5) as unreachable:
                await unreachable.get("/healthz")
        app = web.Application()
        add_local_api(app, copy)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession(str(server.make_url(""))) as session:
                status, body, _ = await get(session, "/local/v1/merchants?limit=1000")
                assert status == 200
                served = sorted(body["documents"], key=lambda d: d["id"])
                assert served == sorted(mall.documents()["merchants"], key=lambda d: d["id"])
                status, body, _ = await get(session, "/local/v1/entity")
                assert (status, body["document"]) == (200, mall.entity.document())
        finally:
            await server.close()
