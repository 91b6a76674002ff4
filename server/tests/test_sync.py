"""Full, delta and checksum sync through a real server; checksums recomputed independently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.mall import MallData

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall, sample_mall
from .test_registration import assert_error

ENTITY = "mall-riverside"


@pytest.fixture
async def synced(server: RunningServer) -> tuple[RunningServer, TestGateway, MallData]:
    mall = await import_sample_mall(server)
    return server, await enrolled_gateway(server), mall


async def full_sync(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get(
        "/api/orchestrators/sync/full", params={"entity_id": ENTITY, **params}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def apply_deltas(
    client: httpx.AsyncClient, data: dict[str, dict[str, dict[str, Any]]], cursor: int, limit: int
) -> tuple[int, str, int]:
    """Apply delta pages to ``data`` like a gateway; returns (cursor, last new_checksum, pages)."""
    checksum = ""
    for pages in range(1, 10_001):
        response = await client.get(
            "/api/orchestrators/sync/delta", params={"cursor": cursor, "limit": limit}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        for change in page["changes"]:
            if change["operation"] == "delete":
                assert "data" not in change
                data[change["type"]].pop(change["id"], None)
            else:
                data[change["type"]][change["id"]] = change["data"]
        checksum = page["new_checksum"]
        local = MallChecksums.of({c: list(data[c].values()) for c in COLLECTIONS}).global_checksum
        assert local == checksum, "the page's new_checksum must match the data after applying it"
        cursor = int(page["next_cursor"])
        if not page["has_more"]:
            return cursor, checksum, pages
    raise AssertionError("delta paging did not finish")  # pragma: no cover


async def test_full_sync_matches_an_independent_checksum(synced: Any) -> None:
    _, gateway, mall = synced
    async with gateway.client() as client:
        body = await full_sync(client)
    expected = mall.documents()
    for name in COLLECTIONS:
        assert sorted(body["data"][name], key=lambda d: d["id"]) == sorted(
            expected[name], key=lambda d: d["id"]
        )
        assert body["metadata"][f"total_{name}"] == len(expected[name])
    assert body["checksum"] == MallChecksums.of(body["data"]).global_checksum
    assert body["entity"]["id"] == ENTITY
    assert body["seq"] == sum(len(v) for v in expected.values())


async def test_full_sync_include_subset(synced: Any) -> None:
    _, gateway, mall = synced
    async with gateway.client() as client:
        body = await full_sync(client, include="beacons,areas")
        assert set(body["data"]) == {"areas", "beacons"}
        assert body["metadata"]["total_merchants"] == len(mall.merchants)
        assert "entity" not in body  # only with everything (protocol §3.4)
        bad = await client.get("/api/orchestrators/sync/full", params={"include": "areas,robots"})
        assert_error(bad, 422, "VALIDATION_ERROR")
        bad = await client.get("/api/orchestrators/sync/full", params={"format": "verbose"})
        assert_error(bad, 422, "VALIDATION_ERROR")


async def test_delta_from_zero_rebuilds_the_mall_in_pages(synced: Any) -> None:
    _, gateway, _ = synced
    async with gateway.client() as client:
        full = await full_sync(client)
        data: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in COLLECTIONS}
        cursor, checksum, pages = await apply_deltas(client, data, 0, limit=5)
    assert pages >= 6
    assert cursor == full["seq"]
    assert checksum == full["checksum"]


async def test_delta_after_updates_and_deletes(synced: Any) -> None:
    server, gateway, _ = synced
    async with gateway.client() as client:
        full = await full_sync(client)
    data = {c: {d["id"]: d for d in full["data"][c]} for c in COLLECTIONS}
    beacon = dict(full["data"]["beacons"][0])
    beacon["name"] = "Renamed beacon"
    async with server.admin() as admin:
        updated = await admin.put(
            f"/api/admin/entities/{ENTITY}/beacons/{beacon['id']}", json=beacon
        )
        assert updated.status_code == 200, updated.text
        doomed = full["data"]["connections"][0]["id"]
        deleted = await admin.delete(f"/api/admin/entities/{ENTITY}/connections/{doomed}")
        assert deleted.status_code == 200, deleted.text
    async with gateway.client() as client:
        response = await client.get("/api/orchestrators/sync/delta", params={"cursor": full["seq"]})
        page = response.json()
        assert [c["operation"] for c in page["changes"]] == ["update", "delete"]
        assert page["base_checksum"] == full["checksum"]
        assert page["changes"][1] == {
            "type": "connections",
            "operation": "delete",
            "id": doomed,
            "updated_at": page["changes"][1]["updated_at"],
            "seq": full["seq"] + 2,
        }
        cursor, checksum, _ = await apply_deltas(client, data, full["seq"], limit=500)
        state = (await client.get("/api/orchestrators/sync/checksum")).json()
    assert checksum == state["checksums"]["global"]
    assert cursor == state["seq"]
    assert doomed not in data["connections"]


async def test_delta_since_a_time(synced: Any) -> None:
    _, gateway, _ = synced
    before = datetime.now(UTC) - timedelta(minutes=5)
    async with gateway.client() as client:
        response = await client.get(
            "/api/orchestrators/sync/delta", params={"since": before.isoformat()}
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["changes"]) == 27
        naive = await client.get(
            "/api/orchestrators/sync/delta", params={"since": "2026-01-01T00:00:00"}
        )
        assert_error(naive, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"cursor": 1, "since": "2026-01-01T00:00:00Z"},
        {"cursor": -1},
        {"cursor": "x"},
        {"cursor": 0, "limit": 0},
        {"cursor": 0, "limit": 5001},
    ],
)
async def test_delta_parameter_errors(synced: Any, params: dict[str, Any]) -> None:
    _, gateway, _ = synced
    async with gateway.client() as client:
        response = await client.get("/api/orchestrators/sync/delta", params=params)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_expired_and_future_cursors_get_410(synced: Any) -> None:
    server, gateway, _ = synced
    async with gateway.client() as client:
        head = (await client.get("/api/orchestrators/sync/checksum")).json()["seq"]
        future = await client.get("/api/orchestrators/sync/delta", params={"cursor": head + 1})
        assert_error(future, 410, "SYNC_CURSOR_EXPIRED")
        await server.ctx.store.prune_history(ENTITY, datetime.now(UTC) + timedelta(seconds=1))
        expired = await client.get("/api/orchestrators/sync/delta", params={"cursor": 0})
        assert_error(expired, 410, "SYNC_CURSOR_EXPIRED")
        assert expired.json()["error"]["details"]["floor"] == head
        current = await client.get("/api/orchestrators/sync/delta", params={"cursor": head})
        assert current.status_code == 200, current.text
        assert current.json()["changes"] == []


async def test_import_is_all_or_nothing(synced: Any) -> None:
    server, _, _ = synced
    before = await server.ctx.store.entity_state(ENTITY)
    broken = sample_mall()
    broken["beacons"][0]["area_id"] = "area-nowhere"
    broken["areas"][0]["name"] = "Changed name that must not land"
    async with server.admin() as admin:
        response = await admin.post(f"/api/admin/entities/{ENTITY}/import", json=broken)
    assert_error(response, 422, "VALIDATION_ERROR")
    after = await server.ctx.store.entity_state(ENTITY)
    assert (after.head, dict(after.checksums)) == (before.head, dict(before.checksums))


async def test_reimport_of_identical_data_changes_nothing(synced: Any) -> None:
    server, _, _ = synced
    before = await server.ctx.store.entity_state(ENTITY)
    async with server.admin() as admin:
        response = await admin.post(f"/api/admin/entities/{ENTITY}/import", json=sample_mall())
    assert response.status_code == 200, response.text
    assert response.json()["changes"] == 0
    assert (await server.ctx.store.entity_state(ENTITY)).head == before.head


@pytest.mark.parametrize("since", ["0.5", "1767225600", "2026-01-01", "2026-01-01 00:00:00Z"])
async def test_delta_since_must_be_rfc3339(synced: Any, since: str) -> None:
    """pydantic alone took ``0.5`` as seconds since the epoch (found by the API fuzzer)."""
    _, gateway, _ = synced
    async with gateway.client() as client:
        response = await client.get("/api/orchestrators/sync/delta", params={"since": since})
        assert_error(response, 422, "VALIDATION_ERROR")
        assert "RFC 3339" in response.json()["error"]["message"]
        lowercase = await client.get(
            "/api/orchestrators/sync/delta", params={"since": "2026-01-01t00:00:00.5+02:00"}
        )
        assert lowercase.status_code == 200, lowercase.text
