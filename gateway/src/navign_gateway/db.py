"""The gateway's one SQLite database: WAL, synchronous=FULL, per-component migrations.

Every component (mall copy, firmware cache, tasks, rollout, ...) owns its tables and declares
them as an ordered list of migrations under its own name; :meth:`Database.migrate` applies the
ones not yet applied, each in its own transaction with its version bump, so a power cut during
an upgrade leaves the database at the previous version and the next start finishes the job.

Writes go through :meth:`Database.transaction` (``BEGIN IMMEDIATE``, one writer at a time in
this process); reads may use :attr:`Database.reader`, a second connection that sees the last
committed state without waiting for a writer (WAL). A small key/value table (:meth:`get_state`,
:meth:`set_state`) holds the daemon's scalars (token, event cursor, ...), and
:meth:`set_state_in` writes one inside a caller's transaction so that it commits with the
rows it describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiosqlite

#: A migration: SQL statements (run with executescript-like splitting) or a coroutine function.
Migration = str | Callable[[aiosqlite.Connection], Awaitable[None]]

BUSY_TIMEOUT_MS = 10_000

_CORE_MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
]


class DatabaseError(Exception):
    """The database cannot be opened or migrated (one readable line)."""


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements (sqlite3.complete_statement decides
    whether a ``;`` ends one or sits inside a string or a trigger body)."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.rstrip(";").strip():
        raise DatabaseError(f"incomplete SQL statement in migration: {current.strip()[:80]!r}")
    return statements


async def _configure(conn: aiosqlite.Connection, *, read_only: bool) -> None:
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    if read_only:
        await conn.execute("PRAGMA query_only = ON")
    else:
        await conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before it returns, so an acknowledged sync survives a power
        # cut (the gateway's SD card is the only copy it has while offline).
        await conn.execute("PRAGMA synchronous = FULL")
        # Checkpoint the WAL every ~32 MB rather than every 4 MB: a page of 500 changes spent
        # most of its time checkpointing (bench/gateway_localdb.py: 21k -> 24k changes/s). The
        # WAL stays bounded; the page cache keeps SQLite's default (2 MB): the Pi's RAM is small.
        await conn.execute("PRAGMA wal_autocheckpoint = 8000")


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT).
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await _configure(self._writer, read_only=False)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await _configure(self._reader, read_only=True)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise DatabaseError(f"{self.path}: cannot open the database: {exc}") from None
        await self.migrate("core", _CORE_MIGRATIONS)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise DatabaseError("the database is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        """A read-only connection: the last committed state, never blocked by the writer."""
        if self._reader is None:
            raise DatabaseError("the database is not open")
        return self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back when the block raises (or is
        cancelled). One writer at a time in this process."""
        async with self._lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            await conn.execute("COMMIT")

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply ``component``'s migrations not yet applied; returns its version."""
        async with self.transaction() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID"
            )
            async with conn.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ) as cursor:
                row = await cursor.fetchone()
        version = int(row[0]) if row is not None else 0
        if version > len(migrations):
            raise DatabaseError(
                f"{self.path}: the {component!r} tables are at version {version}, newer than "
                f"this gateway ({len(migrations)}); install a newer gateway"
            )
        for number, migration in enumerate(migrations[version:], start=version + 1):
            async with self.transaction() as conn:
                if isinstance(migration, str):
                    for statement in _statements(migration):
                        await conn.execute(statement)
                else:
                    await migration(conn)
                await conn.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                    " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, number),
                )
        return len(migrations)

    async def get_state(self, key: str) -> str | None:
        async with self.reader.execute("SELECT value FROM state WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_state(self, key: str, value: str | None) -> None:
        async with self.transaction() as conn:
            await self.set_state_in(conn, key, value)

    @staticmethod
    async def set_state_in(conn: aiosqlite.Connection, key: str, value: str | None) -> None:
        """Within a caller's transaction; None deletes the key."""
        if value is None:
            await conn.execute("DELETE FROM state WHERE key = ?", (key,))
        else:
            await conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
