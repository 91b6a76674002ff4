"""The gateway process: idle memory and start-to-ready with a warm copy (issue 4, item 11).

A real server process holds a generated mall (``--documents``, default 50,000); a real
``navign-gateway run`` process enrolls, syncs it fully and is stopped. Then, ``--runs`` times:
the gateway starts again on its warm copy and the time from spawning the process to its
``READY=1`` (systemd's notify protocol, received on a socket this script binds, as systemd
would) is measured; after it has connected and sat idle for ``--idle`` seconds its resident
memory (VmRSS) is read. Medians are reported.

For scale, the same run also measures the floor under it: this Python importing only the
libraries the gateway runs on (no code of ours), its event loop idle.

    uv run python bench/gateway_daemon.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as h
import _mall as mall
import aiohttp

from navign_server.testing import free_port

ENTITY = h.ENTITY
TARGETS = {"idle_rss_mb": 60.0, "ready_seconds": 2.0}
READY_TIMEOUT = 120.0
SYNC_TIMEOUT = 600.0


def write_config(workdir: Path, server_url: str, token: str | None) -> tuple[Path, int, int]:
    http_port, grpc_port = free_port(), free_port()
    lines = [
        f'server_url = "{server_url}"',
        f'entity_id = "{ENTITY}"',
        'orchestrator_id = "gw-bench"',
        f'data_dir = "{workdir / "data"}"',
    ]
    if token:
        lines.append(f'enrollment_token = "{token}"')
    lines += [
        "[listen]",
        f'grpc = "127.0.0.1:{grpc_port}"',
        f'http = "127.0.0.1:{http_port}"',
        "[ble]",
        "enabled = false",
        "[mdns]",
        "enabled = false",
    ]
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path, http_port, grpc_port


UNIT = Path(__file__).resolve().parents[1] / "gateway" / "systemd" / "navign-gateway.service"


def unit_environment() -> dict[str, str]:
    """The ``Environment=`` settings of the shipped unit: the gateway runs as deployed."""
    values: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                key, _, value = item.partition("=")
                values[key] = value
    return values


def spawn(config: Path, workdir: Path, notify: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAVIGN_GATEWAY_")}
    env.update(unit_environment())
    env["NOTIFY_SOCKET"] = str(notify)
    command = [sys.executable, "-m", "navign_gateway.cli", "--config", str(config), "run"]
    with (workdir / "gateway.log").open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


async def health(port: int) -> dict[str, object] | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            body: dict[str, object] = await response.json(content_type=None)
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_for(port: int, key: str, value: object, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = await health(port)
        if status is not None and status.get(key) == value:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway never reported {key}={value!r}")


#: What the idle gateway imports of its dependencies (BLE and mDNS off, as configured here).
LIBRARIES = """
import asyncio, json, sqlite3, ssl, tomllib, zoneinfo
import aiohttp, aiohttp.web, aiosqlite, grpclib.server, prometheus_client, rfc8785, semver
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import duration_pb2, timestamp_pb2, message_factory
from pydantic import BaseModel, Field, TypeAdapter

class Probe(BaseModel):
    name: str = Field(max_length=10)

Probe(name="x")
ssl.create_default_context()
asyncio.run(asyncio.sleep(%s))
"""


def libraries_rss_mb(idle: float) -> float:
    """VmRSS of a Python that imported only the gateway's libraries and sat idle."""
    with subprocess.Popen([sys.executable, "-c", LIBRARIES % (idle + 30)]) as process:
        try:
            time.sleep(idle)
            if process.poll() is not None:
                raise RuntimeError("the libraries' probe ended early")
            return h.rss_kib(process.pid) / 1024
        finally:
            process.kill()


def private_kib(pid: int) -> int:
    """Memory only this process uses: anonymous pages (RssAnon), not shared library files."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def wait_ready(sock: socket.socket, timeout: float) -> None:
    sock.settimeout(timeout)
    for _ in range(100):
        if b"READY=1" in sock.recv(4096):
            return
    raise RuntimeError("no READY=1")


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    bench = f"gateway {args.documents // 1000}k"
    with tempfile.TemporaryDirectory(prefix="navign-bench-gw-") as tmp:
        root = Path(tmp)
        with h.running_server(root / "server") as server:
            chunks = max(1, args.documents // 10_000)
            await mall.import_chunks(server, 0, chunks, args.documents // chunks)
            async with h.admin_session(server) as session:
                created = await h.call(
                    session,
                    "POST",
                    "/api/admin/enrollment-tokens",
                    {"entity_id": ENTITY, "orchestrator_id": "gw-bench", "ttl_seconds": 600},
                    expect=201,
                )
            workdir = root / "gateway"
            workdir.mkdir()
            config, http_port, _ = write_config(workdir, server.base_url, created["token"])
            notify = workdir / "notify.sock"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(str(notify))
                first = spawn(config, workdir, notify)
                try:
                    started = time.perf_counter()
                    await wait_for(http_port, "uplink", "CONNECTED", SYNC_TIMEOUT)
                    await wait_for(http_port, "local_copy", "ready", SYNC_TIMEOUT)
                    cold = time.perf_counter() - started
                finally:
                    stop(first)
                ready: list[float] = []
                rss: list[float] = []
                private: list[float] = []
                for _ in range(args.runs):
                    while True:  # drain what the last run sent
                        sock.settimeout(0.01)
                        try:
                            sock.recv(4096)
                        except TimeoutError:
                            break
                    spawned = time.perf_counter()
                    process = spawn(config, workdir, notify)
                    try:
                        wait_ready(sock, READY_TIMEOUT)
                        ready.append(time.perf_counter() - spawned)
                        await wait_for(http_port, "uplink", "CONNECTED", SYNC_TIMEOUT)
                        await asyncio.sleep(args.idle)
                        rss.append(h.rss_kib(process.pid) / 1024)
                        private.append(private_kib(process.pid) / 1024)
                    finally:
                        stop(process)
    ready_median, rss_median = statistics.median(ready), statistics.median(rss)
    private_median = statistics.median(private)
    floor = statistics.median(libraries_rss_mb(args.idle / 2) for _ in range(3))
    return [
        h.Figure(bench, "first start: enrolled and fully synced", cold, "s"),
        h.Figure(bench, "start to READY=1, warm copy, median", ready_median, "s",
                 f"<= {TARGETS['ready_seconds']:g}", ready_median <= TARGETS["ready_seconds"],
                 goal=True),
        h.Figure(bench, "start to READY=1, warm copy, worst", max(ready), "s"),
        h.Figure(bench, "idle resident memory (VmRSS), median", rss_median, "MB",
                 f"<= {TARGETS['idle_rss_mb']:g}", rss_median <= TARGETS["idle_rss_mb"],
                 goal=True),
        h.Figure(bench, "idle private memory (RssAnon; the rest is shared library files)",
                 private_median, "MB"),
        h.Figure(bench, "Python with only the gateway's libraries imported, idle (VmRSS)",
                 floor, "MB"),
        h.Figure(bench, "idle resident memory over the libraries' floor", rss_median - floor,
                 "MB"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before RSS")
    h.common_arguments(parser)
    args = parser.parse_args()
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
