"""The SQLite schema, its versioned migrations, and how values are stored in it.

Migrations are an ordered list. :func:`migrate` applies each one not yet recorded in
``schema_migrations`` in a transaction of its own (its statements and its record commit together)
and refuses a database that records a version this code does not know: a newer server wrote it,
and an older one must not guess what changed.

Stored values:

* times are ``INTEGER`` microseconds since the Unix epoch, UTC (columns named ``*_us``); they
  compare and sort as numbers, and come back as timezone-aware UTC datetimes;
* synced documents and entity documents are canonical JSON text (RFC 8785), so an identical
  write is detected by comparing bytes; other JSON (heartbeat bodies, audit details) is compact
  ``json.dumps`` output.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiosqlite

from navign_proto.canonical import canonical_json
from navign_server.storage.base import StorageError

#: STRICT tables (3.37), RETURNING (3.35), UPSERT (3.24).
MIN_SQLITE_VERSION: Final = (3, 37, 0)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class SchemaVersionError(StorageError):
    """The database's schema is not one this code can use (newer, or unknown history)."""

    def __init__(self, message: str, *, found: int, known: int) -> None:
        super().__init__(message)
        self.found = found
        self.known = known


# ---------------------------------------------------------------------------------------------
# Value codecs


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; refuses naive datetimes (their zone is a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: storage needs timezone-aware times")
    return (moment - _EPOCH) // _MICROSECOND


def to_us_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def from_us_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def canonical_text(value: Any) -> str:
    """Canonical JSON as text (documents, entities, event data)."""
    return canonical_json(value).decode("utf-8")


def compact_json(value: Any) -> str:
    """Compact JSON for values nothing compares byte for byte."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def load_json(text: str) -> Any:
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# Migrations

Step = str | Callable[[aiosqlite.Connection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    steps: tuple[Step, ...]


_COLLECTION_CHECK = "collection IN ('areas', 'beacons', 'merchants', 'connections')"

_V1_CORE: Final[tuple[Step, ...]] = (
    """CREATE TABLE entities (
        id TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        head INTEGER NOT NULL DEFAULT 0 CHECK (head >= 0),
        floor INTEGER NOT NULL DEFAULT 0 CHECK (floor >= 0 AND floor <= head),
        floor_checksum TEXT NOT NULL,
        floor_changed_us INTEGER,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL
    ) STRICT""",
    f"""CREATE TABLE digests (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        collection TEXT NOT NULL CHECK ({_COLLECTION_CHECK}),
        count INTEGER NOT NULL CHECK (count >= 0),
        total_hex TEXT NOT NULL CHECK (length(total_hex) = 64),
        PRIMARY KEY (entity_id, collection)
    ) STRICT, WITHOUT ROWID""",
    f"""CREATE TABLE documents (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        collection TEXT NOT NULL CHECK ({_COLLECTION_CHECK}),
        id TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (entity_id, collection, id)
    ) STRICT""",
    f"""CREATE TABLE changes (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        seq INTEGER NOT NULL CHECK (seq > 0),
        collection TEXT NOT NULL CHECK ({_COLLECTION_CHECK}),
        operation TEXT NOT NULL CHECK (operation IN ('create', 'update', 'delete')),
        doc_id TEXT NOT NULL,
        data TEXT CHECK ((operation = 'delete') = (data IS NULL)),
        updated_us INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        PRIMARY KEY (entity_id, seq)
    ) STRICT""",
    "CREATE INDEX changes_by_time ON changes (entity_id, updated_us)",
    """CREATE TABLE events (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        seq INTEGER NOT NULL CHECK (seq > 0),
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        PRIMARY KEY (entity_id, seq)
    ) STRICT""",
    "CREATE INDEX events_by_time ON events (entity_id, created_us)",
)

_V1_CREDENTIALS: Final[tuple[Step, ...]] = (
    """CREATE TABLE orchestrators (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        orchestrator_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'disabled')),
        public_key_pem TEXT,
        key_id TEXT,
        key_pinned INTEGER NOT NULL DEFAULT 0
            CHECK (key_pinned IN (0, 1) AND (key_pinned = 0 OR public_key_pem IS NOT NULL)),
        version TEXT NOT NULL,
        capabilities TEXT NOT NULL,
        local_address TEXT NOT NULL,
        heartbeat_interval INTEGER NOT NULL,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        tokens_valid_after_us INTEGER,
        last_heartbeat_us INTEGER,
        PRIMARY KEY (entity_id, orchestrator_id),
        CHECK (status != 'active' OR key_pinned = 1)
    ) STRICT""",
    """CREATE TABLE enrollment_tokens (
        token_hash TEXT PRIMARY KEY,
        entity_id TEXT NOT NULL REFERENCES entities (id),
        orchestrator_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        expires_us INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        used_us INTEGER
    ) STRICT""",
    "CREATE INDEX enrollment_tokens_by_entity ON enrollment_tokens (entity_id, created_us)",
    """CREATE TABLE preregistered_keys (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        orchestrator_id TEXT NOT NULL,
        public_key_pem TEXT NOT NULL,
        key_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (entity_id, orchestrator_id)
    ) STRICT""",
    """CREATE TABLE nonces (
        nonce TEXT PRIMARY KEY,
        expires_us INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX nonces_by_expiry ON nonces (expires_us)",
    """CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        private_pem TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        retired_us INTEGER,
        expires_us INTEGER
    ) STRICT""",
    """CREATE TABLE admin_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        revoked_us INTEGER
    ) STRICT""",
    """CREATE TABLE heartbeats (
        id INTEGER PRIMARY KEY,
        entity_id TEXT NOT NULL,
        orchestrator_id TEXT NOT NULL,
        received_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        FOREIGN KEY (entity_id, orchestrator_id)
            REFERENCES orchestrators (entity_id, orchestrator_id)
    ) STRICT""",
    "CREATE INDEX heartbeats_by_orchestrator"
    " ON heartbeats (entity_id, orchestrator_id, received_us, id)",
    """CREATE TABLE commands (
        entity_id TEXT NOT NULL,
        orchestrator_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        type TEXT NOT NULL,
        params TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        expires_us INTEGER NOT NULL,
        acked_us INTEGER,
        PRIMARY KEY (entity_id, orchestrator_id, command_id),
        FOREIGN KEY (entity_id, orchestrator_id)
            REFERENCES orchestrators (entity_id, orchestrator_id)
    ) STRICT""",
    "CREATE INDEX commands_by_expiry ON commands (expires_us)",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_us INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        entity_id TEXT,
        details TEXT NOT NULL
    ) STRICT""",
    "CREATE INDEX audit_by_time ON audit (at_us, id)",
    "CREATE INDEX audit_by_entity ON audit (entity_id, at_us, id)",
    # The audit log is append-only in the database itself, not only by convention.
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
)

_V2_RELEASES: Final[tuple[Step, ...]] = (
    """CREATE TABLE releases (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('app', 'image')),
        secure_version INTEGER NOT NULL CHECK (secure_version >= 0),
        min_previous_version TEXT,
        manifest_sha256 TEXT NOT NULL CHECK (length(manifest_sha256) = 64),
        envelope BLOB NOT NULL,
        artifact_size INTEGER NOT NULL CHECK (artifact_size >= 0),
        device_type TEXT NOT NULL,
        channel TEXT NOT NULL CHECK (channel IN ('stable', 'beta', 'canary')),
        changelog TEXT NOT NULL,
        compatible_hardware TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending_upload', 'available', 'withdrawn')),
        artifact_sha256 TEXT CHECK (artifact_sha256 IS NULL OR length(artifact_sha256) = 64),
        created_us INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        uploaded_us INTEGER,
        withdrawn_us INTEGER,
        UNIQUE (name, version, target),
        CHECK (status != 'available' OR artifact_sha256 IS NOT NULL)
    ) STRICT""",
    "CREATE INDEX releases_by_query ON releases (target, device_type, channel, status)",
    """CREATE TABLE release_assignments (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        assignment_id TEXT NOT NULL,
        release_id TEXT NOT NULL REFERENCES releases (id),
        policy TEXT NOT NULL,
        priority TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq > 0),
        created_us INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (entity_id, assignment_id)
    ) STRICT""",
    "CREATE INDEX release_assignments_by_seq ON release_assignments (entity_id, seq)",
)

_V3_REPORTS: Final[tuple[Step, ...]] = (
    """CREATE TABLE beacon_status (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        beacon_id TEXT NOT NULL,
        orchestrator_id TEXT NOT NULL,
        last_seen_us INTEGER NOT NULL,
        received_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (entity_id, beacon_id)
    ) STRICT""",
    """CREATE TABLE firmware_status (
        id INTEGER PRIMARY KEY,
        entity_id TEXT NOT NULL REFERENCES entities (id),
        firmware_id TEXT NOT NULL,
        beacon_id TEXT,
        orchestrator_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at_us INTEGER NOT NULL,
        received_us INTEGER NOT NULL,
        body TEXT NOT NULL
    ) STRICT""",
    "CREATE INDEX firmware_status_by_release ON firmware_status (entity_id, firmware_id, at_us)",
    """CREATE TABLE task_status (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        task_id TEXT NOT NULL,
        orchestrator_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at_us INTEGER NOT NULL,
        received_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (entity_id, task_id)
    ) STRICT""",
    "CREATE INDEX task_status_by_time ON task_status (entity_id, received_us)",
)

_V4_ROLLOUT_REPORTS: Final[tuple[Step, ...]] = (
    """CREATE TABLE rollout_status (
        entity_id TEXT NOT NULL REFERENCES entities (id),
        rollout_id TEXT NOT NULL,
        firmware_id TEXT NOT NULL,
        orchestrator_id TEXT NOT NULL,
        state TEXT NOT NULL,
        at_us INTEGER NOT NULL,
        received_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (entity_id, rollout_id)
    ) STRICT""",
    "CREATE INDEX rollout_status_by_time ON rollout_status (entity_id, at_us)",
)

#: Every migration this code knows, in order. Append; never edit one that has shipped.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "initial schema", _V1_CORE + _V1_CREDENTIALS),
    Migration(2, "firmware releases and assignments", _V2_RELEASES),
    Migration(3, "reports from gateways", _V3_REPORTS),
    Migration(4, "rollout reports from gateways", _V4_ROLLOUT_REPORTS),
)

_BOOTSTRAP = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us INTEGER NOT NULL
) STRICT"""


def _check_order(migrations: Sequence[Migration]) -> None:
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise ValueError(f"migration versions must be 1, 2, 3, ...; got {migration.version}")


async def applied_versions(conn: aiosqlite.Connection) -> list[int]:
    rows = await conn.execute_fetchall("SELECT version FROM schema_migrations ORDER BY version")
    return [int(row[0]) for row in rows]


async def migrate(
    conn: aiosqlite.Connection,
    now: datetime,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Bring the schema up to date; returns the versions applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each migration runs in its
    own ``BEGIN IMMEDIATE`` transaction, so a failed step leaves the previous version intact.
    """
    _check_order(migrations)
    await conn.execute(_BOOTSTRAP)
    applied: list[int] = []
    for migration in migrations:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Read inside the write transaction: two processes opening one file at once
            # must not both apply a migration.
            done = await applied_versions(conn)
            _refuse_unknown(done, migrations)
            if migration.version in done:
                await conn.execute("COMMIT")
                continue
            for step in migration.steps:
                if isinstance(step, str):
                    await conn.execute(step)
                else:
                    await step(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
                (migration.version, migration.name, to_us(now)),
            )
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    if not migrations:
        _refuse_unknown(await applied_versions(conn), migrations)
    return applied


def _refuse_unknown(done: Sequence[int], migrations: Sequence[Migration]) -> None:
    known = len(migrations)
    newest = max(done, default=0)
    if newest > known:
        raise SchemaVersionError(
            f"the database has schema version {newest} but this server knows versions up to "
            f"{known}: it was written by a newer navign-server; upgrade this one (or restore a "
            f"backup) instead of opening it",
            found=newest,
            known=known,
        )
    if list(done) != list(range(1, len(done) + 1)):
        raise SchemaVersionError(
            f"the database's schema_migrations table is inconsistent ({list(done)}); "
            "refusing to guess its schema",
            found=newest,
            known=known,
        )
