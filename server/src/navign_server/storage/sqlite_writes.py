"""How a batch of document writes becomes rows: the plan computed in Python (changes, digests,
checksums, the data_update event), then written with a few statements inside the caller's
transaction. Nothing here reads a whole collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import aiosqlite

from navign_proto.checksums import COLLECTIONS, MallChecksums, global_checksum
from navign_proto.wire.events import CHANGED_IDS_MAX
from navign_server.storage.base import (
    Change,
    ConflictError,
    DocumentWrite,
    JsonObject,
    NotFoundError,
    Operation,
    StoredEvent,
)
from navign_server.storage.sqlite_db import fetch_all, run
from navign_server.storage.sqlite_schema import canonical_text, load_json, to_us

#: Ids per ``IN (...)`` query when loading the documents a write touches.
_ID_CHUNK: Final = 500
CHANGE_COLUMNS: Final = "seq, collection, operation, doc_id, data, updated_us, checksum"


@dataclass(slots=True)
class WritePlan:
    """What a batch of writes does, computed before anything is written."""

    head: int
    digests: MallChecksums
    initial: dict[tuple[str, str], str | None]
    state: dict[tuple[str, str], str | None] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    #: Canonical text of each change's data (None for a delete), as the change log keeps it.
    texts: list[str | None] = field(default_factory=list)
    #: Collection checksums as of the last change: only the touched one is recomputed.
    _checksums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._checksums = {name: self.digests.get(name).checksum for name in COLLECTIONS}

    def apply(self, write: DocumentWrite, now: datetime) -> None:
        key = (write.collection, write.id)
        old = self.state[key] if key in self.state else self.initial[key]
        if write.operation == "create" and old is not None:
            raise ConflictError(write.collection, write.id, "exists")
        if write.operation in ("update", "delete") and old is None:
            raise NotFoundError(write.collection, write.id)
        digest = self.digests.get(write.collection)
        new: str | None
        operation: Operation
        if write.data is None:
            assert old is not None
            new, operation = None, "delete"
            digest = digest.remove(load_json(old))
            data = None
        else:
            new = canonical_text(write.data)
            if new == old:
                return  # an identical put or update changes nothing
            data = load_json(new)
            if old is None:
                operation, digest = "create", digest.add(data)
            else:
                operation, digest = "update", digest.replace(load_json(old), data)
        self.state[key] = new
        self.digests = self.digests.with_digest(digest)
        self._checksums[write.collection] = digest.checksum
        self.head += 1
        self.changes.append(
            Change(
                self.head,
                write.collection,
                operation,
                write.id,
                data,
                now,
                global_checksum(self._checksums),
            )
        )
        self.texts.append(new)

    def event_data(self) -> JsonObject:
        changed: dict[str, dict[str, None]] = {}
        for change in self.changes:
            changed.setdefault(change.collection, {})[change.id] = None
        return {
            "seq": self.head,
            # Ids are hints (the delta is authoritative): capped to what the wire allows.
            "changes": {name: list(ids)[:CHANGED_IDS_MAX] for name, ids in changed.items()},
            "checksum": self.changes[-1].checksum,
        }


async def current_bodies(
    conn: aiosqlite.Connection, entity_id: str, writes: Sequence[DocumentWrite]
) -> dict[tuple[str, str], str | None]:
    wanted: dict[str, list[str]] = {}
    for write in writes:
        wanted.setdefault(write.collection, []).append(write.id)
    bodies: dict[tuple[str, str], str | None] = {}
    for collection, ids in wanted.items():
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _ID_CHUNK):
            chunk = unique[start : start + _ID_CHUNK]
            bodies.update({(collection, doc_id): None for doc_id in chunk})
            marks = ", ".join("?" * len(chunk))
            query = (
                "SELECT id, body FROM documents WHERE entity_id = ? AND collection = ?"  # noqa: S608
                f" AND id IN ({marks})"
            )
            rows = await fetch_all(conn, query, (entity_id, collection, *chunk))
            bodies.update({(collection, row[0]): row[1] for row in rows})
    return bodies


async def insert_event(conn: aiosqlite.Connection, event: StoredEvent) -> None:
    await run(
        conn,
        "INSERT INTO events (entity_id, seq, type, data, created_us) VALUES (?, ?, ?, ?, ?)",
        (
            event.entity_id,
            event.seq,
            event.type,
            canonical_text(event.data),
            to_us(event.created_at),
        ),
    )


async def store_plan(
    conn: aiosqlite.Connection, entity_id: str, plan: WritePlan, stamp: int
) -> None:
    """Write a plan's documents, change rows and digests (inside the caller's transaction)."""
    final = [(key, body) for key, body in plan.state.items() if body != plan.initial[key]]
    await conn.executemany(
        "DELETE FROM documents WHERE entity_id = ? AND collection = ? AND id = ?",
        [(entity_id, coll, doc_id) for (coll, doc_id), body in final if body is None],
    )
    await conn.executemany(
        "INSERT INTO documents (entity_id, collection, id, body, updated_us)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (entity_id, collection, id)"
        " DO UPDATE SET body = excluded.body, updated_us = excluded.updated_us",
        [
            (entity_id, coll, doc_id, body, stamp)
            for (coll, doc_id), body in final
            if body is not None
        ],
    )
    await conn.executemany(
        f"INSERT INTO changes (entity_id, {CHANGE_COLUMNS})"  # noqa: S608 - constant columns
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (entity_id, c.seq, c.collection, c.operation, c.id, text, stamp, c.checksum)
            for c, text in zip(plan.changes, plan.texts, strict=True)
        ],
    )
    touched = {change.collection for change in plan.changes}
    await conn.executemany(
        "UPDATE digests SET count = ?, total_hex = ? WHERE entity_id = ? AND collection = ?",
        [(*plan.digests.get(name).to_storage(), entity_id, name) for name in sorted(touched)],
    )
