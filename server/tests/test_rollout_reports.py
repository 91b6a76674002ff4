"""``POST /api/orchestrators/reports/rollouts`` and ``GET /api/admin/entities/{id}/rollouts``,
against a real server (uvicorn on loopback, SQLite) and gateways that register as the protocol
says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navign_server.ratelimit import Rate, RateLimiter

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall
from .test_registration import assert_error

ENTITY = "mall-riverside"
PATH = "/api/orchestrators/reports/rollouts"
STATES = (
    "pending",
    "offered",
    "transferring",
    "verifying",
    "installing",
    "rebooting",
    "confirmed",
    "failed",
    "rolled_back",
)


@pytest.fixture
async def reporting(server: RunningServer) -> tuple[RunningServer, TestGateway]:
    await import_sample_mall(server)
    return server, await enrolled_gateway(server)


def moment(seconds: float) -> datetime:
    return datetime(2026, 11, 27, 10, 0, 0, 250_000, tzinfo=UTC) + timedelta(seconds=seconds)


def when(seconds: float) -> str:
    """As the gateway writes it (and, with a fraction, as the server gives it back)."""
    return moment(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def counts(**given: int) -> dict[str, int]:
    states = {state: given.get(state, 0) for state in STATES}
    return {**states, "total": given.get("total", sum(states.values()))}


def summary(seconds: float = 0, **changes: Any) -> dict[str, Any]:
    """A body as the gateway's rollout engine sends it (``RolloutEngine._rollout_report``)."""
    body: dict[str, Any] = {
        "entity_id": ENTITY,
        "rollout_id": "fwa-0123456789abcdef",
        "firmware_id": "fw-esp32c3-1.2.0-5e1ecb55ccfc",
        "state": "running",
        "state_reason": "",
        "current_wave": 1,
        "wave_count": 3,
        "counts": counts(pending=6, transferring=1, confirmed=2, failed=1),
        "at": when(seconds),
    }
    body.update(changes)
    return body


async def listed(server: RunningServer, **query: str) -> list[dict[str, Any]]:
    async with server.admin() as admin:
        response = await admin.get(f"/api/admin/entities/{ENTITY}/rollouts", params=query)
    assert response.status_code == 200, response.text
    rollouts: list[dict[str, Any]] = response.json()["rollouts"]
    return rollouts


async def test_a_report_is_stored_and_read_back_with_its_gateway(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        response = await client.post(PATH, json=summary(5))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1}

    (rollout,) = await listed(server)
    received = rollout.pop("received_at")
    assert rollout == {**summary(5), "reported_by": "gw-1"}
    assert abs(datetime.fromisoformat(received) - datetime.now(UTC)) < timedelta(minutes=1)


async def test_reports_are_idempotent_and_a_late_one_does_not_overwrite(reporting: Any) -> None:
    server, gateway = reporting
    newest = summary(
        20, state="holding", state_reason="holding 600 s before wave 2", counts=counts(confirmed=3)
    )
    async with gateway.client() as client:
        for body in (summary(10), newest, newest, summary(15, state="running")):
            response = await client.post(PATH, json=body)
            assert response.status_code == 200, response.text
        # Another rollout, pending on the ro-<seq> id of an event without an assignment id.
        other = summary(12, rollout_id="ro-42", state="pending", current_wave=0, wave_count=0)
        response = await client.post(PATH, json={**other, "counts": counts()})
        assert response.status_code == 200, response.text

    rollouts = await listed(server)
    assert [(r["rollout_id"], r["state"], r["at"]) for r in rollouts] == [
        ("fwa-0123456789abcdef", "holding", when(20)),
        ("ro-42", "pending", when(12)),
    ]
    assert rollouts[0]["state_reason"] == "holding 600 s before wave 2"
    stored = await server.ctx.store.list_rollout_statuses(ENTITY)
    assert len(stored) == 2


async def test_admin_filters_and_an_unknown_entity(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        for body in (
            summary(1, rollout_id="fwa-a", state="completed", current_wave=3),
            summary(2, rollout_id="fwa-b", firmware_id="fw-other"),
            summary(3, rollout_id="fwa-c", state="halted", state_reason="wave 1: 1 of 4 failed"),
        ):
            assert (await client.post(PATH, json=body)).status_code == 200
    assert [r["rollout_id"] for r in await listed(server)] == ["fwa-c", "fwa-b", "fwa-a"]
    assert [r["rollout_id"] for r in await listed(server, state="completed")] == ["fwa-a"]
    assert [r["rollout_id"] for r in await listed(server, firmware_id="fw-other")] == ["fwa-b"]
    assert [r["rollout_id"] for r in await listed(server, limit="1")] == ["fwa-c"]
    assert await listed(server, state="paused") == []

    async with server.admin() as admin:
        base = f"/api/admin/entities/{ENTITY}/rollouts"
        assert_error(await admin.get(base, params={"state": "exploded"}), 422, "VALIDATION_ERROR")
        assert_error(await admin.get(base, params={"firmware_id": "a/b"}), 422, "VALIDATION_ERROR")
        assert_error(await admin.get(base, params={"limit": "0"}), 422, "VALIDATION_ERROR")
        unknown = await admin.get("/api/admin/entities/mall-nowhere/rollouts")
        assert_error(unknown, 404, "ENTITY_NOT_FOUND")
    async with server.anonymous() as anonymous:
        assert_error(await anonymous.get(base), 401, "AUTH_MISSING")


@pytest.mark.parametrize(
    "changes",
    [
        {"counts": counts(confirmed=2, total=3)},  # the states do not add up to total
        {"counts": {**counts(), "failed": -1, "total": -1}},
        {"counts": {k: v for k, v in counts(confirmed=1).items() if k != "rolled_back"}},
        {"counts": {**counts(), "idle": 0}},
        {"current_wave": 4},  # beyond wave_count
        {"current_wave": -1},
        {"wave_count": 1.5},
        {"state": "exploded"},
        {"state_reason": "x" * 1001},
        {"rollout_id": "../../etc/passwd"},
        {"rollout_id": ""},
        {"firmware_id": "f" * 65},
        {"at": "2026-11-27T10:00:00"},
        {"at": "yesterday"},
        {"colour": "red"},
        {"entity_id": None},
    ],
)
async def test_bad_reports_are_refused_and_store_nothing(
    reporting: Any, changes: dict[str, Any]
) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        response = await client.post(PATH, json=summary(**changes))
    assert_error(response, 422, "VALIDATION_ERROR")
    assert response.json()["error"]["details"]["errors"]
    assert await server.ctx.store.list_rollout_statuses(ENTITY) == []


async def test_malformed_bodies_are_refused(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        not_json = await client.post(
            PATH, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert_error(not_json, 422, "VALIDATION_ERROR")
        duplicate = b'{"entity_id": "mall-riverside", "entity_id": "mall-other"}'
        response = await client.post(
            PATH, content=duplicate, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422, "VALIDATION_ERROR")
        text = await client.post(PATH, content=b"{}", headers={"Content-Type": "text/plain"})
        assert_error(text, 415, "UNSUPPORTED_MEDIA_TYPE")
        huge = summary(state_reason="x" * 1000, padding="y" * (2 * 1024 * 1024))
        assert_error(await client.post(PATH, json=huge), 413, "PAYLOAD_TOO_LARGE")
    assert await server.ctx.store.list_rollout_statuses(ENTITY) == []


async def test_auth_and_entity_scoping(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        other = await client.post(PATH, json=summary(entity_id="mall-other"))
        assert_error(other, 403, "AUTH_FORBIDDEN")
    async with server.anonymous() as anonymous:
        assert_error(await anonymous.post(PATH, json=summary()), 401, "AUTH_MISSING")
        forged = await anonymous.post(
            PATH, json=summary(), headers={"Authorization": "Bearer not.a.token"}
        )
        assert forged.status_code == 401, forged.text
    async with server.admin() as admin:  # an admin token is not a gateway's
        assert (await admin.post(PATH, json=summary())).status_code == 401
    assert await server.ctx.store.list_rollout_statuses(ENTITY) == []
    assert await server.ctx.store.list_rollout_statuses("mall-other") == []


async def test_disabled_gateway_is_refused(reporting: Any) -> None:
    server, gateway = reporting
    async with server.admin() as admin:
        response = await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
        assert response.status_code == 200, response.text
    async with gateway.client() as client:
        assert_error(await client.post(PATH, json=summary()), 403, "ORCHESTRATOR_DISABLED")
    assert await server.ctx.store.list_rollout_statuses(ENTITY) == []


async def test_reports_share_the_gateways_rate_limit(reporting: Any) -> None:
    server, gateway = reporting
    server.ctx.limits.requests = RateLimiter(Rate(3, 60))
    async with gateway.client() as client:
        statuses = [(await client.post(PATH, json=summary(i))).status_code for i in range(3)]
        limited = await client.post(PATH, json=summary(10, state="paused"))
    assert statuses == [200, 200, 200]
    assert_error(limited, 429, "RATE_LIMIT_EXCEEDED")
    assert int(limited.headers["retry-after"]) >= 1
    (stored,) = await server.ctx.store.list_rollout_statuses(ENTITY)
    assert stored.at == moment(2)  # the refused report is not stored


async def test_two_gateways_of_one_entity(reporting: Any) -> None:
    server, first = reporting
    second = await enrolled_gateway(server, ENTITY, "gw-2")
    async with first.client() as client:
        assert (await client.post(PATH, json=summary(1))).status_code == 200
    async with second.client() as client:
        assert (await client.post(PATH, json=summary(2, state="paused"))).status_code == 200
    (rollout,) = await listed(server)
    assert (rollout["state"], rollout["reported_by"]) == ("paused", "gw-2")
