"""Server credentials, heartbeats, commands and the audit log in SQLite.

Tables that grow with traffic are kept bounded where the protocol allows it: a heartbeat insert
drops the orchestrator's oldest beyond ``HEARTBEATS_KEPT`` and a command insert drops a few
expired commands. The audit log is append-only (database triggers refuse UPDATE and DELETE)
and is never pruned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from navign_server.storage.base import (
    AdminToken,
    AuditRecord,
    Command,
    ConflictError,
    Heartbeat,
    NotFoundError,
    SigningKey,
)
from navign_server.storage.sqlite_db import SqliteDatabase, fetch_one, run
from navign_server.storage.sqlite_orchestrators import PRUNE_BATCH, require_orchestrator
from navign_server.storage.sqlite_schema import (
    compact_json,
    from_us,
    from_us_or_none,
    load_json,
    to_us,
    to_us_or_none,
)

#: Heartbeats kept per orchestrator; older ones are dropped as new ones arrive.
HEARTBEATS_KEPT: Final = 1_000


class RecordTables(SqliteDatabase):
    # -- server credentials -----------------------------------------------------------------
    async def add_signing_key(self, key: SigningKey) -> None:
        async with self._write() as tx:
            if await fetch_one(tx.conn, "SELECT 1 FROM signing_keys WHERE kid = ?", (key.kid,)):
                raise ConflictError("signing_key", key.kid, "exists")
            await run(
                tx.conn,
                "INSERT INTO signing_keys (kid, private_pem, created_us, retired_us, expires_us)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    key.kid,
                    key.private_pem,
                    to_us(key.created_at),
                    to_us_or_none(key.retired_at),
                    to_us_or_none(key.expires_at),
                ),
            )

    async def list_signing_keys(self) -> list[SigningKey]:
        rows = await self._query(
            "SELECT kid, private_pem, created_us, retired_us, expires_us FROM signing_keys"
            " ORDER BY created_us, kid"
        )
        return [
            SigningKey(r[0], r[1], from_us(r[2]), from_us_or_none(r[3]), from_us_or_none(r[4]))
            for r in rows
        ]

    async def retire_signing_key(
        self, kid: str, retired_at: datetime, expires_at: datetime
    ) -> None:
        async with self._write() as tx:
            changed = await run(
                tx.conn,
                "UPDATE signing_keys SET retired_us = ?, expires_us = ? WHERE kid = ?",
                (to_us(retired_at), to_us(expires_at), kid),
            )
            if changed == 0:
                raise NotFoundError("signing_key", kid)

    async def create_admin_token(self, token: AdminToken) -> None:
        async with self._write() as tx:
            if await fetch_one(
                tx.conn, "SELECT 1 FROM admin_tokens WHERE token_hash = ?", (token.token_hash,)
            ):
                raise ConflictError("admin_token", token.name, "exists")
            await run(
                tx.conn,
                "INSERT INTO admin_tokens (token_hash, name, created_us, revoked_us)"
                " VALUES (?, ?, ?, ?)",
                (
                    token.token_hash,
                    token.name,
                    to_us(token.created_at),
                    to_us_or_none(token.revoked_at),
                ),
            )

    async def get_admin_token(self, token_hash: str) -> AdminToken | None:
        rows = await self._query(
            "SELECT token_hash, name, created_us, revoked_us FROM admin_tokens"
            " WHERE token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        row = rows[0]
        return AdminToken(row[0], row[1], from_us(row[2]), from_us_or_none(row[3]))

    # -- heartbeats and commands ------------------------------------------------------------
    async def record_heartbeat(self, heartbeat: Heartbeat) -> None:
        hb = heartbeat
        stamp = to_us(hb.received_at)
        async with self._write() as tx:
            await require_orchestrator(tx.conn, hb.entity_id, hb.orchestrator_id)
            await run(
                tx.conn,
                "INSERT INTO heartbeats (entity_id, orchestrator_id, received_us, body)"
                " VALUES (?, ?, ?, ?)",
                (hb.entity_id, hb.orchestrator_id, stamp, compact_json(hb.body)),
            )
            await run(
                tx.conn,
                "UPDATE orchestrators"
                " SET last_heartbeat_us = max(coalesce(last_heartbeat_us, ?), ?)"
                " WHERE entity_id = ? AND orchestrator_id = ?",
                (stamp, stamp, hb.entity_id, hb.orchestrator_id),
            )
            # Keep the newest HEARTBEATS_KEPT: usually deletes one row, found by index.
            await run(
                tx.conn,
                "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats"
                " WHERE entity_id = ? AND orchestrator_id = ?"
                " ORDER BY received_us DESC, id DESC LIMIT ? OFFSET ?)",
                (hb.entity_id, hb.orchestrator_id, PRUNE_BATCH, HEARTBEATS_KEPT),
            )

    async def list_heartbeats(
        self, entity_id: str, orchestrator_id: str, limit: int = 100
    ) -> list[Heartbeat]:
        rows = await self._query(
            "SELECT entity_id, orchestrator_id, received_us, body FROM heartbeats"
            " WHERE entity_id = ? AND orchestrator_id = ?"
            " ORDER BY received_us DESC, id DESC LIMIT ?",
            (entity_id, orchestrator_id, limit),
        )
        return [Heartbeat(r[0], r[1], from_us(r[2]), load_json(r[3])) for r in rows]

    async def enqueue_command(self, command: Command) -> None:
        cmd = command
        async with self._write() as tx:
            await require_orchestrator(tx.conn, cmd.entity_id, cmd.orchestrator_id)
            await run(
                tx.conn,
                "DELETE FROM commands WHERE rowid IN"
                " (SELECT rowid FROM commands WHERE expires_us <= ? LIMIT ?)",
                (to_us(cmd.created_at), PRUNE_BATCH),
            )
            exists = await fetch_one(
                tx.conn,
                "SELECT 1 FROM commands"
                " WHERE entity_id = ? AND orchestrator_id = ? AND command_id = ?",
                (cmd.entity_id, cmd.orchestrator_id, cmd.command_id),
            )
            if exists is not None:
                raise ConflictError("command", cmd.command_id, "exists")
            await run(
                tx.conn,
                "INSERT INTO commands (entity_id, orchestrator_id, command_id, type, params,"
                " created_us, expires_us, acked_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cmd.entity_id,
                    cmd.orchestrator_id,
                    cmd.command_id,
                    cmd.type,
                    compact_json(cmd.params),
                    to_us(cmd.created_at),
                    to_us(cmd.expires_at),
                    to_us_or_none(cmd.acked_at),
                ),
            )

    async def pending_commands(
        self, entity_id: str, orchestrator_id: str, now: datetime
    ) -> list[Command]:
        rows = await self._query(
            "SELECT entity_id, orchestrator_id, command_id, type, params, created_us,"
            " expires_us, acked_us FROM commands"
            " WHERE entity_id = ? AND orchestrator_id = ? AND acked_us IS NULL"
            " AND expires_us > ? ORDER BY created_us, command_id",
            (entity_id, orchestrator_id, to_us(now)),
        )
        return [
            Command(
                r[0],
                r[1],
                r[2],
                r[3],
                load_json(r[4]),
                from_us(r[5]),
                from_us(r[6]),
                from_us_or_none(r[7]),
            )
            for r in rows
        ]

    async def ack_commands(
        self, entity_id: str, orchestrator_id: str, command_ids: Sequence[str], now: datetime
    ) -> None:
        if not command_ids:
            return
        stamp = to_us(now)
        async with self._write() as tx:
            await tx.conn.executemany(
                "UPDATE commands SET acked_us = ? WHERE entity_id = ? AND orchestrator_id = ?"
                " AND command_id = ? AND acked_us IS NULL",
                [(stamp, entity_id, orchestrator_id, cid) for cid in command_ids],
            )

    # -- audit ------------------------------------------------------------------------------
    async def audit(self, record: AuditRecord) -> None:
        async with self._write() as tx:
            await run(
                tx.conn,
                "INSERT INTO audit (at_us, actor, action, outcome, entity_id, details)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    to_us(record.at),
                    record.actor,
                    record.action,
                    record.outcome,
                    record.entity_id,
                    compact_json(record.details),
                ),
            )

    async def list_audit(
        self, *, entity_id: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        select = "SELECT at_us, actor, action, outcome, entity_id, details FROM audit"
        if entity_id is None:
            rows = await self._query(select + " ORDER BY at_us DESC, id DESC LIMIT ?", (limit,))
        else:
            rows = await self._query(
                select + " WHERE entity_id = ? ORDER BY at_us DESC, id DESC LIMIT ?",
                (entity_id, limit),
            )
        return [AuditRecord(from_us(r[0]), r[1], r[2], r[3], r[4], load_json(r[5])) for r in rows]
