"""Reports from gateways in MongoDB: the latest status per beacon, per task and per rollout
(conditional upserts, so an older report never replaces a newer one), and a bounded history of
firmware install steps. Mirrors ``sqlite_reports.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Final

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from navign_server.storage.base import (
    BeaconStatusRecord,
    FirmwareStatusRecord,
    RolloutStatusRecord,
    TaskStatusRecord,
)
from navign_server.storage.mongo_db import (
    BEACON_STATUS,
    FIRMWARE_STATUS,
    ROLLOUT_STATUS,
    TASK_STATUS,
    Doc,
    MongoDatabase,
    fetch,
    stamp,
    time_of,
)
from navign_server.storage.sqlite_schema import compact_json, load_json

#: Firmware status documents kept per entity (as in SQLite).
FIRMWARE_STATUS_KEPT: Final = 100_000
PRUNE_BATCH: Final = 64


class ReportCollections(MongoDatabase):
    async def _upsert_newer(self, collection: str, key: Doc, time_field: str, values: Doc) -> None:
        """Insert, or replace only when ``values`` is at least as new as what is stored."""
        newer = {**key, f"{time_field}_us": {"$lte": values[f"{time_field}_us"]}}
        result = await self._col(collection).update_one(newer, {"$set": values})
        if result.matched_count:
            return
        # A duplicate means a newer report is stored already: this one is older and loses.
        with contextlib.suppress(DuplicateKeyError):
            await self._col(collection).insert_one({**key, **values})

    async def record_beacon_statuses(self, records: Sequence[BeaconStatusRecord]) -> None:
        for r in records:
            await self._upsert_newer(
                BEACON_STATUS,
                {"entity_id": r.entity_id, "beacon_id": r.beacon_id},
                "last_seen",
                {
                    "orchestrator_id": r.orchestrator_id,
                    **stamp("last_seen", r.last_seen),
                    **stamp("received", r.received_at),
                    "body": compact_json(r.body),
                },
            )

    async def list_beacon_statuses(self, entity_id: str) -> list[BeaconStatusRecord]:
        cursor = self._col(BEACON_STATUS).find({"entity_id": entity_id}).sort("beacon_id")
        return [
            BeaconStatusRecord(
                entity_id,
                d["beacon_id"],
                d["orchestrator_id"],
                time_of(d, "last_seen"),
                time_of(d, "received"),
                load_json(d["body"]),
            )
            for d in await fetch(cursor)
        ]

    async def record_firmware_status(self, record: FirmwareStatusRecord) -> None:
        r = record
        statuses = self._col(FIRMWARE_STATUS)
        await statuses.insert_one(
            {
                "entity_id": r.entity_id,
                "firmware_id": r.firmware_id,
                "beacon_id": r.beacon_id,
                "orchestrator_id": r.orchestrator_id,
                "status": r.status,
                **stamp("at", r.at),
                **stamp("received", r.received_at),
                "body": compact_json(r.body),
            }
        )
        surplus = statuses.find({"entity_id": r.entity_id}, {"_id": 1}).sort("_id", DESCENDING)
        ids = [d["_id"] for d in await fetch(surplus.skip(FIRMWARE_STATUS_KEPT), PRUNE_BATCH)]
        if ids:
            await statuses.delete_many({"_id": {"$in": ids}})

    async def list_firmware_status(
        self, entity_id: str, firmware_id: str, *, limit: int = 100
    ) -> list[FirmwareStatusRecord]:
        cursor = (
            self._col(FIRMWARE_STATUS)
            .find({"entity_id": entity_id, "firmware_id": firmware_id})
            .sort([("at_us", DESCENDING), ("_id", DESCENDING)])
        )
        return [
            FirmwareStatusRecord(
                entity_id,
                firmware_id,
                d["beacon_id"],
                d["orchestrator_id"],
                d["status"],
                time_of(d, "at"),
                time_of(d, "received"),
                load_json(d["body"]),
            )
            for d in await fetch(cursor, limit)
        ]

    async def record_task_status(self, record: TaskStatusRecord) -> None:
        r = record
        await self._upsert_newer(
            TASK_STATUS,
            {"entity_id": r.entity_id, "task_id": r.task_id},
            "at",
            {
                "orchestrator_id": r.orchestrator_id,
                "status": r.status,
                **stamp("at", r.at),
                **stamp("received", r.received_at),
                "body": compact_json(r.body),
            },
        )

    async def list_task_statuses(
        self, entity_id: str, *, limit: int = 100
    ) -> list[TaskStatusRecord]:
        cursor = (
            self._col(TASK_STATUS)
            .find({"entity_id": entity_id})
            .sort([("received_us", DESCENDING), ("task_id", 1)])
        )
        return [
            TaskStatusRecord(
                entity_id,
                d["task_id"],
                d["orchestrator_id"],
                d["status"],
                time_of(d, "at"),
                time_of(d, "received"),
                load_json(d["body"]),
            )
            for d in await fetch(cursor, limit)
        ]

    async def record_rollout_status(self, record: RolloutStatusRecord) -> None:
        r = record
        await self._upsert_newer(
            ROLLOUT_STATUS,
            {"entity_id": r.entity_id, "rollout_id": r.rollout_id},
            "at",
            {
                "firmware_id": r.firmware_id,
                "orchestrator_id": r.orchestrator_id,
                "state": r.state,
                **stamp("at", r.at),
                **stamp("received", r.received_at),
                "body": compact_json(r.body),
            },
        )

    async def list_rollout_statuses(
        self,
        entity_id: str,
        *,
        state: str | None = None,
        firmware_id: str | None = None,
        limit: int = 100,
    ) -> list[RolloutStatusRecord]:
        query: Doc = {"entity_id": entity_id}
        if state is not None:
            query["state"] = state
        if firmware_id is not None:
            query["firmware_id"] = firmware_id
        cursor = (
            self._col(ROLLOUT_STATUS)
            .find(query)
            .sort([("at_us", DESCENDING), ("rollout_id", ASCENDING)])
        )
        return [
            RolloutStatusRecord(
                entity_id,
                d["rollout_id"],
                d["firmware_id"],
                d["orchestrator_id"],
                d["state"],
                time_of(d, "at"),
                time_of(d, "received"),
                load_json(d["body"]),
            )
            for d in await fetch(cursor, limit)
        ]
