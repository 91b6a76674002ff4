"""The gateway's /firmware routes through a real aiohttp server, over a cache filled from a real
server: the index, full and ranged downloads (compared with the server's own answers), ETag and
304, HEAD, the manifest, and the 404/416/422 envelopes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from navign_gateway.db import Database
from navign_gateway.firmware import TOUCH_PERSIST_SECONDS, CachedRelease, FirmwareCache
from navign_gateway.firmware_http import add_firmware_routes
from navign_gateway.upstream import Upstream
from navign_proto import keys
from navign_proto.wire import ErrorEnvelope, FirmwareInfo
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
SIZE = 200_000


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class GatewayTokens:
    def __init__(self, gateway: TestGateway) -> None:
        self.gateway = gateway

    async def token(self) -> str:
        assert self.gateway.token is not None
        return self.gateway.token

    async def refresh(self, stale: str) -> str:
        await self.gateway.refresh()
        return await self.token()


@dataclass
class Site:
    """The real server, a cache filled from it, and the gateway's routes served over HTTP."""

    server: RunningServer
    gateway: TestGateway
    release_key: ec.EllipticCurvePrivateKey
    db: Database
    upstream: Upstream
    cache: FirmwareCache
    clock: FakeClock
    client: aiohttp.ClientSession
    root: Path

    async def publish(self, image: bytes, version: str) -> FirmwareInfo:
        releases = Releases(self.server, self.release_key)
        release_id = (await releases.publish(image_manifest(image, version), image))["release_id"]
        return firmware_info(await self.server.ctx.store.get_release(release_id), "")

    async def cached(self, image: bytes, version: str = "1.0.0") -> CachedRelease:
        return await self.cache.ensure(await self.publish(image, version))

    async def from_server(self, path: str, **headers: str) -> httpx.Response:
        """The server's own answer, for comparison."""
        async with self.gateway.client() as client:
            return await client.get(path, headers=headers)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    release_key = keys.generate_private_key()
    pem = keys.public_key_to_pem(release_key.public_key())
    settings = server_settings(tmp_path / "server", release_public_keys=[pem])
    async with run_server(settings, tmp_path / "server") as server:
        await import_sample_mall(server)
        gateway = await enrolled_gateway(server, ENTITY)
        async with (
            aiohttp.ClientSession() as session,
            Database(tmp_path / "gw" / "gateway.sqlite3") as db,
        ):
            upstream = Upstream(
                session, server.base_url, ENTITY, gateway.orchestrator_id, GatewayTokens(gateway)
            )
            clock = FakeClock()
            root = tmp_path / "gw" / "fw"
            cache = FirmwareCache(
                db, root, upstream, [pem], 1024 * 1024, registry=CollectorRegistry(), clock=clock
            )
            await cache.open()
            app = web.Application()
            add_firmware_routes(app, cache)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            http = web.TCPSite(runner, "127.0.0.1", 0)
            await http.start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            try:
                async with aiohttp.ClientSession(base, auto_decompress=False) as client:
                    yield Site(
                        server, gateway, release_key, db, upstream, cache, clock, client, root
                    )
            finally:
                await runner.cleanup()


async def fetch(
    site: Site, path: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """Status, headers (case-insensitive, as HTTP's are) and body."""
    async with site.client.request(method, path, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def envelope_of(status: int, body: bytes, code: str) -> ErrorEnvelope:
    envelope = ErrorEnvelope.model_validate_json(body)
    assert (status, envelope.error.code) == (envelope.http_status, code)
    return envelope


# -- the index -----------------------------------------------------------------------------------


async def test_index_lists_only_verified_releases(site: Site) -> None:
    image = payload(SIZE, "one")
    release = await site.cached(image, "1.0.0")
    pending_image = payload(SIZE, "two")
    pending = await site.publish(pending_image, "1.1.0")
    (site.root / "tmp" / f"{pending.firmware_id}.part").write_bytes(pending_image[:1000])

    status, headers, body = await fetch(site, "/firmware")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {
        "releases": [
            {
                "firmware_id": release.firmware_id,
                "name": "navign-beacon-fw",
                "version": "1.0.0",
                "target": "esp32",
                "kind": "image",
                "secure_version": 1,
                "size": SIZE,
                "sha256": hashlib.sha256(image).hexdigest(),
                "manifest_sha256": release.manifest_sha256,
                "artifact_url": f"/firmware/{release.firmware_id}",
                "manifest_url": f"/firmware/{release.firmware_id}/manifest",
            }
        ]
    }


# -- the artifact --------------------------------------------------------------------------------


async def test_full_download_is_the_verified_artifact_with_its_validators(site: Site) -> None:
    image = payload(SIZE, "one")
    release = await site.cached(image)

    status, headers, body = await fetch(
        site, f"/firmware/{release.firmware_id}", **{"X-Request-ID": "beacon-7.req-1"}
    )

    sha = hashlib.sha256(image).hexdigest()
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == sha
    assert headers["ETag"] == f'"{sha}"'
    server = await site.from_server(f"/api/firmware/{release.firmware_id}/download")
    assert headers["ETag"] == server.headers["etag"]  # the server's validator, not mtime-size
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(SIZE)
    assert headers["X-Request-ID"] == "beacon-7.req-1"
    modified = parsedate_to_datetime(headers["Last-Modified"])
    assert abs(modified.timestamp() - release.artifact_path.stat().st_mtime) < 1


RANGES = [
    "bytes=1000-1999",
    "bytes=150000-",
    "bytes=-500",
    "bytes=-999999",
    "bytes=0-999999999",
    f"bytes={SIZE - 1}-",
    "bytes=0-1,5-9",  # several ranges: the whole artifact
    "bytes=9-5",  # last before first: ignored
    "items=0-5",  # another unit: ignored
    "bytes=abc",  # malformed: ignored
]


@pytest.mark.parametrize("header", RANGES)
async def test_ranges_are_served_as_the_server_serves_them(site: Site, header: str) -> None:
    image = payload(SIZE, "one")
    release = await site.cached(image)

    status, headers, body = await fetch(site, f"/firmware/{release.firmware_id}", Range=header)

    server = await site.from_server(f"/api/firmware/{release.firmware_id}/download", Range=header)
    assert status == server.status_code
    assert headers.get("Content-Range") == server.headers.get("content-range")
    assert body == server.content
    if status == 206:
        first, last = map(int, headers["Content-Range"].split(" ")[1].split("/")[0].split("-"))
        assert body == image[first : last + 1]
        assert headers["Content-Length"] == str(last + 1 - first)


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
async def test_unsatisfiable_range_is_416_with_the_envelope(site: Site, header: str) -> None:
    release = await site.cached(payload(SIZE, "one"))

    status, headers, body = await fetch(site, f"/firmware/{release.firmware_id}", Range=header)

    envelope_of(status, body, "RANGE_NOT_SATISFIABLE")
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    server = await site.from_server(f"/api/firmware/{release.firmware_id}/download", Range=header)
    assert server.status_code == 416


async def test_if_range_only_our_strong_etag_keeps_the_range(site: Site) -> None:
    image = payload(SIZE, "one")
    release = await site.cached(image)
    path = f"/firmware/{release.firmware_id}"
    etag = f'"{release.sha256}"'

    status, _, body = await fetch(site, path, Range="bytes=100-199", **{"If-Range": etag})
    assert (status, body) == (206, image[100:200])
    for other in (f"W/{etag}", '"0123"', "Fri, 27 Nov 2026 12:00:00 GMT"):
        status, _, body = await fetch(site, path, Range="bytes=100-199", **{"If-Range": other})
        assert (status, len(body)) == (200, SIZE), other
    # A non-matching If-Range also overrides an unsatisfiable range (§3.10).
    status, _, body = await fetch(site, path, Range=f"bytes={SIZE}-", **{"If-Range": '"0123"'})
    assert (status, len(body)) == (200, SIZE)


async def test_if_none_match_gives_304(site: Site) -> None:
    release = await site.cached(payload(SIZE, "one"))
    path = f"/firmware/{release.firmware_id}"
    etag = f'"{release.sha256}"'

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, headers, body = await fetch(site, path, **{"If-None-Match": header})
        assert (status, body) == (304, b""), header
        assert headers["ETag"] == etag
    status, _, body = await fetch(site, path, **{"If-None-Match": '"other"'})
    assert (status, len(body)) == (200, SIZE)
    # An If-Modified-Since in the past does not stop a download.
    status, _, body = await fetch(
        site, path, **{"If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"}
    )
    assert (status, len(body)) == (200, SIZE)


async def test_head_has_the_headers_of_get_and_no_body(site: Site) -> None:
    release = await site.cached(payload(SIZE, "one"))
    path = f"/firmware/{release.firmware_id}"

    status, headers, body = await fetch(site, path, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(SIZE)
    assert headers["ETag"] == f'"{release.sha256}"'
    status, headers, body = await fetch(site, path, "HEAD", Range="bytes=10-19")
    assert (status, body, headers["Content-Length"]) == (206, b"", "10")
    assert headers["Content-Range"] == f"bytes 10-19/{SIZE}"


async def test_many_concurrent_downloads_all_get_the_artifact(site: Site) -> None:
    image = payload(SIZE, "one")
    release = await site.cached(image)

    results = await asyncio.gather(
        *(fetch(site, f"/firmware/{release.firmware_id}") for _ in range(20))
    )

    assert {(status, hashlib.sha256(body).hexdigest()) for status, _, body in results} == {
        (200, release.sha256)
    }


# -- the manifest --------------------------------------------------------------------------------


async def test_manifest_is_the_envelope_as_the_server_serves_it(site: Site) -> None:
    release = await site.cached(payload(SIZE, "one"))
    path = f"/firmware/{release.firmware_id}/manifest"

    status, headers, body = await fetch(site, path)

    server = await site.from_server(f"/api/firmware/{release.firmware_id}/manifest")
    assert status == 200
    assert body == server.content
    assert headers["Content-Type"] == "application/json"
    assert headers["ETag"] == server.headers["etag"] == f'"{release.manifest_sha256}"'
    status, _, body = await fetch(site, path, **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    status, _, body = await fetch(site, path, "HEAD")
    assert (status, body) == (200, b"")


# -- what is not served --------------------------------------------------------------------------


async def test_unknown_partial_and_malformed_ids_get_the_error_envelope(site: Site) -> None:
    image = payload(SIZE, "one")
    pending = await site.publish(image, "1.0.0")
    (site.root / "tmp" / f"{pending.firmware_id}.part").write_bytes(image[:100_000])

    for path in (
        "/firmware/fw-esp32-9.9.9-000000000000",
        f"/firmware/{pending.firmware_id}",
        f"/firmware/{pending.firmware_id}/manifest",
    ):
        for method in ("GET", "HEAD"):
            status, headers, body = await fetch(site, path, method, **{"X-Request-ID": "r-1"})
            assert status == 404, (path, method)
            assert headers["X-Request-ID"] == "r-1"
            if method == "GET":
                envelope = envelope_of(status, body, "FIRMWARE_NOT_FOUND")
                assert envelope.error.request_id == "r-1"

    status, _, body = await fetch(site, "/firmware/bad%20id")
    envelope_of(status, body, "VALIDATION_ERROR")
    status, headers, body = await fetch(site, "/firmware/" + "x" * 65, **{"X-Request-ID": "¿"})
    envelope = envelope_of(status, body, "VALIDATION_ERROR")
    assert envelope.error.request_id == headers["X-Request-ID"] != "¿"  # a new, valid one


async def test_an_evicted_release_is_no_longer_served(site: Site) -> None:
    first = await site.cached(payload(600_000, "one"), "1.0.0")
    site.clock.now += timedelta(minutes=5)
    await site.cached(payload(600_000, "two"), "1.1.0")  # 1 MiB budget: the first goes

    status, _, body = await fetch(site, f"/firmware/{first.firmware_id}")
    envelope_of(status, body, "FIRMWARE_NOT_FOUND")


async def test_serving_marks_the_release_used(site: Site) -> None:
    release = await site.cached(payload(SIZE, "one"))
    site.clock.now += timedelta(seconds=TOUCH_PERSIST_SECONDS + 1)

    status, _, _ = await fetch(site, f"/firmware/{release.firmware_id}", Range="bytes=0-9")

    assert status == 206
    used = site.cache.get(release.firmware_id)
    assert used is not None
    assert used.last_used_at == site.clock.now
    reopened = FirmwareCache(
        site.db,
        site.root,
        site.upstream,
        [keys.public_key_to_pem(site.release_key.public_key())],
        1024 * 1024,
        registry=CollectorRegistry(),
    )
    await reopened.open()
    stored = reopened.get(release.firmware_id)
    assert stored is not None
    assert stored.last_used_at == site.clock.now
