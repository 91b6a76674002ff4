"""The firmware cache against a real server: signed releases published through the admin API,
downloaded, verified (§6.5), resumed, refused, evicted and reconciled.

Between the cache and the server sits :class:`NetworkDouble`, a small reverse proxy on
127.0.0.1: a test double of the network (it counts requests, and can flip a byte, truncate,
cut or stall a download), never of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from navign_gateway.db import Database
from navign_gateway.firmware import (
    TOUCH_PERSIST_SECONDS,
    CacheBudgetError,
    CachedRelease,
    DiskFullError,
    FirmwareCache,
    FirmwareCacheError,
    FirmwareRejected,
    NotCachedError,
)
from navign_gateway.upstream import Upstream, UpstreamError
from navign_proto import keys
from navign_proto.manifest import (
    FileEntry,
    ReleaseManifest,
    format_time,
)
from navign_proto.wire import FirmwareInfo
from navign_server.releases import firmware_info
from navign_server.testing import (
    Releases,
    RunningServer,
    TestGateway,
    enrolled_gateway,
    image_manifest,
    import_sample_mall,
    payload,
    run_server,
    server_settings,
)

ENTITY = "mall-riverside"
START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
IMAGE = 200_000  # bytes: more than three 64 KiB chunks
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
PASS_BACK = {"content-type", "etag", "content-range", "accept-ranges", "retry-after",
             "x-request-id", "www-authenticate"}  # fmt: skip
#: A stalled download is released after this long even if the test forgets to (bounded).
STALL_SECONDS = 15.0
POLL_STEPS, POLL_SECONDS = 500, 0.02


def app_manifest(files: dict[str, bytes], version: str = "1.0.0") -> ReleaseManifest:
    return ReleaseManifest(
        name="navign-beacon-app",
        version=version,
        secure_version=2,
        target="esp32c3",  # type: ignore[arg-type]
        kind="app",
        files=[
            FileEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest())
            for p, d in files.items()
        ],
        created_at=format_time(datetime(2026, 11, 27, 10, tzinfo=UTC)),
    )


class FakeClock:
    """The cache's clock, driven by the test instead of sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class GatewayTokens:
    """A TokenSource over a gateway registered with the real server."""

    def __init__(self, gateway: TestGateway) -> None:
        self.gateway = gateway

    async def token(self) -> str:
        assert self.gateway.token is not None
        return self.gateway.token

    async def refresh(self, stale: str) -> str:
        response = await self.gateway.refresh()
        assert response.status_code == 200, response.text
        return await self.token()


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    if_range: str | None


@dataclass
class NetworkDouble:
    """Reverse proxy on 127.0.0.1 to the real server. ``mode`` applies to artifact responses:
    ``pass``, ``flip`` (one bit at ``at``), ``truncate`` (a complete 200 of ``at`` bytes),
    ``cut`` (``at`` bytes, then the connection closes), ``stall`` (``at`` bytes, then wait),
    ``ignore_range`` (Range not forwarded), ``416`` (once); ``flip_manifest`` alters the
    envelope's payload."""

    target: str
    mode: str = "pass"
    at: int = 0
    seen: list[Seen] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    unstall: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    cut_when: Callable[[], bool] = lambda: True

    @property
    def downloads(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/download")]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[NetworkDouble]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(auto_decompress=False) as self.session:
            try:
                yield self
            finally:
                self.unstall.set()
                await runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        download = request.path.endswith("/download")
        self.seen.append(
            Seen(request.method, request.path, request.headers.get("Range"),
                 request.headers.get("If-Range"))
        )  # fmt: skip
        if download and self.mode == "416":
            self.mode = "pass"
            return web.json_response(
                {"error": {"code": "RANGE_NOT_SATISFIABLE", "message": "no", "request_id": "x"}},
                status=416,
                headers={"Content-Range": "bytes */1"},
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if download and self.mode == "ignore_range":
            headers.pop("Range", None)
            headers.pop("If-Range", None)
        body = await request.read()
        async with self.session.request(
            request.method, self.target + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            data = await upstream.read()
            status = upstream.status
            out = {k: v for k, v in upstream.headers.items() if k.lower() in PASS_BACK}
        if download and status in (200, 206):
            if self.mode == "flip":
                flipped = bytearray(data)
                flipped[self.at] ^= 0x01
                data = bytes(flipped)
            elif self.mode == "truncate":
                data = data[: self.at]
            elif self.mode in ("cut", "stall"):
                return await self._partial(request, status, out, data)
        if request.path.endswith("/manifest") and self.mode == "flip_manifest" and status == 200:
            changed = bytearray(data)
            spot = data.index(b'"payload":"') + 11 + 40
            changed[spot] = ord("A") if changed[spot] != ord("A") else ord("B")
            data = bytes(changed)
        return web.Response(status=status, body=data, headers=out)

    async def _partial(
        self, request: web.Request, status: int, headers: dict[str, str], data: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: self.at])
        if self.mode == "stall":
            self.stalled.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.unstall.wait(), STALL_SECONDS)
        else:
            await poll(self.cut_when)
        assert request.transport is not None
        request.transport.close()
        return response


@dataclass
class World:
    server: RunningServer
    gateway: TestGateway
    release_key: ec.EllipticCurvePrivateKey
    proxy: NetworkDouble
    session: aiohttp.ClientSession
    db: Database
    root: Path

    @property
    def release_pem(self) -> str:
        return keys.public_key_to_pem(self.release_key.public_key())

    def upstream(self, base_url: str | None = None) -> Upstream:
        return Upstream(
            self.session,
            base_url or self.proxy.url,
            ENTITY,
            self.gateway.orchestrator_id,
            GatewayTokens(self.gateway),
        )

    async def cache(
        self,
        *,
        budget: int = 4 * 1024 * 1024,
        release_keys: list[Any] | None = None,
        clock: FakeClock | None = None,
        registry: CollectorRegistry | None = None,
        db: Database | None = None,
        root: Path | None = None,
        upstream: Upstream | None = None,
    ) -> FirmwareCache:
        cache = FirmwareCache(
            db or self.db,
            root or self.root,
            upstream or self.upstream(),
            [self.release_pem] if release_keys is None else release_keys,
            budget,
            registry=registry or CollectorRegistry(),
            clock=clock or FakeClock(),
        )
        await cache.open()
        return cache

    async def publish(self, manifest: ReleaseManifest, artifact: bytes) -> FirmwareInfo:
        """Sign, upload and verify a release as an operator would; its FirmwareInfo."""
        uploaded = await Releases(self.server, self.release_key).publish(manifest, artifact)
        release_id = uploaded["release_id"]
        release = await self.server.ctx.store.get_release(release_id)
        return firmware_info(release, self.server.base_url)

    async def gateway_status(self, firmware_id: str) -> dict[str, Any]:
        """What the server recorded from this gateway's status reports for a release."""
        async with self.server.admin() as admin:
            response = await admin.get(
                f"/api/admin/entities/{ENTITY}/firmware-status",
                params={"firmware_id": firmware_id},
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    release_key = keys.generate_private_key()
    pem = keys.public_key_to_pem(release_key.public_key())
    settings = server_settings(tmp_path / "server", release_public_keys=[pem])
    async with run_server(settings, tmp_path / "server") as server:
        await import_sample_mall(server)
        gateway = await enrolled_gateway(server, ENTITY)
        proxy = NetworkDouble(server.base_url)
        async with (
            proxy.running(),
            aiohttp.ClientSession() as session,
            Database(tmp_path / "gw" / "gateway.sqlite3") as db,
        ):
            yield World(server, gateway, release_key, proxy, session, db, tmp_path / "gw" / "fw")


def part_of(world: World, info: FirmwareInfo) -> Path:
    return world.root / "tmp" / f"{info.firmware_id}.part"


async def rows(db: Database) -> list[str]:
    async with db.reader.execute("SELECT firmware_id FROM firmware_releases") as cursor:
        return sorted(str(row[0]) for row in await cursor.fetchall())


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def poll(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    for _ in range(POLL_STEPS):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError("condition not reached in time")


async def assert_nothing_kept(world: World, cache: FirmwareCache, info: FirmwareInfo) -> None:
    assert cache.get(info.firmware_id) is None
    assert await rows(world.db) == []
    assert files_under(world.root) == []
    assert cache.usage()[0] == 0


# -- the happy path ------------------------------------------------------------------------------


async def test_ensure_downloads_verifies_records_and_reports(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image, "1.2.0"), image)
    registry = CollectorRegistry()
    cache = await world.cache(registry=registry)

    release = await cache.ensure(info)

    assert (release.firmware_id, release.version, release.target, release.kind) == (
        info.firmware_id, "1.2.0", "esp32", "image")  # fmt: skip
    assert (release.size, release.sha256) == (len(image), hashlib.sha256(image).hexdigest())
    assert release.artifact_path.read_bytes() == image
    async with world.gateway.client() as client:
        served = await client.get(f"/api/firmware/{info.firmware_id}/manifest")
    assert release.envelope_path.read_bytes() == served.content  # stored as received
    assert release.manifest_sha256 == served.headers["etag"].strip('"')
    assert await rows(world.db) == [info.firmware_id]
    assert files_under(world.root) == [
        f"releases/{info.firmware_id}/artifact.bin",
        f"releases/{info.firmware_id}/envelope.json",
    ]
    assert cache.get(info.firmware_id) == release
    assert cache.list() == [release]
    assert cache.latest("esp32") == release
    assert cache.latest("esp32c3") is None
    assert cache.usage() == (len(image), 4 * 1024 * 1024)
    assert [(s.method, s.range) for s in world.proxy.downloads] == [("GET", None)]
    downloads = "orchestrator_firmware_downloads_total"
    assert metric(registry, downloads, outcome="success") == 1
    assert metric(registry, "orchestrator_firmware_download_bytes_total") == len(image)
    assert metric(registry, "orchestrator_firmware_cache_bytes") == len(image)
    status = await world.gateway_status(info.firmware_id)
    assert status["beacons"]["(gateway)"]["status"] == "success"
    assert [r["status"] for r in status["recent"]] == ["success", "downloading"]

    # A second ensure() returns the cached release and touches nothing.
    mtime = release.artifact_path.stat().st_mtime_ns
    assert await cache.ensure(info) == release
    assert len(world.proxy.downloads) == 1
    assert [s.path for s in world.proxy.seen].count(
        f"/api/firmware/{info.firmware_id}/manifest"
    ) == 1
    assert release.artifact_path.stat().st_mtime_ns == mtime
    assert metric(registry, downloads, outcome="success") == 1


async def test_app_release_is_checked_file_by_file(world: World) -> None:
    files = {"boot.py": payload(70_000, "a"), "lib/b.mpy": payload(90_000, "b"),
             "main.py": payload(1_000, "c")}  # fmt: skip
    artifact = b"".join(files.values())
    info = await world.publish(app_manifest(files), artifact)
    cache = await world.cache()

    world.proxy.mode, world.proxy.at = "flip", 70_000 + 5  # inside lib/b.mpy
    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)
    assert (refused.value.reason, refused.value.part) == ("sha256_mismatch", "lib/b.mpy")
    await assert_nothing_kept(world, cache, info)

    world.proxy.mode = "pass"
    release = await cache.ensure(info)
    assert (release.kind, release.target) == ("app", "esp32c3")
    assert release.sha256 == hashlib.sha256(artifact).hexdigest()
    assert release.artifact_path.read_bytes() == artifact


# -- refusals ------------------------------------------------------------------------------------


async def test_tampered_artifact_is_rejected_and_nothing_kept(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    registry = CollectorRegistry()
    cache = await world.cache(registry=registry)
    world.proxy.mode, world.proxy.at = "flip", IMAGE - 1

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)

    assert (refused.value.reason, refused.value.part) == ("sha256_mismatch", "image")
    await assert_nothing_kept(world, cache, info)
    assert metric(registry, "orchestrator_firmware_downloads_total", outcome="rejected") == 1
    reported = (await world.gateway_status(info.firmware_id))["beacons"]["(gateway)"]
    assert (reported["status"], reported["error_code"]) == ("failed", "sha256_mismatch")


async def test_truncated_artifact_is_rejected(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    world.proxy.mode, world.proxy.at = "truncate", 150_000  # a complete, short response

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)

    assert refused.value.reason == "size_mismatch"
    await assert_nothing_kept(world, cache, info)


async def test_envelope_signed_by_an_unknown_key_is_rejected_before_any_download(
    world: World,
) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    stranger = keys.public_key_to_pem(keys.generate_private_key().public_key())
    cache = await world.cache(release_keys=[stranger])

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)

    assert refused.value.reason == "signature_invalid"
    assert world.proxy.downloads == []
    await assert_nothing_kept(world, cache, info)


async def test_altered_envelope_is_rejected(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    world.proxy.mode = "flip_manifest"

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)

    assert refused.value.reason == "signature_invalid"
    assert world.proxy.downloads == []
    await assert_nothing_kept(world, cache, info)


async def test_metadata_that_disagrees_with_the_manifest_is_rejected(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image, "1.0.0"), image)
    cache = await world.cache()
    lying = info.model_copy(update={"secure_version": 0, "version": "9.0.0"})

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(lying)

    assert refused.value.reason == "metadata_mismatch"
    assert "secure_version: 0 vs 1" in str(refused.value)
    assert "version: '9.0.0' vs '1.0.0'" in str(refused.value)
    assert world.proxy.downloads == []
    await assert_nothing_kept(world, cache, info)
    assert (await cache.ensure(info)).version == "1.0.0"  # the true metadata still works


async def test_expired_release_is_rejected(world: World) -> None:
    image = payload(IMAGE, "image")
    expires = format_time(datetime(2026, 12, 1, tzinfo=UTC))
    info = await world.publish(image_manifest(image, expires_at=expires), image)
    cache = await world.cache(clock=FakeClock(datetime(2026, 12, 1, tzinfo=UTC)))

    with pytest.raises(FirmwareRejected) as refused:
        await cache.ensure(info)

    assert refused.value.reason == "expired"
    await assert_nothing_kept(world, cache, info)


async def test_an_id_that_cannot_name_a_file_is_refused(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    marker = world.root / "releases" / "keep-me"
    marker.write_bytes(b"x")

    with pytest.raises(FirmwareCacheError, match="cannot name"):
        await cache.ensure(info.model_copy(update={"firmware_id": ".."}))

    assert marker.exists()
    assert world.proxy.seen == []
    with pytest.raises(NotCachedError):
        await cache.pin(info.firmware_id)


async def test_unreachable_server_fails_cleanly(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        registry = CollectorRegistry()
        cache = await world.cache(upstream=world.upstream(closed), registry=registry)
        with pytest.raises(UpstreamError) as failed:
            await cache.ensure(info)
    assert failed.value.status == 0
    assert metric(registry, "orchestrator_firmware_downloads_total", outcome="failed") == 1
    await assert_nothing_kept(world, cache, info)


# -- interrupted downloads -----------------------------------------------------------------------


async def test_existing_part_is_resumed_with_range(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    registry = CollectorRegistry()
    cache = await world.cache(registry=registry)
    part_of(world, info).write_bytes(image[:70_000])

    release = await cache.ensure(info)

    sha = hashlib.sha256(image).hexdigest()
    assert [(s.range, s.if_range) for s in world.proxy.downloads] == [("bytes=70000-", f'"{sha}"')]
    assert metric(registry, "orchestrator_firmware_download_bytes_total") == IMAGE - 70_000
    assert release.artifact_path.read_bytes() == image
    assert not part_of(world, info).exists()


async def test_connection_cut_keeps_the_part_and_the_next_ensure_resumes(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    world.proxy.mode, world.proxy.at = "cut", 100_000
    part = part_of(world, info)
    # Cut once the bytes sent were consumed: a client drops what it had not read yet.
    world.proxy.cut_when = lambda: part.exists() and part.stat().st_size >= 100_000

    with pytest.raises(UpstreamError) as failed:
        await cache.ensure(info)

    assert failed.value.status == 0
    kept = part_of(world, info).stat().st_size
    assert 0 < kept <= 100_000
    assert part_of(world, info).read_bytes() == image[:kept]
    assert cache.get(info.firmware_id) is None
    assert await rows(world.db) == []

    world.proxy.mode = "pass"
    release = await cache.ensure(info)
    assert world.proxy.downloads[-1].range == f"bytes={kept}-"
    assert release.artifact_path.read_bytes() == image


async def test_cancelled_download_resumes_where_it_stopped(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    world.proxy.mode, world.proxy.at = "stall", 131_072
    part = part_of(world, info)

    task = asyncio.create_task(cache.ensure(info))
    await poll(lambda: part.exists() and part.stat().st_size == 131_072)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert part.read_bytes() == image[:131_072]
    world.proxy.unstall.set()
    world.proxy.mode = "pass"
    release = await cache.ensure(info)
    assert [s.range for s in world.proxy.downloads] == [None, "bytes=131072-"]
    assert release.artifact_path.read_bytes() == image


async def test_server_ignoring_the_range_restarts_the_part(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    registry = CollectorRegistry()
    cache = await world.cache(registry=registry)
    part_of(world, info).write_bytes(image[:50_000])
    world.proxy.mode = "ignore_range"  # the server answers 200 with everything

    release = await cache.ensure(info)

    assert metric(registry, "orchestrator_firmware_download_bytes_total") == IMAGE
    assert release.artifact_path.read_bytes() == image


async def test_416_drops_the_part_and_downloads_from_zero(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    part_of(world, info).write_bytes(image[:50_000])
    world.proxy.mode = "416"

    release = await cache.ensure(info)

    assert [s.range for s in world.proxy.downloads] == ["bytes=50000-", None]
    assert release.artifact_path.read_bytes() == image


async def test_stale_part_that_fails_verification_is_restarted_once(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    part_of(world, info).write_bytes(payload(50_000, "not the image"))

    release = await cache.ensure(info)

    assert [s.range for s in world.proxy.downloads] == ["bytes=50000-", None]
    assert release.artifact_path.read_bytes() == image


async def test_concurrent_ensure_of_one_release_downloads_once(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()

    results = await asyncio.gather(*(cache.ensure(info) for _ in range(4)))

    assert all(r == results[0] for r in results)
    assert len(world.proxy.downloads) == 1


# -- budget --------------------------------------------------------------------------------------


async def test_lru_eviction_honours_pins_and_the_budget(world: World) -> None:
    size = 100_000
    infos: dict[str, FirmwareInfo] = {}
    for name, version in (("a", "1.0.0"), ("b", "1.1.0"), ("c", "1.2.0"), ("d", "1.3.0"),
                          ("e", "1.4.0")):  # fmt: skip
        image = payload(size, name)
        infos[name] = await world.publish(image_manifest(image, version), image)
    clock = FakeClock()
    registry = CollectorRegistry()
    cache = await world.cache(budget=250_000, clock=clock, registry=registry)

    def cached() -> list[str]:
        ids = {r.firmware_id for r in cache.list()}
        return sorted(name for name, info in infos.items() if info.firmware_id in ids)

    a = await cache.ensure(infos["a"])
    clock.advance(60)
    await cache.ensure(infos["b"])
    clock.advance(TOUCH_PERSIST_SECONDS + 60)
    assert await cache.touch(a.firmware_id)  # a is now more recent than b
    clock.advance(60)
    await cache.ensure(infos["c"])
    assert cached() == ["a", "c"]  # b, least recently used, went
    assert not (world.root / "releases" / infos["b"].firmware_id).exists()
    assert await rows(world.db) == sorted([infos["a"].firmware_id, infos["c"].firmware_id])

    await cache.pin(a.firmware_id)
    clock.advance(60)
    await cache.ensure(infos["d"])
    assert cached() == ["a", "d"]  # a is older than c, but pinned

    await cache.pin(infos["d"].firmware_id)
    downloads_before = len(world.proxy.downloads)
    with pytest.raises(CacheBudgetError, match="pinned releases hold 200000"):
        await cache.ensure(infos["e"])
    assert len(world.proxy.downloads) == downloads_before  # refused before downloading
    assert cached() == ["a", "d"]

    await cache.unpin(a.firmware_id)
    await cache.ensure(infos["e"])
    assert cached() == ["d", "e"]
    assert cache.usage() == (200_000, 250_000)
    assert metric(registry, "orchestrator_firmware_evictions_total") == 3

    huge = payload(300_000, "huge")
    too_big = await world.publish(image_manifest(huge, "2.0.0"), huge)
    with pytest.raises(CacheBudgetError, match="larger than the whole cache budget"):
        await cache.ensure(too_big)
    assert cached() == ["d", "e"]


async def test_ensure_can_pin_and_pins_survive_reopening(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    cache = await world.cache()
    release = await cache.ensure(info, pin=True)
    assert release.pinned

    reopened = await world.cache()
    again = reopened.get(info.firmware_id)
    assert again is not None
    assert again.pinned


async def test_use_is_persisted_at_most_once_per_interval(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    clock = FakeClock()
    cache = await world.cache(clock=clock)
    release = await cache.ensure(info)

    clock.advance(10)
    await cache.touch(info.firmware_id)
    in_memory = cache.get(info.firmware_id)
    assert in_memory is not None
    assert in_memory.last_used_at == clock.now
    stored = (await world.cache()).get(info.firmware_id)
    assert stored is not None
    assert stored.last_used_at == release.cached_at  # not yet written

    clock.advance(TOUCH_PERSIST_SECONDS)
    await cache.touch(info.firmware_id)
    stored = (await world.cache()).get(info.firmware_id)
    assert stored is not None
    assert stored.last_used_at == clock.now
    assert not await cache.touch("fw-unknown")


# -- start-up ------------------------------------------------------------------------------------


async def test_startup_reconciliation(world: World) -> None:
    releases: list[CachedRelease] = []
    cache = await world.cache()
    for name, version in (("a", "1.0.0"), ("b", "1.1.0"), ("c", "1.2.0")):
        image = payload(50_000, name)
        releases.append(await cache.ensure(await world.publish(image_manifest(image, version),
                                                               image)))  # fmt: skip
    missing, wrong_size, good = releases
    missing.artifact_path.unlink()
    with wrong_size.artifact_path.open("r+b") as handle:
        handle.truncate(1000)
    tmp = world.root / "tmp"
    (tmp / "junk.tmp").write_bytes(b"junk")
    (tmp / "fw-x.staging").mkdir()
    (tmp / "fw-x.staging" / "artifact.bin").write_bytes(b"half")
    (world.root / "releases" / "orphan").mkdir()
    (world.root / "releases" / "orphan" / "artifact.bin").write_bytes(b"no row")
    (tmp / "fw-resumable.part").write_bytes(b"resume me")
    (tmp / "fw-old.part").write_bytes(b"too old")
    old = (START - timedelta(days=8)).timestamp()
    os.utime(tmp / "fw-old.part", (old, old))

    reopened = await world.cache()

    assert [r.firmware_id for r in reopened.list()] == [good.firmware_id]
    assert await rows(world.db) == [good.firmware_id]
    assert files_under(world.root) == [
        f"releases/{good.firmware_id}/artifact.bin",
        f"releases/{good.firmware_id}/envelope.json",
        "tmp/fw-resumable.part",
    ]
    assert reopened.usage()[0] == 50_000

    # Keys rotated away from the one that signed it: the release is no longer trusted.
    other = keys.public_key_to_pem(keys.generate_private_key().public_key())
    rotated = await world.cache(release_keys=[other])
    assert rotated.list() == []
    assert await rows(world.db) == []


@pytest.mark.requires("root", "cmd:mount", "cmd:umount")
async def test_full_disk_is_a_clear_error_and_leaves_no_partial_file(world: World) -> None:
    image = payload(IMAGE, "image")
    info = await world.publish(image_manifest(image), image)
    small = world.root.parent / "small"
    small.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)]
    await asyncio.to_thread(subprocess.run, mount, check=True)
    try:
        cache = await world.cache(root=small / "fw")
        with pytest.raises(DiskFullError, match="no space left"):
            await cache.ensure(info)
        assert files_under(small) == []
        assert cache.get(info.firmware_id) is None
        assert await rows(world.db) == []
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(small)], check=True)


async def test_bad_configuration_is_refused(world: World) -> None:
    with pytest.raises(FirmwareCacheError, match="release key 0"):
        await world.cache(release_keys=["not a key"])
    with pytest.raises(FirmwareCacheError, match="budget"):
        await world.cache(budget=0)
    unopened = FirmwareCache(
        world.db, world.root, world.upstream(), [world.release_pem], 1,
        registry=CollectorRegistry(),
    )  # fmt: skip
    image = payload(IMAGE, "image")
    with pytest.raises(FirmwareCacheError, match="not open"):
        await unopened.ensure(await world.publish(image_manifest(image), image))
