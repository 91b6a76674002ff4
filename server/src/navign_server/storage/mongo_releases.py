"""Firmware releases and their assignments to entities in MongoDB.

A release document holds the verified manifest's fields and the envelope's bytes (BSON binary);
the artifact itself is a blob addressed by its SHA-256 (``artifact_sha256``). An assignment and
its ``firmware_update`` event take the entity's next seq in one transaction, like every event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from navign_server.storage.base import (
    FIRMWARE_UPDATE_EVENT,
    ConflictError,
    JsonObject,
    NotFoundError,
    Release,
    ReleaseAssignment,
    ReleaseStatus,
    StorageError,
    StoredEvent,
)
from navign_server.storage.mongo_db import (
    ENTITIES,
    EVENTS,
    RELEASE_ASSIGNMENTS,
    RELEASES,
    Doc,
    MongoDatabase,
    fetch,
    stamp,
    time_of,
    time_or_none,
)
from navign_server.storage.mongo_watch import event_document
from navign_server.storage.sqlite_schema import compact_json, from_us, load_json, to_us


def _release(doc: Doc) -> Release:
    return Release(
        release_id=doc["release_id"],
        name=doc["name"],
        version=doc["version"],
        target=doc["target"],
        kind=doc["kind"],
        secure_version=doc["secure_version"],
        min_previous_version=doc.get("min_previous_version"),
        manifest_sha256=doc["manifest_sha256"],
        envelope=bytes(doc["envelope"]),
        artifact_size=doc["artifact_size"],
        device_type=doc["device_type"],
        channel=doc["channel"],
        changelog=tuple(doc["changelog"]),
        compatible_hardware=tuple(doc["compatible_hardware"]),
        status=ReleaseStatus(doc["status"]),
        created_at=time_of(doc, "created"),
        created_by=doc["created_by"],
        artifact_sha256=doc.get("artifact_sha256"),
        uploaded_at=time_or_none(doc, "uploaded"),
        withdrawn_at=time_or_none(doc, "withdrawn"),
    )


def _release_document(r: Release) -> Doc:
    return {
        "release_id": r.release_id,
        "name": r.name,
        "version": r.version,
        "target": r.target,
        "kind": r.kind,
        "secure_version": r.secure_version,
        "min_previous_version": r.min_previous_version,
        "manifest_sha256": r.manifest_sha256,
        "envelope": bytes(r.envelope),
        "artifact_size": r.artifact_size,
        "device_type": r.device_type,
        "channel": r.channel,
        "changelog": list(r.changelog),
        "compatible_hardware": list(r.compatible_hardware),
        "status": ReleaseStatus(r.status).value,
        "created_by": r.created_by,
        "artifact_sha256": r.artifact_sha256,
        **stamp("created", r.created_at),
        **stamp("uploaded", r.uploaded_at),
        **stamp("withdrawn", r.withdrawn_at),
    }


def _assignment(doc: Doc) -> ReleaseAssignment:
    return ReleaseAssignment(
        entity_id=doc["entity_id"],
        assignment_id=doc["assignment_id"],
        release_id=doc["release_id"],
        policy=load_json(doc["policy"]),
        priority=doc["priority"],
        created_at=time_of(doc, "created"),
        created_by=doc["created_by"],
        seq=doc["seq"],
    )


class ReleaseCollections(MongoDatabase):
    async def _release_doc(self, session: AsyncClientSession | None, release_id: str) -> Release:
        doc = await self._col(RELEASES).find_one({"release_id": release_id}, session=session)
        if doc is None:
            raise NotFoundError("release", release_id)
        return _release(doc)

    async def _set_release(
        self, session: AsyncClientSession, release_id: str, values: Doc
    ) -> Release:
        doc = await self._col(RELEASES).find_one_and_update(
            {"release_id": release_id},
            {"$set": values},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise NotFoundError("release", release_id)
        return _release(doc)

    async def create_release(self, release: Release) -> None:
        r = release
        duplicate = f"{r.name} {r.version} {r.target}"

        async def run(session: AsyncClientSession) -> None:
            releases = self._col(RELEASES)
            if await releases.find_one({"release_id": r.release_id}, {"_id": 1}, session=session):
                raise ConflictError("release", r.release_id, "exists")
            same = {"name": r.name, "version": r.version, "target": r.target}
            if await releases.find_one(same, {"_id": 1}, session=session):
                raise ConflictError("release", duplicate, "duplicate")
            await releases.insert_one(_release_document(r), session=session)

        try:
            await self._transaction(run)
        except DuplicateKeyError as exc:  # a concurrent insert won the unique index
            pattern: dict[str, Any] = (exc.details or {}).get("keyPattern", {})
            if "release_id" in pattern:
                raise ConflictError("release", r.release_id, "exists") from None
            raise ConflictError("release", duplicate, "duplicate") from None

    async def get_release(self, release_id: str) -> Release:
        return await self._release_doc(None, release_id)

    async def list_releases(
        self,
        *,
        target: str | None = None,
        device_type: str | None = None,
        channel: str | None = None,
        status: ReleaseStatus | None = None,
    ) -> list[Release]:
        filters = {
            "target": target,
            "device_type": device_type,
            "channel": channel,
            "status": None if status is None else ReleaseStatus(status).value,
        }
        where = {field: value for field, value in filters.items() if value is not None}
        cursor = self._col(RELEASES).find(where)
        cursor = cursor.sort([("created_us", ASCENDING), ("release_id", ASCENDING)])
        return [_release(doc) for doc in await fetch(cursor)]

    async def mark_release_uploaded(
        self, release_id: str, artifact_sha256: str, now: datetime
    ) -> Release:
        async def run(session: AsyncClientSession) -> Release:
            current = await self._release_doc(session, release_id)
            if current.status is not ReleaseStatus.PENDING_UPLOAD:
                raise ConflictError("release", release_id, current.status.value)
            values = {
                "status": ReleaseStatus.AVAILABLE.value,
                "artifact_sha256": artifact_sha256,
                **stamp("uploaded", now),
            }
            return await self._set_release(session, release_id, values)

        return await self._transaction(run)

    async def withdraw_release(self, release_id: str, now: datetime) -> Release:
        async def run(session: AsyncClientSession) -> Release:
            current = await self._release_doc(session, release_id)
            if current.status is ReleaseStatus.WITHDRAWN:
                return current
            values = {"status": ReleaseStatus.WITHDRAWN.value, **stamp("withdrawn", now)}
            return await self._set_release(session, release_id, values)

        return await self._transaction(run)

    async def assign_release(
        self, assignment: ReleaseAssignment, event_data: JsonObject, now: datetime
    ) -> StoredEvent:
        a = assignment
        now = from_us(to_us(now))

        async def run(session: AsyncClientSession) -> StoredEvent:
            entities = self._col(ENTITIES)
            entity = await entities.find_one({"_id": a.entity_id}, {"head": 1}, session=session)
            if entity is None:
                raise NotFoundError("entity", a.entity_id)
            release = await self._release_doc(session, a.release_id)
            if release.status is not ReleaseStatus.AVAILABLE:
                raise ConflictError("release", a.release_id, release.status.value)
            assignments = self._col(RELEASE_ASSIGNMENTS)
            key = {"entity_id": a.entity_id, "assignment_id": a.assignment_id}
            if await assignments.find_one(key, {"_id": 1}, session=session):
                raise ConflictError("firmware_assignment", a.assignment_id, "exists")
            head: int = entity["head"]
            moved = await entities.update_one(
                {"_id": a.entity_id, "head": head}, {"$inc": {"head": 1}}, session=session
            )
            if moved.matched_count != 1:  # unreachable under snapshot reads
                raise StorageError(f"entity {a.entity_id!r}: head moved during a transaction")
            event = StoredEvent(a.entity_id, head + 1, FIRMWARE_UPDATE_EVENT, event_data, now)
            await self._col(EVENTS).insert_one(event_document(event), session=session)
            await assignments.insert_one(
                {
                    **key,
                    "release_id": a.release_id,
                    "policy": compact_json(a.policy),
                    "priority": a.priority,
                    "created_by": a.created_by,
                    "seq": event.seq,
                    **stamp("created", a.created_at),
                },
                session=session,
            )
            return event

        async with self._entity_lock(a.entity_id):
            return await self._transaction(run)

    async def list_assignments(self, entity_id: str) -> list[ReleaseAssignment]:
        if await self._col(ENTITIES).find_one({"_id": entity_id}, {"_id": 1}) is None:
            raise NotFoundError("entity", entity_id)
        cursor = self._col(RELEASE_ASSIGNMENTS).find({"entity_id": entity_id})
        return [_assignment(doc) for doc in await fetch(cursor.sort("seq", ASCENDING))]
