"""Fetching a release from the server: its DSSE envelope, then its artifact, streamed into
``tmp/<id>.part`` and verified on the way (:class:`ArtifactDownload`).

A download interrupted by an outage is resumed with ``Range``/``If-Range`` from what the part
holds, after re-hashing it; a server that refuses the range (416) or answers another one makes
the download start again at byte 0. Network failures become :class:`UpstreamError`, failures
of our own disk :class:`DiskFullError` or :class:`FirmwareCacheError`, and bytes that break
the manifest :class:`FirmwareRejected`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp

from navign_gateway.firmware._files import (
    CHUNK_BYTES,
    LocalWriteError,
    blocking,
    disk_error,
    feed_and_write,
    fsync,
    fsync_file,
    open_part,
    rehash_part,
    remove,
)
from navign_gateway.firmware._verify import ArtifactCheck
from navign_gateway.firmware.errors import FirmwareCacheError, FirmwareRejected
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.manifest import MAX_ENVELOPE_BYTES, ReleaseManifest
from navign_proto.wire import FirmwareInfo

# The cache's one logger, whichever of its modules writes.
log = logging.getLogger("navign_gateway.firmware")

MANIFEST_LIMITS = aiohttp.ClientTimeout(total=60, sock_connect=10)
#: No total limit (16 MiB over a slow mall uplink takes a while); a stalled read fails.
DOWNLOAD_LIMITS = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
#: Downloads per ensure(): a resume, then a restart from byte 0 (after 416 or a stale part).
MAX_ATTEMPTS = 3

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


async def fetch_envelope(upstream: Upstream, firmware_id: str) -> bytes:
    """The release's envelope bytes as the server sends them, at most MAX_ENVELOPE_BYTES."""
    path = f"/api/firmware/{firmware_id}/manifest"
    chunks: list[bytes] = []
    received = 0
    try:
        async with upstream.request("GET", path, limits=MANIFEST_LIMITS) as response:
            await raise_for_error(response)
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                received += len(chunk)
                if received > MAX_ENVELOPE_BYTES:
                    raise FirmwareRejected(
                        firmware_id,
                        "envelope_malformed",
                        f"envelope larger than {MAX_ENVELOPE_BYTES} bytes",
                    )
                chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(0, None, f"GET {path}: {exc or type(exc).__name__}") from exc
    return b"".join(chunks)


class ArtifactDownload:
    """One release's artifact into ``part``, checked against ``manifest``; ``on_bytes`` counts
    the bytes received from the server."""

    def __init__(
        self,
        upstream: Upstream,
        info: FirmwareInfo,
        manifest: ReleaseManifest,
        part: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._upstream = upstream
        self.firmware_id = info.firmware_id
        self._etag = f'"{info.checksum.removeprefix("sha256:")}"'
        self.part = part
        self._check = ArtifactCheck(info.firmware_id, manifest)
        self._on_bytes = on_bytes

    async def run(self) -> str:
        """Stream the artifact into the part (resuming a part left earlier) and verify it
        (§6.5 step 6); its SHA-256. A part that fails verification after a resume is retried
        once from byte 0 before the release is rejected."""
        firmware_id, part, check = self.firmware_id, self.part, self._check
        for attempt in range(MAX_ATTEMPTS):
            offset = await blocking(rehash_part, part, check)
            try:
                if offset < check.expected:
                    if not await self._stream(offset):
                        continue  # 416 or a range we did not ask for: start again at 0
                else:
                    await self._sync_part()
                return check.finish()
            except FirmwareRejected:
                await blocking(remove, part)
                if offset > 0 and attempt + 1 < MAX_ATTEMPTS:
                    log.info(
                        "firmware %s: resumed download failed to verify; restarting", firmware_id
                    )
                    continue
                raise
        raise FirmwareCacheError(
            f"release {firmware_id}: no complete download in {MAX_ATTEMPTS} attempts", firmware_id
        )

    async def _sync_part(self) -> None:
        """A part that was already complete: make sure its bytes are on disk."""
        try:
            await blocking(fsync_file, self.part)
        except LocalWriteError as exc:
            raise disk_error(self.firmware_id, exc.error, "the download") from None

    async def _stream(self, offset: int) -> bool:
        """One GET of the artifact from ``offset``; False when the part was dropped and the
        download must start again (416, or a 206 for another range)."""
        firmware_id, part = self.firmware_id, self.part
        path = f"/api/firmware/{firmware_id}/download"
        headers = {"Range": f"bytes={offset}-", "If-Range": self._etag} if offset else None
        try:
            async with self._upstream.request(
                "GET", path, headers=headers, limits=DOWNLOAD_LIMITS
            ) as response:
                if response.status == 416:
                    log.info("firmware %s: range refused (416); restarting", firmware_id)
                    await blocking(remove, part)
                    return False
                await raise_for_error(response)
                if response.status == 206:
                    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                    expected = self._check.expected
                    if match is None or (int(match[1]), int(match[3])) != (offset, expected):
                        await blocking(remove, part)
                        return False
                elif response.status == 200:
                    offset = 0  # the server sent the whole artifact: the part starts over
                else:
                    raise UpstreamError(
                        response.status, None, f"GET {path}: unexpected {response.status}"
                    )
                await self._write_body(response, offset)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(0, None, f"GET {path}: {exc or type(exc).__name__}") from exc
        return True

    async def _write_body(self, response: aiohttp.ClientResponse, offset: int) -> None:
        firmware_id, part, check = self.firmware_id, self.part, self._check
        if offset == 0:
            check.reset()
        try:
            fd = await blocking(open_part, part, offset)
        except LocalWriteError as exc:
            await blocking(remove, part)
            raise disk_error(firmware_id, exc.error, "the download") from None
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                await blocking(feed_and_write, fd, chunk, check)
                self._on_bytes(len(chunk))
            await blocking(fsync, fd)
        except LocalWriteError as exc:
            await blocking(os.close, fd)
            await blocking(remove, part)
            raise disk_error(firmware_id, exc.error, "the download") from None
        except BaseException:
            await blocking(os.close, fd)
            raise
        await blocking(os.close, fd)
