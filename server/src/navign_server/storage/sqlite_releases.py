"""Firmware releases and their assignments to entities in SQLite.

A release row holds the verified manifest's fields and the envelope's bytes; the artifact lives in
the blob store under its SHA-256 (``artifact_sha256``). An assignment row and its
``firmware_update`` event take the entity's next seq in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import aiosqlite

from navign_server.storage.base import (
    FIRMWARE_UPDATE_EVENT,
    ConflictError,
    JsonObject,
    NotFoundError,
    Release,
    ReleaseAssignment,
    ReleaseStatus,
    StoredEvent,
)
from navign_server.storage.sqlite_db import SqliteDatabase, fetch_all, fetch_one, run
from navign_server.storage.sqlite_schema import (
    compact_json,
    from_us,
    from_us_or_none,
    load_json,
    to_us,
    to_us_or_none,
)
from navign_server.storage.sqlite_writes import insert_event

_RELEASE_COLUMNS: Final = (
    "id, name, version, target, kind, secure_version, min_previous_version, manifest_sha256,"
    " envelope, artifact_size, device_type, channel, changelog, compatible_hardware, status,"
    " created_us, created_by, artifact_sha256, uploaded_us, withdrawn_us"
)
_ASSIGNMENT_COLUMNS: Final = (
    "entity_id, assignment_id, release_id, policy, priority, created_us, created_by, seq"
)


def _release(row: Any) -> Release:
    return Release(
        release_id=row[0],
        name=row[1],
        version=row[2],
        target=row[3],
        kind=row[4],
        secure_version=row[5],
        min_previous_version=row[6],
        manifest_sha256=row[7],
        envelope=bytes(row[8]),
        artifact_size=row[9],
        device_type=row[10],
        channel=row[11],
        changelog=tuple(load_json(row[12])),
        compatible_hardware=tuple(load_json(row[13])),
        status=ReleaseStatus(row[14]),
        created_at=from_us(row[15]),
        created_by=row[16],
        artifact_sha256=row[17],
        uploaded_at=from_us_or_none(row[18]),
        withdrawn_at=from_us_or_none(row[19]),
    )


def _assignment(row: Any) -> ReleaseAssignment:
    return ReleaseAssignment(
        entity_id=row[0],
        assignment_id=row[1],
        release_id=row[2],
        policy=load_json(row[3]),
        priority=row[4],
        created_at=from_us(row[5]),
        created_by=row[6],
        seq=row[7],
    )


async def _release_row(conn: aiosqlite.Connection, release_id: str) -> Release:
    row = await fetch_one(
        conn,
        f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE id = ?",  # noqa: S608 - constant columns
        (release_id,),
    )
    if row is None:
        raise NotFoundError("release", release_id)
    return _release(row)


class ReleaseTables(SqliteDatabase):
    async def create_release(self, release: Release) -> None:
        r = release
        async with self._write() as tx:
            if await fetch_one(tx.conn, "SELECT 1 FROM releases WHERE id = ?", (r.release_id,)):
                raise ConflictError("release", r.release_id, "exists")
            if await fetch_one(
                tx.conn,
                "SELECT 1 FROM releases WHERE name = ? AND version = ? AND target = ?",
                (r.name, r.version, r.target),
            ):
                raise ConflictError("release", f"{r.name} {r.version} {r.target}", "duplicate")
            await run(
                tx.conn,
                f"INSERT INTO releases ({_RELEASE_COLUMNS})"  # noqa: S608 - constant columns
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.release_id,
                    r.name,
                    r.version,
                    r.target,
                    r.kind,
                    r.secure_version,
                    r.min_previous_version,
                    r.manifest_sha256,
                    r.envelope,
                    r.artifact_size,
                    r.device_type,
                    r.channel,
                    compact_json(list(r.changelog)),
                    compact_json(list(r.compatible_hardware)),
                    r.status.value,
                    to_us(r.created_at),
                    r.created_by,
                    r.artifact_sha256,
                    to_us_or_none(r.uploaded_at),
                    to_us_or_none(r.withdrawn_at),
                ),
            )

    async def get_release(self, release_id: str) -> Release:
        async with self._read() as conn:
            return await _release_row(conn, release_id)

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
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given) or "1"
        rows = await self._query(
            f"SELECT {_RELEASE_COLUMNS} FROM releases"  # noqa: S608 - constant column names
            f" WHERE {where} ORDER BY created_us, id",
            tuple(given.values()),
        )
        return [_release(row) for row in rows]

    async def mark_release_uploaded(
        self, release_id: str, artifact_sha256: str, now: datetime
    ) -> Release:
        async with self._write() as tx:
            current = await _release_row(tx.conn, release_id)
            if current.status is not ReleaseStatus.PENDING_UPLOAD:
                raise ConflictError("release", release_id, current.status.value)
            await run(
                tx.conn,
                "UPDATE releases SET status = ?, artifact_sha256 = ?, uploaded_us = ? WHERE id = ?",
                (ReleaseStatus.AVAILABLE.value, artifact_sha256, to_us(now), release_id),
            )
            return await _release_row(tx.conn, release_id)

    async def withdraw_release(self, release_id: str, now: datetime) -> Release:
        async with self._write() as tx:
            current = await _release_row(tx.conn, release_id)
            if current.status is ReleaseStatus.WITHDRAWN:
                return current
            await run(
                tx.conn,
                "UPDATE releases SET status = ?, withdrawn_us = ? WHERE id = ?",
                (ReleaseStatus.WITHDRAWN.value, to_us(now), release_id),
            )
            return await _release_row(tx.conn, release_id)

    async def assign_release(
        self, assignment: ReleaseAssignment, event_data: JsonObject, now: datetime
    ) -> StoredEvent:
        a = assignment
        now = from_us(to_us(now))
        async with self._write() as tx:
            conn = tx.conn
            row = await fetch_one(conn, "SELECT head FROM entities WHERE id = ?", (a.entity_id,))
            if row is None:
                raise NotFoundError("entity", a.entity_id)
            release = await _release_row(conn, a.release_id)
            if release.status is not ReleaseStatus.AVAILABLE:
                raise ConflictError("release", a.release_id, release.status.value)
            if await fetch_one(
                conn,
                "SELECT 1 FROM release_assignments WHERE entity_id = ? AND assignment_id = ?",
                (a.entity_id, a.assignment_id),
            ):
                raise ConflictError("firmware_assignment", a.assignment_id, "exists")
            event = StoredEvent(
                a.entity_id, int(row[0]) + 1, FIRMWARE_UPDATE_EVENT, event_data, now
            )
            await insert_event(conn, event)
            await run(conn, "UPDATE entities SET head = ? WHERE id = ?", (event.seq, a.entity_id))
            await run(
                conn,
                f"INSERT INTO release_assignments ({_ASSIGNMENT_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    a.entity_id,
                    a.assignment_id,
                    a.release_id,
                    compact_json(a.policy),
                    a.priority,
                    to_us(a.created_at),
                    a.created_by,
                    event.seq,
                ),
            )
            tx.events.append(event)
        return event

    async def list_assignments(self, entity_id: str) -> list[ReleaseAssignment]:
        async with self._read() as conn:
            if await fetch_one(conn, "SELECT 1 FROM entities WHERE id = ?", (entity_id,)) is None:
                raise NotFoundError("entity", entity_id)
            rows = await fetch_all(
                conn,
                f"SELECT {_ASSIGNMENT_COLUMNS} FROM release_assignments"  # noqa: S608
                " WHERE entity_id = ? ORDER BY seq",
                (entity_id,),
            )
        return [_assignment(row) for row in rows]
