"""Firmware artifacts, stored by content: a blob's name is the SHA-256 of its bytes.

:class:`BlobStore` is the interface the firmware endpoints use. It is shaped to fit both backends:

* :class:`FilesystemBlobs` (SQLite mode): files under ``<data_dir>/firmware``;
* :class:`~navign_server.blobs_gridfs.GridFSBlobs` (MongoDB mode): the GridFS bucket
  ``firmware``; ``put`` feeds an upload stream chunk by chunk (GridFS makes the file visible only
  when the upload stream is closed, and deletes the chunks of an aborted one), ``read`` is a
  download stream with ``seek`` and ``read(n)``, ``size`` the files document's ``length``.

Rules every implementation keeps:

* **Nothing half-written is ever visible.** ``put`` consumes the chunk iterator completely before
  the blob appears under its name; if the iterator raises (the caller's verification failed, the
  client went away) or the store fails, the partial data is deleted and the exception propagates.
* **Durable before visible**: the bytes are on disk (fsync; in GridFS, acknowledged by a majority
  of the replica set) before the name appears.
* Blobs are never modified. Writing bytes that are already stored changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

log = logging.getLogger(__name__)

#: Bytes per chunk when a blob is read (and the write buffer's flush size).
READ_CHUNK: Final = 64 * 1024
WRITE_BUFFER: Final = 256 * 1024
#: Temporary upload files older than this are left over from a crash and removed at open.
STALE_TEMP_SECONDS: Final = 24 * 3600
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")


class BlobError(Exception):
    """Base class of blob store failures."""


class BlobNotFoundError(BlobError):
    def __init__(self, sha256: str) -> None:
        super().__init__(f"blob {sha256} not found")
        self.sha256 = sha256


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored blob: its SHA-256 (lowercase hex, its name) and its size in bytes."""

    sha256: str
    size: int


def check_sha256(value: str) -> str:
    """A blob name is 64 lowercase hex digits, nothing else: no path can be built from input."""
    if not _SHA256_RE.fullmatch(value):
        raise ValueError("a blob name is 64 lowercase hex digits")
    return value


class BlobStore(Protocol):
    async def open(self) -> None:
        """Prepare the store (create directories, remove leftovers of a crash)."""

    async def close(self) -> None: ...

    async def put(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        """Store the bytes of ``chunks`` under their SHA-256, visible only once complete and
        durable. An exception from ``chunks`` aborts: nothing is stored and it propagates."""

    async def size(self, sha256: str) -> int:
        """The blob's size (BlobNotFoundError)."""

    def read(
        self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the blob (``end`` None: to its end), in chunks of at most
        ``chunk_size``. BlobNotFoundError on the first iteration when absent."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_and_close(handle: BinaryIO) -> None:
    try:
        handle.flush()
        os.fsync(handle.fileno())
    finally:
        handle.close()


def _publish(temporary: Path, final: Path) -> None:
    """Make a complete, synced temporary file visible under its final name, atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(temporary, 0o444)
    os.replace(temporary, final)  # an existing blob of that name holds the same bytes
    _fsync_dir(final.parent)


def _read_at(handle: BinaryIO, offset: int, length: int) -> bytes:
    return os.pread(handle.fileno(), length, offset)


class FilesystemBlobs:
    """Blobs as files: ``<root>/sha256/<first two hex>/<sha256>``; uploads in progress are
    ``<root>/tmp/<random>.part`` (same file system, so the final rename is atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._temporary = self.root / "tmp"

    def path_of(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self._blobs / sha256[:2] / sha256

    async def open(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._temporary.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self._temporary.glob("*.part"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    log.info("removed a stale upload: %s", leftover.name)
            except FileNotFoundError:
                continue

    async def close(self) -> None:
        return None

    async def put(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        temporary = self._temporary / f"{secrets.token_hex(16)}.part"
        handle: BinaryIO = await asyncio.to_thread(temporary.open, "xb")
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    await asyncio.to_thread(handle.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(handle.write, bytes(buffer))
            await asyncio.to_thread(_sync_and_close, handle)
            ref = BlobRef(digest.hexdigest(), size)
            await asyncio.to_thread(_publish, temporary, self.path_of(ref.sha256))
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
        return ref

    async def size(self, sha256: str) -> int:
        try:
            stat = await asyncio.to_thread(self.path_of(sha256).stat)
        except FileNotFoundError:
            raise BlobNotFoundError(sha256) from None
        return stat.st_size

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start) or chunk_size < 1:
            raise ValueError("invalid byte range")
        try:
            handle: BinaryIO = await asyncio.to_thread(self.path_of(sha256).open, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(sha256) from None
        try:
            position = start
            while end is None or position < end:
                want = chunk_size if end is None else min(chunk_size, end - position)
                chunk = await asyncio.to_thread(_read_at, handle, position, want)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            handle.close()
