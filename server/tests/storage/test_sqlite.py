"""What only the SQLite backend promises: migrations, WAL, durability settings, crash safety,
the database-level append-only audit log, bounded tables and the watcher's bounded buffer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from navign_proto.checksums import MallChecksums
from navign_proto.mall import MallData
from navign_server.storage import sqlite as sqlite_module
from navign_server.storage import sqlite_records
from navign_server.storage.base import (
    AuditRecord,
    DocumentWrite,
    EnrollmentToken,
    Heartbeat,
    OrchestratorRegistration,
    RolloutStatusRecord,
    StoredEvent,
    WatchOverflowError,
)
from navign_server.storage.sqlite import SqliteStore
from navign_server.storage.sqlite_db import StoreClosedError
from navign_server.storage.sqlite_orchestrators import PRUNE_BATCH
from navign_server.storage.sqlite_schema import (
    MIGRATIONS,
    Migration,
    SchemaVersionError,
    applied_versions,
    migrate,
    to_us,
)

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
ENTITY = "mall-riverside"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def creates(mall: MallData) -> list[DocumentWrite]:
    return [
        DocumentWrite(name, "create", doc["id"], doc)
        for name, docs in mall.documents().items()
        for doc in docs
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "navign.db"


@pytest.fixture
async def sqlite_store(db_path: Path, mall: MallData) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db_path)
    await store.open()
    await store.create_entity(mall.entity.document(), T0)
    try:
        yield store
    finally:
        await store.close()


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Read the file with a connection of its own, as another process would."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


# -- schema -----------------------------------------------------------------------------------


async def test_migrations_are_recorded_once_and_data_survives_reopening(
    db_path: Path, mall: MallData
) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.create_entity(mall.entity.document(), T0)
    written = await store.write_documents(ENTITY, creates(mall), at(1))
    await store.close()
    rows = query(db_path, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(m.version, m.name) for m in MIGRATIONS]

    again = SqliteStore(db_path)
    await again.open()
    try:
        state = await again.entity_state(ENTITY)
        assert dict(state.checksums) == dict(written.checksums)
        assert state.head == len(creates(mall))
        assert await again.get_entity(ENTITY) == mall.entity.document()
    finally:
        await again.close()
    assert query(db_path, "SELECT count(*) FROM schema_migrations") == [(len(MIGRATIONS),)]


async def test_newer_schema_refuses_to_open(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    future = len(MIGRATIONS) + 1
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, 'future', 0)",
            (future,),
        )
    newer = SqliteStore(db_path)
    with pytest.raises(SchemaVersionError, match="newer navign-server") as info:
        await newer.open()
    assert (info.value.found, info.value.known) == (future, len(MIGRATIONS))
    await newer.close()  # closing a store that failed to open is harmless


async def test_migrate_applies_only_new_steps_and_rolls_back_a_failed_one(db_path: Path) -> None:
    async def add_column(conn: aiosqlite.Connection) -> None:
        await conn.execute("ALTER TABLE t ADD COLUMN b TEXT")

    v1 = Migration(1, "t", ("CREATE TABLE t (a INTEGER)",))
    v2 = Migration(2, "t.b", (add_column,))
    broken = Migration(3, "broken", ("CREATE TABLE u (a INTEGER)", "CREATE TABLE t (a)"))
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert await migrate(conn, T0, [v1]) == [1]
        assert await migrate(conn, T0, [v1]) == []
        assert await migrate(conn, T0, [v1, v2]) == [2]
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn, T0, [v1, v2, broken])
        assert await applied_versions(conn) == [1, 2]
        tables = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'u'")
        assert list(tables) == []  # the failed migration's first step was rolled back too
        with pytest.raises(ValueError, match="versions"):
            await migrate(conn, T0, [v2])


async def test_a_version_3_database_gets_the_rollout_reports_table(db_path: Path) -> None:
    """A database written before migration 4 keeps its reports and gains rollout reports."""
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert await migrate(conn, T0, MIGRATIONS[:3]) == [1, 2, 3]
        await conn.execute(
            "INSERT INTO entities (id, document, floor_checksum, created_us, updated_us)"
            " VALUES (?, ?, 'sha256:0', ?, ?)",
            (ENTITY, json.dumps({"id": ENTITY, "type": "mall"}), to_us(T0), to_us(T0)),
        )
        await conn.execute(
            "INSERT INTO beacon_status VALUES (?, 'b-1', 'gw-1', ?, ?, '{\"beacon_id\":\"b-1\"}')",
            (ENTITY, to_us(T0), to_us(T0)),
        )
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert [s.beacon_id for s in await store.list_beacon_statuses(ENTITY)] == ["b-1"]
        record = RolloutStatusRecord(
            ENTITY, "fwa-1", "fw-1", "gw-1", "running", at(1), at(2), {"state": "running"}
        )
        await store.record_rollout_status(record)
        assert await store.list_rollout_statuses(ENTITY) == [record]
    finally:
        await store.close()
    assert query(db_path, "SELECT version FROM schema_migrations ORDER BY version") == [
        (1,),
        (2,),
        (3,),
        (4,),
    ]


async def test_wal_and_durability_settings(sqlite_store: SqliteStore, db_path: Path) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    writer = sqlite_store._writer
    assert writer is not None
    assert list(await writer.execute_fetchall("PRAGMA synchronous")) == [(2,)]  # FULL
    assert list(await writer.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
    [(timeout,)] = await writer.execute_fetchall("PRAGMA busy_timeout")
    assert timeout > 0


async def test_naive_datetimes_are_refused(sqlite_store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        await sqlite_store.append_event(ENTITY, "ping", {}, datetime(2026, 1, 1))


# -- append-only audit ------------------------------------------------------------------------


async def test_audit_is_append_only_in_the_database(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    await sqlite_store.audit(AuditRecord(T0, "admin:ops", "entity.create", "ok", ENTITY))
    with sqlite3.connect(db_path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET outcome = 'forged'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    assert [r.outcome for r in await sqlite_store.list_audit()] == ["ok"]


# -- atomicity and crash safety ---------------------------------------------------------------


async def _assert_nothing_written(store: SqliteStore, db_path: Path) -> None:
    state = await store.entity_state(ENTITY)
    assert state.head == 0
    assert dict(state.checksums) == MallChecksums.empty().checksums()
    for table in ("documents", "changes", "events"):
        assert query(db_path, f"SELECT count(*) FROM {table}") == [(0,)]  # noqa: S608
    assert query(db_path, "SELECT DISTINCT count FROM digests") == [(0,)]


async def test_failure_between_statements_leaves_no_partial_rows(
    sqlite_store: SqliteStore, db_path: Path, mall: MallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*args: object) -> None:
        raise RuntimeError("injected failure after the documents were written")

    monkeypatch.setattr(sqlite_module, "insert_event", fail)
    with pytest.raises(RuntimeError, match="injected"):
        await sqlite_store.write_documents(ENTITY, creates(mall), at(1))
    await _assert_nothing_written(sqlite_store, db_path)
    monkeypatch.undo()
    result = await sqlite_store.write_documents(ENTITY, creates(mall), at(2))
    assert result.changes[0].seq == 1  # the failed write used no seq


async def test_cancelled_write_rolls_back(
    sqlite_store: SqliteStore, db_path: Path, mall: MallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached = asyncio.Event()

    async def hang(*args: object) -> None:
        reached.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(sqlite_module, "insert_event", hang)
    task = asyncio.create_task(sqlite_store.write_documents(ENTITY, creates(mall), at(1)))
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_nothing_written(sqlite_store, db_path)
    monkeypatch.undo()
    assert (await sqlite_store.append_event(ENTITY, "ping", {}, at(2))).seq == 1


_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from navign_server.storage import sqlite
    from navign_server.storage.base import DocumentWrite

    async def die(*args):
        os._exit(17)  # the process dies mid-transaction: no rollback, no close

    async def main():
        store = sqlite.SqliteStore(Path(sys.argv[1]))
        await store.open()
        writes = [DocumentWrite(*w) for w in json.loads(Path(sys.argv[2]).read_text())]
        sqlite.insert_event = die
        await store.write_documents("mall-riverside", writes, datetime.now(UTC))

    asyncio.run(main())
    """
)


def test_process_killed_mid_transaction_leaves_no_partial_rows(
    db_path: Path, tmp_path: Path, mall: MallData
) -> None:
    async def setup() -> None:
        store = SqliteStore(db_path)
        await store.open()
        await store.create_entity(mall.entity.document(), T0)
        await store.close()

    asyncio.run(setup())
    writes = tmp_path / "writes.json"
    writes.write_text(
        json.dumps([[w.collection, w.operation, w.id, w.data] for w in creates(mall)])
    )
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(db_path), str(writes)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 17, done.stderr.decode()

    async def check() -> None:
        store = SqliteStore(db_path)
        await store.open()
        try:
            await _assert_nothing_written(store, db_path)
        finally:
            await store.close()

    asyncio.run(check())
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_write_never_reads_a_whole_collection(
    sqlite_store: SqliteStore, mall: MallData
) -> None:
    await sqlite_store.write_documents(ENTITY, creates(mall), at(1))
    statements: list[str] = []
    assert sqlite_store._writer is not None
    await sqlite_store._writer.set_trace_callback(statements.append)
    doc = mall.documents()["beacons"][0]
    await sqlite_store.write_documents(
        ENTITY, [DocumentWrite("beacons", "put", doc["id"], {**doc, "name": "moved"})], at(2)
    )
    await sqlite_store._writer.set_trace_callback(None)  # type: ignore[arg-type]
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert reads
    for sql in reads:
        assert "FROM documents" not in sql or " IN (" in sql, sql


# -- bounded tables ---------------------------------------------------------------------------


async def test_expired_nonces_are_pruned_in_bounded_batches(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    old = 3 * PRUNE_BATCH
    for i in range(old):
        assert await sqlite_store.remember_nonce(f"old-{i}", at(i), at(-1))
    assert query(db_path, "SELECT count(*) FROM nonces") == [(old,)]
    assert await sqlite_store.remember_nonce("fresh", at(10_300), at(10_000))
    assert query(db_path, "SELECT count(*) FROM nonces") == [(old - PRUNE_BATCH + 1,)]


async def test_heartbeats_are_trimmed_per_orchestrator(
    sqlite_store: SqliteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_records, "HEARTBEATS_KEPT", 5)
    await sqlite_store.create_enrollment_token(
        EnrollmentToken("h", ENTITY, "gw-1", T0, at(600), "admin:test")
    )
    await sqlite_store.activate(
        OrchestratorRegistration(ENTITY, "gw-1", "KEY", "kid", "0.1.0", (), "http://gw", 60),
        at(1),
        token_hash="h",
    )
    for i in range(8):
        await sqlite_store.record_heartbeat(Heartbeat(ENTITY, "gw-1", at(60 * i), {"n": i}))
    beats = await sqlite_store.list_heartbeats(ENTITY, "gw-1")
    assert [b.body["n"] for b in beats] == [7, 6, 5, 4, 3]
    assert query(db_path, "SELECT count(*) FROM heartbeats") == [(5,)]


# -- the event feed ---------------------------------------------------------------------------


async def test_a_watcher_that_falls_behind_is_ended(db_path: Path, mall: MallData) -> None:
    store = SqliteStore(db_path, watch_queue_size=3)
    await store.open()
    try:
        await store.create_entity(mall.entity.document(), T0)
        slow = store.watch_events()
        fast = store.watch_events()
        received: list[StoredEvent] = []
        for i in range(5):
            await store.append_event(ENTITY, "ping", {"n": i}, at(i))
            received.append(await asyncio.wait_for(anext(fast), 5))
        assert [e.seq for e in received] == [1, 2, 3, 4, 5]
        with pytest.raises(WatchOverflowError):
            await asyncio.wait_for(anext(slow), 5)
        with pytest.raises(StopAsyncIteration):
            await anext(slow)  # ended for good
        assert len(store._fanout) == 1  # the slow one let go of its buffer and subscription
        await fast.aclose()
        assert len(store._fanout) == 0
    finally:
        await store.close()


async def test_close_ends_watchers(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    feed = store.watch_events()
    waiting = asyncio.create_task(anext(feed))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(StoreClosedError):
        store.watch_events()
    with pytest.raises(StoreClosedError):
        await store.list_entities()


async def test_stored_times_are_utc_microseconds(sqlite_store: SqliteStore, db_path: Path) -> None:
    local = datetime(2026, 11, 27, 18, 0, 0, 123456, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=8))
    )
    event = await sqlite_store.append_event(ENTITY, "ping", {}, local)
    assert event.created_at == local
    assert event.created_at.tzinfo is UTC
    assert query(db_path, "SELECT created_us FROM events") == [(to_us(local),)]


async def test_transactions_cancelled_by_a_cancel_scope_leave_the_connections_clean(
    sqlite_store: SqliteStore, db_path: Path, mall: MallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client disconnect cancels through an AnyIO cancel scope (sse-starlette, Starlette),
    which cancels every later ``await`` as well, the transaction's own ROLLBACK included.
    aiosqlite still ran that ROLLBACK, later, in its thread, after the lock was let go: the next
    transaction on the connection saw a stale ``in_transaction`` and failed with "cannot
    rollback - no transaction is active", an HTTP 500 (found by the API fuzzer, test_fuzz.py)."""
    import anyio

    real_digests = sqlite_module._digests
    scopes: list[anyio.CancelScope] = []

    async def cancelled_digests(conn: aiosqlite.Connection, entity_id: str) -> MallChecksums:
        scopes[-1].cancel()  # as a disconnect would, in the middle of the transaction
        return await real_digests(conn, entity_id)

    for attempt in range(40):  # the race was lost about one time in three
        monkeypatch.setattr(sqlite_module, "_digests", cancelled_digests)
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            if attempt % 2:
                await sqlite_store.entity_state(ENTITY)
            else:
                await sqlite_store.write_documents(ENTITY, creates(mall), at(1))
        assert scope.cancelled_caught
        monkeypatch.undo()
        # At once, on the same connection: the reader, then the writer.
        assert sum((await sqlite_store.entity_state(ENTITY)).counts.values()) == 0
        await sqlite_store.append_event(ENTITY, "ping", {}, at(2))
    await sqlite_store.write_documents(ENTITY, creates(mall), at(3))
    assert len(query(db_path, "SELECT id FROM documents")) == sum(
        len(docs) for docs in mall.documents().values()
    )
