"""The blob store contract: every :class:`~navign_server.blobs.BlobStore` behaves alike.

``filesystem`` (SQLite mode) always runs. ``gridfs`` (MongoDB mode) runs only when
``NAVIGN_TEST_MONGODB_URL`` is set, each test in a database of its own; no MongoDB server can be
installed on this machine. The last tests need no server: connection failure, and which store
``open_blobs`` picks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from navign_server.app import open_blobs
from navign_server.blobs import (
    STALE_TEMP_SECONDS,
    BlobNotFoundError,
    BlobRef,
    BlobStore,
    FilesystemBlobs,
)
from navign_server.blobs_gridfs import (
    BUCKET,
    BlobStoreClosedError,
    GridFSBlobs,
    GridFSUnavailableError,
)
from navign_server.settings import ServerSettings
from navign_server.storage.mongo import MongoStore
from navign_server.storage.sqlite import SqliteStore

from .firmware_helpers import payload

MONGODB_URL_ENV = "NAVIGN_TEST_MONGODB_URL"
#: Bigger than two GridFS chunks (255 KiB), so reads cross chunk boundaries.
SIZE = 600_000


@dataclass
class Backend:
    blobs: BlobStore
    #: Everything the store holds: each blob's SHA-256, and ``partial:<id>`` for each piece of an
    #: upload that is not a blob (a temporary file, chunks no files document claims).
    stored: Callable[[], Awaitable[list[str]]]
    #: A new, unopened store over the same data.
    reopen: Callable[[], BlobStore]


def _files_under(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        in_place = path.parent.parent == root / "sha256"
        found.append(path.name if in_place else f"partial:{path.name}")
    return found


def _filesystem(root: Path) -> Backend:
    async def stored() -> list[str]:
        return await asyncio.to_thread(_files_under, root)

    return Backend(FilesystemBlobs(root), stored, lambda: FilesystemBlobs(root))


@pytest.fixture(params=["filesystem", "gridfs"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "filesystem":
        made = _filesystem(tmp_path / "firmware")
        await made.blobs.open()
        try:
            yield made
        finally:
            await made.blobs.close()
        return

    url = os.environ.get(MONGODB_URL_ENV)
    if not url:
        pytest.skip(f"{MONGODB_URL_ENV} is not set: the GridFS blob store is not tested here")
    from pymongo import AsyncMongoClient

    name = f"navign_test_{uuid.uuid4().hex[:12]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    db = client[name]

    async def stored() -> list[str]:
        names = {d["_id"]: d["filename"] async for d in db[f"{BUCKET}.files"].find({})}
        orphans = [
            f"partial:{files_id}"
            for files_id in await db[f"{BUCKET}.chunks"].distinct("files_id")
            if files_id not in names
        ]
        return sorted(names.values()) + sorted(orphans)

    blobs = GridFSBlobs(url, database=name)
    await blobs.open()
    try:
        yield Backend(blobs, stored, lambda: GridFSBlobs(url, database=name))
    finally:
        await blobs.close()
        await client.drop_database(name)
        await client.close()


async def chunks_of(
    data: bytes, size: int = 1000, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if fail_at is not None and start >= fail_at:
            raise RuntimeError("verification failed")
        yield data[start : start + size]


async def read_all(blobs: BlobStore, sha256: str, *args: Any, **kwargs: Any) -> list[bytes]:
    return [chunk async for chunk in blobs.read(sha256, *args, **kwargs)]


# -- put, size, read ------------------------------------------------------------------------


async def test_put_size_and_read(backend: Backend) -> None:
    blobs = backend.blobs
    data = payload(SIZE, "blob")
    ref = await blobs.put(chunks_of(data, 4000))
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert await backend.stored() == [ref.sha256]
    assert await blobs.size(ref.sha256) == len(data)
    assert b"".join(await read_all(blobs, ref.sha256)) == data


@pytest.mark.parametrize(
    ("start", "end", "chunk_size"),
    [
        (0, None, 65_536),
        (10, 70_000, 4096),
        (261_000, 530_000, 100_000),  # from inside the second GridFS chunk into the third
        (261_120, 261_121, 1),  # one byte, the first of a GridFS chunk
        (SIZE - 5, None, 4096),
        (SIZE - 5, SIZE + 1000, 4096),  # an end past the blob stops at its end
        (SIZE, None, 4096),
        (SIZE + 10, None, 4096),
        (1234, 1234, 4096),
    ],
)
async def test_read_ranges(backend: Backend, start: int, end: int | None, chunk_size: int) -> None:
    data = payload(SIZE, "ranges")
    ref = await backend.blobs.put(chunks_of(data, 65_536))
    pieces = await read_all(backend.blobs, ref.sha256, start, end, chunk_size=chunk_size)
    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(piece) <= chunk_size for piece in pieces)
    # Every piece but the last is full: the range is not cut at the store's own boundaries.
    assert all(len(piece) == chunk_size for piece in pieces[:-1])


async def test_an_empty_blob(backend: Backend) -> None:
    ref = await backend.blobs.put(chunks_of(b""))
    assert ref == BlobRef(hashlib.sha256(b"").hexdigest(), 0)
    assert await backend.blobs.size(ref.sha256) == 0
    assert await read_all(backend.blobs, ref.sha256) == []
    assert await backend.stored() == [ref.sha256]


async def test_identical_bytes_are_stored_once(backend: Backend) -> None:
    data, other = payload(SIZE, "same"), payload(1000, "other")
    ref = await backend.blobs.put(chunks_of(data, 1000))
    assert await backend.blobs.put(chunks_of(data, 777)) == ref
    both = await asyncio.gather(*(backend.blobs.put(chunks_of(data, 5000)) for _ in range(3)))
    assert both == [ref] * 3
    second = await backend.blobs.put(chunks_of(other))
    assert await backend.stored() == sorted([ref.sha256, second.sha256])
    assert b"".join(await read_all(backend.blobs, ref.sha256)) == data


# -- nothing half-written -------------------------------------------------------------------


async def test_an_aborted_put_leaves_nothing(backend: Backend) -> None:
    with pytest.raises(RuntimeError, match="verification failed"):
        await backend.blobs.put(chunks_of(payload(SIZE, "big"), 1000, fail_at=500_000))
    assert await backend.stored() == []
    kept = await backend.blobs.put(chunks_of(payload(1000, "kept")))
    with pytest.raises(RuntimeError, match="verification failed"):
        await backend.blobs.put(chunks_of(payload(1000, "kept"), 100, fail_at=900))
    assert await backend.stored() == [kept.sha256]


async def test_a_cancelled_put_leaves_nothing(backend: Backend) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield payload(300_000, "first")
        started.set()
        await asyncio.Event().wait()  # the client went away mid-upload
        yield b""

    task = asyncio.create_task(backend.blobs.put(stalls()))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend.stored() == []


async def test_a_blob_is_invisible_until_its_put_completes(backend: Backend) -> None:
    data = payload(SIZE, "late")
    sha256 = hashlib.sha256(data).hexdigest()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:300_000]
        await release.wait()
        yield data[300_000:]

    task = asyncio.create_task(backend.blobs.put(slow()))
    await asyncio.sleep(0.05)
    with pytest.raises(BlobNotFoundError):
        await backend.blobs.size(sha256)
    release.set()
    assert (await task).sha256 == sha256
    assert await backend.blobs.size(sha256) == len(data)


# -- errors ---------------------------------------------------------------------------------


async def test_missing_blobs_bad_names_and_bad_ranges(backend: Backend) -> None:
    blobs = backend.blobs
    with pytest.raises(BlobNotFoundError) as missing:
        await blobs.size("0" * 64)
    assert missing.value.sha256 == "0" * 64
    with pytest.raises(BlobNotFoundError):
        await read_all(blobs, "0" * 64)
    for name in ("../../etc/passwd", "A" * 64, "0" * 63, "0" * 65, ""):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            await blobs.size(name)
        with pytest.raises(ValueError, match="64 lowercase hex"):
            await read_all(blobs, name)
    ref = await blobs.put(chunks_of(b"x" * 10))
    for start, end, chunk_size in ((-1, None, 10), (5, 4, 10), (0, None, 0)):
        with pytest.raises(ValueError, match="invalid byte range"):
            await read_all(blobs, ref.sha256, start, end, chunk_size=chunk_size)


async def test_a_reopened_store_serves_what_was_stored(backend: Backend) -> None:
    ref = await backend.blobs.put(chunks_of(payload(5000, "kept")))
    again = backend.reopen()
    await again.open()
    try:
        assert await again.size(ref.sha256) == 5000
        assert b"".join(await read_all(again, ref.sha256)) == payload(5000, "kept")
    finally:
        await again.close()


# -- GridFS only ----------------------------------------------------------------------------


async def test_gridfs_open_removes_stale_uploads_only(backend: Backend) -> None:
    if not isinstance(backend.blobs, GridFSBlobs):
        pytest.skip("GridFS only (FilesystemBlobs: test_firmware_parts)")
    from bson.objectid import ObjectId
    from pymongo import AsyncMongoClient

    blobs = backend.blobs
    ref = await blobs.put(chunks_of(payload(1000, "kept")))
    past = datetime.now(UTC) - timedelta(seconds=STALE_TEMP_SECONDS + 60)
    stale, fresh = ObjectId.from_datetime(past), ObjectId()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(blobs.url)
    try:
        chunks = client[blobs.database_name][f"{BUCKET}.chunks"]
        await chunks.insert_many(
            [{"files_id": files_id, "n": 0, "data": b"x"} for files_id in (stale, fresh)]
        )
        again = backend.reopen()
        await again.open()
        await again.close()
    finally:
        await client.close()
    assert await backend.stored() == [ref.sha256, f"partial:{fresh}"]


# -- without a server -----------------------------------------------------------------------


async def test_gridfs_open_fails_fast_without_a_server() -> None:
    blobs = GridFSBlobs("mongodb://user:secret@127.0.0.1:1/navign?serverSelectionTimeoutMS=300")
    began = time.monotonic()
    with pytest.raises(GridFSUnavailableError) as failed:
        await blobs.open()
    assert time.monotonic() - began < 5
    message = str(failed.value)
    assert message.startswith("cannot use MongoDB GridFS (firmware blobs) at mongodb://127.0.0.1:1")
    assert "secret" not in message
    with pytest.raises(BlobStoreClosedError):
        await blobs.size("0" * 64)
    with pytest.raises(BlobStoreClosedError):
        await blobs.put(chunks_of(b"x"))
    await blobs.close()


def test_open_blobs_follows_the_database(tmp_path: Path) -> None:
    def settings(url: str) -> ServerSettings:
        return ServerSettings(environment="development", database_url=url, data_dir=tmp_path)

    sqlite = open_blobs(settings(f"sqlite:///{tmp_path / 'navign.db'}"))
    assert isinstance(sqlite, FilesystemBlobs)
    assert sqlite.root == tmp_path / "firmware"
    mongo = open_blobs(settings("mongodb://db1,db2/fleet?replicaSet=rs0"))
    assert isinstance(mongo, GridFSBlobs)
    assert (mongo.url, mongo.database_name) == ("mongodb://db1,db2/fleet?replicaSet=rs0", "fleet")
    # A store handed to the app decides, whatever the URL says: its database holds the blobs.
    store = MongoStore("mongodb://db1/?replicaSet=rs0", database="navign_test_x")
    given = open_blobs(settings("sqlite:///unused.db"), store)
    assert isinstance(given, GridFSBlobs)
    assert (given.url, given.database_name) == ("mongodb://db1/?replicaSet=rs0", "navign_test_x")
    local = open_blobs(settings("mongodb://db1/?replicaSet=rs0"), SqliteStore(tmp_path / "x.db"))
    assert isinstance(local, FilesystemBlobs)
