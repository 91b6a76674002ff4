"""Reports from gateways in SQLite: the latest status per beacon, per task and per rollout, and
a bounded history of firmware install steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from navign_server.storage.base import (
    BeaconStatusRecord,
    FirmwareStatusRecord,
    RolloutStatusRecord,
    TaskStatusRecord,
)
from navign_server.storage.sqlite_db import SqliteDatabase, run
from navign_server.storage.sqlite_orchestrators import PRUNE_BATCH
from navign_server.storage.sqlite_schema import compact_json, from_us, load_json, to_us

#: Firmware status rows kept per entity; older ones are dropped as new ones arrive.
FIRMWARE_STATUS_KEPT: Final = 100_000


class ReportTables(SqliteDatabase):
    async def record_beacon_statuses(self, records: Sequence[BeaconStatusRecord]) -> None:
        async with self._write() as tx:
            for r in records:
                # The newer report wins, whatever order the reports arrive in.
                await run(
                    tx.conn,
                    "INSERT INTO beacon_status (entity_id, beacon_id, orchestrator_id,"
                    " last_seen_us, received_us, body) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (entity_id, beacon_id) DO UPDATE SET"
                    " orchestrator_id = excluded.orchestrator_id,"
                    " last_seen_us = excluded.last_seen_us, received_us = excluded.received_us,"
                    " body = excluded.body"
                    " WHERE excluded.last_seen_us >= beacon_status.last_seen_us",
                    (
                        r.entity_id,
                        r.beacon_id,
                        r.orchestrator_id,
                        to_us(r.last_seen),
                        to_us(r.received_at),
                        compact_json(r.body),
                    ),
                )

    async def list_beacon_statuses(self, entity_id: str) -> list[BeaconStatusRecord]:
        rows = await self._query(
            "SELECT beacon_id, orchestrator_id, last_seen_us, received_us, body"
            " FROM beacon_status WHERE entity_id = ? ORDER BY beacon_id",
            (entity_id,),
        )
        return [
            BeaconStatusRecord(entity_id, r[0], r[1], from_us(r[2]), from_us(r[3]), load_json(r[4]))
            for r in rows
        ]

    async def record_firmware_status(self, record: FirmwareStatusRecord) -> None:
        r = record
        async with self._write() as tx:
            await run(
                tx.conn,
                "INSERT INTO firmware_status (entity_id, firmware_id, beacon_id, orchestrator_id,"
                " status, at_us, received_us, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.entity_id,
                    r.firmware_id,
                    r.beacon_id,
                    r.orchestrator_id,
                    r.status,
                    to_us(r.at),
                    to_us(r.received_at),
                    compact_json(r.body),
                ),
            )
            await run(
                tx.conn,
                "DELETE FROM firmware_status WHERE id IN (SELECT id FROM firmware_status"
                " WHERE entity_id = ? ORDER BY id DESC LIMIT ? OFFSET ?)",
                (r.entity_id, PRUNE_BATCH, FIRMWARE_STATUS_KEPT),
            )

    async def list_firmware_status(
        self, entity_id: str, firmware_id: str, *, limit: int = 100
    ) -> list[FirmwareStatusRecord]:
        rows = await self._query(
            "SELECT beacon_id, orchestrator_id, status, at_us, received_us, body"
            " FROM firmware_status WHERE entity_id = ? AND firmware_id = ?"
            " ORDER BY at_us DESC, id DESC LIMIT ?",
            (entity_id, firmware_id, limit),
        )
        return [
            FirmwareStatusRecord(
                entity_id,
                firmware_id,
                r[0],
                r[1],
                r[2],
                from_us(r[3]),
                from_us(r[4]),
                load_json(r[5]),
            )
            for r in rows
        ]

    async def record_task_status(self, record: TaskStatusRecord) -> None:
        r = record
        async with self._write() as tx:
            await run(
                tx.conn,
                "INSERT INTO task_status (entity_id, task_id, orchestrator_id, status, at_us,"
                " received_us, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (entity_id, task_id) DO UPDATE SET"
                " orchestrator_id = excluded.orchestrator_id, status = excluded.status,"
                " at_us = excluded.at_us, received_us = excluded.received_us,"
                " body = excluded.body WHERE excluded.at_us >= task_status.at_us",
                (
                    r.entity_id,
                    r.task_id,
                    r.orchestrator_id,
                    r.status,
                    to_us(r.at),
                    to_us(r.received_at),
                    compact_json(r.body),
                ),
            )

    async def list_task_statuses(
        self, entity_id: str, *, limit: int = 100
    ) -> list[TaskStatusRecord]:
        rows = await self._query(
            "SELECT task_id, orchestrator_id, status, at_us, received_us, body FROM task_status"
            " WHERE entity_id = ? ORDER BY received_us DESC, task_id LIMIT ?",
            (entity_id, limit),
        )
        return [
            TaskStatusRecord(
                entity_id, r[0], r[1], r[2], from_us(r[3]), from_us(r[4]), load_json(r[5])
            )
            for r in rows
        ]

    async def record_rollout_status(self, record: RolloutStatusRecord) -> None:
        r = record
        async with self._write() as tx:
            await run(
                tx.conn,
                "INSERT INTO rollout_status (entity_id, rollout_id, firmware_id, orchestrator_id,"
                " state, at_us, received_us, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (entity_id, rollout_id) DO UPDATE SET"
                " firmware_id = excluded.firmware_id,"
                " orchestrator_id = excluded.orchestrator_id, state = excluded.state,"
                " at_us = excluded.at_us, received_us = excluded.received_us,"
                " body = excluded.body WHERE excluded.at_us >= rollout_status.at_us",
                (
                    r.entity_id,
                    r.rollout_id,
                    r.firmware_id,
                    r.orchestrator_id,
                    r.state,
                    to_us(r.at),
                    to_us(r.received_at),
                    compact_json(r.body),
                ),
            )

    async def list_rollout_statuses(
        self,
        entity_id: str,
        *,
        state: str | None = None,
        firmware_id: str | None = None,
        limit: int = 100,
    ) -> list[RolloutStatusRecord]:
        rows = await self._query(
            "SELECT rollout_id, firmware_id, orchestrator_id, state, at_us, received_us, body"
            " FROM rollout_status WHERE entity_id = ?"
            " AND (? IS NULL OR state = ?) AND (? IS NULL OR firmware_id = ?)"
            " ORDER BY at_us DESC, rollout_id LIMIT ?",
            (entity_id, state, state, firmware_id, firmware_id, limit),
        )
        return [
            RolloutStatusRecord(
                entity_id, r[0], r[1], r[2], r[3], from_us(r[4]), from_us(r[5]), load_json(r[6])
            )
            for r in rows
        ]
