"""`navign-server serve` as a real process: start-up, the first admin token from the CLI, and a
clean shutdown (SIGTERM) while gateway event streams are open."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.signing import sign_request

from .conftest import sample_mall

ENTITY = "mall-riverside"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "navign_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_SERVER_")}
    env["NAVIGN_SERVER_ENVIRONMENT"] = "development"
    db = f"sqlite:///{tmp_path / 'db' / 'navign.db'}"
    created = cli("create-admin-token", "--db", db, "--name", "ops", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("nva_")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "navign_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            db,
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("server did not come up")
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        yield process, base, token
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_serve_shuts_down_cleanly_with_open_streams(
    served: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, base, admin_token = served
    admin = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    )
    assert admin.post(f"/api/admin/entities/{ENTITY}/import", json=sample_mall()).status_code == 200
    enrollment = admin.post(
        "/api/admin/enrollment-tokens", json={"entity_id": ENTITY, "orchestrator_id": "gw-1"}
    ).json()["token"]
    key = keys.generate_private_key()
    body = canonical_json(
        {
            "entity_id": ENTITY,
            "orchestrator_id": "gw-1",
            "version": "0.1.0",
            "capabilities": [],
            "public_key": keys.public_key_to_pem(key.public_key()),
            "heartbeat_interval": 30,
            "local_address": "http://gw.local:8080",
            "enrollment_token": enrollment,
        }
    )
    headers = {
        "Content-Type": "application/json",
        **sign_request(key, "POST", "/api/orchestrators/register", "", body),
    }
    registered = httpx.post(f"{base}/api/orchestrators/register", content=body, headers=headers)
    assert registered.status_code == 200, registered.text
    token = registered.json()["token"]
    stream_headers = {"Authorization": f"Bearer {token}", "X-Entity-ID": ENTITY}

    with (
        httpx.Client(base_url=base, timeout=30) as client,
        client.stream("GET", "/api/orchestrators/events", headers=stream_headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_bytes()
        first = next(chunks)
        assert b"retry:" in first
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            for _ in chunks:  # the stream must end, not hang
                if time.monotonic() - started > 20:
                    raise AssertionError("stream still open 20 s after SIGTERM")
        except httpx.RemoteProtocolError:
            pass  # ended by closing the connection: the gateway reconnects with Last-Event-ID
    # uvicorn re-raises the signal it handled once it has shut down, hence -SIGTERM.
    assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"shutdown took {elapsed:.1f} s"
    output = process.stdout.read() if process.stdout else ""
    assert '"level": "error"' not in output
    assert "ready" in output
    assert "stopped cleanly" in output  # the lifespan's shutdown ran to its end
