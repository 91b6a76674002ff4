"""Defences: every refusal is the JSON envelope with the exact status and code, and changes
nothing. Through a real uvicorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall, sample_mall
from .test_registration import assert_error

ENTITY = "mall-riverside"


@pytest.fixture
async def mall_server(server: RunningServer) -> RunningServer:
    await import_sample_mall(server)
    return server


async def state(server: RunningServer) -> tuple[int, dict[str, str]]:
    current = await server.ctx.store.entity_state(ENTITY)
    return current.head, dict(current.checksums)


async def test_oversized_body_by_content_length(mall_server: RunningServer) -> None:
    before = await state(mall_server)
    area = sample_mall()["areas"][0] | {"id": "area-huge", "description": "x" * 2_000_000}
    async with mall_server.admin() as admin:
        response = await admin.post(f"/api/admin/entities/{ENTITY}/areas", json=area)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await state(mall_server) == before


async def test_oversized_chunked_body(mall_server: RunningServer) -> None:
    """No Content-Length: the limit is enforced on the bytes as they arrive."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "area-huge", "description": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    async with mall_server.admin() as admin:
        response = await admin.post(
            f"/api/admin/entities/{ENTITY}/areas",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unknown_route_and_method(mall_server: RunningServer) -> None:
    async with mall_server.anonymous() as client:
        assert_error(await client.get("/api/nothing/here"), 404, "NOT_FOUND")
        assert_error(await client.delete("/api/orchestrators/register"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    "path",
    [
        "/api/admin/entities/..%2F..%2Fetc%2Fpasswd",
        "/api/admin/entities/mall-riverside/areas/..%2F..%2Fsecrets",
        "/api/admin/entities/mall%00riverside/areas",
        "/api/admin/entities/mall-riverside/robots",
        "/api/admin/entities/" + "a" * 65,
    ],
)
async def test_ids_are_validated(mall_server: RunningServer, path: str) -> None:
    async with mall_server.admin() as admin:
        response = await admin.get(path)
    assert response.status_code in (404, 422), response.text
    assert response.json()["error"]["code"] in ("NOT_FOUND", "VALIDATION_ERROR")


async def test_admin_api_needs_an_admin_token(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    async with mall_server.anonymous() as client:
        assert_error(await client.get("/api/admin/entities"), 401, "AUTH_MISSING")
        response = await client.get(
            "/api/admin/entities", headers={"Authorization": "Bearer nva_not-a-real-token"}
        )
        assert_error(response, 401, "AUTH_INVALID_TOKEN")
        response = await client.get(
            "/api/admin/entities", headers={"Authorization": f"Bearer {gateway.token}"}
        )
        assert_error(response, 401, "AUTH_INVALID_TOKEN")
        response = await client.get("/api/admin/entities", headers={"Authorization": "Basic eA=="})
        assert_error(response, 401, "AUTH_MISSING")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"id": "area-x", "unknown_field": 1}, "unknown_field"),
        ({"id": "area-x", "polygon": "square"}, "polygon"),
        ({"id": 7}, "id"),
    ],
)
async def test_wrong_fields_are_422_with_details(
    mall_server: RunningServer, document: dict[str, Any], fragment: str
) -> None:
    before = await state(mall_server)
    area = sample_mall()["areas"][0] | document
    async with mall_server.admin() as admin:
        response = await admin.post(f"/api/admin/entities/{ENTITY}/areas", json=area)
    assert_error(response, 422, "VALIDATION_ERROR")
    assert any(
        fragment in ".".join(e["loc"]) for e in response.json()["error"]["details"]["errors"]
    )
    assert await state(mall_server) == before


async def test_conflicts_and_missing_documents(mall_server: RunningServer) -> None:
    before = await state(mall_server)
    area = sample_mall()["areas"][0]
    async with mall_server.admin() as admin:
        assert_error(
            await admin.post(f"/api/admin/entities/{ENTITY}/areas", json=area), 409, "CONFLICT"
        )
        missing = area | {"id": "area-missing"}
        assert_error(
            await admin.put(f"/api/admin/entities/{ENTITY}/areas/area-missing", json=missing),
            404,
            "NOT_FOUND",
        )
        assert_error(
            await admin.delete(f"/api/admin/entities/{ENTITY}/areas/area-missing"), 404, "NOT_FOUND"
        )
        assert_error(await admin.get("/api/admin/entities/mall-nowhere"), 404, "ENTITY_NOT_FOUND")
    assert await state(mall_server) == before


async def test_registration_rate_limit_per_address(mall_server: RunningServer) -> None:
    async with mall_server.anonymous() as client:
        statuses = []
        for _ in range(121):
            response = await client.post(
                "/api/orchestrators/register",
                content=b"{}",
                headers={"Content-Type": "application/json"},
            )
            statuses.append(response.status_code)
    assert statuses[:120] == [422] * 120
    assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert int(response.headers["retry-after"]) >= 1


async def test_cors_is_off_by_default(mall_server: RunningServer) -> None:
    async with mall_server.anonymous() as client:
        response = await client.options(
            "/api/admin/entities",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
    assert "access-control-allow-origin" not in response.headers


async def test_request_id_is_echoed(mall_server: RunningServer) -> None:
    async with mall_server.anonymous() as client:
        response = await client.get(
            "/api/admin/entities", headers={"X-Request-ID": "trace-0123456789"}
        )
        assert response.headers["x-request-id"] == "trace-0123456789"
        assert response.json()["error"]["request_id"] == "trace-0123456789"
        bogus = await client.get("/api/admin/entities", headers={"X-Request-ID": "bad id\t!"})
        assert bogus.headers["x-request-id"] != "bad id\t!"


async def test_audit_log_records_authentication_and_admin_actions(
    mall_server: RunningServer,
) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-audit")
    await gateway.register()  # pending: neither token nor known key
    await enrolled_gateway(mall_server)
    async with mall_server.admin() as admin:
        records = (await admin.get("/api/admin/audit", params={"entity_id": ENTITY})).json()[
            "records"
        ]
    actions = [(r["action"], r["outcome"]) for r in records]
    assert ("register", "ORCHESTRATOR_PENDING_APPROVAL") in actions
    assert ("register", "ok") in actions
    assert ("enrollment_token.create", "ok") in actions
    assert ("mall.import", "ok") in actions
    assert all(r["actor"] for r in records)


async def test_metrics_health_and_jwks(mall_server: RunningServer) -> None:
    await enrolled_gateway(mall_server)
    async with mall_server.anonymous() as client:
        health = await client.get("/healthz")
        assert health.json()["status"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert 'navign_registrations_total{outcome="ok"} 1.0' in metrics
        assert "navign_sse_connections 0.0" in metrics
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert jwks["keys"][0]["kty"] == "EC"
        assert "d" not in jwks["keys"][0]  # never the private part


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Integers beyond ±(2**53 - 1) and numbers that overflow to infinity have no canonical
        # JSON form, nor have lone UTF-16 surrogates: storing any of them failed with a 500.
        ("config", '{"type": "display", "config": {"n": 28762037858378947324841551120564224}}'),
        ("config", '{"type": "display", "config": {"n": -9007199254740992}}'),
        ("config", '{"type": "display", "config": {"n": 1e400}}'),
        ("config", '{"type": "display", "config": {"\\udb2c": "lone high surrogate"}}'),
        ("config", '{"type": "display", "config": {"k": ["\\udfdc"]}}'),
        ("areas", "AREA"),
    ],
)
async def test_json_without_a_canonical_form_is_422(
    mall_server: RunningServer, path: str, body: str
) -> None:
    """Found by the API fuzzer (test_fuzz.py)."""
    import json

    if body == "AREA":
        area = sample_mall()["areas"][0] | {"id": "area-new", "name": "Hall \udb2c"}
        body = json.dumps(area)  # ASCII, so the lone surrogate travels as an escape
    before = await state(mall_server)
    async with mall_server.admin() as admin:
        response = await admin.post(
            f"/api/admin/entities/{ENTITY}/{path}",
            content=body.encode(),
            headers={"Content-Type": "application/json"},
        )
    assert_error(response, 422, "VALIDATION_ERROR")
    assert await state(mall_server) == before


@pytest.mark.parametrize(
    "body",
    [
        # A key of the client's choosing is quoted in the error's location and message.
        {"type": "t", "sources": [{}], "terminals": [{}], "metadata": {"k" * 5000: 1}},
        '{"type": "t", "' + "d" * 5000 + '": 1, "' + "d" * 5000 + '": 2}',
    ],
)
async def test_errors_quoting_long_input_still_render(
    mall_server: RunningServer, body: dict[str, Any] | str
) -> None:
    """A message over the envelope's 4096 characters failed to render: a 500 instead."""
    import json

    before = await state(mall_server)
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    async with mall_server.admin() as admin:
        response = await admin.post(
            f"/api/admin/entities/{ENTITY}/tasks",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
    assert_error(response, 422, "VALIDATION_ERROR")
    error = response.json()["error"]
    assert len(error["message"]) <= 4096
    for problem in (error.get("details") or {}).get("errors", []):
        assert all(len(part) <= 100 for part in problem["loc"])
    assert await state(mall_server) == before
