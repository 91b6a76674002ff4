"""Gateways and their enrollment in SQLite: orchestrators, enrollment tokens, pre-registered
keys and request nonces.

Every method is one transaction (``_write``) or one read; registration decisions are taken
inside the write transaction, so two concurrent registrations cannot both consume one token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import aiosqlite

from navign_server.storage.base import (
    ConflictError,
    EnrollmentToken,
    NotFoundError,
    Orchestrator,
    OrchestratorRegistration,
    OrchestratorStatus,
    PreregisteredKey,
)
from navign_server.storage.sqlite_db import SqliteDatabase, fetch_one, run
from navign_server.storage.sqlite_schema import (
    compact_json,
    from_us,
    from_us_or_none,
    load_json,
    to_us,
    to_us_or_none,
)

#: Expired rows (nonces, commands) deleted per insert: bounded work that outpaces growth.
PRUNE_BATCH: Final = 64

_ORCHESTRATOR_COLUMNS = (
    "entity_id, orchestrator_id, status, public_key_pem, key_id, version, capabilities,"
    " local_address, heartbeat_interval, created_us, updated_us, tokens_valid_after_us,"
    " last_heartbeat_us, key_pinned"
)
_ENROLLMENT_COLUMNS = (
    "token_hash, entity_id, orchestrator_id, created_us, expires_us, created_by, used_us"
)


def _key(entity_id: str, orchestrator_id: str) -> str:
    return f"{entity_id}/{orchestrator_id}"


def _same_key(a: str | None, b: str) -> bool:
    """PEM texts equal up to line endings and surrounding whitespace."""
    if a is None:
        return False
    return a.strip().replace("\r\n", "\n") == b.strip().replace("\r\n", "\n")


def _orchestrator(row: Any) -> Orchestrator:
    return Orchestrator(
        entity_id=row[0],
        orchestrator_id=row[1],
        status=OrchestratorStatus(row[2]),
        public_key_pem=row[3],
        key_id=row[4],
        version=row[5],
        capabilities=tuple(load_json(row[6])),
        local_address=row[7],
        heartbeat_interval=row[8],
        created_at=from_us(row[9]),
        updated_at=from_us(row[10]),
        tokens_valid_after=from_us_or_none(row[11]),
        last_heartbeat_at=from_us_or_none(row[12]),
    )


def _token(row: Any) -> EnrollmentToken:
    return EnrollmentToken(
        token_hash=row[0],
        entity_id=row[1],
        orchestrator_id=row[2],
        created_at=from_us(row[3]),
        expires_at=from_us(row[4]),
        created_by=row[5],
        used_at=from_us_or_none(row[6]),
    )


async def _require_entity(conn: aiosqlite.Connection, entity_id: str) -> None:
    if await fetch_one(conn, "SELECT 1 FROM entities WHERE id = ?", (entity_id,)) is None:
        raise NotFoundError("entity", entity_id)


async def _orchestrator_row(
    conn: aiosqlite.Connection, entity_id: str, orchestrator_id: str
) -> Any | None:
    return await fetch_one(
        conn,
        f"SELECT {_ORCHESTRATOR_COLUMNS} FROM orchestrators"  # noqa: S608 - constant columns
        " WHERE entity_id = ? AND orchestrator_id = ?",
        (entity_id, orchestrator_id),
    )


async def require_orchestrator(
    conn: aiosqlite.Connection, entity_id: str, orchestrator_id: str
) -> Orchestrator:
    row = await _orchestrator_row(conn, entity_id, orchestrator_id)
    if row is None:
        raise NotFoundError("orchestrator", _key(entity_id, orchestrator_id))
    return _orchestrator(row)


async def _upsert(
    conn: aiosqlite.Connection,
    reg: OrchestratorRegistration,
    now: datetime,
    *,
    status: OrchestratorStatus,
    pinned: bool,
) -> Orchestrator:
    """Insert or replace the registration's record; keeps created_at, tokens_valid_after and
    last_heartbeat_at of an existing one."""
    stamp = to_us(now)
    await run(
        conn,
        "INSERT INTO orchestrators (entity_id, orchestrator_id, status, public_key_pem, key_id,"
        " key_pinned, version, capabilities, local_address, heartbeat_interval, created_us,"
        " updated_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (entity_id, orchestrator_id) DO UPDATE SET status = excluded.status,"
        " public_key_pem = excluded.public_key_pem, key_id = excluded.key_id,"
        " key_pinned = excluded.key_pinned, version = excluded.version,"
        " capabilities = excluded.capabilities, local_address = excluded.local_address,"
        " heartbeat_interval = excluded.heartbeat_interval, updated_us = excluded.updated_us",
        (
            reg.entity_id,
            reg.orchestrator_id,
            status.value,
            reg.public_key_pem,
            reg.key_id,
            int(pinned),
            reg.version,
            compact_json(list(reg.capabilities)),
            reg.local_address,
            reg.heartbeat_interval,
            stamp,
            stamp,
        ),
    )
    return await require_orchestrator(conn, reg.entity_id, reg.orchestrator_id)


async def _consume_token(
    conn: aiosqlite.Connection, reg: OrchestratorRegistration, token_hash: str, now: datetime
) -> None:
    key = _key(reg.entity_id, reg.orchestrator_id)
    row = await fetch_one(
        conn,
        f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE token_hash = ?",  # noqa: S608
        (token_hash,),
    )
    if row is None:
        raise ConflictError("enrollment_token", key, "unknown")
    token = _token(row)
    if (token.entity_id, token.orchestrator_id) != (reg.entity_id, reg.orchestrator_id):
        raise ConflictError("enrollment_token", key, "wrong_binding")
    if token.used_at is not None:
        raise ConflictError("enrollment_token", key, "used")
    if token.expires_at <= now:
        raise ConflictError("enrollment_token", key, "expired")
    used = await run(
        conn,
        "UPDATE enrollment_tokens SET used_us = ? WHERE token_hash = ? AND used_us IS NULL",
        (to_us(now), token_hash),
    )
    if used != 1:  # unreachable under BEGIN IMMEDIATE; kept as a guard
        raise ConflictError("enrollment_token", key, "used")


class OrchestratorTables(SqliteDatabase):
    # -- orchestrators ----------------------------------------------------------------------
    async def get_orchestrator(self, entity_id: str, orchestrator_id: str) -> Orchestrator:
        async with self._read() as conn:
            return await require_orchestrator(conn, entity_id, orchestrator_id)

    async def list_orchestrators(self, entity_id: str | None = None) -> list[Orchestrator]:
        select = f"SELECT {_ORCHESTRATOR_COLUMNS} FROM orchestrators"  # noqa: S608
        if entity_id is None:
            rows = await self._query(select + " ORDER BY entity_id, orchestrator_id")
        else:
            rows = await self._query(
                select + " WHERE entity_id = ? ORDER BY orchestrator_id", (entity_id,)
            )
        return [_orchestrator(row) for row in rows]

    async def save_pending(
        self, registration: OrchestratorRegistration, now: datetime
    ) -> Orchestrator:
        reg = registration
        async with self._write() as tx:
            await _require_entity(tx.conn, reg.entity_id)
            row = await _orchestrator_row(tx.conn, reg.entity_id, reg.orchestrator_id)
            if row is not None:
                existing = _orchestrator(row)
                if existing.status is not OrchestratorStatus.PENDING:
                    raise ConflictError(
                        "orchestrator",
                        _key(reg.entity_id, reg.orchestrator_id),
                        existing.status.value,
                    )
                if not _same_key(existing.public_key_pem, reg.public_key_pem):
                    raise ConflictError(
                        "orchestrator", _key(reg.entity_id, reg.orchestrator_id), "key_mismatch"
                    )
            return await _upsert(tx.conn, reg, now, status=OrchestratorStatus.PENDING, pinned=False)

    async def activate(
        self, registration: OrchestratorRegistration, now: datetime, *, token_hash: str | None
    ) -> Orchestrator:
        reg = registration
        key = _key(reg.entity_id, reg.orchestrator_id)
        async with self._write() as tx:
            conn = tx.conn
            await _require_entity(conn, reg.entity_id)
            row = await _orchestrator_row(conn, reg.entity_id, reg.orchestrator_id)
            pinned_key: str | None = row[3] if row is not None and row[13] else None
            if row is not None and row[2] == OrchestratorStatus.DISABLED.value:
                raise ConflictError("orchestrator", key, "disabled")
            if pinned_key is not None:
                if not _same_key(pinned_key, reg.public_key_pem):
                    raise ConflictError("orchestrator", key, "key_mismatch")
                # Re-registration with the pinned key: any token is ignored, not consumed.
            elif token_hash is not None:
                await _consume_token(conn, reg, token_hash, now)
            else:
                prereg = await fetch_one(
                    conn,
                    "SELECT public_key_pem FROM preregistered_keys"
                    " WHERE entity_id = ? AND orchestrator_id = ?",
                    (reg.entity_id, reg.orchestrator_id),
                )
                if prereg is None:
                    raise ConflictError("orchestrator", key, "not_enrolled")
                if not _same_key(prereg[0], reg.public_key_pem):
                    raise ConflictError("orchestrator", key, "key_mismatch")
            return await _upsert(conn, reg, now, status=OrchestratorStatus.ACTIVE, pinned=True)

    async def approve(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async with self._write() as tx:
            current = await require_orchestrator(tx.conn, entity_id, orchestrator_id)
            if current.status is OrchestratorStatus.DISABLED:
                raise ConflictError("orchestrator", _key(entity_id, orchestrator_id), "disabled")
            if current.status is OrchestratorStatus.ACTIVE:
                return current
            await run(
                tx.conn,
                "UPDATE orchestrators SET status = 'active', key_pinned = 1, updated_us = ?"
                " WHERE entity_id = ? AND orchestrator_id = ?",
                (to_us(now), entity_id, orchestrator_id),
            )
            return await require_orchestrator(tx.conn, entity_id, orchestrator_id)

    async def disable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async with self._write() as tx:
            await require_orchestrator(tx.conn, entity_id, orchestrator_id)
            stamp = to_us(now)
            await run(
                tx.conn,
                "UPDATE orchestrators SET status = 'disabled', tokens_valid_after_us = ?,"
                " updated_us = ? WHERE entity_id = ? AND orchestrator_id = ?",
                (stamp, stamp, entity_id, orchestrator_id),
            )
            return await require_orchestrator(tx.conn, entity_id, orchestrator_id)

    async def enable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async with self._write() as tx:
            current = await require_orchestrator(tx.conn, entity_id, orchestrator_id)
            if current.status is not OrchestratorStatus.DISABLED:
                return current
            await run(
                tx.conn,
                "UPDATE orchestrators SET"
                " status = CASE key_pinned WHEN 1 THEN 'active' ELSE 'pending' END,"
                " updated_us = ? WHERE entity_id = ? AND orchestrator_id = ?",
                (to_us(now), entity_id, orchestrator_id),
            )
            return await require_orchestrator(tx.conn, entity_id, orchestrator_id)

    # -- enrollment -------------------------------------------------------------------------
    async def create_enrollment_token(self, token: EnrollmentToken) -> None:
        async with self._write() as tx:
            await _require_entity(tx.conn, token.entity_id)
            exists = await fetch_one(
                tx.conn,
                "SELECT 1 FROM enrollment_tokens WHERE token_hash = ?",
                (token.token_hash,),
            )
            if exists is not None:
                raise ConflictError("enrollment_token", token.orchestrator_id, "exists")
            await run(
                tx.conn,
                f"INSERT INTO enrollment_tokens ({_ENROLLMENT_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token.token_hash,
                    token.entity_id,
                    token.orchestrator_id,
                    to_us(token.created_at),
                    to_us(token.expires_at),
                    token.created_by,
                    to_us_or_none(token.used_at),
                ),
            )

    async def list_enrollment_tokens(self, entity_id: str | None = None) -> list[EnrollmentToken]:
        select = f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollment_tokens"  # noqa: S608
        if entity_id is None:
            rows = await self._query(select + " ORDER BY created_us, token_hash")
        else:
            rows = await self._query(
                select + " WHERE entity_id = ? ORDER BY created_us, token_hash", (entity_id,)
            )
        return [_token(row) for row in rows]

    async def preregister_key(self, key: PreregisteredKey) -> None:
        async with self._write() as tx:
            await _require_entity(tx.conn, key.entity_id)
            row = await _orchestrator_row(tx.conn, key.entity_id, key.orchestrator_id)
            if row is not None and bool(row[13]):
                raise ConflictError(
                    "orchestrator", _key(key.entity_id, key.orchestrator_id), "pinned"
                )
            await run(
                tx.conn,
                "INSERT OR REPLACE INTO preregistered_keys (entity_id, orchestrator_id,"
                " public_key_pem, key_id, created_us, created_by) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.entity_id,
                    key.orchestrator_id,
                    key.public_key_pem,
                    key.key_id,
                    to_us(key.created_at),
                    key.created_by,
                ),
            )

    async def get_preregistered_key(
        self, entity_id: str, orchestrator_id: str
    ) -> PreregisteredKey | None:
        rows = await self._query(
            "SELECT entity_id, orchestrator_id, public_key_pem, key_id, created_us, created_by"
            " FROM preregistered_keys WHERE entity_id = ? AND orchestrator_id = ?",
            (entity_id, orchestrator_id),
        )
        if not rows:
            return None
        row = rows[0]
        return PreregisteredKey(row[0], row[1], row[2], row[3], from_us(row[4]), row[5])

    async def remember_nonce(self, nonce: str, expires_at: datetime, now: datetime) -> bool:
        stamp = to_us(now)
        async with self._write() as tx:
            # Bounded pruning on every insert: at most PRUNE_BATCH expired rows, found by index.
            await run(
                tx.conn,
                "DELETE FROM nonces WHERE nonce IN"
                " (SELECT nonce FROM nonces WHERE expires_us <= ? LIMIT ?)",
                (stamp, PRUNE_BATCH),
            )
            inserted = await run(
                tx.conn,
                "INSERT INTO nonces (nonce, expires_us) VALUES (?, ?)"
                " ON CONFLICT (nonce) DO UPDATE SET expires_us = excluded.expires_us"
                " WHERE nonces.expires_us <= ?",
                (nonce, to_us(expires_at), stamp),
            )
            return inserted == 1
