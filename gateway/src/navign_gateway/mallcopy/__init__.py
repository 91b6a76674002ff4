"""The gateway's offline copy of its mall (protocol §5): what kiosks and robots read while the
central server is out of reach.

:class:`MallCopy` keeps, in the gateway's one SQLite database (component ``"mall"``, tables in
:mod:`.schema`):

- one table per synced collection: each document's canonical JSON (RFC 8785, exactly the bytes
  the checksums hash, :mod:`.canonical`), its digest as stored, and the columns the local read
  API filters on (:mod:`.filters`);
- the entity document, served offline and covered by no checksum;
- each collection's checksum state ``(count, total)``, maintained incrementally
  (:mod:`.writes`), so a page costs O(changes) whatever the mall's size;
- the sync cursor, the partial-repair floors of §5.5, and a generation number that changes with
  every write (the local API's ETag).

Every sync step (:meth:`MallCopy.apply_full`, :meth:`MallCopy.apply_delta`) is **one
transaction** that writes the documents, the digests and the cursor together and checks the
server's checksum before committing: a crash or a power cut leaves the copy at the step before
or after, never inside one, and a mismatch leaves the copy exactly as it was. The documents
are checked and prepared before it (:mod:`.documents`).

Reads use :attr:`Database.reader` and are single statements, so a page of documents and the
sequence number it is reported at come from the same committed snapshot.

Public: :class:`MallCopy`, :class:`CopyVersion`, :class:`DocumentPage`, :data:`FILTERS`,
:data:`MAX_PAGE`, :func:`canonical_bytes`, and the exceptions (:class:`MallCopyError` and its
subclasses, in :mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import itertools
import json
import re
import sqlite3
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aiosqlite

from navign_gateway.db import Database
from navign_gateway.mallcopy.canonical import canonical_bytes
from navign_gateway.mallcopy.documents import prepare_changes, prepare_snapshot
from navign_gateway.mallcopy.errors import (
    ChecksumMismatch,
    InvalidFilterError,
    MalformedDocumentError,
    MallCopyError,
    NoLocalCopyError,
    SyncRejectedError,
    UnknownCollectionError,
)
from navign_gateway.mallcopy.filters import FILTERS, where
from navign_gateway.mallcopy.schema import (
    DIGESTS_SQL,
    DOC_TAG,
    MIGRATIONS,
    MODULUS,
    NAME_INDEXED,
    NOT_MIGRATED,
    SYNC_COLUMNS,
    TABLES,
    TAGS,
    VERSION_SQL,
)
from navign_gateway.mallcopy.writes import (
    SyncState,
    after_full,
    apply_changes,
    checksums_of,
    load_digests,
    replace_collection,
    store_digests,
)
from navign_proto.canonical import canonical_json
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.errors import CanonicalJSONError
from navign_proto.wire import ChecksumResponse, SyncDeltaResponse, SyncFullResponse

__all__ = [
    "COMPONENT",
    "FILTERS",
    "MAX_PAGE",
    "OFFLOAD_AT",
    "TABLES",
    "ChecksumMismatch",
    "CopyVersion",
    "DocumentPage",
    "InvalidFilterError",
    "MalformedDocumentError",
    "MallCopy",
    "MallCopyError",
    "NoLocalCopyError",
    "SyncRejectedError",
    "UnknownCollectionError",
    "canonical_bytes",
]

COMPONENT: Final = "mall"
#: Largest page a read returns.
MAX_PAGE: Final = 1000
#: Preparing at least this many documents (canonical JSON, digests) runs in a worker thread, so
#: a large page does not stall the event loop that also serves kiosks.
OFFLOAD_AT: Final = 256
_SEQ_RE: Final = re.compile(r"[0-9]{1,19}")
_SEQ_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class CopyVersion:
    """Which committed state a read saw: ``seq`` is the sync cursor (None while there is no
    complete copy), ``etag`` changes with every committed write (a quoted strong ETag)."""

    seq: int | None
    etag: str


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """One page of a collection as canonical JSON texts, and the id to continue after."""

    version: CopyVersion
    documents: tuple[str, ...]
    next: str | None


_T = TypeVar("_T")


async def _offload(size: int, work: Callable[[], _T]) -> _T:
    return await asyncio.to_thread(work) if size >= OFFLOAD_AT else work()


class MallCopy:
    """The offline copy of one entity's mall in the gateway's database."""

    def __init__(self, db: Database, entity_id: str) -> None:
        self._db = db
        self.entity_id = entity_id

    async def migrate(self) -> None:
        await self._db.migrate(COMPONENT, MIGRATIONS)

    # -- full sync ------------------------------------------------------------------------------

    async def apply_full(
        self, response: SyncFullResponse, collections: Collection[str] | None = None
    ) -> None:
        """Replace ``collections`` (default all four) with the snapshot, and the entity
        document when the response has one, in one transaction.

        All four: the cursor becomes ``response.seq`` and the global checksum must equal
        ``response.checksum``. A subset (repair, §5.5): each replaced collection's document
        count must equal the response's metadata; the cursor stays, and ``floor[C] =
        response.seq`` is recorded for each ``C`` when that is above the cursor, so later deltas
        skip what the snapshot already holds; the global checksum is compared too when the copy
        is then consistent at ``response.seq``. On an empty copy, subsets accumulate until all
        four are there, and the cursor is then the oldest snapshot's ``seq``.
        """
        names = self._collections(collections)
        if response.entity_id != self.entity_id:
            raise SyncRejectedError(
                f"full sync for entity {response.entity_id!r}, not {self.entity_id!r}"
            )
        entity_text = self._entity_text(response.entity)
        size = sum(len(getattr(response.data, name)) for name in names)
        rows = await _offload(size, lambda: prepare_snapshot(self.entity_id, response, names))
        short = tuple(n for n in names if len(rows[n]) != getattr(response.metadata, f"total_{n}"))
        async with self._db.transaction() as conn:
            state = await self._state(conn)
            everything = len(names) == len(COLLECTIONS)
            if not everything and state.cursor is not None and response.seq < state.cursor:
                raise SyncRejectedError(
                    f"snapshot at seq {response.seq} is older than the copy (cursor "
                    f"{state.cursor}); fetch it again"
                )
            digests = await load_digests(conn)
            for name in names:
                digests = digests.with_digest(await replace_collection(conn, name, rows[name]))
            cursor, floors, loaded = after_full(state, names, response.seq)
            actual = digests.global_checksum
            comparable = everything or (cursor == response.seq and not floors)
            if short or (comparable and actual != response.checksum):
                raise ChecksumMismatch("full", response.checksum, actual, short)
            await store_digests(conn, digests)
            await self._store_state(conn, cursor, floors, loaded)
            if entity_text is not None or state.foreign:
                await conn.execute("UPDATE mall_sync SET entity = ?", (entity_text,))

    def _entity_text(self, entity: dict[str, Any] | None) -> str | None:
        if entity is None:
            return None
        if entity.get("id") != self.entity_id:
            raise SyncRejectedError(
                f"entity document id {entity.get('id')!r}, not {self.entity_id!r}"
            )
        try:
            return canonical_json(entity).decode("utf-8")
        except CanonicalJSONError as exc:
            raise SyncRejectedError(f"entity document: {exc}") from None

    # -- delta sync -----------------------------------------------------------------------------

    async def apply_delta(self, response: SyncDeltaResponse) -> int:
        """Apply one delta page and its ``next_cursor`` in one transaction; returns the number
        of changes applied.

        Changes at or below the cursor are skipped (a replayed page applies nothing), and so
        are changes to a collection at or below its repair floor (§5.5). ``base_checksum`` is
        compared with the copy when the page starts after the cursor, ``new_checksum`` after
        applying, except while a floor is above the cursor. A mismatch rolls the page back and
        raises :class:`ChecksumMismatch`.
        """
        if response.entity_id != self.entity_id:
            raise SyncRejectedError(
                f"delta for entity {response.entity_id!r}, not {self.entity_id!r}"
            )
        next_cursor = _parse_seq(response.next_cursor)
        seqs = [change.seq for change in response.changes]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            raise SyncRejectedError("changes are not in strictly increasing seq order")
        if seqs and seqs[-1] > next_cursor:
            raise SyncRejectedError(f"change seq {seqs[-1]} lies beyond next_cursor {next_cursor}")
        changes = await _offload(len(seqs), lambda: prepare_changes(self.entity_id, response))
        async with self._db.transaction() as conn:
            state = await self._state(conn)
            if state.cursor is None:
                raise NoLocalCopyError("no complete copy of the mall yet: run a full sync first")
            cursor = state.cursor
            digests = await load_digests(conn)
            settled = all(floor <= cursor for floor in state.floors.values())
            local = digests.global_checksum
            if next_cursor <= cursor:
                # A page already applied: nothing to write; its end state is still checkable.
                if next_cursor == cursor and settled and local != response.new_checksum:
                    raise ChecksumMismatch("new", response.new_checksum, local)
                return 0
            if settled and not (seqs and seqs[0] <= cursor) and local != response.base_checksum:
                raise ChecksumMismatch("base", response.base_checksum, local)
            todo = [c for c in changes if c[0] > cursor and c[0] > state.floors.get(c[1], -1)]
            digests = await apply_changes(conn, digests, todo)
            floors = {name: f for name, f in state.floors.items() if f > next_cursor}
            if not floors and digests.global_checksum != response.new_checksum:
                raise ChecksumMismatch("new", response.new_checksum, digests.global_checksum)
            await store_digests(conn, digests)
            await self._store_state(conn, next_cursor, floors, frozenset())
        return len(todo)

    # -- the state row --------------------------------------------------------------------------

    async def _state(self, conn: aiosqlite.Connection) -> SyncState:
        async with conn.execute(
            "SELECT entity_id, cursor, floors, loaded FROM mall_sync WHERE singleton = 1"
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(NOT_MIGRATED)
        if row[0] != self.entity_id:
            return SyncState(None, {}, frozenset(), foreign=row[0] is not None)
        floors = {str(k): int(v) for k, v in json.loads(row[2]).items()}
        cursor = None if row[1] is None else int(row[1])
        return SyncState(cursor, floors, frozenset(json.loads(row[3])), foreign=False)

    async def _store_state(
        self,
        conn: aiosqlite.Connection,
        cursor: int | None,
        floors: Mapping[str, int],
        loaded: frozenset[str],
    ) -> None:
        await conn.execute(
            "UPDATE mall_sync SET entity_id = ?, cursor = ?, floors = ?, loaded = ?,"
            " generation = generation + 1 WHERE singleton = 1",
            (self.entity_id, cursor, json.dumps(dict(floors)), json.dumps(sorted(loaded))),
        )

    @staticmethod
    def _collections(collections: Collection[str] | None) -> tuple[str, ...]:
        if collections is None:
            return COLLECTIONS
        if isinstance(collections, str):
            collections = [collections]
        for name in collections:
            if name not in TABLES:
                raise UnknownCollectionError(name)
        names = tuple(name for name in COLLECTIONS if name in collections)
        if not names:
            raise SyncRejectedError("a full sync must replace at least one collection")
        return names

    # -- reads ----------------------------------------------------------------------------------

    async def version(self) -> CopyVersion:
        async with self._db.reader.execute(VERSION_SQL) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(NOT_MIGRATED)
        return self._version(row)

    async def cursor(self) -> int | None:
        """The sync cursor; None until a complete copy exists."""
        return (await self.version()).seq

    async def floors(self) -> dict[str, int]:
        """The repair floors still above the cursor (§5.5): while there are any, the copy's
        global checksum is not comparable with the server's."""
        async with self._db.reader.execute(
            "SELECT entity_id, floors FROM mall_sync WHERE singleton = 1"
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] != self.entity_id:
            return {}
        return {str(k): int(v) for k, v in json.loads(row[1]).items()}

    async def checksums(self) -> MallChecksums:
        async with self._db.reader.execute(DIGESTS_SQL) as cur:
            return checksums_of(await cur.fetchall())

    async def counts(self) -> dict[str, int]:
        digests = await self.checksums()
        return {name: digests.get(name).count for name in COLLECTIONS}

    async def compare(self, remote: ChecksumResponse) -> tuple[str, ...]:
        """The collections whose checksum differs from ``remote``'s; meaningful when
        ``remote.seq`` is the cursor and there are no floors."""
        local = await self.checksums()
        return tuple(
            name
            for name in COLLECTIONS
            if remote.checksums.for_collection(name) != local.get(name).checksum
        )

    async def lookup(self, collection: str, doc_id: str) -> tuple[CopyVersion, str | None]:
        """The document's canonical JSON (None when absent) and the version it was read at."""
        table = self._table(collection)
        sql = (
            f"SELECT {SYNC_COLUMNS}, t.doc FROM mall_sync AS s"  # noqa: S608 - fixed names
            f" LEFT JOIN {table} AS t ON t.id = ? WHERE s.singleton = 1"
        )
        return await self._one(sql, (doc_id,))

    async def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        _, text = await self.lookup(collection, doc_id)
        return None if text is None else _parse_object(text)

    async def entity_document(self) -> tuple[CopyVersion, str | None]:
        """The entity document's canonical JSON (None before a full sync carried it)."""
        sql = f"SELECT {SYNC_COLUMNS}, s.entity FROM mall_sync AS s WHERE s.singleton = 1"  # noqa: S608
        return await self._one(sql, ())

    async def entity(self) -> dict[str, Any] | None:
        _, text = await self.entity_document()
        return None if text is None else _parse_object(text)

    async def page(
        self,
        collection: str,
        *,
        filters: Mapping[str, str] | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> DocumentPage:
        """Documents of ``collection`` matching every filter (:data:`FILTERS`), in id order,
        after the id ``after``; at most ``limit`` (1 to :data:`MAX_PAGE`)."""
        table = self._table(collection)
        condition, params = where(collection, filters or {}, after)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidFilterError("limit", f"must be an integer from 1 to {MAX_PAGE}")
        # The page's ids come from the indexes alone (sorted, limited); only then are the
        # documents of that page read. One statement: one snapshot.
        searched = set(filters or {}) == {"q"} and collection in NAME_INDEXED
        hint = f" INDEXED BY {table}_name" if searched else ""
        sql = (
            f"SELECT {SYNC_COLUMNS}, p.id, p.doc FROM mall_sync AS s LEFT JOIN"  # noqa: S608
            f" (SELECT d.id, d.doc FROM {table} AS d WHERE d.id IN"
            f" (SELECT t.id FROM {table} AS t{hint}{condition} ORDER BY t.id LIMIT ?)) AS p"
            " WHERE s.singleton = 1 ORDER BY p.id"
        )
        async with self._db.reader.execute(sql, (*params, limit + 1)) as cur:
            rows = builtins.list(await cur.fetchall())
        if not rows:
            raise MallCopyError(NOT_MIGRATED)
        version = self._version(rows[0])
        if rows[0][0] != self.entity_id:
            return DocumentPage(version, (), None)
        found = [(str(row[4]), str(row[5])) for row in rows if row[4] is not None]
        more = len(found) > limit
        found = found[:limit]
        return DocumentPage(version, tuple(doc for _, doc in found), found[-1][0] if more else None)

    async def beacon_identities(self) -> builtins.list[tuple[str, str, str, int, int]]:
        """Every beacon's id, chip (``device``), MAC and iBeacon major and minor, from the
        indexed columns (no document is parsed, so a large mall costs no memory peak); beacons
        missing any of them are left out. Raises :class:`MallCopyError` before the first
        migration; empty while there is no copy of this entity."""
        if (await self._state(self._db.reader)).cursor is None:
            return []
        found: builtins.list[tuple[str, str, str, int, int]] = []
        sql = "SELECT id, json_extract(doc, '$.device'), mac, major, minor FROM mall_beacons"
        async with self._db.reader.execute(sql) as cur:
            for _ in range(10_000):  # batches of 1000: far beyond any mall
                rows = await cur.fetchmany(1000)
                if not rows:
                    break
                found += [(r[0], r[1], r[2], r[3], r[4]) for r in rows if _identity(r)]
        return found

    async def verify(self) -> bool:
        """Recompute every document's digest from its stored JSON and every collection's state
        from those digests; False when anything disagrees with what is stored (a corrupted
        file: run a full sync). Each collection is read in one statement, one snapshot."""
        try:
            async with self._db.reader.execute("PRAGMA quick_check") as cur:
                if [str(row[0]) for row in await cur.fetchall()] != ["ok"]:
                    return False
            for name in COLLECTIONS:
                if not await self._verify_collection(name):
                    return False
        except (sqlite3.DatabaseError, ValueError, UnicodeError):
            return False
        return True

    async def _verify_collection(self, name: str) -> bool:
        tag = DOC_TAG + TAGS[name]
        count = total = 0
        expected: tuple[int, int] | None = None
        sql = (
            "SELECT d.count, d.total, t.doc, t.digest FROM mall_digests AS d"  # noqa: S608
            f" LEFT JOIN {TABLES[name]} AS t WHERE d.collection = ?"
        )
        async with self._db.reader.execute(sql, (name,)) as cur:
            while rows := await cur.fetchmany(2_000):
                for stored_count, stored_total, text, digest in rows:
                    expected = (int(stored_count), int(stored_total, 16))
                    if text is None:
                        continue
                    recomputed = hashlib.sha256(tag + str(text).encode("utf-8")).digest()
                    if recomputed != digest:
                        return False
                    count += 1
                    total += int.from_bytes(recomputed, "big")
        return expected == (count, total % MODULUS)

    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[CopyVersion, str | None]:
        async with self._db.reader.execute(sql, params) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(NOT_MIGRATED)
        text = row[4] if row[0] == self.entity_id else None
        return self._version(row), None if text is None else str(text)

    def _version(self, row: Any) -> CopyVersion:
        stored_entity, cursor, generation, instance = row[0], row[1], row[2], row[3]
        seq = int(cursor) if cursor is not None and stored_entity == self.entity_id else None
        return CopyVersion(seq, f'"{"none" if seq is None else seq}-{generation}-{instance}"')

    @staticmethod
    def _table(collection: str) -> str:
        table = TABLES.get(collection)
        if table is None:
            raise UnknownCollectionError(collection)
        return table

    async def list(
        self, collection: str, *, filters: Mapping[str, str], limit: int, after: str | None
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """:meth:`page` with the documents parsed (last: its name shadows the builtin here)."""
        found = await self.page(collection, filters=filters, limit=limit, after=after)
        return [_parse_object(text) for text in found.documents], found.next


def _parse_seq(value: str | None) -> int:
    if value is None or _SEQ_RE.fullmatch(value) is None or int(value) > _SEQ_MAX:
        raise SyncRejectedError(f"next_cursor {value!r} is not a decimal sequence number")
    return int(value)


def _identity(row: Any) -> bool:
    """A beacon row with a chip, a MAC and integer iBeacon numbers."""
    _, chip, mac, major, minor = row
    return isinstance(chip, str) and isinstance(mac, str) and type(major) is type(minor) is int


def _parse_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise MallCopyError("a stored document is not a JSON object: the copy is corrupted")
    return value
