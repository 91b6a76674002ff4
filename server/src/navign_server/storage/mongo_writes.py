"""How a batch of document writes is read and stored in MongoDB, inside the caller's
transaction. The plan itself (changes, digests, checksums, the data_update event) is the SQLite
backend's :class:`~navign_server.storage.sqlite_writes.WritePlan`, so both backends compute
exactly the same thing. Nothing here reads a whole collection.

An entity's four collection digests live on the entity's document::

    {"_id": entity_id, "head": ..., "digests": {"areas": {"count": 3, "total_hex": "..."}, ...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from pymongo import DeleteOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from navign_proto.checksums import COLLECTIONS, CollectionDigest, MallChecksums
from navign_server.storage.base import DocumentWrite
from navign_server.storage.mongo_db import Doc, fetch, stamp
from navign_server.storage.sqlite_writes import WritePlan

#: Ids per ``$in`` query when loading the documents a write touches.
_ID_CHUNK: Final = 500


def digest_document(digest: CollectionDigest) -> Doc:
    count, total_hex = digest.to_storage()
    return {"count": count, "total_hex": total_hex}


def stored_digests(entity: Doc) -> MallChecksums:
    """The digests kept on an entity's document."""
    checksums = MallChecksums.empty()
    for name, stored in entity["digests"].items():
        checksums = checksums.with_digest(
            CollectionDigest.from_storage(name, stored["count"], stored["total_hex"])
        )
    return checksums


def counts(checksums: MallChecksums) -> dict[str, int]:
    return {name: checksums.get(name).count for name in COLLECTIONS}


async def current_bodies(
    documents: AsyncCollection[Doc],
    session: AsyncClientSession,
    entity_id: str,
    writes: Sequence[DocumentWrite],
) -> dict[tuple[str, str], str | None]:
    """The stored canonical text of every document ``writes`` touch (None: absent)."""
    wanted: dict[str, list[str]] = {}
    for write in writes:
        wanted.setdefault(write.collection, []).append(write.id)
    bodies: dict[tuple[str, str], str | None] = {}
    for collection, ids in wanted.items():
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _ID_CHUNK):
            chunk = unique[start : start + _ID_CHUNK]
            bodies.update({(collection, doc_id): None for doc_id in chunk})
            cursor = documents.find(
                {"entity_id": entity_id, "collection": collection, "id": {"$in": chunk}},
                {"id": 1, "body": 1},
                session=session,
            )
            bodies.update({(collection, doc["id"]): doc["body"] for doc in await fetch(cursor)})
    return bodies


async def store_plan(
    documents: AsyncCollection[Doc],
    changes: AsyncCollection[Doc],
    session: AsyncClientSession,
    entity_id: str,
    plan: WritePlan,
    now: datetime,
) -> None:
    """Write a plan's documents and change rows: one bulk write and one insert."""
    updated = stamp("updated", now)
    operations: list[DeleteOne | UpdateOne] = []
    for (collection, doc_id), body in plan.state.items():
        if body == plan.initial[(collection, doc_id)]:
            continue  # created and deleted again in this batch, or back as it was
        where = {"entity_id": entity_id, "collection": collection, "id": doc_id}
        if body is None:
            operations.append(DeleteOne(where))
        else:
            operations.append(UpdateOne(where, {"$set": {"body": body, **updated}}, upsert=True))
    if operations:
        await documents.bulk_write(operations, ordered=True, session=session)
    await changes.insert_many(
        [
            {
                "entity_id": entity_id,
                "seq": change.seq,
                "collection": change.collection,
                "operation": change.operation,
                "doc_id": change.id,
                "data": text,
                "checksum": change.checksum,
                **updated,
            }
            for change, text in zip(plan.changes, plan.texts, strict=True)
        ],
        session=session,
    )
