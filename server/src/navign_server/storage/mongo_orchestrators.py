"""Gateways and their enrollment in MongoDB: orchestrators, enrollment tokens, pre-registered
keys and request nonces.

As in the SQLite backend, a method that reads before it decides runs in one transaction, so two
concurrent registrations cannot both consume one token: both write the token's document, one
of the two transactions meets a write conflict and is retried, and then sees the token used.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from navign_server.storage.base import (
    ConflictError,
    EnrollmentToken,
    NotFoundError,
    Orchestrator,
    OrchestratorRegistration,
    OrchestratorStatus,
    PreregisteredKey,
)
from navign_server.storage.mongo_db import (
    ENROLLMENT_TOKENS,
    ENTITIES,
    NONCES,
    ORCHESTRATORS,
    PREREGISTERED_KEYS,
    Doc,
    MongoDatabase,
    fetch,
    stamp,
    time_of,
    time_or_none,
)
from navign_server.storage.sqlite_schema import to_us

#: How long after its expiry (by the wall clock) MongoDB may delete a nonce's record.
NONCE_PURGE_GRACE: Final = timedelta(minutes=10)


def _key(entity_id: str, orchestrator_id: str) -> str:
    return f"{entity_id}/{orchestrator_id}"


def _same_key(a: str | None, b: str) -> bool:
    """PEM texts equal up to line endings and surrounding whitespace."""
    if a is None:
        return False
    return a.strip().replace("\r\n", "\n") == b.strip().replace("\r\n", "\n")


def _where(entity_id: str, orchestrator_id: str) -> Doc:
    return {"entity_id": entity_id, "orchestrator_id": orchestrator_id}


def _orchestrator(doc: Doc) -> Orchestrator:
    return Orchestrator(
        entity_id=doc["entity_id"],
        orchestrator_id=doc["orchestrator_id"],
        status=OrchestratorStatus(doc["status"]),
        public_key_pem=doc.get("public_key_pem"),
        key_id=doc.get("key_id"),
        version=doc["version"],
        capabilities=tuple(doc["capabilities"]),
        local_address=doc["local_address"],
        heartbeat_interval=doc["heartbeat_interval"],
        created_at=time_of(doc, "created"),
        updated_at=time_of(doc, "updated"),
        tokens_valid_after=time_or_none(doc, "tokens_valid_after"),
        last_heartbeat_at=time_or_none(doc, "last_heartbeat"),
    )


def _token(doc: Doc) -> EnrollmentToken:
    return EnrollmentToken(
        token_hash=doc["token_hash"],
        entity_id=doc["entity_id"],
        orchestrator_id=doc["orchestrator_id"],
        created_at=time_of(doc, "created"),
        expires_at=time_of(doc, "expires"),
        created_by=doc["created_by"],
        used_at=time_or_none(doc, "used"),
    )


class OrchestratorCollections(MongoDatabase):
    # -- helpers (inside a transaction) ---------------------------------------------------------
    async def _require_entity(self, session: AsyncClientSession, entity_id: str) -> None:
        if await self._col(ENTITIES).find_one({"_id": entity_id}, {"_id": 1}, session=session):
            return
        raise NotFoundError("entity", entity_id)

    async def _orchestrator_doc(
        self, session: AsyncClientSession | None, entity_id: str, orchestrator_id: str
    ) -> Doc | None:
        return await self._col(ORCHESTRATORS).find_one(
            _where(entity_id, orchestrator_id), session=session
        )

    async def _require_orchestrator(
        self, session: AsyncClientSession | None, entity_id: str, orchestrator_id: str
    ) -> Orchestrator:
        doc = await self._orchestrator_doc(session, entity_id, orchestrator_id)
        if doc is None:
            raise NotFoundError("orchestrator", _key(entity_id, orchestrator_id))
        return _orchestrator(doc)

    async def _set_orchestrator(
        self, session: AsyncClientSession, entity_id: str, orchestrator_id: str, values: Doc
    ) -> Orchestrator:
        doc = await self._col(ORCHESTRATORS).find_one_and_update(
            _where(entity_id, orchestrator_id),
            {"$set": values},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise NotFoundError("orchestrator", _key(entity_id, orchestrator_id))
        return _orchestrator(doc)

    async def _upsert(
        self,
        session: AsyncClientSession,
        reg: OrchestratorRegistration,
        now: datetime,
        *,
        status: OrchestratorStatus,
        pinned: bool,
    ) -> Orchestrator:
        """Insert or replace the registration's record; keeps created_at, tokens_valid_after and
        last_heartbeat_at of an existing one."""
        doc = await self._col(ORCHESTRATORS).find_one_and_update(
            _where(reg.entity_id, reg.orchestrator_id),
            {
                "$set": {
                    "status": status.value,
                    "public_key_pem": reg.public_key_pem,
                    "key_id": reg.key_id,
                    "key_pinned": pinned,
                    "version": reg.version,
                    "capabilities": list(reg.capabilities),
                    "local_address": reg.local_address,
                    "heartbeat_interval": reg.heartbeat_interval,
                    **stamp("updated", now),
                },
                "$setOnInsert": {
                    **stamp("created", now),
                    **stamp("tokens_valid_after", None),
                    **stamp("last_heartbeat", None),
                },
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert doc is not None  # an upsert always leaves a document
        return _orchestrator(doc)

    async def _consume_token(
        self,
        session: AsyncClientSession,
        reg: OrchestratorRegistration,
        token_hash: str,
        now: datetime,
    ) -> None:
        key = _key(reg.entity_id, reg.orchestrator_id)
        tokens = self._col(ENROLLMENT_TOKENS)
        doc = await tokens.find_one({"token_hash": token_hash}, session=session)
        if doc is None:
            raise ConflictError("enrollment_token", key, "unknown")
        token = _token(doc)
        if (token.entity_id, token.orchestrator_id) != (reg.entity_id, reg.orchestrator_id):
            raise ConflictError("enrollment_token", key, "wrong_binding")
        if token.used_at is not None:
            raise ConflictError("enrollment_token", key, "used")
        if token.expires_at <= now:
            raise ConflictError("enrollment_token", key, "expired")
        used = await tokens.update_one(
            {"token_hash": token_hash, "used_us": None},
            {"$set": stamp("used", now)},
            session=session,
        )
        if used.modified_count != 1:  # unreachable in a snapshot transaction; kept as a guard
            raise ConflictError("enrollment_token", key, "used")

    # -- orchestrators ----------------------------------------------------------------------
    async def get_orchestrator(self, entity_id: str, orchestrator_id: str) -> Orchestrator:
        return await self._require_orchestrator(None, entity_id, orchestrator_id)

    async def list_orchestrators(self, entity_id: str | None = None) -> list[Orchestrator]:
        where = {} if entity_id is None else {"entity_id": entity_id}
        cursor = self._col(ORCHESTRATORS).find(where)
        cursor = cursor.sort([("entity_id", ASCENDING), ("orchestrator_id", ASCENDING)])
        return [_orchestrator(doc) for doc in await fetch(cursor)]

    async def save_pending(
        self, registration: OrchestratorRegistration, now: datetime
    ) -> Orchestrator:
        reg = registration
        key = _key(reg.entity_id, reg.orchestrator_id)

        async def run(session: AsyncClientSession) -> Orchestrator:
            await self._require_entity(session, reg.entity_id)
            doc = await self._orchestrator_doc(session, reg.entity_id, reg.orchestrator_id)
            if doc is not None:
                existing = _orchestrator(doc)
                if existing.status is not OrchestratorStatus.PENDING:
                    raise ConflictError("orchestrator", key, existing.status.value)
                if not _same_key(existing.public_key_pem, reg.public_key_pem):
                    raise ConflictError("orchestrator", key, "key_mismatch")
            return await self._upsert(
                session, reg, now, status=OrchestratorStatus.PENDING, pinned=False
            )

        return await self._transaction(run)

    async def activate(
        self, registration: OrchestratorRegistration, now: datetime, *, token_hash: str | None
    ) -> Orchestrator:
        reg = registration
        key = _key(reg.entity_id, reg.orchestrator_id)

        async def run(session: AsyncClientSession) -> Orchestrator:
            await self._require_entity(session, reg.entity_id)
            doc = await self._orchestrator_doc(session, reg.entity_id, reg.orchestrator_id)
            pinned_key: str | None = (
                doc.get("public_key_pem") if doc is not None and doc.get("key_pinned") else None
            )
            if doc is not None and doc["status"] == OrchestratorStatus.DISABLED.value:
                raise ConflictError("orchestrator", key, "disabled")
            if pinned_key is not None:
                if not _same_key(pinned_key, reg.public_key_pem):
                    raise ConflictError("orchestrator", key, "key_mismatch")
                # Re-registration with the pinned key: any token is ignored, not consumed.
            elif token_hash is not None:
                await self._consume_token(session, reg, token_hash, now)
            else:
                prereg = await self._col(PREREGISTERED_KEYS).find_one(
                    _where(reg.entity_id, reg.orchestrator_id), session=session
                )
                if prereg is None:
                    raise ConflictError("orchestrator", key, "not_enrolled")
                if not _same_key(prereg["public_key_pem"], reg.public_key_pem):
                    raise ConflictError("orchestrator", key, "key_mismatch")
            return await self._upsert(
                session, reg, now, status=OrchestratorStatus.ACTIVE, pinned=True
            )

        return await self._transaction(run)

    async def approve(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async def run(session: AsyncClientSession) -> Orchestrator:
            current = await self._require_orchestrator(session, entity_id, orchestrator_id)
            if current.status is OrchestratorStatus.DISABLED:
                raise ConflictError("orchestrator", _key(entity_id, orchestrator_id), "disabled")
            if current.status is OrchestratorStatus.ACTIVE:
                return current
            values = {
                "status": OrchestratorStatus.ACTIVE.value,
                "key_pinned": True,
                **stamp("updated", now),
            }
            return await self._set_orchestrator(session, entity_id, orchestrator_id, values)

        return await self._transaction(run)

    async def disable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async def run(session: AsyncClientSession) -> Orchestrator:
            await self._require_orchestrator(session, entity_id, orchestrator_id)
            values = {
                "status": OrchestratorStatus.DISABLED.value,
                **stamp("tokens_valid_after", now),
                **stamp("updated", now),
            }
            return await self._set_orchestrator(session, entity_id, orchestrator_id, values)

        return await self._transaction(run)

    async def enable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        async def run(session: AsyncClientSession) -> Orchestrator:
            doc = await self._orchestrator_doc(session, entity_id, orchestrator_id)
            if doc is None:
                raise NotFoundError("orchestrator", _key(entity_id, orchestrator_id))
            if doc["status"] != OrchestratorStatus.DISABLED.value:
                return _orchestrator(doc)
            pinned = bool(doc.get("key_pinned"))
            status = OrchestratorStatus.ACTIVE if pinned else OrchestratorStatus.PENDING
            values = {"status": status.value, **stamp("updated", now)}
            return await self._set_orchestrator(session, entity_id, orchestrator_id, values)

        return await self._transaction(run)

    # -- enrollment -------------------------------------------------------------------------
    async def create_enrollment_token(self, token: EnrollmentToken) -> None:
        def exists() -> ConflictError:
            return ConflictError("enrollment_token", token.orchestrator_id, "exists")

        async def run(session: AsyncClientSession) -> None:
            await self._require_entity(session, token.entity_id)
            tokens = self._col(ENROLLMENT_TOKENS)
            if await tokens.find_one({"token_hash": token.token_hash}, {"_id": 1}, session=session):
                raise exists()
            doc = {
                "token_hash": token.token_hash,
                "entity_id": token.entity_id,
                "orchestrator_id": token.orchestrator_id,
                "created_by": token.created_by,
                **stamp("created", token.created_at),
                **stamp("expires", token.expires_at),
                **stamp("used", token.used_at),
            }
            await tokens.insert_one(doc, session=session)

        try:
            await self._transaction(run)
        except DuplicateKeyError:
            raise exists() from None

    async def list_enrollment_tokens(self, entity_id: str | None = None) -> list[EnrollmentToken]:
        where = {} if entity_id is None else {"entity_id": entity_id}
        cursor = self._col(ENROLLMENT_TOKENS).find(where)
        cursor = cursor.sort([("created_us", ASCENDING), ("token_hash", ASCENDING)])
        return [_token(doc) for doc in await fetch(cursor)]

    async def preregister_key(self, key: PreregisteredKey) -> None:
        async def run(session: AsyncClientSession) -> None:
            await self._require_entity(session, key.entity_id)
            current = await self._orchestrator_doc(session, key.entity_id, key.orchestrator_id)
            if current is not None and current.get("key_pinned"):
                raise ConflictError(
                    "orchestrator", _key(key.entity_id, key.orchestrator_id), "pinned"
                )
            doc = {
                **_where(key.entity_id, key.orchestrator_id),
                "public_key_pem": key.public_key_pem,
                "key_id": key.key_id,
                "created_by": key.created_by,
                **stamp("created", key.created_at),
            }
            await self._col(PREREGISTERED_KEYS).replace_one(
                _where(key.entity_id, key.orchestrator_id), doc, upsert=True, session=session
            )

        await self._transaction(run)

    async def get_preregistered_key(
        self, entity_id: str, orchestrator_id: str
    ) -> PreregisteredKey | None:
        doc = await self._col(PREREGISTERED_KEYS).find_one(_where(entity_id, orchestrator_id))
        if doc is None:
            return None
        return PreregisteredKey(
            doc["entity_id"],
            doc["orchestrator_id"],
            doc["public_key_pem"],
            doc["key_id"],
            time_of(doc, "created"),
            doc["created_by"],
        )

    async def remember_nonce(self, nonce: str, expires_at: datetime, now: datetime) -> bool:
        """One atomic upsert: it matches only an expired record (then refreshed); when the nonce
        is known and unexpired, the insert it falls back to meets the unique index.

        Whether a nonce has expired is decided by ``now`` and ``expires_at`` alone, as in the
        SQLite backend. MongoDB's TTL index deletes old records by the server's own clock, so
        ``purge_after`` carries the nonce's remaining lifetime over to the wall clock, plus
        ``NONCE_PURGE_GRACE``: a record is never purged while it can still refuse a replay, even
        when ``now`` is not the wall clock's time (tests) or the clocks disagree a little."""
        now_us = to_us(now)
        lifetime = max(expires_at - now, timedelta(0))
        values: dict[str, Any] = {
            **stamp("expires", expires_at),
            "purge_after": datetime.now(UTC) + lifetime + NONCE_PURGE_GRACE,
        }
        try:
            await self._col(NONCES).update_one(
                {"nonce": nonce, "expires_us": {"$lte": now_us}}, {"$set": values}, upsert=True
            )
        except DuplicateKeyError:
            return False
        return True
