"""The gateway's offline copy of its mall (protocol §5): what kiosks and robots read while the
central server is out of reach.

:class:`MallCopy` keeps, in the gateway's one SQLite database (component ``"mall"``):

- one table per synced collection: each document's canonical JSON (RFC 8785, exactly the bytes
  the checksums hash), its digest as stored, and the columns the local read API filters on;
- the entity document, served offline and covered by no checksum;
- each collection's checksum state ``(count, total)``, maintained incrementally as
  :mod:`navign_proto.checksums` defines it: a write subtracts the *stored* digest of the old
  document and adds the new one, so a page costs O(changes) whatever the mall's size;
- the sync cursor, the partial-repair floors of §5.5, and a generation number that changes with
  every write (the local API's ETag).

Every sync step (:meth:`MallCopy.apply_full`, :meth:`MallCopy.apply_delta`) is **one
transaction** that writes the documents, the digests and the cursor together and checks the
server's checksum before committing: a crash or a power cut leaves the copy at the step before
or after, never inside one, and a mismatch leaves the copy exactly as it was.

Reads use :attr:`Database.reader` and are single statements, so a page of documents and the
sequence number it is reported at come from the same committed snapshot.

Public: :class:`MallCopy`, :class:`CopyVersion`, :class:`DocumentPage`, :data:`FILTERS`,
:data:`MAX_PAGE`, and the exceptions (:class:`MallCopyError` and its subclasses).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import itertools
import json
import re
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import aiosqlite

from navign_gateway.db import Database
from navign_proto.canonical import canonical_json
from navign_proto.checksums import COLLECTIONS, CollectionDigest, MallChecksums
from navign_proto.errors import CanonicalJSONError
from navign_proto.mall import normalize_mac
from navign_proto.wire import ChangeOperation, ChecksumResponse, SyncDeltaResponse, SyncFullResponse

COMPONENT: Final = "mall"
#: Largest page a read returns.
MAX_PAGE: Final = 1000
#: Preparing at least this many documents (canonical JSON, digests) runs in a worker thread, so
#: a large page does not stall the event loop that also serves kiosks.
OFFLOAD_AT: Final = 256
_MODULUS: Final = 1 << 256
_DOC_TAG: Final = b"navign-doc-v1\x00"
_SEQ_RE: Final = re.compile(r"[0-9]{1,19}")
_SEQ_MAX: Final = 2**63 - 1
_NOT_MIGRATED: Final = "the mall tables are not migrated: call MallCopy.migrate() first"

# -- errors -------------------------------------------------------------------------------------


class MallCopyError(Exception):
    """Base of every error of the mall copy."""


class UnknownCollectionError(MallCopyError, ValueError):
    def __init__(self, collection: str) -> None:
        super().__init__(f"unknown collection {collection!r}; expected one of {list(COLLECTIONS)}")
        self.collection = collection


class InvalidFilterError(MallCopyError, ValueError):
    """A read's filter, limit or paging cursor breaks a rule (the local API answers 422)."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


class NoLocalCopyError(MallCopyError):
    """A delta needs a complete copy to apply to: run a full sync first."""


class SyncRejectedError(MallCopyError, ValueError):
    """A sync response that cannot be applied as it is (another entity, a bad cursor, changes
    out of order, a snapshot older than the copy). Nothing was written."""


class MalformedDocumentError(SyncRejectedError):
    """A document that cannot be stored: not an object, a wrong id or entity, a filtered field
    of the wrong JSON type, or no canonical JSON form. Nothing was written."""

    def __init__(self, collection: str, doc_id: object, reason: str) -> None:
        super().__init__(f"{collection} document {doc_id!r}: {reason}")
        self.collection = collection
        self.doc_id = doc_id
        self.reason = reason


class ChecksumMismatch(MallCopyError):  # noqa: N818 - the name the sync engine uses
    """The copy's checksum before (``stage`` "base") or after ("full", "new") a sync step
    differs from the server's; the step was rolled back. ``collections`` names collections
    known to differ (by document count); empty when only the global checksum tells, and then
    ``GET /sync/checksum`` with :meth:`MallCopy.compare` tells which (§5.5)."""

    def __init__(
        self,
        stage: Literal["full", "base", "new"],
        expected: str,
        actual: str,
        collections: tuple[str, ...] = (),
    ) -> None:
        which = f" (differing: {', '.join(collections)})" if collections else ""
        super().__init__(f"{stage} checksum mismatch: server {expected}, local {actual}{which}")
        self.stage = stage
        self.expected = expected
        self.actual = actual
        self.collections = collections


# -- tables and filtered columns ----------------------------------------------------------------

TABLES: Final[Mapping[str, str]] = {name: f"mall_{name}" for name in COLLECTIONS}
_TAGS: Final = {name: name.encode() + b"\x00" for name in COLLECTIONS}
#: The filtered columns of each table, in row order after (id, doc, digest).
_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "areas": ("name", "floor", "beacon_code"),
    "beacons": ("name", "area_id", "merchant_id", "connection_id", "type", "mac", "major", "minor"),
    "merchants": ("name", "area_id", "type", "style"),
    "connections": ("name", "type"),
}
_NAME_INDEXED: Final = ("areas", "merchants")
_FLOOR_PREFIX: Final = {"floor": "F", "basement": "B", "level": "L"}
_INTEGER_COLUMNS: Final = frozenset({"major", "minor"})

#: One stored row: (id, canonical JSON, digest, *filtered columns).
DocumentRow = tuple[Any, ...]
#: (seq, collection, id, row or None for a delete).
_Change = tuple[int, str, str, DocumentRow | None]


def _table_sql(name: str) -> str:
    columns = "".join(
        f", {c} {'INTEGER' if c in _INTEGER_COLUMNS else 'TEXT'}" for c in _COLUMNS[name]
    )
    return (
        f"CREATE TABLE mall_{name} (id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL,"
        f" digest BLOB NOT NULL{columns});"
    )


_EMPTY_TOTAL: Final = "0" * 64
_SCHEMA: Final = "\n".join(
    [
        "CREATE TABLE mall_sync (singleton INTEGER PRIMARY KEY CHECK (singleton = 1),"
        " entity_id TEXT, cursor INTEGER, floors TEXT NOT NULL DEFAULT '{}',"
        " loaded TEXT NOT NULL DEFAULT '[]', entity TEXT,"
        " generation INTEGER NOT NULL DEFAULT 0, instance TEXT NOT NULL);",
        "INSERT INTO mall_sync (singleton, instance) VALUES (1, lower(hex(randomblob(6))));",
        "CREATE TABLE mall_digests (collection TEXT PRIMARY KEY, count INTEGER NOT NULL,"
        " total TEXT NOT NULL) WITHOUT ROWID;",
        *(f"INSERT INTO mall_digests VALUES ('{n}', 0, '{_EMPTY_TOTAL}');" for n in COLLECTIONS),  # noqa: S608
        *(_table_sql(name) for name in COLLECTIONS),
        "CREATE INDEX mall_areas_floor ON mall_areas (floor, id);",
        "CREATE INDEX mall_beacons_area ON mall_beacons (area_id, id);",
        "CREATE INDEX mall_beacons_merchant ON mall_beacons (merchant_id, id)"
        " WHERE merchant_id IS NOT NULL;",
        "CREATE INDEX mall_beacons_connection ON mall_beacons (connection_id, id)"
        " WHERE connection_id IS NOT NULL;",
        "CREATE INDEX mall_beacons_type ON mall_beacons (type, id);",
        "CREATE INDEX mall_beacons_mac ON mall_beacons (mac);",
        "CREATE INDEX mall_beacons_ibeacon ON mall_beacons (major, minor);",
        "CREATE INDEX mall_merchants_area ON mall_merchants (area_id, id);",
        "CREATE INDEX mall_merchants_type ON mall_merchants (type, id);",
        # Kiosks search areas and merchants by name (``q``): that scans these small indexes,
        # not the documents. Beacons and connections are searched by name only for
        # maintenance; they change most often and are spared the index.
        *(f"CREATE INDEX mall_{n}_name ON mall_{n} (name, id);" for n in _NAME_INDEXED),
        # Which areas each connection links, kept by triggers: "connections of this area".
        "CREATE TABLE mall_connection_areas (area_id TEXT NOT NULL, connection_id TEXT NOT NULL,"
        " PRIMARY KEY (area_id, connection_id)) WITHOUT ROWID;",
        "CREATE INDEX mall_connection_areas_connection ON mall_connection_areas (connection_id);",
        "CREATE TRIGGER mall_connections_insert AFTER INSERT ON mall_connections BEGIN"
        " INSERT OR IGNORE INTO mall_connection_areas (area_id, connection_id)"
        " SELECT json_extract(value, '$.area_id'), NEW.id"
        " FROM json_each(NEW.doc, '$.connected_areas')"
        " WHERE json_type(value, '$.area_id') = 'text'; END;",
        "CREATE TRIGGER mall_connections_update AFTER UPDATE OF doc ON mall_connections BEGIN"
        " DELETE FROM mall_connection_areas WHERE connection_id = OLD.id;"
        " INSERT OR IGNORE INTO mall_connection_areas (area_id, connection_id)"
        " SELECT json_extract(value, '$.area_id'), NEW.id"
        " FROM json_each(NEW.doc, '$.connected_areas')"
        " WHERE json_type(value, '$.area_id') = 'text'; END;",
        "CREATE TRIGGER mall_connections_delete AFTER DELETE ON mall_connections BEGIN"
        " DELETE FROM mall_connection_areas WHERE connection_id = OLD.id; END;",
    ]
)
MIGRATIONS: Final[list[str]] = [_SCHEMA]


def _insert_sql(name: str) -> str:
    columns = ("id", "doc", "digest", *_COLUMNS[name])
    return (
        f"INSERT INTO mall_{name} ({', '.join(columns)})"  # noqa: S608 - fixed names
        f" VALUES ({', '.join('?' * len(columns))})"
    )


_INSERT: Final = {name: _insert_sql(name) for name in COLLECTIONS}
_SYNC_COLUMNS: Final = "s.entity_id, s.cursor, s.generation, s.instance"
_VERSION_SQL: Final = f"SELECT {_SYNC_COLUMNS} FROM mall_sync AS s WHERE s.singleton = 1"  # noqa: S608
_DIGESTS_SQL: Final = "SELECT collection, count, total FROM mall_digests"

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KEYWORD_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_FLOOR_RE: Final = re.compile(r"[FBL]-?[0-9]{1,3}")
_UINT16_RE: Final = re.compile(r"[0-9]{1,5}")


def _text(name: str, document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedDocumentError(name, document.get("id"), f"{key!r} is not a string")
    return value


def _columns(name: str, document: Mapping[str, Any]) -> tuple[Any, ...]:
    """The filtered columns of ``document``. Absent fields are NULL (a newer or older server may
    omit them); a present field of the wrong JSON type makes the document malformed."""
    values: list[Any] = []
    for column in _COLUMNS[name]:
        if column == "floor":
            values.append(_floor_code(name, document))
        elif column in _INTEGER_COLUMNS:
            value = document.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise MalformedDocumentError(
                    name, document.get("id"), f"{column!r} is not an integer"
                )
            values.append(value)
        else:
            values.append(_text(name, document, column))
    if name == "connections":
        ends = document.get("connected_areas", [])
        if not isinstance(ends, list) or not all(
            isinstance(end, dict) and isinstance(end.get("area_id"), str) for end in ends
        ):
            raise MalformedDocumentError(
                name, document.get("id"), "'connected_areas' is not a list of {area_id, x, y}"
            )
    return tuple(values)


def _floor_code(name: str, document: Mapping[str, Any]) -> str | None:
    """``F2``, ``B1``, ``L-1``: the floor filter's value for an area (None when unknown)."""
    floor = document.get("floor")
    if floor is None:
        return None
    if not isinstance(floor, dict) or not isinstance(floor.get("type"), str):
        raise MalformedDocumentError(name, document.get("id"), "'floor' is not {type, number}")
    number = floor.get("number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise MalformedDocumentError(name, document.get("id"), "'floor.number' is not an integer")
    prefix = _FLOOR_PREFIX.get(floor["type"])
    return None if prefix is None else f"{prefix}{number}"


# -- canonical JSON, fast -----------------------------------------------------------------------

_SAFE_INTEGER: Final = 2**53 - 1


class _NeedsFullCanonicalizer(Exception):  # noqa: N818 - control flow, never escapes
    pass


def _plain(value: Any) -> Any:
    """``value`` with integral floats as ints; raises when some value is outside the subset
    where ``json.dumps`` prints what RFC 8785 prints: ASCII keys (so code-point and UTF-16
    order agree), safe integers, floats either integral below 2**53 or with ``repr`` in plain
    decimal notation (1e-4 <= |f| < 1e16: the same shortest digits ECMAScript prints)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            return value
        raise _NeedsFullCanonicalizer
    if kind is float:
        if value.is_integer():
            if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
                return int(value)
        elif 1e-4 <= abs(value) < 1e16:
            return value
        raise _NeedsFullCanonicalizer
    if kind is dict:
        plain = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _NeedsFullCanonicalizer
            plain[key] = _plain(item)
        return plain
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    raise _NeedsFullCanonicalizer


def canonical_bytes(document: Any) -> bytes:
    """Exactly :func:`navign_proto.canonical.canonical_json` (the checksums depend on it), about
    twice as fast for typical documents: the C ``json`` encoder does the work when the
    document lies in the subset where its output is RFC 8785's, and ``canonical_json`` does
    it otherwise (and raises what it raises). Applying a delta page spends most of its time
    here."""
    try:
        text = json.dumps(
            _plain(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return text.encode("utf-8")
    except (_NeedsFullCanonicalizer, UnicodeEncodeError, RecursionError):
        return canonical_json(document)


# -- filters ------------------------------------------------------------------------------------


def _identifier(value: str) -> str:
    if _ID_RE.fullmatch(value) is None:
        raise ValueError("must be an id: 1 to 64 letters, digits or ._:-")
    return value


def _keyword(value: str) -> str:
    if _KEYWORD_RE.fullmatch(value) is None:
        raise ValueError("must be a lowercase type name such as 'navigation' or 'food'")
    return value


def _floor(value: str) -> str:
    if _FLOOR_RE.fullmatch(value.upper()) is None:
        raise ValueError("must be a floor code: F<n> (floor), B<n> (basement), L<n> (level)")
    return value.upper()


def _mac(value: str) -> str:
    return normalize_mac(value)  # ValueError says what is wrong


def _uint16(value: str) -> int:
    if _UINT16_RE.fullmatch(value) is None or int(value) > 65_535:
        raise ValueError("must be an integer from 0 to 65535")
    return int(value)


def _substring(value: str) -> str:
    if not 1 <= len(value) <= 200 or any(ord(c) < 32 for c in value):
        raise ValueError("must be 1 to 200 characters without control characters")
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_Filter = tuple[Callable[[str], Any], str]
_AREA_ON_FLOOR: Final = "t.area_id IN (SELECT id FROM mall_areas WHERE floor = ?)"
_Q: Final = "t.name LIKE ? ESCAPE '\\'"
FILTERS: Final[Mapping[str, Mapping[str, _Filter]]] = {
    "areas": {
        "floor": (_floor, "t.floor = ?"),
        "beacon_code": (_identifier, "t.beacon_code = ?"),
        "q": (_substring, _Q),
    },
    "beacons": {
        "area_id": (_identifier, "t.area_id = ?"),
        "merchant_id": (_identifier, "t.merchant_id = ?"),
        "connection_id": (_identifier, "t.connection_id = ?"),
        "floor": (_floor, _AREA_ON_FLOOR),
        "type": (_keyword, "t.type = ?"),
        "mac": (_mac, "t.mac = ?"),
        "major": (_uint16, "t.major = ?"),
        "minor": (_uint16, "t.minor = ?"),
        "q": (_substring, _Q),
    },
    "merchants": {
        "area_id": (_identifier, "t.area_id = ?"),
        "floor": (_floor, _AREA_ON_FLOOR),
        "type": (_keyword, "t.type = ?"),
        "style": (_keyword, "t.style = ?"),
        "q": (_substring, _Q),
    },
    "connections": {
        "area_id": (
            _identifier,
            "t.id IN (SELECT connection_id FROM mall_connection_areas WHERE area_id = ?)",
        ),
        "floor": (
            _floor,
            "t.id IN (SELECT ca.connection_id FROM mall_connection_areas AS ca"
            " JOIN mall_areas AS a ON a.id = ca.area_id WHERE a.floor = ?)",
        ),
        "type": (_keyword, "t.type = ?"),
        "q": (_substring, _Q),
    },
}
"""Per collection: filter name -> (value check, SQL condition). ``q`` is a case-insensitive
(ASCII) substring of ``name``; ``floor`` is a floor code (``F2``, ``B1``, ``L-1``) and, outside
areas, selects the documents of areas on that floor; the other filters are equalities."""


def _where(collection: str, filters: Mapping[str, str], after: str | None) -> tuple[str, list[Any]]:
    known = FILTERS[collection]
    conditions: list[str] = []
    params: list[Any] = []
    for key, value in sorted(filters.items()):
        if key not in known:
            raise InvalidFilterError(
                key, f"not a filter of {collection}; use one of {sorted(known)}"
            )
        if not isinstance(value, str):
            raise InvalidFilterError(key, "must be a string")
        check, condition = known[key]
        try:
            params.append(check(value))
        except ValueError as exc:
            raise InvalidFilterError(key, str(exc)) from None
        conditions.append(condition)
    if after is not None:
        try:
            params.append(_identifier(after))
        except ValueError as exc:
            raise InvalidFilterError("after", str(exc)) from None
        conditions.append("t.id > ?")
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", params


# -- read results -------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class _SyncState:
    cursor: int | None
    floors: dict[str, int]
    loaded: frozenset[str]
    foreign: bool  # the stored copy belongs to another entity: treated as empty


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
        rows = await _offload(size, lambda: self._prepare_snapshot(response, names))
        short = tuple(n for n in names if len(rows[n]) != getattr(response.metadata, f"total_{n}"))
        async with self._db.transaction() as conn:
            state = await self._state(conn)
            everything = len(names) == len(COLLECTIONS)
            if not everything and state.cursor is not None and response.seq < state.cursor:
                raise SyncRejectedError(
                    f"snapshot at seq {response.seq} is older than the copy (cursor "
                    f"{state.cursor}); fetch it again"
                )
            digests = await _digests(conn)
            for name in names:
                digests = digests.with_digest(await _replace(conn, name, rows[name]))
            cursor, floors, loaded = _after_full(state, names, response.seq)
            actual = digests.global_checksum
            comparable = everything or (cursor == response.seq and not floors)
            if short or (comparable and actual != response.checksum):
                raise ChecksumMismatch("full", response.checksum, actual, short)
            await _store_digests(conn, digests)
            await self._store_state(conn, cursor, floors, loaded)
            if entity_text is not None or state.foreign:
                await conn.execute("UPDATE mall_sync SET entity = ?", (entity_text,))

    def _prepare_snapshot(
        self, response: SyncFullResponse, names: tuple[str, ...]
    ) -> dict[str, builtins.list[DocumentRow]]:
        prepared: dict[str, builtins.list[DocumentRow]] = {}
        for name in names:
            rows = [self._prepare(name, doc, None) for doc in getattr(response.data, name)]
            if len({row[0] for row in rows}) != len(rows):
                raise MalformedDocumentError(name, None, "the same id appears twice")
            prepared[name] = rows
        return prepared

    def _prepare(self, collection: str, document: object, doc_id: str | None) -> DocumentRow:
        """Check ``document`` and compute its stored row. Pure: it runs before the transaction,
        in a worker thread for large pages."""
        if not isinstance(document, dict):
            raise MalformedDocumentError(collection, doc_id, "not a JSON object")
        found = document.get("id")
        if not isinstance(found, str) or _ID_RE.fullmatch(found) is None:
            raise MalformedDocumentError(collection, found, "'id' is not an identifier")
        if doc_id is not None and found != doc_id:
            raise MalformedDocumentError(collection, doc_id, f"data id {found!r} differs")
        if document.get("entity_id") != self.entity_id:
            owner = document.get("entity_id")
            raise MalformedDocumentError(collection, found, f"entity_id {owner!r} is not ours")
        columns = _columns(collection, document)
        try:
            text = canonical_bytes(document)
        except (CanonicalJSONError, RecursionError) as exc:
            raise MalformedDocumentError(collection, found, f"no canonical JSON: {exc}") from None
        digest = hashlib.sha256(_DOC_TAG + _TAGS[collection] + text).digest()
        return (found, text.decode("utf-8"), digest, *columns)

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
        changes = await _offload(len(seqs), lambda: self._prepare_changes(response))
        async with self._db.transaction() as conn:
            state = await self._state(conn)
            if state.cursor is None:
                raise NoLocalCopyError("no complete copy of the mall yet: run a full sync first")
            cursor = state.cursor
            digests = await _digests(conn)
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
            digests = await _apply_changes(conn, digests, todo)
            floors = {name: f for name, f in state.floors.items() if f > next_cursor}
            if not floors and digests.global_checksum != response.new_checksum:
                raise ChecksumMismatch("new", response.new_checksum, digests.global_checksum)
            await _store_digests(conn, digests)
            await self._store_state(conn, next_cursor, floors, frozenset())
        return len(todo)

    def _prepare_changes(self, response: SyncDeltaResponse) -> builtins.list[_Change]:
        prepared: builtins.list[_Change] = []
        for change in response.changes:
            name = str(change.type)
            if name not in TABLES:
                raise UnknownCollectionError(name)
            if change.operation is ChangeOperation.DELETE:
                if change.data is not None:
                    raise MalformedDocumentError(name, change.id, "a delete carries data")
                prepared.append((change.seq, name, change.id, None))
            else:
                row = self._prepare(name, change.data, change.id)
                prepared.append((change.seq, name, change.id, row))
        return prepared

    # -- the state row --------------------------------------------------------------------------

    async def _state(self, conn: aiosqlite.Connection) -> _SyncState:
        async with conn.execute(
            "SELECT entity_id, cursor, floors, loaded FROM mall_sync WHERE singleton = 1"
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(_NOT_MIGRATED)
        if row[0] != self.entity_id:
            return _SyncState(None, {}, frozenset(), foreign=row[0] is not None)
        floors = {str(k): int(v) for k, v in json.loads(row[2]).items()}
        cursor = None if row[1] is None else int(row[1])
        return _SyncState(cursor, floors, frozenset(json.loads(row[3])), foreign=False)

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
        async with self._db.reader.execute(_VERSION_SQL) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(_NOT_MIGRATED)
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
        async with self._db.reader.execute(_DIGESTS_SQL) as cur:
            return _checksums_of(await cur.fetchall())

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
            f"SELECT {_SYNC_COLUMNS}, t.doc FROM mall_sync AS s"  # noqa: S608 - fixed names
            f" LEFT JOIN {table} AS t ON t.id = ? WHERE s.singleton = 1"
        )
        return await self._one(sql, (doc_id,))

    async def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        _, text = await self.lookup(collection, doc_id)
        return None if text is None else _parse_object(text)

    async def entity_document(self) -> tuple[CopyVersion, str | None]:
        """The entity document's canonical JSON (None before a full sync carried it)."""
        sql = f"SELECT {_SYNC_COLUMNS}, s.entity FROM mall_sync AS s WHERE s.singleton = 1"  # noqa: S608
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
        where, params = _where(collection, filters or {}, after)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidFilterError("limit", f"must be an integer from 1 to {MAX_PAGE}")
        # The page's ids come from the indexes alone (sorted, limited); only then are the
        # documents of that page read. One statement: one snapshot.
        searched = set(filters or {}) == {"q"} and collection in _NAME_INDEXED
        hint = f" INDEXED BY {table}_name" if searched else ""
        sql = (
            f"SELECT {_SYNC_COLUMNS}, p.id, p.doc FROM mall_sync AS s LEFT JOIN"  # noqa: S608
            f" (SELECT d.id, d.doc FROM {table} AS d WHERE d.id IN"
            f" (SELECT t.id FROM {table} AS t{hint}{where} ORDER BY t.id LIMIT ?)) AS p"
            " WHERE s.singleton = 1 ORDER BY p.id"
        )
        async with self._db.reader.execute(sql, (*params, limit + 1)) as cur:
            rows = builtins.list(await cur.fetchall())
        if not rows:
            raise MallCopyError(_NOT_MIGRATED)
        version = self._version(rows[0])
        if rows[0][0] != self.entity_id:
            return DocumentPage(version, (), None)
        found = [(str(row[4]), str(row[5])) for row in rows if row[4] is not None]
        more = len(found) > limit
        found = found[:limit]
        return DocumentPage(version, tuple(doc for _, doc in found), found[-1][0] if more else None)

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
        tag = _DOC_TAG + _TAGS[name]
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
        return expected == (count, total % _MODULUS)

    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[CopyVersion, str | None]:
        async with self._db.reader.execute(sql, params) as cur:
            row = await cur.fetchone()
        if row is None:
            raise MallCopyError(_NOT_MIGRATED)
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


# -- inside a transaction -----------------------------------------------------------------------


async def _digests(conn: aiosqlite.Connection) -> MallChecksums:
    async with conn.execute(_DIGESTS_SQL) as cur:
        return _checksums_of(await cur.fetchall())


def _checksums_of(rows: Iterable[Any]) -> MallChecksums:
    found = {
        str(r[0]): CollectionDigest.from_storage(str(r[0]), int(r[1]), str(r[2])) for r in rows
    }
    if set(found) != set(COLLECTIONS):
        raise MallCopyError(_NOT_MIGRATED)
    return MallChecksums(*(found[name] for name in COLLECTIONS))


async def _store_digests(conn: aiosqlite.Connection, digests: MallChecksums) -> None:
    await conn.executemany(
        "UPDATE mall_digests SET count = ?, total = ? WHERE collection = ?",
        [(*digests.get(name).to_storage(), name) for name in COLLECTIONS],
    )


async def _replace(
    conn: aiosqlite.Connection, collection: str, rows: builtins.list[DocumentRow]
) -> CollectionDigest:
    await conn.execute(f"DELETE FROM {TABLES[collection]}")  # noqa: S608 - a fixed table name
    await conn.executemany(_INSERT[collection], rows)
    total = sum(int.from_bytes(row[2], "big") for row in rows) % _MODULUS
    return CollectionDigest(collection, len(rows), total)


async def _apply_changes(
    conn: aiosqlite.Connection, digests: MallChecksums, todo: builtins.list[_Change]
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
            f"SELECT id, digest, {', '.join(_COLUMNS[name])} FROM {table}"  # noqa: S608
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(builtins.list(last)),),
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
        digests = digests.with_digest(CollectionDigest(name, count, total % _MODULUS))
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
        await conn.executemany(_INSERT[name], added)
    updates: dict[tuple[int, ...], builtins.list[tuple[Any, ...]]] = {}
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
        await conn.executemany(_update_sql(name, changed), rows)


@functools.lru_cache(maxsize=256)
def _update_sql(name: str, changed: tuple[int, ...]) -> str:
    columns = "".join(f", {_COLUMNS[name][i]} = ?" for i in changed)
    return f"UPDATE mall_{name} SET doc = ?, digest = ?{columns} WHERE id = ?"  # noqa: S608


def _after_full(
    state: _SyncState, names: tuple[str, ...], seq: int
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


def _parse_seq(value: str | None) -> int:
    if value is None or _SEQ_RE.fullmatch(value) is None or int(value) > _SEQ_MAX:
        raise SyncRejectedError(f"next_cursor {value!r} is not a decimal sequence number")
    return int(value)


def _parse_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise MallCopyError("a stored document is not a JSON object: the copy is corrupted")
    return value
