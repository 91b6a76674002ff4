"""The mall copy's tables (component ``"mall"``) and the fixed SQL that reads and writes them.

- one table per synced collection, ``mall_<name>``: each document's canonical JSON, its
  digest as stored, and the columns the local read API filters on (:data:`COLUMNS`);
- ``mall_digests``: each collection's checksum state ``(count, total)``;
- ``mall_sync``: the entity document, the sync cursor, the repair floors of §5.5, the
  collections loaded so far and a generation number that changes with every write;
- ``mall_connection_areas``: which areas each connection links, kept by triggers.

Every table and column name in the SQL comes from here, never from a request.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from navign_proto.checksums import COLLECTIONS

TABLES: Final[Mapping[str, str]] = {name: f"mall_{name}" for name in COLLECTIONS}
#: A document's digest is SHA-256(DOC_TAG + TAGS[collection] + canonical JSON).
DOC_TAG: Final = b"navign-doc-v1\x00"
TAGS: Final = {name: name.encode() + b"\x00" for name in COLLECTIONS}
#: Collection totals are sums of digests modulo 2**256.
MODULUS: Final = 1 << 256
#: The filtered columns of each table, in row order after (id, doc, digest).
COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "areas": ("name", "floor", "beacon_code"),
    "beacons": ("name", "area_id", "merchant_id", "connection_id", "type", "mac", "major", "minor"),
    "merchants": ("name", "area_id", "type", "style"),
    "connections": ("name", "type"),
}
#: The collections whose ``name`` has an index (searched by kiosks).
NAME_INDEXED: Final = ("areas", "merchants")
INTEGER_COLUMNS: Final = frozenset({"major", "minor"})
#: A document id (and a paging cursor): 1 to 64 letters, digits or ``._:-``.
ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NOT_MIGRATED: Final = "the mall tables are not migrated: call MallCopy.migrate() first"

#: One stored row: (id, canonical JSON, digest, *filtered columns).
DocumentRow = tuple[Any, ...]


def _table_sql(name: str) -> str:
    columns = "".join(
        f", {c} {'INTEGER' if c in INTEGER_COLUMNS else 'TEXT'}" for c in COLUMNS[name]
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
        *(f"CREATE INDEX mall_{n}_name ON mall_{n} (name, id);" for n in NAME_INDEXED),
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
    columns = ("id", "doc", "digest", *COLUMNS[name])
    return (
        f"INSERT INTO mall_{name} ({', '.join(columns)})"  # noqa: S608 - fixed names
        f" VALUES ({', '.join('?' * len(columns))})"
    )


INSERT: Final = {name: _insert_sql(name) for name in COLLECTIONS}
SYNC_COLUMNS: Final = "s.entity_id, s.cursor, s.generation, s.instance"
VERSION_SQL: Final = f"SELECT {SYNC_COLUMNS} FROM mall_sync AS s WHERE s.singleton = 1"  # noqa: S608
DIGESTS_SQL: Final = "SELECT collection, count, total FROM mall_digests"


@functools.lru_cache(maxsize=256)
def update_sql(name: str, changed: tuple[int, ...]) -> str:
    """The UPDATE of a document that sets only the filtered columns at indexes ``changed``."""
    columns = "".join(f", {COLUMNS[name][i]} = ?" for i in changed)
    return f"UPDATE mall_{name} SET doc = ?, digest = ?{columns} WHERE id = ?"  # noqa: S608
