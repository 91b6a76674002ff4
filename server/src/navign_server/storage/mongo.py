"""The MongoDB backend of :class:`~navign_server.storage.base.Store`: production and scale-out.

Several server instances may share one database. What keeps them consistent:

* **Transactions.** A data write (documents, change-log rows, digests, the entity's head and
  the ``data_update`` event), an event append, an enrollment and a prune are each one
  multi-document transaction (``mongo_db``). The deployment must be a replica set or a sharded
  cluster; ``open()`` refuses a standalone server.
* **One sequence per entity.** The head lives on the entity's document, next to the floor and
  the four collection digests, and every transaction that takes a seq writes that document.
  Two instances writing one entity at once therefore meet a write conflict; MongoDB aborts one
  transaction and ``with_transaction`` retries it, so seqs are unique and gap-free, and per
  entity they commit in seq order. Within one process, writes to an entity also queue on a lock
  so they do not conflict with each other.
* **Incremental checksums.** A write reads the digests from the entity document and only the
  documents it touches, and computes changes, checksums and the event with the same
  :class:`~navign_server.storage.sqlite_writes.WritePlan` as the SQLite backend.
* **Events from every instance.** ``watch_events()`` is fed by one change stream on the events
  collection (``mongo_watch``), so an event committed by any instance reaches every instance.
* **Firmware releases** and their assignments (``mongo_releases``); an assignment's
  ``firmware_update`` event takes a seq like any other.
* **Reads of several documents** (snapshot, delta pages, event replay) run in one snapshot
  transaction, so they see one committed state, at one seq.

Firmware blobs (GridFS) are not part of the Store interface yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from navign_proto.checksums import COLLECTIONS, CollectionDigest, MallChecksums
from navign_server.storage.base import (
    DATA_UPDATE_EVENT,
    Change,
    ChangePage,
    ConflictError,
    DocumentWrite,
    EntityState,
    HistoryExpiredError,
    JsonObject,
    NotFoundError,
    Snapshot,
    StorageError,
    StoredEvent,
    WriteResult,
)
from navign_server.storage.mongo_db import (
    CHANGES,
    DOCUMENTS,
    ENTITIES,
    EVENTS,
    Doc,
    fetch,
    stamp,
    time_of,
)
from navign_server.storage.mongo_records import RecordCollections
from navign_server.storage.mongo_releases import ReleaseCollections
from navign_server.storage.mongo_reports import ReportCollections
from navign_server.storage.mongo_watch import event_document, stored_event
from navign_server.storage.mongo_writes import (
    counts,
    current_bodies,
    digest_document,
    store_plan,
    stored_digests,
)
from navign_server.storage.sqlite_schema import canonical_text, from_us, load_json, to_us
from navign_server.storage.sqlite_writes import WritePlan

__all__ = ["MongoStore"]

_EMPTY_GLOBAL: Final = MallChecksums.empty().global_checksum


def _change(doc: Doc) -> Change:
    return Change(
        seq=doc["seq"],
        collection=doc["collection"],
        operation=doc["operation"],
        id=doc["doc_id"],
        data=None if doc["data"] is None else load_json(doc["data"]),
        updated_at=time_of(doc, "updated"),
        checksum=doc["checksum"],
    )


def _entity_id(entity: JsonObject) -> str:
    entity_id = entity.get("id")
    if not isinstance(entity_id, str) or not entity_id:
        raise ValueError("an entity document needs a non-empty string 'id'")
    return entity_id


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}")


class MongoStore(RecordCollections, ReleaseCollections, ReportCollections):
    """:class:`~navign_server.storage.base.Store` on a MongoDB replica set or sharded cluster.

    ``MongoStore(url, database=None)``: the database is ``database`` when given, else the URL's
    path, else ``navign``."""

    # -- entities ---------------------------------------------------------------------------
    async def _entity(
        self, session: AsyncClientSession | None, entity_id: str, *fields: str
    ) -> Doc:
        projection = dict.fromkeys(fields, 1) or {"_id": 1}
        entity = await self._col(ENTITIES).find_one({"_id": entity_id}, projection, session=session)
        if entity is None:
            raise NotFoundError("entity", entity_id)
        return entity

    async def create_entity(self, entity: JsonObject, now: datetime) -> None:
        entity_id = _entity_id(entity)
        doc = {
            "_id": entity_id,
            "document": canonical_text(entity),
            "head": 0,
            "floor": 0,
            "floor_checksum": _EMPTY_GLOBAL,
            "floor_changed_us": None,
            "digests": {name: digest_document(CollectionDigest(name)) for name in COLLECTIONS},
            **stamp("created", now),
            **stamp("updated", now),
        }
        try:
            await self._col(ENTITIES).insert_one(doc)
        except DuplicateKeyError:
            raise ConflictError("entity", entity_id, "exists") from None

    async def update_entity(self, entity: JsonObject, now: datetime) -> None:
        entity_id = _entity_id(entity)
        result = await self._col(ENTITIES).update_one(
            {"_id": entity_id},
            {"$set": {"document": canonical_text(entity), **stamp("updated", now)}},
        )
        if result.matched_count == 0:
            raise NotFoundError("entity", entity_id)

    async def get_entity(self, entity_id: str) -> JsonObject:
        stored = await self._entity(None, entity_id, "document")
        entity: JsonObject = load_json(stored["document"])
        return entity

    async def list_entities(self) -> list[JsonObject]:
        cursor = self._col(ENTITIES).find({}, {"document": 1}).sort("_id", ASCENDING)
        return [load_json(doc["document"]) for doc in await fetch(cursor)]

    async def entity_state(self, entity_id: str) -> EntityState:
        entity = await self._entity(None, entity_id, "head", "floor", "digests")
        digests = stored_digests(entity)
        return EntityState(
            entity_id, entity["head"], entity["floor"], digests.checksums(), counts(digests)
        )

    # -- mall data --------------------------------------------------------------------------
    async def write_documents(
        self, entity_id: str, writes: Sequence[DocumentWrite], now: datetime
    ) -> WriteResult:
        stamp_us = to_us(now)
        now = from_us(stamp_us)  # what reads will return: UTC, microseconds

        async def run(session: AsyncClientSession) -> WriteResult:
            entity = await self._entity(session, entity_id, "head", "digests")
            head: int = entity["head"]
            plan = WritePlan(
                head,
                stored_digests(entity),
                await current_bodies(self._col(DOCUMENTS), session, entity_id, writes),
            )
            for write in writes:
                plan.apply(write, now)
            if not plan.changes:
                return WriteResult((), plan.digests.checksums(), None)
            event = StoredEvent(entity_id, plan.head, DATA_UPDATE_EVENT, plan.event_data(), now)
            # The entity document first: a conflict with another instance surfaces (and the
            # transaction is retried) before anything else is written.
            touched = sorted({change.collection for change in plan.changes})
            after = await self._col(ENTITIES).find_one_and_update(
                {"_id": entity_id, "head": head},
                {
                    "$inc": {"head": len(plan.changes)},
                    "$set": {f"digests.{n}": digest_document(plan.digests.get(n)) for n in touched},
                },
                projection={"head": 1},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if after is None or after["head"] != plan.head:  # unreachable under snapshot reads
                raise StorageError(f"entity {entity_id!r}: head moved during a transaction")
            await store_plan(
                self._col(DOCUMENTS), self._col(CHANGES), session, entity_id, plan, now
            )
            await self._col(EVENTS).insert_one(event_document(event), session=session)
            return WriteResult(tuple(plan.changes), plan.digests.checksums(), event)

        async with self._entity_lock(entity_id):
            return await self._transaction(run)

    async def get_document(self, entity_id: str, collection: str, doc_id: str) -> JsonObject:
        _check_collection(collection)
        await self._entity(None, entity_id)
        doc = await self._col(DOCUMENTS).find_one(
            {"entity_id": entity_id, "collection": collection, "id": doc_id}, {"body": 1}
        )
        if doc is None:
            raise NotFoundError(collection, doc_id)
        document: JsonObject = load_json(doc["body"])
        return document

    async def list_documents(
        self, entity_id: str, collection: str, *, after_id: str | None = None, limit: int = 500
    ) -> list[JsonObject]:
        _check_collection(collection)
        await self._entity(None, entity_id)
        cursor = self._col(DOCUMENTS).find(
            {"entity_id": entity_id, "collection": collection, "id": {"$gt": after_id or ""}},
            {"body": 1},
        )
        return [load_json(doc["body"]) for doc in await fetch(cursor.sort("id", ASCENDING), limit)]

    async def snapshot(self, entity_id: str, collections: Sequence[str]) -> Snapshot:
        for collection in collections:
            _check_collection(collection)

        async def run(session: AsyncClientSession) -> tuple[Doc, dict[str, list[JsonObject]]]:
            entity = await self._entity(session, entity_id, "document", "head", "digests")
            documents: dict[str, list[JsonObject]] = {}
            for collection in dict.fromkeys(collections):
                cursor = self._col(DOCUMENTS).find(
                    {"entity_id": entity_id, "collection": collection},
                    {"body": 1},
                    session=session,
                )
                rows = await fetch(cursor.sort("id", ASCENDING))
                documents[collection] = [load_json(row["body"]) for row in rows]
            return entity, documents

        entity, documents = await self._transaction(run)
        digests = stored_digests(entity)
        return Snapshot(
            entity=load_json(entity["document"]),
            seq=entity["head"],
            documents=documents,
            counts=counts(digests),
            checksums=digests.checksums(),
            taken_at=datetime.now(UTC),
        )

    async def changes_since(self, entity_id: str, cursor: int, limit: int) -> ChangePage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        changes = self._col(CHANGES)

        async def run(session: AsyncClientSession) -> ChangePage:
            entity = await self._entity(session, entity_id, "head", "floor", "floor_checksum")
            head, floor = entity["head"], entity["floor"]
            if not floor <= cursor <= head:
                raise HistoryExpiredError(entity_id, cursor, floor, head)
            base = await changes.find_one(
                {"entity_id": entity_id, "seq": {"$lte": cursor}},
                {"checksum": 1},
                sort=[("seq", DESCENDING)],
                session=session,
            )
            rows = changes.find({"entity_id": entity_id, "seq": {"$gt": cursor}}, session=session)
            page = [_change(row) for row in await fetch(rows.sort("seq", ASCENDING), limit + 1)]
            base_checksum: str = entity["floor_checksum"] if base is None else base["checksum"]
            has_more = len(page) > limit
            found = tuple(page[:limit])
            return ChangePage(
                changes=found,
                base_checksum=base_checksum,
                new_checksum=found[-1].checksum if found else base_checksum,
                next_cursor=found[-1].seq if has_more else head,
                has_more=has_more,
            )

        return await self._transaction(run)

    async def seq_at(self, entity_id: str, moment: datetime) -> int:
        at = to_us(moment)

        async def run(session: AsyncClientSession) -> int:
            entity = await self._entity(session, entity_id, "head", "floor", "floor_changed_us")
            head, floor = entity["head"], entity["floor"]
            floor_changed = entity.get("floor_changed_us")
            if floor_changed is not None and floor_changed >= at:
                # A pruned change may have been made at or after `moment`.
                raise HistoryExpiredError(entity_id, floor - 1, floor, head)
            first = await self._col(CHANGES).find_one(
                {"entity_id": entity_id, "updated_us": {"$gte": at}},
                {"seq": 1},
                sort=[("seq", ASCENDING)],
                session=session,
            )
            return head if first is None else int(first["seq"]) - 1

        return await self._transaction(run)

    # -- events -----------------------------------------------------------------------------
    async def append_event(
        self, entity_id: str, event_type: str, data: JsonObject, now: datetime
    ) -> StoredEvent:
        now = from_us(to_us(now))

        async def run(session: AsyncClientSession) -> StoredEvent:
            entity = await self._col(ENTITIES).find_one_and_update(
                {"_id": entity_id},
                {"$inc": {"head": 1}},
                projection={"head": 1},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if entity is None:
                raise NotFoundError("entity", entity_id)
            event = StoredEvent(entity_id, entity["head"], event_type, data, now)
            await self._col(EVENTS).insert_one(event_document(event), session=session)
            return event

        async with self._entity_lock(entity_id):
            return await self._transaction(run)

    async def events_since(self, entity_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        async def run(session: AsyncClientSession) -> list[StoredEvent]:
            entity = await self._entity(session, entity_id, "head", "floor")
            head, floor = entity["head"], entity["floor"]
            if not floor <= after_seq <= head:
                raise HistoryExpiredError(entity_id, after_seq, floor, head)
            cursor = self._col(EVENTS).find(
                {"entity_id": entity_id, "seq": {"$gt": after_seq}}, session=session
            )
            return [stored_event(doc) for doc in await fetch(cursor.sort("seq", ASCENDING), limit)]

        return await self._transaction(run)

    async def prune_history(self, entity_id: str, before: datetime) -> int:
        """Retention cuts a prefix of the sequence: everything up to the newest change or event
        older than ``before`` goes, so the retained history has no holes even if clocks
        disagreed."""
        cutoff = to_us(before)
        changes, events = self._col(CHANGES), self._col(EVENTS)

        async def run(session: AsyncClientSession) -> int:
            entity = await self._entity(
                session, entity_id, "floor", "floor_checksum", "floor_changed_us"
            )
            floor: int = entity["floor"]
            floor_checksum: str = entity["floor_checksum"]
            floor_changed: int | None = entity.get("floor_changed_us")
            cut = 0
            for collection, field in ((changes, "updated_us"), (events, "created_us")):
                older = await collection.find_one(
                    {"entity_id": entity_id, field: {"$lt": cutoff}},
                    {"seq": 1},
                    sort=[("seq", DESCENDING)],
                    session=session,
                )
                cut = max(cut, 0 if older is None else int(older["seq"]))
            if cut <= floor:
                return floor
            upto = {"entity_id": entity_id, "seq": {"$lte": cut}}
            last = await changes.find_one(
                upto, {"checksum": 1}, sort=[("seq", DESCENDING)], session=session
            )
            if last is not None:
                latest = await changes.find_one(
                    upto, {"updated_us": 1}, sort=[("updated_us", DESCENDING)], session=session
                )
                assert latest is not None
                changed: int = latest["updated_us"]
                floor_checksum = last["checksum"]
                floor_changed = changed if floor_changed is None else max(floor_changed, changed)
            await self._col(ENTITIES).update_one(
                {"_id": entity_id},
                {
                    "$set": {
                        "floor": cut,
                        "floor_checksum": floor_checksum,
                        "floor_changed_us": floor_changed,
                    }
                },
                session=session,
            )
            await changes.delete_many(upto, session=session)
            await events.delete_many(upto, session=session)
            return cut

        async with self._entity_lock(entity_id):
            return await self._transaction(run)
