"""A real server in this process for tests of other components: uvicorn on 127.0.0.1, real
SQLite in a temporary directory, an admin token, and a gateway that signs its requests as the
protocol says. Test support only: it needs the workspace's dev dependencies (httpx)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.mall import MallData
from navign_proto.signing import sign_request
from navign_server.app import Server, create_app
from navign_server.auth.principals import hash_secret, new_admin_token
from navign_server.context import ServerContext
from navign_server.settings import ServerSettings
from navign_server.storage.base import AdminToken

EXAMPLE_MALL = Path(__file__).resolve().parents[3] / "proto" / "examples" / "sample-mall.json"
STARTUP_TIMEOUT = 20.0


@dataclass
class RunningServer:
    base_url: str
    ctx: ServerContext
    admin_token: str
    tmp_path: Path

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30.0,
        )

    def anonymous(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0)


def server_settings(tmp_path: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": f"sqlite:///{tmp_path / 'navign.db'}",
        "data_dir": tmp_path / "data",
        "public_url": "http://127.0.0.1:8000",
    }
    values.update(overrides)
    return ServerSettings(**values)


class run_server:  # noqa: N801 - used as a context manager, reads like a function
    def __init__(self, settings: ServerSettings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.uvicorn = Server(config, self.app)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningServer:
        self.task = asyncio.create_task(self.uvicorn.serve())
        for _ in range(int(STARTUP_TIMEOUT / 0.02)):
            if self.uvicorn.started or self.task.done():
                break
            await asyncio.sleep(0.02)
        if not self.uvicorn.started:
            raise RuntimeError("uvicorn did not start")
        port = self.uvicorn.servers[0].sockets[0].getsockname()[1]
        ctx: ServerContext = self.app.state.ctx
        token = new_admin_token()
        await ctx.store.create_admin_token(
            AdminToken(token_hash=hash_secret(token), name="test-admin", created_at=ctx.clock())
        )
        return RunningServer(f"http://127.0.0.1:{port}", ctx, token, self.tmp_path)

    async def __aexit__(self, *exc: object) -> None:
        self.uvicorn.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=20)


def sample_mall() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE_MALL.read_text())
    return data


async def import_sample_mall(server: RunningServer) -> MallData:
    mall = MallData.model_validate(sample_mall())
    async with server.admin() as admin:
        response = await admin.post(
            f"/api/admin/entities/{mall.entity.id}/import", json=sample_mall()
        )
        assert response.status_code == 200, response.text
    return mall


class TestGateway:
    """A gateway as the protocol describes it: its own key, signed requests, a bearer token."""

    __test__ = False

    def __init__(self, server: RunningServer, entity_id: str, orchestrator_id: str) -> None:
        self.server = server
        self.entity_id = entity_id
        self.orchestrator_id = orchestrator_id
        self.key: ec.EllipticCurvePrivateKey = keys.generate_private_key()
        self.token: str | None = None

    def register_body(self, enrollment_token: str | None = None, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "entity_id": self.entity_id,
            "orchestrator_id": self.orchestrator_id,
            "version": "0.1.0",
            "capabilities": ["firmware_distribution", "beacon_management"],
            "public_key": keys.public_key_to_pem(self.key.public_key()),
            "heartbeat_interval": 30,
            "local_address": "http://gw.local:8080",
        }
        if enrollment_token is not None:
            body["enrollment_token"] = enrollment_token
        body.update(changes)
        return body

    async def signed_post(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else canonical_json(body)
        signed = sign_request(key or self.key, "POST", path, "", raw, timestamp=timestamp)
        async with self.server.anonymous() as client:
            return await client.post(
                path,
                content=raw,
                headers={"Content-Type": "application/json", **signed, **(headers or {})},
            )

    async def register(self, enrollment_token: str | None = None) -> httpx.Response:
        response = await self.signed_post(
            "/api/orchestrators/register", self.register_body(enrollment_token)
        )
        if response.status_code == 200:
            self.token = response.json()["token"]
        return response

    async def refresh(self) -> httpx.Response:
        response = await self.signed_post(
            "/api/orchestrators/token",
            {"entity_id": self.entity_id, "orchestrator_id": self.orchestrator_id},
        )
        if response.status_code == 200:
            self.token = response.json()["token"]
        return response

    def client(self) -> httpx.AsyncClient:
        assert self.token is not None, "register first"
        return httpx.AsyncClient(
            base_url=self.server.base_url,
            headers={
                "Authorization": f"Bearer {self.token}",
                "X-Entity-ID": self.entity_id,
                "X-Orchestrator-ID": self.orchestrator_id,
            },
            timeout=30.0,
        )


async def enrollment_token(server: RunningServer, entity_id: str, orchestrator_id: str) -> str:
    async with server.admin() as admin:
        response = await admin.post(
            "/api/admin/enrollment-tokens",
            json={"entity_id": entity_id, "orchestrator_id": orchestrator_id, "ttl_seconds": 600},
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token


async def enrolled_gateway(
    server: RunningServer, entity_id: str = "mall-riverside", orchestrator_id: str = "gw-1"
) -> TestGateway:
    gateway = TestGateway(server, entity_id, orchestrator_id)
    response = await gateway.register(await enrollment_token(server, entity_id, orchestrator_id))
    assert response.status_code == 200, response.text
    return gateway
