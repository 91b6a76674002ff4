"""Server credentials, heartbeats, commands and the audit log in MongoDB.

Collections that grow with traffic are kept bounded as in the SQLite backend: a heartbeat insert
drops the orchestrator's oldest beyond ``HEARTBEATS_KEPT`` and a command insert drops a few
expired commands. The audit log is append-only: MongoDB has no triggers to enforce it, so it is
enforced by this code alone (nothing here updates or deletes an audit document; grant the
server's database user no more than insert and find on ``audit`` to have the database refuse it
too). It is never pruned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from navign_server.storage.base import (
    AdminToken,
    AuditRecord,
    Command,
    ConflictError,
    Heartbeat,
    NotFoundError,
    SigningKey,
)
from navign_server.storage.mongo_db import (
    ADMIN_TOKENS,
    AUDIT,
    COMMANDS,
    HEARTBEATS,
    ORCHESTRATORS,
    SIGNING_KEYS,
    Doc,
    fetch,
    stamp,
    time_of,
    time_or_none,
)
from navign_server.storage.mongo_orchestrators import OrchestratorCollections
from navign_server.storage.sqlite_schema import compact_json, load_json, to_us

#: Heartbeats kept per orchestrator; older ones are dropped as new ones arrive.
HEARTBEATS_KEPT: Final = 1_000
#: Expired or surplus documents deleted per insert: bounded work that outpaces growth.
PRUNE_BATCH: Final = 64

_NEWEST_FIRST: Final = [("received_us", DESCENDING), ("_id", DESCENDING)]


def _signing_key(doc: Doc) -> SigningKey:
    return SigningKey(
        doc["kid"],
        doc["private_pem"],
        time_of(doc, "created"),
        time_or_none(doc, "retired"),
        time_or_none(doc, "expires"),
    )


def _command(doc: Doc) -> Command:
    return Command(
        doc["entity_id"],
        doc["orchestrator_id"],
        doc["command_id"],
        doc["type"],
        load_json(doc["params"]),
        time_of(doc, "created"),
        time_of(doc, "expires"),
        time_or_none(doc, "acked"),
    )


def _audit_record(doc: Doc) -> AuditRecord:
    return AuditRecord(
        time_of(doc, "at"),
        doc["actor"],
        doc["action"],
        doc["outcome"],
        doc.get("entity_id"),
        load_json(doc["details"]),
    )


class RecordCollections(OrchestratorCollections):
    # -- server credentials -----------------------------------------------------------------
    async def add_signing_key(self, key: SigningKey) -> None:
        doc = {
            "kid": key.kid,
            "private_pem": key.private_pem,
            **stamp("created", key.created_at),
            **stamp("retired", key.retired_at),
            **stamp("expires", key.expires_at),
        }
        try:
            await self._col(SIGNING_KEYS).insert_one(doc)
        except DuplicateKeyError:
            raise ConflictError("signing_key", key.kid, "exists") from None

    async def list_signing_keys(self) -> list[SigningKey]:
        cursor = self._col(SIGNING_KEYS).find({})
        cursor = cursor.sort([("created_us", ASCENDING), ("kid", ASCENDING)])
        return [_signing_key(doc) for doc in await fetch(cursor)]

    async def retire_signing_key(
        self, kid: str, retired_at: datetime, expires_at: datetime
    ) -> None:
        values = {**stamp("retired", retired_at), **stamp("expires", expires_at)}
        result = await self._col(SIGNING_KEYS).update_one({"kid": kid}, {"$set": values})
        if result.matched_count == 0:
            raise NotFoundError("signing_key", kid)

    async def create_admin_token(self, token: AdminToken) -> None:
        doc = {
            "token_hash": token.token_hash,
            "name": token.name,
            **stamp("created", token.created_at),
            **stamp("revoked", token.revoked_at),
        }
        try:
            await self._col(ADMIN_TOKENS).insert_one(doc)
        except DuplicateKeyError:
            raise ConflictError("admin_token", token.name, "exists") from None

    async def get_admin_token(self, token_hash: str) -> AdminToken | None:
        doc = await self._col(ADMIN_TOKENS).find_one({"token_hash": token_hash})
        if doc is None:
            return None
        return AdminToken(
            doc["token_hash"], doc["name"], time_of(doc, "created"), time_or_none(doc, "revoked")
        )

    # -- heartbeats and commands ------------------------------------------------------------
    async def record_heartbeat(self, heartbeat: Heartbeat) -> None:
        hb = heartbeat
        received = stamp("received", hb.received_at)
        where = {"entity_id": hb.entity_id, "orchestrator_id": hb.orchestrator_id}

        async def run(session: AsyncClientSession) -> None:
            await self._require_orchestrator(session, hb.entity_id, hb.orchestrator_id)
            heartbeats = self._col(HEARTBEATS)
            await heartbeats.insert_one(
                {**where, **received, "body": compact_json(hb.body)}, session=session
            )
            await self._col(ORCHESTRATORS).update_one(
                where,
                {
                    "$max": {
                        "last_heartbeat_us": received["received_us"],
                        "last_heartbeat": received["received"],
                    }
                },
                session=session,
            )
            # Keep the newest HEARTBEATS_KEPT: usually deletes one document, found by index.
            surplus = heartbeats.find(where, {"_id": 1}, session=session).sort(_NEWEST_FIRST)
            ids = [doc["_id"] for doc in await fetch(surplus.skip(HEARTBEATS_KEPT), PRUNE_BATCH)]
            if ids:
                await heartbeats.delete_many({"_id": {"$in": ids}}, session=session)

        await self._transaction(run)

    async def list_heartbeats(
        self, entity_id: str, orchestrator_id: str, limit: int = 100
    ) -> list[Heartbeat]:
        where = {"entity_id": entity_id, "orchestrator_id": orchestrator_id}
        cursor = self._col(HEARTBEATS).find(where).sort(_NEWEST_FIRST)
        return [
            Heartbeat(
                doc["entity_id"],
                doc["orchestrator_id"],
                time_of(doc, "received"),
                load_json(doc["body"]),
            )
            for doc in await fetch(cursor, limit)
        ]

    async def enqueue_command(self, command: Command) -> None:
        cmd = command
        key = {
            "entity_id": cmd.entity_id,
            "orchestrator_id": cmd.orchestrator_id,
            "command_id": cmd.command_id,
        }

        async def run(session: AsyncClientSession) -> None:
            await self._require_orchestrator(session, cmd.entity_id, cmd.orchestrator_id)
            commands = self._col(COMMANDS)
            expired = commands.find(
                {"expires_us": {"$lte": to_us(cmd.created_at)}}, {"_id": 1}, session=session
            )
            ids = [doc["_id"] for doc in await fetch(expired, PRUNE_BATCH)]
            if ids:
                await commands.delete_many({"_id": {"$in": ids}}, session=session)
            if await commands.find_one(key, {"_id": 1}, session=session) is not None:
                raise ConflictError("command", cmd.command_id, "exists")
            await commands.insert_one(
                {
                    **key,
                    "type": cmd.type,
                    "params": compact_json(cmd.params),
                    **stamp("created", cmd.created_at),
                    **stamp("expires", cmd.expires_at),
                    **stamp("acked", cmd.acked_at),
                },
                session=session,
            )

        try:
            await self._transaction(run)
        except DuplicateKeyError:
            raise ConflictError("command", cmd.command_id, "exists") from None

    async def pending_commands(
        self, entity_id: str, orchestrator_id: str, now: datetime
    ) -> list[Command]:
        cursor = self._col(COMMANDS).find(
            {
                "entity_id": entity_id,
                "orchestrator_id": orchestrator_id,
                "acked_us": None,
                "expires_us": {"$gt": to_us(now)},
            }
        )
        cursor = cursor.sort([("created_us", ASCENDING), ("command_id", ASCENDING)])
        return [_command(doc) for doc in await fetch(cursor)]

    async def ack_commands(
        self, entity_id: str, orchestrator_id: str, command_ids: Sequence[str], now: datetime
    ) -> None:
        if not command_ids:
            return
        acked = stamp("acked", now)

        async def run(session: AsyncClientSession) -> None:
            await self._col(COMMANDS).update_many(
                {
                    "entity_id": entity_id,
                    "orchestrator_id": orchestrator_id,
                    "command_id": {"$in": list(command_ids)},
                    "acked_us": None,
                },
                {"$set": acked},
                session=session,
            )

        await self._transaction(run)

    # -- audit ------------------------------------------------------------------------------
    async def audit(self, record: AuditRecord) -> None:
        """Insert only (see the module docstring)."""
        await self._col(AUDIT).insert_one(
            {
                **stamp("at", record.at),
                "actor": record.actor,
                "action": record.action,
                "outcome": record.outcome,
                "entity_id": record.entity_id,
                "details": compact_json(record.details),
            }
        )

    async def list_audit(
        self, *, entity_id: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        where = {} if entity_id is None else {"entity_id": entity_id}
        cursor = self._col(AUDIT).find(where).sort([("at_us", DESCENDING), ("_id", DESCENDING)])
        return [_audit_record(doc) for doc in await fetch(cursor, limit)]
