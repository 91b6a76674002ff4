"""The gateway database: per-component migrations, transactions, state, read-only reader."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from navign_gateway.db import Database, DatabaseError

WIDGETS = [
    "CREATE TABLE widgets (id TEXT PRIMARY KEY, size INTEGER NOT NULL);",
    "ALTER TABLE widgets ADD COLUMN colour TEXT; CREATE INDEX widgets_size ON widgets (size);",
]


async def test_migrations_apply_once_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    async with Database(path) as db:
        assert await db.migrate("widgets", WIDGETS[:1]) == 1
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO widgets (id, size) VALUES ('a', 1)")
    async with Database(path) as db:
        assert await db.migrate("widgets", WIDGETS) == 2  # only the second one runs
        async with db.reader.execute("SELECT id, size, colour FROM widgets") as cursor:
            assert [tuple(row) for row in await cursor.fetchall()] == [("a", 1, None)]
        async with db.reader.execute("PRAGMA journal_mode") as cursor:
            assert (await cursor.fetchone())[0] == "wal"  # type: ignore[index]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    async with Database(tmp_path / "gw.sqlite3") as db:
        await db.migrate("widgets", WIDGETS)
        with pytest.raises(DatabaseError, match="newer than this gateway"):
            await db.migrate("widgets", WIDGETS[:1])


async def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    async with Database(tmp_path / "gw.sqlite3") as db:
        broken = [WIDGETS[0], "INSERT INTO widgets (id, size) VALUES ('x', 1); SELECT nope();"]
        with pytest.raises(sqlite3.OperationalError):
            await db.migrate("widgets", broken)
        async with db.reader.execute("SELECT count(*) FROM widgets") as cursor:
            assert (await cursor.fetchone())[0] == 0  # type: ignore[index]
        assert await db.migrate("widgets", WIDGETS) == 2


async def test_transactions_roll_back_on_error_and_state_commits_with_rows(
    tmp_path: Path,
) -> None:
    async with Database(tmp_path / "gw.sqlite3") as db:
        await db.migrate("widgets", WIDGETS)

        async def crash_before_commit() -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO widgets (id, size) VALUES ('a', 1)")
                await db.set_state_in(conn, "cursor", "7")
                raise RuntimeError("crash before commit")

        with pytest.raises(RuntimeError):
            await crash_before_commit()
        assert await db.get_state("cursor") is None
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO widgets (id, size) VALUES ('a', 1)")
            await db.set_state_in(conn, "cursor", "7")
        assert await db.get_state("cursor") == "7"
        await db.set_state("cursor", None)
        assert await db.get_state("cursor") is None


async def test_the_reader_cannot_write(tmp_path: Path) -> None:
    async with Database(tmp_path / "gw.sqlite3") as db:
        with pytest.raises(sqlite3.OperationalError):
            await db.reader.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")


async def test_an_unopenable_path_is_one_readable_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseError, match="cannot open the database"):
        await Database(blocker / "gw.sqlite3").open()


async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises((DatabaseError, aiosqlite.DatabaseError)):
        await Database(path).open()
