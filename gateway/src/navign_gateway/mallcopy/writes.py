"""The work of a sync step inside its transaction: the checksum state, maintained
incrementally as :mod:`navign_proto.checksums` defines it, and the document writes.

A write subtracts the *stored* digest of the old document and adds the new one, so a page
costs O(changes) whatever the mall's size; a delta page writes each document's final state
once, setting only the filtered columns that changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiosqlite

from navign_gateway.mallcopy.documents import Change
from navign_gateway.mallcopy.errors import MallCopyError
from navign_gateway.mallcopy.schema import (
    COLUMNS,
    DIGESTS_SQL,
    INSERT,
    MODULUS,
    NOT_MIGRATED,
    TABLES,
    DocumentRow,
    update_sql,
)
from navign_proto.checksums import COLLECTIONS, CollectionDigest, MallChecksums


@dataclass(frozen=True, slots=True)
class SyncState:
    cursor: int | None
    floors: dict[str, int]
    loaded: frozenset[str]
    foreign: bool  # the stored copy belongs to another entity: treated as empty


async def load_digests(conn: aiosqlite.Connection) -> MallChecksums:
    async with conn.execute(DIGESTS_SQL) as cur:
        return checksums_of(await cur.fetchall())


def checksums_of(rows: Iterable[Any]) -> MallChecksums:
    found = {
        str(r[0]): CollectionDigest.from_storage(str(r[0]), int(r[1]), str(r[2])) for r in rows
    }
    if set(found) != set(COLLECTIONS):
        raise MallCopyError(NOT_MIGRATED)
    return MallChecksums(*(found[name] for name in COLLECTIONS))


async def store_digests(conn: aiosqlite.Connection, digests: MallChecksums) -> None:
    await conn.executemany(
        "UPDATE mall_digests SET count = ?, total = ? WHERE collection = ?",
        [(*digests.get(name).to_storage(), name) for name in COLLECTIONS],
    )


async def replace_collection(
    conn: aiosqlite.Connection, collection: str, rows: list[DocumentRow]
) -> CollectionDigest:
    await conn.execute(f"DELETE FROM {TABLES[collection]}")  # noqa: S608 - a fixed table name
    await conn.executemany(INSERT[collection], rows)
    total = sum(int.from_bytes(row[2], "big") for row in rows) % MODULUS
    return CollectionDigest(collection, len(rows), total)


async def apply_changes(
    conn: aiosqlite.Connection, digests: MallChecksums, todo: list[Change]
) -> MallChecksums:
    """Fold the changes in seq order over the stored digests, then write each document's final
    state once: the same result as applying them one by one, in a few statements.

    An update sets only the filtered columns whose value changed, so SQLite rewrites only the
    indexes that hold them: a renamed beacon touches its row and the name index, not the six
    other indexes of its table. Every page written is a page the commit must sync."""
    finals: dict[str, dict[str, DocumentRow | None]] = {}
    for _seq, name, doc_id, row in todo:
        finals.setdefault(name, {})[doc_id] = row
    for name, unordered in finals.items():
        # In id order: each B-tree page is visited once, not once per change on it.
        last = {doc_id: unordered[doc_id] for doc_id in sorted(unordered)}
        table = TABLES[name]
        async with conn.execute(
            f"SELECT id, digest, {', '.join(COLUMNS[name])} FROM {table}"  # noqa: S608
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(last)),),
        ) as cur:
            stored = {str(r[0]): (bytes(r[1]), tuple(r[2:])) for r in await cur.fetchall()}
        current: dict[str, bytes | None] = {doc_id: old[0] for doc_id, old in stored.items()}
        count, total = digests.get(name).count, digests.get(name).total
        for _seq, of, doc_id, row in todo:
            if of != name:
                continue
            previous = current.get(doc_id)
            if previous is not None:
                count, total = count - 1, total - int.from_bytes(previous, "big")
            if row is not None:
                count, total = count + 1, total + int.from_bytes(row[2], "big")
            current[doc_id] = None if row is None else row[2]
        await _write_finals(conn, name, last, stored)
        digests = digests.with_digest(CollectionDigest(name, count, total % MODULUS))
    return digests


async def _write_finals(
    conn: aiosqlite.Connection,
    name: str,
    last: Mapping[str, DocumentRow | None],
    stored: Mapping[str, tuple[bytes, tuple[Any, ...]]],
) -> None:
    table = TABLES[name]
    gone = [doc_id for doc_id, row in last.items() if row is None and doc_id in stored]
    if gone:
        await conn.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))",  # noqa: S608
            (json.dumps(gone),),
        )
    added = [row for doc_id, row in last.items() if row is not None and doc_id not in stored]
    if added:
        await conn.executemany(INSERT[name], added)
    updates: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
    for doc_id, row in last.items():
        if row is None or doc_id not in stored:
            continue
        old_digest, old_columns = stored[doc_id]
        if old_digest == row[2]:
            continue  # the same document: nothing to write
        new_columns = row[3:]
        changed = tuple(i for i, old in enumerate(old_columns) if old != new_columns[i])
        params = (row[1], row[2], *(new_columns[i] for i in changed), doc_id)
        updates.setdefault(changed, []).append(params)
    for changed, rows in updates.items():
        await conn.executemany(update_sql(name, changed), rows)


def after_full(
    state: SyncState, names: tuple[str, ...], seq: int
) -> tuple[int | None, dict[str, int], frozenset[str]]:
    """The cursor, floors and loaded set after replacing ``names`` with a snapshot at ``seq``."""
    if len(names) == len(COLLECTIONS):
        return seq, {}, frozenset()
    floors = dict(state.floors)
    if state.cursor is not None:
        for name in names:
            if seq > state.cursor:
                floors[name] = seq
            else:
                floors.pop(name, None)
        return state.cursor, floors, frozenset()
    # No complete copy yet: collections accumulate until all four are there (§5.5, last line).
    floors.update(dict.fromkeys(names, seq))
    loaded = state.loaded | set(names)
    if loaded != set(COLLECTIONS):
        return None, floors, loaded
    cursor = min(floors.values())
    return cursor, {n: f for n, f in floors.items() if f > cursor}, frozenset()
