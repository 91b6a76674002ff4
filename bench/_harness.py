"""What the benchmarks share: the server as a real ``navign-server serve`` process, an admin
client, gateways registered with signed requests, statistics, and the figures they report.

Every benchmark drives the server from its own process (this one) over loopback. Source
addresses are spread over 127.0.0.0/8 where the server limits per client address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.signing import sign_request
from navign_server.testing import ServerProcess

ENTITY = "mall-bench"
REGISTER_PATH = "/api/orchestrators/register"
#: Seconds the server gets to answer /healthz, and to stop after SIGTERM (then SIGKILL).
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
#: Open files wanted by the client and the server (raised up to the hard limit if not root).
NOFILE = 65_536
#: Registrations sent from one source address: under the server's 120 per hour per address.
PER_ADDRESS = 100
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=120)


def raise_nofile(wanted: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE of this process (root may raise the hard limit too)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_address(index: int) -> str:
    """The index-th loopback source address: 127.0.0.2, 127.0.0.3, ... 127.0.1.2, ..."""
    return f"127.0.{index // 250}.{2 + index % 250}"


# -- the server process ------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    admin_token: str
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), KiB."""
        return rss_kib(self.process.pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process so far."""
        return cpu_seconds(self.process.pid)


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_server(workdir: Path, **environment: str) -> Iterator[Server]:
    """``navign-server serve`` on 127.0.0.1 with SQLite in ``workdir`` (navign_server.testing's
    ServerProcess, with the open-files limit raised); stopped (SIGTERM, then SIGKILL) on exit.
    ``environment`` adds variables to the server's environment (NAVIGN_SERVER_* settings)."""
    process = ServerProcess(
        workdir,
        environment=environment,
        preexec_fn=raise_nofile,
    )
    process.start(STARTUP_TIMEOUT)
    assert process.process is not None
    try:
        yield Server(process.process, process.port, process.admin_token, workdir)
    finally:
        process.stop(STOP_TIMEOUT)


# -- admin API ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def admin_session(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession(server.base_url, headers=headers, timeout=HTTP_TIMEOUT) as s:
        yield s


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, expect: int = 200
) -> Any:
    data = None if body is None else json.dumps(body, separators=(",", ":"))
    headers = {"Content-Type": "application/json"} if data is not None else None
    async with session.request(method, path, data=data, headers=headers) as response:
        text = await response.text()
        if response.status != expect:
            raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
        return json.loads(text)


async def enrollment_tokens(
    session: aiohttp.ClientSession, entity_id: str, orchestrator_ids: Sequence[str]
) -> dict[str, str]:
    """One enrollment token per orchestrator id (created 16 at a time)."""
    gate = asyncio.Semaphore(16)

    async def one(orchestrator_id: str) -> tuple[str, str]:
        async with gate:
            body = {"entity_id": entity_id, "orchestrator_id": orchestrator_id}
            made = await call(session, "POST", "/api/admin/enrollment-tokens", body, expect=201)
            return orchestrator_id, made["token"]

    return dict(await asyncio.gather(*(one(o) for o in orchestrator_ids)))


# -- gateways ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedRegistration:
    """A register request signed ahead of time, and the loopback address it is sent from."""

    orchestrator_id: str
    body: bytes
    headers: dict[str, str]
    source: str


class AddressPool:
    """Loopback source addresses for registrations, each used for at most PER_ADDRESS."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, count: int) -> list[str]:
        """A source address for each of ``count`` requests, none shared with earlier takes."""
        sources = [source_address(self._next + i // PER_ADDRESS) for i in range(count)]
        self._next += math.ceil(count / PER_ADDRESS)
        return sources


def sign_registrations(
    entity_id: str, tokens: dict[str, str], addresses: AddressPool
) -> list[SignedRegistration]:
    signed = []
    sources = addresses.take(len(tokens))
    for source, (orchestrator_id, token) in zip(sources, sorted(tokens.items()), strict=True):
        key = keys.generate_private_key()
        body = canonical_json(
            {
                "entity_id": entity_id,
                "orchestrator_id": orchestrator_id,
                "version": "0.1.0",
                "capabilities": ["firmware_distribution", "beacon_management"],
                "public_key": keys.public_key_to_pem(key.public_key()),
                "heartbeat_interval": 30,
                "local_address": "http://gw.local:8080",
                "enrollment_token": token,
            }
        )
        headers = sign_request(key, "POST", REGISTER_PATH, "", body)
        headers["Content-Type"] = "application/json"
        signed.append(SignedRegistration(orchestrator_id, body, headers, source))
    return signed


async def post_registrations(
    base_url: str, signed: Sequence[SignedRegistration], concurrency: int
) -> list[tuple[int, Any]]:
    """Send every registration, ``concurrency`` at a time; (status, JSON body) per request."""
    sessions: dict[str, aiohttp.ClientSession] = {}
    for source in {s.source for s in signed}:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=concurrency)
        sessions[source] = aiohttp.ClientSession(
            base_url, connector=connector, timeout=HTTP_TIMEOUT
        )
    gate = asyncio.Semaphore(concurrency)

    async def one(item: SignedRegistration) -> tuple[int, Any]:
        async with (
            gate,
            sessions[item.source].post(
                REGISTER_PATH, data=item.body, headers=item.headers
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    try:
        return list(await asyncio.gather(*(one(s) for s in signed)))
    finally:
        for session in sessions.values():
            await session.close()


async def register_gateways(
    server: Server, count: int, prefix: str = "gw", addresses: AddressPool | None = None
) -> dict[str, str]:
    """``count`` registered gateways of ENTITY: orchestrator id -> access token."""
    ids = [f"{prefix}-{i:05d}" for i in range(count)]
    async with admin_session(server) as admin:
        tokens = await enrollment_tokens(admin, ENTITY, ids)
    signed = sign_registrations(ENTITY, tokens, addresses or AddressPool())
    results = await post_registrations(server.base_url, signed, concurrency=16)
    refused = [r for r in results if r[0] != 200]
    if refused:
        raise RuntimeError(f"{len(refused)} registrations refused, first: {refused[0]}")
    return {s.orchestrator_id: r[1]["token"] for s, r in zip(signed, results, strict=True)}


# -- statistics and results --------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of unsorted ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure, with its target if it has one: ``goal`` marks the targets set by
    issues 3, 4 and 5; the other targets are checks that the run itself went right."""

    benchmark: str
    measure: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    goal: bool = False


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def say(text: str) -> None:
    """Progress and results on stdout (benchmarks are command-line tools)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def format_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def verdict(figure: Figure) -> str:
    return "" if figure.passed is None else ("PASS" if figure.passed else "MISS")


def print_figures(figures: Sequence[Figure]) -> None:
    for f in figures:
        value = format_value(f.value)
        say(f"{f.benchmark:<16} {f.measure:<52} {value:>10} {f.unit:<7} {f.target:<9} {verdict(f)}")


def emit(figures: Sequence[Figure], json_path: str | None) -> None:
    print_figures(figures)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(f) for f in figures], indent=1))


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="keep the server's files here (default: a temp dir)"
    )


def run(main: Any) -> Any:
    """Run ``main()`` on uvloop when it is installed (a lighter client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
