"""The SQLite backend of :class:`~navign_server.storage.base.Store`: the embedded default.

One file, WAL mode, two connections (see ``sqlite_db``). A data write reads the touched
documents and the four collection digests, computes every change, checksum and the event in
Python, and writes them with a handful of statements in one ``BEGIN IMMEDIATE`` transaction:
its cost grows with the size of the write, never with the size of the mall.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aiosqlite

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
    StoredEvent,
    WriteResult,
)
from navign_server.storage.sqlite_db import fetch_all, fetch_one, run
from navign_server.storage.sqlite_orchestrators import OrchestratorTables
from navign_server.storage.sqlite_records import RecordTables
from navign_server.storage.sqlite_releases import ReleaseTables
from navign_server.storage.sqlite_reports import ReportTables
from navign_server.storage.sqlite_schema import (
    canonical_text,
    from_us,
    load_json,
    to_us,
)
from navign_server.storage.sqlite_writes import (
    CHANGE_COLUMNS,
    WritePlan,
    current_bodies,
    insert_event,
    store_plan,
)

_EMPTY_GLOBAL: Final = MallChecksums.empty().global_checksum


def _change(row: Any) -> Change:
    return Change(
        seq=row[0],
        collection=row[1],
        operation=row[2],
        id=row[3],
        data=None if row[4] is None else load_json(row[4]),
        updated_at=from_us(row[5]),
        checksum=row[6],
    )


def _event(entity_id: str, row: Any) -> StoredEvent:
    return StoredEvent(entity_id, row[0], row[1], load_json(row[2]), from_us(row[3]))


def _entity_id(entity: JsonObject) -> str:
    entity_id = entity.get("id")
    if not isinstance(entity_id, str) or not entity_id:
        raise ValueError("an entity document needs a non-empty string 'id'")
    return entity_id


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}")


async def _entity_row(conn: aiosqlite.Connection, entity_id: str, columns: str) -> Any:
    query = f"SELECT {columns} FROM entities WHERE id = ?"  # noqa: S608 - constant columns
    row = await fetch_one(conn, query, (entity_id,))
    if row is None:
        raise NotFoundError("entity", entity_id)
    return row


async def _digests(conn: aiosqlite.Connection, entity_id: str) -> MallChecksums:
    rows = await fetch_all(
        conn,
        "SELECT collection, count, total_hex FROM digests WHERE entity_id = ?",
        (entity_id,),
    )
    checksums = MallChecksums.empty()
    for collection, count, total_hex in rows:
        checksums = checksums.with_digest(
            CollectionDigest.from_storage(collection, count, total_hex)
        )
    return checksums


def _counts(checksums: MallChecksums) -> dict[str, int]:
    return {name: checksums.get(name).count for name in COLLECTIONS}


class SqliteStore(OrchestratorTables, RecordTables, ReleaseTables, ReportTables):
    """:class:`~navign_server.storage.base.Store` on one SQLite file."""

    # -- entities ---------------------------------------------------------------------------
    async def create_entity(self, entity: JsonObject, now: datetime) -> None:
        entity_id = _entity_id(entity)
        stamp = to_us(now)
        async with self._write() as tx:
            if await fetch_one(tx.conn, "SELECT 1 FROM entities WHERE id = ?", (entity_id,)):
                raise ConflictError("entity", entity_id, "exists")
            await run(
                tx.conn,
                "INSERT INTO entities (id, document, head, floor, floor_checksum, created_us,"
                " updated_us) VALUES (?, ?, 0, 0, ?, ?, ?)",
                (entity_id, canonical_text(entity), _EMPTY_GLOBAL, stamp, stamp),
            )
            await tx.conn.executemany(
                "INSERT INTO digests (entity_id, collection, count, total_hex) VALUES (?, ?, ?, ?)",
                [(entity_id, name, *CollectionDigest(name).to_storage()) for name in COLLECTIONS],
            )

    async def update_entity(self, entity: JsonObject, now: datetime) -> None:
        entity_id = _entity_id(entity)
        async with self._write() as tx:
            changed = await run(
                tx.conn,
                "UPDATE entities SET document = ?, updated_us = ? WHERE id = ?",
                (canonical_text(entity), to_us(now), entity_id),
            )
            if changed == 0:
                raise NotFoundError("entity", entity_id)

    async def get_entity(self, entity_id: str) -> JsonObject:
        rows = await self._query("SELECT document FROM entities WHERE id = ?", (entity_id,))
        if not rows:
            raise NotFoundError("entity", entity_id)
        entity: JsonObject = load_json(rows[0][0])
        return entity

    async def list_entities(self) -> list[JsonObject]:
        rows = await self._query("SELECT document FROM entities ORDER BY id")
        return [load_json(row[0]) for row in rows]

    async def entity_state(self, entity_id: str) -> EntityState:
        async with self._read() as conn:
            head, floor = await _entity_row(conn, entity_id, "head, floor")
            digests = await _digests(conn, entity_id)
        return EntityState(entity_id, head, floor, digests.checksums(), _counts(digests))

    # -- mall data --------------------------------------------------------------------------
    async def write_documents(
        self, entity_id: str, writes: Sequence[DocumentWrite], now: datetime
    ) -> WriteResult:
        stamp = to_us(now)
        now = from_us(stamp)  # what reads will return: UTC, microseconds
        async with self._write() as tx:
            conn = tx.conn
            (head,) = await _entity_row(conn, entity_id, "head")
            plan = WritePlan(
                head,
                await _digests(conn, entity_id),
                await current_bodies(conn, entity_id, writes),
            )
            for write in writes:
                plan.apply(write, now)
            if not plan.changes:
                return WriteResult((), plan.digests.checksums(), None)
            await store_plan(conn, entity_id, plan, stamp)
            event = StoredEvent(entity_id, plan.head, DATA_UPDATE_EVENT, plan.event_data(), now)
            await insert_event(conn, event)
            await run(conn, "UPDATE entities SET head = ? WHERE id = ?", (plan.head, entity_id))
            tx.events.append(event)
        return WriteResult(tuple(plan.changes), plan.digests.checksums(), event)

    async def get_document(self, entity_id: str, collection: str, doc_id: str) -> JsonObject:
        _check_collection(collection)
        async with self._read() as conn:
            await _entity_row(conn, entity_id, "1")
            row = await fetch_one(
                conn,
                "SELECT body FROM documents WHERE entity_id = ? AND collection = ? AND id = ?",
                (entity_id, collection, doc_id),
            )
        if row is None:
            raise NotFoundError(collection, doc_id)
        document: JsonObject = load_json(row[0])
        return document

    async def list_documents(
        self, entity_id: str, collection: str, *, after_id: str | None = None, limit: int = 500
    ) -> list[JsonObject]:
        _check_collection(collection)
        async with self._read() as conn:
            await _entity_row(conn, entity_id, "1")
            rows = await fetch_all(
                conn,
                "SELECT body FROM documents WHERE entity_id = ? AND collection = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (entity_id, collection, after_id or "", limit),
            )
        return [load_json(row[0]) for row in rows]

    async def snapshot(self, entity_id: str, collections: Sequence[str]) -> Snapshot:
        for collection in collections:
            _check_collection(collection)
        async with self._read() as conn:
            document, head = await _entity_row(conn, entity_id, "document, head")
            digests = await _digests(conn, entity_id)
            documents: dict[str, list[JsonObject]] = {}
            for collection in dict.fromkeys(collections):
                rows = await fetch_all(
                    conn,
                    "SELECT body FROM documents WHERE entity_id = ? AND collection = ? ORDER BY id",
                    (entity_id, collection),
                )
                documents[collection] = [load_json(row[0]) for row in rows]
        return Snapshot(
            entity=load_json(document),
            seq=head,
            documents=documents,
            counts=_counts(digests),
            checksums=digests.checksums(),
            taken_at=datetime.now(UTC),
        )

    async def changes_since(self, entity_id: str, cursor: int, limit: int) -> ChangePage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._read() as conn:
            head, floor, floor_checksum = await _entity_row(
                conn, entity_id, "head, floor, floor_checksum"
            )
            if not floor <= cursor <= head:
                raise HistoryExpiredError(entity_id, cursor, floor, head)
            base = await fetch_one(
                conn,
                "SELECT checksum FROM changes WHERE entity_id = ? AND seq <= ?"
                " ORDER BY seq DESC LIMIT 1",
                (entity_id, cursor),
            )
            rows = await fetch_all(
                conn,
                f"SELECT {CHANGE_COLUMNS} FROM changes"  # noqa: S608 - constant columns
                " WHERE entity_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (entity_id, cursor, limit + 1),
            )
        base_checksum: str = floor_checksum if base is None else base[0]
        has_more = len(rows) > limit
        changes = tuple(_change(row) for row in rows[:limit])
        return ChangePage(
            changes=changes,
            base_checksum=base_checksum,
            new_checksum=changes[-1].checksum if changes else base_checksum,
            next_cursor=changes[-1].seq if has_more else head,
            has_more=has_more,
        )

    async def seq_at(self, entity_id: str, moment: datetime) -> int:
        at = to_us(moment)
        async with self._read() as conn:
            head, floor, floor_changed = await _entity_row(
                conn, entity_id, "head, floor, floor_changed_us"
            )
            if floor_changed is not None and floor_changed >= at:
                # A pruned change may have been made at or after `moment`.
                raise HistoryExpiredError(entity_id, floor - 1, floor, head)
            row = await fetch_one(
                conn,
                "SELECT min(seq) FROM changes WHERE entity_id = ? AND updated_us >= ?",
                (entity_id, at),
            )
        first = None if row is None else row[0]
        return head if first is None else int(first) - 1

    # -- events -----------------------------------------------------------------------------
    async def append_event(
        self, entity_id: str, event_type: str, data: JsonObject, now: datetime
    ) -> StoredEvent:
        now = from_us(to_us(now))
        async with self._write() as tx:
            (head,) = await _entity_row(tx.conn, entity_id, "head")
            event = StoredEvent(entity_id, head + 1, event_type, data, now)
            await insert_event(tx.conn, event)
            await run(tx.conn, "UPDATE entities SET head = ? WHERE id = ?", (event.seq, entity_id))
            tx.events.append(event)
        return event

    async def events_since(self, entity_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        async with self._read() as conn:
            head, floor = await _entity_row(conn, entity_id, "head, floor")
            if not floor <= after_seq <= head:
                raise HistoryExpiredError(entity_id, after_seq, floor, head)
            rows = await fetch_all(
                conn,
                "SELECT seq, type, data, created_us FROM events WHERE entity_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (entity_id, after_seq, limit),
            )
        return [_event(entity_id, row) for row in rows]

    async def prune_history(self, entity_id: str, before: datetime) -> int:
        """Retention cuts a prefix of the sequence: everything up to the newest change or event
        older than ``before`` goes, so the retained history has no holes even if clocks
        disagreed."""
        cutoff = to_us(before)
        async with self._write() as tx:
            conn = tx.conn
            floor, floor_checksum, floor_changed = await _entity_row(
                conn, entity_id, "floor, floor_checksum, floor_changed_us"
            )
            row = await fetch_one(
                conn,
                "SELECT max(coalesce((SELECT max(seq) FROM changes"
                " WHERE entity_id = ?1 AND updated_us < ?2), 0), coalesce((SELECT max(seq)"
                " FROM events WHERE entity_id = ?1 AND created_us < ?2), 0))",
                (entity_id, cutoff),
            )
            cut = 0 if row is None else int(row[0])
            if cut <= floor:
                return int(floor)
            last = await fetch_one(
                conn,
                "SELECT checksum, (SELECT max(updated_us) FROM changes"
                " WHERE entity_id = ?1 AND seq <= ?2) FROM changes"
                " WHERE entity_id = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1",
                (entity_id, cut),
            )
            if last is not None:
                floor_checksum = last[0]
                floor_changed = last[1] if floor_changed is None else max(floor_changed, last[1])
            await run(
                conn, "DELETE FROM changes WHERE entity_id = ? AND seq <= ?", (entity_id, cut)
            )
            await run(conn, "DELETE FROM events WHERE entity_id = ? AND seq <= ?", (entity_id, cut))
            await run(
                conn,
                "UPDATE entities SET floor = ?, floor_checksum = ?, floor_changed_us = ?"
                " WHERE id = ?",
                (cut, floor_checksum, floor_changed, entity_id),
            )
        return cut
