"""The SQLite database under :class:`~navign_server.storage.sqlite.SqliteStore`: connections,
transactions, and the in-process feed of committed events.

Two connections to one file in WAL mode:

* the **writer** runs every write in ``BEGIN IMMEDIATE`` ... ``COMMIT``, one at a time (an
  ``asyncio.Lock``), so a write never waits on SQLite's busy handler inside this process;
* the **reader** serves reads. A read never shares the writer's connection: on one connection a
  read issued while another coroutine's write transaction is open would see its uncommitted rows.
  With WAL, reads do not block the writer nor wait for it. Reads of several statements run in
  one read transaction, so they see one committed state (one ``seq``).
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Self

import aiosqlite
import anyio

from navign_server.storage.base import StorageError, StoredEvent, WatchOverflowError
from navign_server.storage.sqlite_schema import MIN_SQLITE_VERSION, migrate

#: Events one watcher may fall behind before its iterator ends with WatchOverflowError.
WATCH_QUEUE_SIZE: Final = 10_000
#: How long a statement waits for another process's lock (ms), e.g. the CLI's admin-token write.
BUSY_TIMEOUT_MS: Final = 5_000

Params = tuple[Any, ...]


class _End(enum.Enum):
    OVERFLOW = "overflow"
    CLOSED = "closed"


class EventWatch:
    """Events committed after this object was created (see ``Store.watch_events``).

    Subscribed at construction, not at the first ``__anext__``: a caller may subscribe, read
    history, then iterate without a gap. The buffer is bounded; a consumer that falls
    ``maxsize`` events behind loses the buffer and gets :class:`WatchOverflowError` (it resumes
    from its last seq with ``events_since``). ``aclose()`` unsubscribes; ``store.close()`` ends
    the iteration normally.
    """

    def __init__(self, fanout: EventFanout, maxsize: int) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[StoredEvent | _End] = asyncio.Queue(maxsize)
        self._ended = False  # the consumer has seen the end
        self._stopped = False  # no more events will be offered

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StoredEvent:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, StoredEvent):
            return item
        self._ended = True
        if item is _End.OVERFLOW:
            raise WatchOverflowError(self._queue.maxsize)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._end(_End.CLOSED)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _offer(self, event: StoredEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._end(_End.OVERFLOW)

    def _end(self, reason: _End) -> None:
        """Unsubscribe, drop the buffer (memory is freed now) and wake the consumer. The first
        reason wins: an overflow is reported even if ``aclose()`` follows before it is read."""
        if self._stopped:
            return
        self._stopped = True
        self._fanout.discard(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(reason)


class EventFanout:
    """Hands each committed event to every live :class:`EventWatch` of this process."""

    def __init__(self, maxsize: int = WATCH_QUEUE_SIZE) -> None:
        self._maxsize = maxsize
        self._watches: set[EventWatch] = set()

    def __len__(self) -> int:
        return len(self._watches)

    def watch(self) -> EventWatch:
        watch = EventWatch(self, self._maxsize)
        self._watches.add(watch)
        return watch

    def discard(self, watch: EventWatch) -> None:
        self._watches.discard(watch)

    def publish(self, events: Iterable[StoredEvent]) -> None:
        for event in events:
            for watch in list(self._watches):
                watch._offer(event)

    def close(self) -> None:
        for watch in list(self._watches):
            watch._end(_End.CLOSED)


@dataclass(slots=True)
class Transaction:
    """An open write transaction; ``events`` are published once it has committed."""

    conn: aiosqlite.Connection
    events: list[StoredEvent] = field(default_factory=list)


class StoreClosedError(StorageError):
    def __init__(self) -> None:
        super().__init__("the store is not open")


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> list[Any]:
    """Every row; the statement runs to completion (no read lock is left behind)."""
    return list(await conn.execute_fetchall(sql, params))


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> Any | None:
    rows = await fetch_all(conn, sql, params)
    return rows[0] if rows else None


async def run(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> int:
    """Run one statement; returns the number of rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


async def _connect(path: Path, *, reader: bool) -> aiosqlite.Connection:
    # isolation_level=None: no implicit BEGIN; transactions are explicit and ours.
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = await fetch_one(conn, "PRAGMA journal_mode = WAL")
        if mode is None or str(mode[0]).lower() != "wal":
            raise StorageError(f"{path}: cannot switch to WAL journal mode (got {mode})")
        # FULL, not NORMAL: in WAL mode NORMAL survives a process crash but a power cut may
        # lose the last commits. Their seqs may already have gone out as event ids and delta
        # cursors, and the server would then hand the same seq to different data: a gateway
        # could silently skip changes. FULL syncs the WAL at each commit, so a commit that
        # returned is on disk.
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _run_to_end(conn: aiosqlite.Connection, sql: str) -> asyncio.CancelledError | None:
    """Run ``sql`` to its end even if this task is cancelled meanwhile; returns the
    cancellation that arrived (for the caller to raise once the connection is in a known state).

    aiosqlite runs statements in its own thread, in order, and a cancelled ``await`` does not
    stop a statement: it still runs, later. A transaction that let go of its lock while its
    BEGIN, COMMIT or ROLLBACK was still queued handed the next holder a connection whose
    ``in_transaction`` was about to change under it ("cannot rollback - no transaction is
    active": a 500 on the next request), and could commit without publishing its events.
    Cancellation comes both from ``task.cancel()`` (once) and from AnyIO cancel scopes, as
    Starlette and sse-starlette use on a client disconnect (again at every ``await``: hence the
    shielded scope).
    """
    statement = asyncio.ensure_future(conn.execute(sql))
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await asyncio.shield(statement)
            except asyncio.CancelledError as exc:
                if statement.cancelled():
                    raise
                cancelled = exc
            else:
                break
    return cancelled


async def _statement(conn: aiosqlite.Connection, sql: str) -> None:
    """:func:`_run_to_end`, then raise the cancellation that arrived meanwhile, if any."""
    cancelled = await _run_to_end(conn, sql)
    if cancelled is not None:
        raise cancelled


class SqliteDatabase:
    """Connections, transactions and the event feed; the tables live in the subclasses."""

    def __init__(self, path: Path, *, watch_queue_size: int = WATCH_QUEUE_SIZE) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._fanout = EventFanout(watch_queue_size)

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; navign-server needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(self.path, reader=False)
        try:
            await migrate(writer, datetime.now(UTC))
            reader = await _connect(self.path, reader=True)
        except BaseException:
            await writer.close()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        self._fanout.close()
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        async with self._write_lock, self._read_lock:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Transaction]:
        """One ``BEGIN IMMEDIATE`` transaction; rolled back on any exception (cancellation
        included). Events recorded on it are published after the commit, under the lock, so
        watchers see them in seq order."""
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StoreClosedError
            if conn.in_transaction:  # defensive: every path below ends the transaction
                await _statement(conn, "ROLLBACK")
            tx = Transaction(conn)
            try:
                await _statement(conn, "BEGIN IMMEDIATE")
                yield tx
                cancelled = await _run_to_end(conn, "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await _statement(conn, "ROLLBACK")
                raise
            # Committed: its events go out even if the caller was cancelled during the COMMIT.
            self._fanout.publish(tx.events)
            if cancelled is not None:
                raise cancelled

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """One read transaction: every statement in it sees the same committed state."""
        async with self._read_lock:
            conn = self._reader
            if conn is None:
                raise StoreClosedError
            if conn.in_transaction:  # defensive: every path below ends the transaction
                await _statement(conn, "ROLLBACK")
            try:
                await _statement(conn, "BEGIN")
                yield conn
            finally:
                if conn.in_transaction:
                    await _statement(conn, "ROLLBACK")

    async def _query(self, sql: str, params: Params = ()) -> list[Any]:
        """A single-statement read."""
        async with self._read_lock:
            if self._reader is None:
                raise StoreClosedError
            return await fetch_all(self._reader, sql, params)

    def watch_events(self) -> EventWatch:
        """Subscribe to events committed from now on (StoreClosedError when not open)."""
        if self._writer is None:
            raise StoreClosedError
        return self._fanout.watch()
