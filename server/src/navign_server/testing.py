"""A real server in this process for tests of other components: uvicorn on 127.0.0.1, real
SQLite in a temporary directory, an admin token, and a gateway that signs its requests as the
protocol says. Test support only: it needs the workspace's dev dependencies (httpx)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.mall import MallData
from navign_proto.manifest import ImageEntry, ReleaseManifest, format_time, sign_manifest
from navign_proto.signing import sign_request
from navign_server.app import Server, create_app
from navign_server.auth.principals import hash_secret, new_admin_token
from navign_server.context import ServerContext
from navign_server.settings import ServerSettings
from navign_server.storage.base import AdminToken

EXAMPLE_MALL = Path(__file__).resolve().parents[3] / "proto" / "examples" / "sample-mall.json"
STARTUP_TIMEOUT = 20.0
#: Seconds a server process gets to answer /healthz, and to stop after SIGTERM (then SIGKILL).
PROCESS_START_TIMEOUT = 60.0
PROCESS_STOP_TIMEOUT = 20.0


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


# -- the server as its own process -------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``navign-server serve`` as a child process on 127.0.0.1, SQLite in ``workdir``.

    Restartable on the same port and database (:meth:`start` after :meth:`stop` or
    :meth:`kill`), which end-to-end tests use to cut a gateway's uplink. The admin token is made
    once with ``navign-server create-admin-token``. ``environment`` adds variables
    (``NAVIGN_SERVER_*`` settings) to the server's environment.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        environment: Mapping[str, str] | None = None,
        port: int | None = None,
        preexec_fn: Callable[[], object] | None = None,
        log_format: str = "json",
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.db_url = f"sqlite:///{workdir / 'navign.db'}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_SERVER_")}
        self.env.update(
            NAVIGN_SERVER_ENVIRONMENT="development",
            NAVIGN_SERVER_LOG_LEVEL="warning",
            NAVIGN_SERVER_DATA_DIR=str(workdir / "data"),
            NAVIGN_SERVER_PUBLIC_URL=f"http://127.0.0.1:{self.port}",
        )
        self.env.update(environment or {})
        self.preexec_fn = preexec_fn
        self.log_format = log_format
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_token = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_admin_token(self) -> str:
        command = [sys.executable, "-m", "navign_server.cli", "create-admin-token"]
        done = subprocess.run(
            [*command, "--db", self.db_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=self.env,
            cwd=self.workdir,
        )
        return done.stdout.strip().splitlines()[-1]

    def start(self, timeout: float = PROCESS_START_TIMEOUT) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.admin_token:
            self.admin_token = self.create_admin_token()
        command = [sys.executable, "-m", "navign_server.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--db", self.db_url, "--log-format", self.log_format]
        with (self.workdir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.workdir / 'server.log'}")
            if self.healthz() == 200:
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"no healthy server after {timeout:g} s")

    def healthz(self) -> int:
        """The status of GET /healthz, or 0 when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def stop(self, timeout: float = PROCESS_STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, or a power cut of the server's machine."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=PROCESS_STOP_TIMEOUT)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- signed releases ---------------------------------------------------------------------------

RELEASE_CREATED = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def payload(size: int, seed: str) -> bytes:
    """``size`` deterministic bytes that do not compress (an artifact for tests)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def image_manifest(
    image: bytes, version: str = "1.0.0", *, target: str = "esp32", **changes: Any
) -> ReleaseManifest:
    """The manifest of a whole-image release of ``image`` (unsigned; sign with
    ``navign_proto.manifest.sign_manifest``)."""
    values: dict[str, Any] = {
        "name": "navign-beacon-fw",
        "version": version,
        "secure_version": 1,
        "target": target,
        "kind": "image",
        "image": ImageEntry(size=len(image), sha256=hashlib.sha256(image).hexdigest()),
        "created_at": format_time(RELEASE_CREATED),
    }
    values.update(changes)
    return ReleaseManifest(**values)


class Releases:
    """Signs and uploads releases as an operator would."""

    def __init__(self, server: RunningServer, key: ec.EllipticCurvePrivateKey) -> None:
        self.server = server
        self.key = key

    def envelope(self, manifest: ReleaseManifest) -> dict[str, Any]:
        return sign_manifest(manifest, [self.key])

    async def create(
        self, envelope: dict[str, Any] | str, channel: str = "stable", **extra: Any
    ) -> httpx.Response:
        async with self.server.admin() as admin:
            return await admin.post(
                "/api/admin/releases", json={"envelope": envelope, "channel": channel, **extra}
            )

    async def put_artifact(
        self, release_id: str, artifact: bytes, **headers: str
    ) -> httpx.Response:
        async with self.server.admin() as admin:
            return await admin.put(
                f"/api/admin/releases/{release_id}/artifact",
                content=artifact,
                headers={"Content-Type": "application/octet-stream", **headers},
            )

    async def publish(
        self, manifest: ReleaseManifest, artifact: bytes, channel: str = "stable", **extra: Any
    ) -> dict[str, Any]:
        created = await self.create(self.envelope(manifest), channel, **extra)
        assert created.status_code == 201, created.text
        uploaded = await self.put_artifact(created.json()["release_id"], artifact)
        assert uploaded.status_code == 200, uploaded.text
        body: dict[str, Any] = uploaded.json()
        return body
