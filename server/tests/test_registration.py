"""Enrollment, signed registration, tokens and revocation, through a real server."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import jwt
import pytest

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.signing import sign_request
from navign_server.auth.principals import hash_secret
from navign_server.storage.base import EnrollmentToken, NotFoundError, OrchestratorStatus

from .conftest import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    enrollment_token,
    import_sample_mall,
)

ENTITY = "mall-riverside"


@pytest.fixture
async def mall_server(server: RunningServer) -> RunningServer:
    await import_sample_mall(server)
    return server


def assert_error(response: object, status: int, code: str) -> None:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == response.headers["x-request-id"]


async def assert_not_registered(server: RunningServer, orchestrator_id: str) -> None:
    with pytest.raises(NotFoundError):
        await server.ctx.store.get_orchestrator(ENTITY, orchestrator_id)


async def test_enrollment_token_registration_and_token_use(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-1")
    response = await gateway.register(await enrollment_token(mall_server, ENTITY, "gw-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["assigned_id"] == "gw-1"
    assert body["initial_sync_required"] is True
    assert body["sync_endpoints"]["events"].endswith("/api/orchestrators/events")
    assert body["expires_at"] > time.time() + 3000
    async with gateway.client() as client:
        checksum = await client.get(
            "/api/orchestrators/sync/checksum", params={"entity_id": ENTITY}
        )
    assert checksum.status_code == 200, checksum.text
    orchestrator = await mall_server.ctx.store.get_orchestrator(ENTITY, "gw-1")
    assert orchestrator.status is OrchestratorStatus.ACTIVE
    assert orchestrator.key_id == keys.key_id(gateway.key.public_key())


async def test_token_is_an_es256_jwt_verifiable_with_the_jwks(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    assert gateway.token is not None
    async with mall_server.anonymous() as client:
        jwks = (await client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(gateway.token)
    assert header["alg"] == "ES256"
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        gateway.token, jwt.PyJWK(jwk).key, algorithms=["ES256"], issuer="navign-server"
    )
    assert claims["sub"] == "gw-1"
    assert claims["entity_id"] == ENTITY
    assert claims["scope"] == "orchestrator"
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["jti"]


async def test_reregistration_with_the_pinned_key_needs_no_token(
    mall_server: RunningServer,
) -> None:
    gateway = await enrolled_gateway(mall_server)
    again = await gateway.register()
    assert again.status_code == 200, again.text
    assert again.json()["initial_sync_required"] is False


async def test_another_key_for_a_pinned_gateway_is_refused(mall_server: RunningServer) -> None:
    await enrolled_gateway(mall_server)
    impostor = TestGateway(mall_server, ENTITY, "gw-1")
    assert_error(await impostor.register(), 403, "AUTH_KEY_MISMATCH")
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    assert_error(await impostor.register(token), 403, "AUTH_KEY_MISMATCH")


async def test_enrollment_token_cannot_enroll_a_second_key(mall_server: RunningServer) -> None:
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    first = TestGateway(mall_server, ENTITY, "gw-1")
    assert (await first.register(token)).status_code == 200
    second = TestGateway(mall_server, ENTITY, "gw-1")
    assert_error(await second.register(token), 403, "AUTH_KEY_MISMATCH")
    pinned = await mall_server.ctx.store.get_orchestrator(ENTITY, "gw-1")
    assert pinned.key_id == keys.key_id(first.key.public_key())


async def test_concurrent_registrations_with_one_token(mall_server: RunningServer) -> None:
    """Two gateways race with the same token: exactly one is enrolled."""
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    racers = [TestGateway(mall_server, ENTITY, "gw-1") for _ in range(2)]
    responses = await asyncio.gather(*(g.register(token) for g in racers))
    assert sorted(r.status_code for r in responses) == [200, 403]


async def test_enrollment_token_bound_to_its_gateway(mall_server: RunningServer) -> None:
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    other = TestGateway(mall_server, ENTITY, "gw-2")
    assert_error(await other.register(token), 401, "ENROLLMENT_TOKEN_INVALID")
    await assert_not_registered(mall_server, "gw-2")
    # The refusal did not consume it: the right gateway can still use it.
    assert (await TestGateway(mall_server, ENTITY, "gw-1").register(token)).status_code == 200


async def test_expired_enrollment_token(mall_server: RunningServer) -> None:
    now = mall_server.ctx.clock()
    await mall_server.ctx.store.create_enrollment_token(
        EnrollmentToken(
            token_hash=hash_secret("nve_expired-token-0123"),
            entity_id=ENTITY,
            orchestrator_id="gw-1",
            created_at=now - timedelta(hours=2),
            expires_at=now - timedelta(hours=1),
            created_by="test",
        )
    )
    gateway = TestGateway(mall_server, ENTITY, "gw-1")
    assert_error(await gateway.register("nve_expired-token-0123"), 401, "ENROLLMENT_TOKEN_INVALID")
    await assert_not_registered(mall_server, "gw-1")


async def test_unknown_gateway_waits_for_approval(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-new")
    response = await gateway.register()
    assert_error(response, 403, "ORCHESTRATOR_PENDING_APPROVAL")
    assert response.headers["retry-after"] == "60"
    pending = await mall_server.ctx.store.get_orchestrator(ENTITY, "gw-new")
    assert pending.status is OrchestratorStatus.PENDING
    async with mall_server.admin() as admin:
        approved = await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-new/approve")
    assert approved.status_code == 200, approved.text
    assert (await gateway.register()).status_code == 200


async def test_preregistered_key_registers_without_token(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-pre")
    async with mall_server.admin() as admin:
        response = await admin.post(
            "/api/admin/preregistered-keys",
            json={
                "entity_id": ENTITY,
                "orchestrator_id": "gw-pre",
                "public_key": keys.public_key_to_pem(gateway.key.public_key()),
            },
        )
    assert response.status_code == 201, response.text
    assert (await gateway.register()).status_code == 200


async def test_tampered_body_is_refused_and_nothing_is_written(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-1")
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    body = canonical_json(gateway.register_body(token))
    headers = sign_request(gateway.key, "POST", "/api/orchestrators/register", "", body)
    tampered = body.replace(b'"heartbeat_interval":30', b'"heartbeat_interval":31')
    async with mall_server.anonymous() as client:
        response = await client.post(
            "/api/orchestrators/register",
            content=tampered,
            headers={"Content-Type": "application/json", **headers},
        )
    assert_error(response, 401, "AUTH_INVALID_SIGNATURE")
    await assert_not_registered(mall_server, "gw-1")
    # The token was not consumed by the refused attempt.
    assert (await gateway.register(token)).status_code == 200


async def test_stale_timestamp_is_refused(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-1")
    token = await enrollment_token(mall_server, ENTITY, "gw-1")
    response = await gateway.signed_post(
        "/api/orchestrators/register",
        gateway.register_body(token),
        timestamp=int(time.time()) - 400,
    )
    assert_error(response, 401, "AUTH_TIMESTAMP_SKEW")
    assert response.json()["error"]["details"]["max_skew_seconds"] == 300
    await assert_not_registered(mall_server, "gw-1")


async def test_replayed_request_is_refused(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    body = canonical_json({"entity_id": ENTITY, "orchestrator_id": "gw-1"})
    headers = {
        "Content-Type": "application/json",
        **sign_request(gateway.key, "POST", "/api/orchestrators/token", "", body),
    }
    async with mall_server.anonymous() as client:
        first = await client.post("/api/orchestrators/token", content=body, headers=headers)
        replay = await client.post("/api/orchestrators/token", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert_error(replay, 401, "AUTH_NONCE_REUSED")


async def test_unknown_entity(server: RunningServer) -> None:
    gateway = TestGateway(server, "mall-nowhere", "gw-1")
    assert_error(await gateway.register(), 404, "ENTITY_NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 422, "VALIDATION_ERROR"),
        (b'{"entity_id": "a", "entity_id": "b"}', "application/json", 422, "VALIDATION_ERROR"),
        (b"[]", "application/json", 422, "VALIDATION_ERROR"),
        (b'{"entity_id": 5}', "application/json", 422, "VALIDATION_ERROR"),
        (b"entity_id=mall", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
async def test_malformed_registration(
    mall_server: RunningServer, body: bytes, content_type: str, status: int, code: str
) -> None:
    async with mall_server.anonymous() as client:
        response = await client.post(
            "/api/orchestrators/register", content=body, headers={"Content-Type": content_type}
        )
    assert_error(response, status, code)
    assert await mall_server.ctx.store.list_orchestrators() == []


async def test_unknown_field_and_bad_key_are_refused(mall_server: RunningServer) -> None:
    gateway = TestGateway(mall_server, ENTITY, "gw-1")
    response = await gateway.signed_post(
        "/api/orchestrators/register", gateway.register_body(enrolment_token="x" * 10)
    )
    assert_error(response, 422, "VALIDATION_ERROR")
    assert "enrolment_token" in response.text
    response = await gateway.signed_post(
        "/api/orchestrators/register", gateway.register_body(public_key="not a key")
    )
    assert_error(response, 422, "VALIDATION_ERROR")
    assert await mall_server.ctx.store.list_orchestrators() == []


async def test_refresh_issues_a_new_token(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    old = gateway.token
    response = await gateway.refresh()
    assert response.status_code == 200, response.text
    assert gateway.token != old
    async with gateway.client() as client:
        assert (await client.get("/api/orchestrators/sync/checksum")).status_code == 200


async def test_refresh_signed_by_another_key_is_refused(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    response = await gateway.signed_post(
        "/api/orchestrators/token",
        {"entity_id": ENTITY, "orchestrator_id": "gw-1"},
        key=keys.generate_private_key(),
    )
    assert_error(response, 401, "AUTH_INVALID_SIGNATURE")
    stranger = TestGateway(mall_server, ENTITY, "gw-unknown")
    assert_error(await stranger.refresh(), 401, "AUTH_INVALID_SIGNATURE")


async def test_disabling_rejects_tokens_at_once(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    async with mall_server.admin() as admin:
        assert (
            await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
        ).status_code == 200
    async with gateway.client() as client:
        assert_error(
            await client.get("/api/orchestrators/sync/checksum"), 403, "ORCHESTRATOR_DISABLED"
        )
    assert_error(await gateway.refresh(), 403, "ORCHESTRATOR_DISABLED")
    assert_error(await gateway.register(), 403, "ORCHESTRATOR_DISABLED")
    async with mall_server.admin() as admin:
        assert (
            await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/enable")
        ).status_code == 200
    async with gateway.client() as client:  # the token from before the disable stays revoked
        assert_error(
            await client.get("/api/orchestrators/sync/checksum"), 401, "AUTH_INVALID_TOKEN"
        )
    await asyncio.sleep(
        1.1
    )  # tokens carry whole seconds; a fresh one must be issued after the revocation
    assert (await gateway.refresh()).status_code == 200
    async with gateway.client() as client:
        assert (await client.get("/api/orchestrators/sync/checksum")).status_code == 200


async def test_a_token_of_mall_a_never_reaches_mall_b(mall_server: RunningServer) -> None:
    async with mall_server.admin() as admin:
        other = {
            "id": "mall-other",
            "type": "mall",
            "name": "Other Mall",
            "bounds": {"min_lon": 0, "min_lat": 0, "max_lon": 1, "max_lat": 1},
        }
        created = await admin.post("/api/admin/entities", json=other)
        assert created.status_code == 201, created.text
    gateway = await enrolled_gateway(mall_server)
    async with gateway.client() as client:
        for path in ("/api/orchestrators/sync/full", "/api/orchestrators/sync/checksum"):
            assert_error(
                await client.get(path, params={"entity_id": "mall-other"}), 403, "AUTH_FORBIDDEN"
            )
        response = await client.get(
            "/api/orchestrators/sync/checksum", headers={"X-Entity-ID": "mall-other"}
        )
        assert_error(response, 403, "AUTH_FORBIDDEN")


async def test_expired_and_forged_access_tokens(mall_server: RunningServer) -> None:
    gateway = await enrolled_gateway(mall_server)
    assert gateway.token is not None
    header = jwt.get_unverified_header(gateway.token)
    claims = jwt.decode(gateway.token, options={"verify_signature": False})
    private = mall_server.ctx.tokens._private[header["kid"]]
    expired = jwt.encode(
        {**claims, "iat": claims["iat"] - 7200, "exp": claims["iat"] - 3600},
        private,
        algorithm="ES256",
        headers={"kid": header["kid"]},
    )
    forged = jwt.encode(
        {**claims, "entity_id": "mall-other"},
        keys.generate_private_key(),
        algorithm="ES256",
        headers={"kid": header["kid"]},
    )
    hs256 = jwt.encode(
        claims,
        "secret-key-secret-key-secret-key!",
        algorithm="HS256",
        headers={"kid": header["kid"]},
    )
    for token, code in (
        (expired, "AUTH_TOKEN_EXPIRED"),
        (forged, "AUTH_INVALID_TOKEN"),
        (hs256, "AUTH_INVALID_TOKEN"),
        ("garbage", "AUTH_INVALID_TOKEN"),
    ):
        gateway.token = token
        async with gateway.client() as client:
            assert_error(await client.get("/api/orchestrators/sync/checksum"), 401, code)
    async with mall_server.anonymous() as client:
        assert_error(await client.get("/api/orchestrators/sync/checksum"), 401, "AUTH_MISSING")
