"""Firmware blobs in MongoDB GridFS (MongoDB mode): the bucket ``firmware`` of the store's
database, so every server instance sharing the database shares the artifacts too, and one
database backup holds everything.

Layout (the GridFS spec's, plus one index):

* ``firmware.files``: one document per blob. Its ``filename`` is the blob's SHA-256 (lowercase
  hex) under a **unique** index (``by_sha256``), so a name can never hold two files; its ``_id``
  is the ObjectId the upload was started with, and ``length`` is the size.
* ``firmware.chunks``: the bytes, in chunks of 255 KiB (``files_id``, ``n``, ``data``).

How :class:`GridFSBlobs` keeps the rules of :mod:`navign_server.blobs`:

* **Nothing half-written is visible.** A blob is looked up by its files document only, and
  GridFS inserts that document (one atomic single-document insert) after every chunk has been
  written, when the upload stream is closed. ``put`` names the upload by its SHA-256 just before
  closing it, once the chunk iterator has finished: before that the upload's chunks belong to no
  files document. If the iterator (the caller's verification) or a write fails first, the upload
  stream is aborted, which deletes its chunks.
* **Durable before visible**: chunks and the files document are written with write concern
  ``majority``; reads use read concern ``majority``, so a blob that is seen cannot be rolled back.
* **Identical bytes are stored once**: a ``put`` whose SHA-256 is already stored discards its
  upload and returns the stored blob; two concurrent ones race on the unique index, and the loser
  discards its upload.
* **Crash leftovers**: a process that dies mid-upload leaves chunks without a files document.
  ``open`` deletes such chunks when their upload started more than
  :data:`~navign_server.blobs.STALE_TEMP_SECONDS` ago (an ObjectId carries its creation time):
  younger ones may belong to an upload another instance is running.

The store has a client of its own, made from the same URL and options as
:class:`~navign_server.storage.mongo.MongoStore`'s (that one keeps its client private). GridFS
takes no part in transactions and needs none, so this store does not require a replica set
itself; the server does, for the rest of its data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bson.objectid import ObjectId
from gridfs import DEFAULT_CHUNK_SIZE, AsyncGridFSBucket, AsyncGridIn, NoFile
from gridfs.errors import FileExists
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from navign_server.blobs import (
    READ_CHUNK,
    STALE_TEMP_SECONDS,
    BlobError,
    BlobNotFoundError,
    BlobRef,
    check_sha256,
)
from navign_server.storage.mongo_db import client_options, database_name, redacted

log = logging.getLogger(__name__)

Doc = dict[str, Any]

#: The GridFS bucket: collections ``firmware.files`` and ``firmware.chunks``.
BUCKET: Final = "firmware"
#: The unique index on ``firmware.files.filename`` (the SHA-256).
SHA256_INDEX: Final = "by_sha256"
_MAJORITY_READ: Final = ReadConcern("majority")
_MAJORITY_WRITE: Final = WriteConcern("majority")


class GridFSUnavailableError(BlobError):
    """MongoDB could not be reached or refused us (address, credentials, TLS, permissions)."""

    def __init__(self, address: str, cause: Exception) -> None:
        super().__init__(f"cannot use MongoDB GridFS (firmware blobs) at {address}: {cause}")
        self.address = address
        self.cause = cause


class BlobStoreClosedError(BlobError):
    def __init__(self) -> None:
        super().__init__("the blob store is not open")


class GridFSBlobs:
    """Blobs in the GridFS bucket ``firmware`` of the database a MongoDB URL names.

    ``GridFSBlobs(url, database=None)``: the database is ``database`` when given, else the URL's
    path, else ``navign``, exactly as :class:`~navign_server.storage.mongo.MongoStore` picks it.
    """

    def __init__(
        self,
        url: str,
        database: str | None = None,
        *,
        bucket: str = BUCKET,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.url = url
        self.database_name = database_name(url, database)
        self.bucket_name = bucket
        self.chunk_size_bytes = chunk_size_bytes
        self._client: AsyncMongoClient[Doc] | None = None
        self._bucket: AsyncGridFSBucket | None = None
        self._files: AsyncCollection[Doc] | None = None
        self._chunks: AsyncCollection[Doc] | None = None

    async def open(self) -> None:
        """Connect (failing after the URL's ``serverSelectionTimeoutMS``, 10 s by default),
        create the indexes (idempotent) and delete the chunks of uploads abandoned long ago."""
        if self._client is not None:
            return
        address = redacted(self.url)
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.url, **client_options(self.url))
        try:
            db = client.get_database(
                self.database_name, read_concern=_MAJORITY_READ, write_concern=_MAJORITY_WRITE
            )
            await client.admin.command("ping")
            files = db[f"{self.bucket_name}.files"]
            chunks = db[f"{self.bucket_name}.chunks"]
            await files.create_index([("filename", ASCENDING)], name=SHA256_INDEX, unique=True)
            # The GridFS spec's own indexes, under the names drivers give them.
            await files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
            await chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
            await _remove_stale_uploads(files, chunks)
            bucket = AsyncGridFSBucket(db, self.bucket_name, chunk_size_bytes=self.chunk_size_bytes)
        except PyMongoError as exc:
            await client.close()
            raise GridFSUnavailableError(address, exc) from exc
        except BaseException:
            await client.close()
            raise
        self._client, self._bucket, self._files, self._chunks = client, bucket, files, chunks

    async def close(self) -> None:
        client = self._client
        self._client = self._bucket = self._files = self._chunks = None
        if client is not None:
            await client.close()

    def _open(self) -> tuple[AsyncGridFSBucket, AsyncCollection[Doc]]:
        if self._bucket is None or self._files is None:
            raise BlobStoreClosedError
        return self._bucket, self._files

    async def put(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        bucket, files = self._open()
        upload_id = ObjectId()
        # The name is a placeholder: it is replaced by the SHA-256 before the files document
        # is written (at close), and never reaches the database.
        upload = bucket.open_upload_stream_with_id(upload_id, f"upload-{upload_id}")
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await upload.write(chunk)
        except BaseException:
            await _abort(upload)  # no files document exists: deleting the chunks is safe
            raise
        ref = BlobRef(digest.hexdigest(), size)
        try:
            duplicate = await _stored(files, ref.sha256)
        except BaseException:
            await _abort(upload)
            raise
        if duplicate:
            await _abort(upload)
            return ref
        await upload.set("filename", ref.sha256)  # not closed yet: no I/O, only the name
        try:
            await upload.close()  # the last chunks, then the files document: now it is visible
        except FileExists:
            # The unique index refused our files document: the same bytes were stored meanwhile.
            await _abort(upload)
            if not await _stored(files, ref.sha256):
                raise
        except BaseException:
            # Whether the files document went in is unknown (a lost reply): leave the chunks.
            # If it did, the blob is complete; if not, open() deletes them after a day.
            log.warning("blob upload %s failed while being published", upload_id)
            raise
        return ref

    async def size(self, sha256: str) -> int:
        check_sha256(sha256)
        _, files = self._open()
        doc = await files.find_one({"filename": sha256}, {"length": 1})
        if doc is None:
            raise BlobNotFoundError(sha256)
        return int(doc["length"])

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start) or chunk_size < 1:
            raise ValueError("invalid byte range")
        check_sha256(sha256)
        bucket, _ = self._open()
        try:
            stream = await bucket.open_download_stream_by_name(sha256)
        except NoFile:
            raise BlobNotFoundError(sha256) from None
        try:
            stop = int(stream.length) if end is None else min(end, int(stream.length))
            position = start
            if position < stop:
                # Reading starts at the chunk holding ``start``: earlier chunks are not fetched.
                await stream.seek(position)
            while position < stop:
                chunk = await stream.read(min(chunk_size, stop - position))
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            await stream.close()


async def _stored(files: AsyncCollection[Doc], sha256: str) -> bool:
    return await files.find_one({"filename": sha256}, {"_id": 1}) is not None


async def _abort(upload: AsyncGridIn) -> None:
    """Delete an unpublished upload's chunks; a failure only leaves them to ``open``'s sweep."""
    try:
        await upload.abort()
    except Exception:
        log.warning("could not delete the chunks of blob upload %s", upload._id, exc_info=True)


async def _remove_stale_uploads(files: AsyncCollection[Doc], chunks: AsyncCollection[Doc]) -> None:
    """Delete chunks that no files document claims, of uploads started more than a day ago."""
    cutoff = ObjectId.from_datetime(datetime.now(UTC) - timedelta(seconds=STALE_TEMP_SECONDS))
    old = await chunks.distinct("files_id", {"files_id": {"$lt": cutoff}})
    if not old:
        return
    claimed = {doc["_id"] async for doc in files.find({"_id": {"$in": old}}, {"_id": 1})}
    stale = [files_id for files_id in old if files_id not in claimed]
    if stale:
        await chunks.delete_many({"files_id": {"$in": stale}})
        log.info("removed the chunks of %d abandoned blob upload(s)", len(stale))
