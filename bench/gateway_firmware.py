"""Serving one verified release to 50 concurrent beacons: the gateway's /firmware routes
(aiohttp, in a process of their own, as in the daemon) side by side with nginx serving the same
file, in the same run.

A real ``navign-server`` hosts signed releases (1 MiB and 4 MiB by default); the gateway's
FirmwareCache downloads and verifies them; then a gateway HTTP process (this script with
``--serve-gateway``) and nginx (one worker, sendfile, no access log) serve the cached artifact
from the same directory. The client is ``wrk`` (C, one thread, keep-alive), so the client costs
little next to the servers on a small machine. Rounds alternate which server goes first; each
round gives one ours/nginx ratio per size, and the figure is their median.

    uv run --frozen python bench/gateway_firmware.py
    uv run --frozen python bench/gateway_firmware.py --sizes-mib 1 4 --rounds 5 --seconds 5

Needs the Debian packages nginx-light (or nginx) and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _harness as h
import _mall as mall
import aiohttp
from prometheus_client import CollectorRegistry

from navign_gateway.db import Database
from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_gateway.upstream import Upstream
from navign_proto import keys
from navign_proto.manifest import ImageEntry, ReleaseManifest, format_time, sign_manifest
from navign_proto.wire import FirmwareInfo

CLIENTS = 50
TARGET_RATIO = 0.5
#: One chip per artifact size, so that /api/firmware/latest names each release.
TARGETS = ("esp32", "esp32s3", "esp32c3", "esp32c6")
BUDGET = 64 * 1024 * 1024
READY_TIMEOUT = 30.0
WRK_SLACK = 30.0
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /firmware/ {{ alias {releases}/; }}
    }}
}}
"""


class StaticToken:
    """The bench registers its gateway once; the token outlives the fill (1 h)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def refresh(self, stale: str) -> str:
        raise RuntimeError("the bench's token expired")


def artifact(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


# -- filling the cache from a real server -------------------------------------------------------


async def publish(server: h.Server, key: Any, target: str, image: bytes) -> None:
    manifest = ReleaseManifest(
        name="navign-beacon-fw",
        version="1.0.0",
        secure_version=1,
        target=target,  # type: ignore[arg-type]
        kind="image",
        image=ImageEntry(size=len(image), sha256=hashlib.sha256(image).hexdigest()),
        created_at=format_time(datetime.now(UTC)),
    )
    async with h.admin_session(server) as admin:
        body = {"envelope": sign_manifest(manifest, [key]), "channel": "stable"}
        created = await h.call(admin, "POST", "/api/admin/releases", body, expect=201)
        async with admin.put(
            created["upload_url"],
            data=image,
            headers={"Content-Type": "application/octet-stream"},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"artifact upload: {response.status} {await response.text()}")


async def fill_cache(
    workdir: Path, sizes: list[int]
) -> tuple[Path, Path, str, list[CachedRelease]]:
    """A real server with one signed release per size, and a gateway cache that downloaded
    and verified them: (database path, cache root, release key PEM, releases)."""
    key = keys.generate_private_key()
    pem = keys.public_key_to_pem(key.public_key())
    images = {TARGETS[i]: artifact(size, f"release-{i}") for i, size in enumerate(sizes)}
    db_path, root = workdir / "gateway" / "gateway.sqlite3", workdir / "gateway" / "firmware"
    environment = {"NAVIGN_SERVER_RELEASE_PUBLIC_KEYS": json.dumps([pem])}
    with h.running_server(workdir / "server", **environment) as server:
        await mall.import_chunks(server, 0, 1, 100)
        token = next(iter((await h.register_gateways(server, 1)).values()))
        for target, image in images.items():
            await publish(server, key, target, image)
        async with (
            aiohttp.ClientSession(timeout=h.HTTP_TIMEOUT) as session,
            Database(db_path) as db,
        ):
            upstream = Upstream(session, server.base_url, h.ENTITY, "gw-00000", StaticToken(token))
            cache = FirmwareCache(db, root, upstream, [pem], BUDGET, registry=CollectorRegistry())
            await cache.open()
            releases = []
            for target in images:
                async with upstream.request(
                    "GET",
                    "/api/firmware/latest",
                    params={"target": target, "device_type": "beacon", "channel": "stable"},
                ) as response:
                    info = FirmwareInfo.model_validate(await response.json())
                releases.append(await cache.ensure(info))
    return db_path, root, pem, releases


# -- the gateway's HTTP process -----------------------------------------------------------------


async def serve_gateway(args: argparse.Namespace) -> None:
    """The gateway's firmware routes on 127.0.0.1:<port> until SIGTERM (the daemon's setup:
    AppRunner without access log)."""
    from aiohttp import web

    from navign_gateway.firmware_http import add_firmware_routes

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession() as session, Database(args.db) as db:
        upstream = Upstream(session, "http://127.0.0.1:9", h.ENTITY, "gw-00000", StaticToken(""))
        pem = args.key.read_text()
        cache = FirmwareCache(db, args.root, upstream, [pem], BUDGET, registry=CollectorRegistry())
        await cache.open()
        app = web.Application()
        add_firmware_routes(app, cache)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
        await stop.wait()
        await runner.cleanup()


@contextlib.contextmanager
def child(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped by its PID (SIGTERM, then SIGKILL) on exit."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=h.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=h.STOP_TIMEOUT)


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until ``url`` answers HEAD with 200 (bounded), or the process exits."""
    parts = urlsplit(url)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited; see {log}")
        conn = http.client.HTTPConnection("127.0.0.1", parts.port or 80, timeout=2)
        try:
            conn.request("HEAD", parts.path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"{url}: not ready after {READY_TIMEOUT:g} s; see {log}")


def fetch_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - loopback http
        while chunk := response.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- wrk ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    requests_per_s: float
    requests: int
    bad: int  # non-2xx responses and socket errors
    cpu_seconds: float = 0.0  # of the server's processes during the run


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (nginx's master and worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total: float = h.cpu_seconds(pid) + sum(h.cpu_seconds(int(c)) for c in children)
    return total


def timed_wrk(wrk_path: str, url: str, seconds: float, server_pid: int) -> Run:
    before = tree_cpu_seconds(server_pid)
    run = wrk(wrk_path, url, seconds)
    return replace(run, cpu_seconds=tree_cpu_seconds(server_pid) - before)


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def _number(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)([kKmMgG]?)", text)
    if match is None:
        raise RuntimeError(f"wrk printed {text!r}")
    return float(match[1]) * _UNITS[match[2].lower()]


def wrk(wrk_path: str, url: str, seconds: float) -> Run:
    command = [wrk_path, "-t1", f"-c{CLIENTS}", f"-d{seconds:g}s", "--timeout", "30s", url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WRK_SLACK, check=True
    )
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"([0-9]+) requests in", out)
    if rate is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    bad = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out):
        bad += int(non_2xx[1])
    if errors := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        bad += sum(int(errors[i]) for i in range(1, 5))
    return Run(float(rate[1]), int(_number(total[1])), bad)


# -- the benchmark -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tools() -> tuple[str, str]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    wrk_path = shutil.which("wrk")
    if nginx is None or wrk_path is None:
        raise SystemExit(
            "bench/gateway_firmware.py needs nginx and wrk: apt-get install -y nginx-light wrk"
        )
    return nginx, wrk_path


def measure(args: argparse.Namespace) -> list[h.Figure]:
    nginx, wrk_path = tools()
    sizes = [int(s * 1024 * 1024) for s in args.sizes_mib]
    with tempfile.TemporaryDirectory(prefix="navign-bench-fw-") as tmp:
        workdir = args.workdir or Path(tmp)
        db_path, root, pem, releases = h.run(fill_cache(workdir, sizes))
        key_file = workdir / "release.pem"
        key_file.write_text(pem)
        gw_port, nginx_port = free_port(), free_port()
        nginx_dir = workdir / "nginx"
        nginx_dir.mkdir(parents=True, exist_ok=True)
        conf = nginx_dir / "nginx.conf"
        releases_dir = root / "releases"
        conf.write_text(NGINX_CONF.format(dir=nginx_dir, port=nginx_port, releases=releases_dir))
        gateway_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-gateway",
                       "--db", str(db_path), "--root", str(root), "--key", str(key_file),
                       "--port", str(gw_port), "--gateway-loop", args.gateway_loop]  # fmt: skip
        nginx_cmd = [
            nginx,
            "-p",
            str(nginx_dir),
            "-c",
            str(conf),
            "-e",
            str(nginx_dir / "error.log"),
        ]
        with (
            child(gateway_cmd, workdir / "gateway.log") as gateway,
            child(nginx_cmd, nginx_dir / "stdout.log") as web_server,
        ):
            urls = {
                r.firmware_id: {
                    "gateway": f"http://127.0.0.1:{gw_port}/firmware/{r.firmware_id}",
                    "nginx": f"http://127.0.0.1:{nginx_port}/firmware/{r.firmware_id}/artifact.bin",
                }
                for r in releases
            }
            first = releases[0].firmware_id
            wait_ready(gateway, urls[first]["gateway"], workdir / "gateway.log")
            wait_ready(web_server, urls[first]["nginx"], nginx_dir / "error.log")
            matches = all(
                fetch_sha256(url) == r.sha256
                for r in releases
                for url in urls[r.firmware_id].values()
            )
            runs: dict[tuple[str, str], list[Run]] = {}
            for r in releases:  # warm-up: connections, page cache, the gateway's first touch
                for url in urls[r.firmware_id].values():
                    wrk(wrk_path, url, 1)
            for round_no in range(args.rounds):
                order = ["gateway", "nginx"] if round_no % 2 == 0 else ["nginx", "gateway"]
                for r in releases:
                    for name in order:
                        pid = gateway.pid if name == "gateway" else web_server.pid
                        run = timed_wrk(wrk_path, urls[r.firmware_id][name], args.seconds, pid)
                        runs.setdefault((r.firmware_id, name), []).append(run)
                        h.say(f"round {round_no + 1} {r.size / 2**20:g} MiB {name:<8} "
                              f"{run.requests_per_s:8.1f} req/s "
                              f"{run.requests_per_s * r.size / 1e6:8.1f} MB/s")  # fmt: skip
            gateway_rss = h.rss_kib(gateway.pid)
    return figures(releases, runs, matches, gateway_rss, args)


def figures(
    releases: list[CachedRelease],
    runs: dict[tuple[str, str], list[Run]],
    matches: bool,
    gateway_rss: int,
    args: argparse.Namespace,
) -> list[h.Figure]:
    bench = "gateway firmware"
    out = [h.Figure(bench, "served bytes equal the verified artifact (both servers)",
                    int(matches), "bool", "= 1", matches)]  # fmt: skip
    bad = sum(run.bad for series in runs.values() for run in series)
    out.append(h.Figure(bench, "failed requests (non-2xx, socket errors)", bad, "requests",
                        "= 0", bad == 0))  # fmt: skip
    for r in releases:
        mib = f"{r.size / 2**20:g} MiB to {CLIENTS} clients"
        ours, theirs = runs[(r.firmware_id, "gateway")], runs[(r.firmware_id, "nginx")]
        ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(ours, theirs, strict=True)]
        ratio = h.median(ratios)
        for name, series in (("gateway (aiohttp)", ours), ("nginx", theirs)):
            rate = h.median([run.requests_per_s for run in series])
            out.append(h.Figure(bench, f"{mib}: {name}, median of {args.rounds}",
                                rate * r.size / 1e6, "MB/s"))  # fmt: skip
            out.append(h.Figure(bench, f"{mib}: {name}, median of {args.rounds}", rate, "req/s"))
            cpu = h.median([run.cpu_seconds / (run.requests * r.size / 1e9) for run in series])
            out.append(h.Figure(bench, f"{mib}: {name}, server CPU per GB served", cpu, "s/GB"))
        target, met = f">= {TARGET_RATIO:g}", ratio >= TARGET_RATIO
        out.append(h.Figure(bench, f"{mib}: gateway / nginx, median of {args.rounds} ratios",
                            ratio, "ratio", target, met, goal=True))  # fmt: skip
    out.append(h.Figure(bench, "gateway process RSS after the runs", gateway_rss / 1024, "MiB"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument(
        "--gateway-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the gateway process's event loop (the daemon uses asyncio)",
    )
    h.common_arguments(parser)
    # The gateway's HTTP process (this script, started by itself).
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        if args.gateway_loop == "uvloop":
            import uvloop

            uvloop.run(serve_gateway(args))
        else:
            asyncio.run(serve_gateway(args))
        return
    if len(args.sizes_mib) > len(TARGETS):
        parser.error(f"at most {len(TARGETS)} sizes")
    h.raise_nofile()
    h.emit(measure(args), args.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
