"""The server's one storage interface. Two backends implement it: SQLite (``sqlite.py``, the
embedded default) and MongoDB (``mongo.py``). One contract test suite runs against both.

Rules every backend keeps:

* **One sequence per entity.** Change-log rows and events take their ``seq`` from the entity's
  counter, in the same transaction as the write they record. Sequences never go back and are
  never reused, even after pruning.
* **A data write is one transaction**: the documents, their change-log rows (with the global
  checksum after each change), the collection digests and a ``data_update`` event commit
  together or not at all.
* **Checksums are incremental**: a write updates the stored ``(count, total)`` of its collection
  (:class:`navign_proto.checksums.CollectionDigest`); nothing reads the whole collection.
* Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from navign_proto.checksums import COLLECTIONS

JsonObject = dict[str, Any]

#: Events the storage layer itself writes alongside data changes.
DATA_UPDATE_EVENT = "data_update"


class StorageError(Exception):
    """Base class of storage failures."""


class NotFoundError(StorageError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class ConflictError(StorageError):
    def __init__(self, kind: str, key: str, reason: str) -> None:
        super().__init__(f"{kind} {key!r}: {reason}")
        self.kind = kind
        self.key = key
        self.reason = reason


class HistoryExpiredError(StorageError):
    """A cursor or event id is older than what the change log still holds (or ahead of it)."""

    def __init__(self, entity_id: str, cursor: int, floor: int, head: int) -> None:
        super().__init__(
            f"entity {entity_id!r}: position {cursor} is outside the retained history "
            f"({floor}..{head})"
        )
        self.entity_id = entity_id
        self.cursor = cursor
        self.floor = floor
        self.head = head


class WatchOverflowError(StorageError):
    """An event watcher fell too far behind; its buffer was dropped and its iteration ended.
    The consumer resumes from the last seq it handled (``events_since``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"event watcher fell more than {limit} events behind")
        self.limit = limit


# ---------------------------------------------------------------------------------------------
# Mall data


Operation = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One requested change. ``put`` creates or updates; ``create`` fails if the document
    exists (ConflictError); ``update`` and ``delete`` fail if it does not (NotFoundError)."""

    collection: str
    operation: Literal["create", "update", "put", "delete"]
    id: str
    data: JsonObject | None = None

    def __post_init__(self) -> None:
        if self.collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {self.collection!r}")
        if (self.operation == "delete") != (self.data is None):
            raise ValueError("delete carries no data; every other operation carries data")
        if self.data is not None and self.data.get("id") != self.id:
            raise ValueError("data['id'] must equal the document id")


@dataclass(frozen=True, slots=True)
class Change:
    """A change-log row. ``data`` is None for a delete (a tombstone)."""

    seq: int
    collection: str
    operation: Operation
    id: str
    data: JsonObject | None
    updated_at: datetime
    #: The entity's global checksum right after this change.
    checksum: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    entity_id: str
    seq: int
    type: str
    data: JsonObject
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WriteResult:
    changes: tuple[Change, ...]
    checksums: Mapping[str, str]
    #: The data_update event written with the changes (None when nothing changed).
    event: StoredEvent | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Documents of the requested collections, all as of exactly ``seq``."""

    entity: JsonObject
    seq: int
    documents: Mapping[str, list[JsonObject]]
    counts: Mapping[str, int]
    checksums: Mapping[str, str]
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: tuple[Change, ...]
    #: Global checksum at the cursor, and after the page's last change.
    base_checksum: str
    new_checksum: str
    #: Where the next page starts (the entity's head when ``has_more`` is false).
    next_cursor: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class EntityState:
    """Where an entity's history stands."""

    entity_id: str
    head: int  # the last sequence number used (0 before any write)
    floor: int  # the oldest cursor still served (changes with seq > floor are retained)
    checksums: Mapping[str, str]
    counts: Mapping[str, int]


# ---------------------------------------------------------------------------------------------
# Gateways (orchestrators) and credentials


class OrchestratorStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Orchestrator:
    entity_id: str
    orchestrator_id: str
    status: OrchestratorStatus
    #: Pinned after the first successful registration; for pending ones, the key that asked.
    public_key_pem: str | None
    key_id: str | None
    version: str
    capabilities: tuple[str, ...]
    local_address: str
    heartbeat_interval: int
    created_at: datetime
    updated_at: datetime
    #: Tokens issued before this moment are refused (set when disabled or re-keyed).
    tokens_valid_after: datetime | None = None
    last_heartbeat_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OrchestratorRegistration:
    """What a registration request says about the gateway."""

    entity_id: str
    orchestrator_id: str
    public_key_pem: str
    key_id: str
    version: str
    capabilities: tuple[str, ...]
    local_address: str
    heartbeat_interval: int


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    token_hash: str
    entity_id: str
    orchestrator_id: str
    created_at: datetime
    expires_at: datetime
    created_by: str
    used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PreregisteredKey:
    entity_id: str
    orchestrator_id: str
    public_key_pem: str
    key_id: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A server key that signs access tokens (ES256)."""

    kid: str
    private_pem: str
    created_at: datetime
    #: After this the key signs nothing new; it still verifies until ``expires_at``.
    retired_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AdminToken:
    token_hash: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    entity_id: str
    orchestrator_id: str
    received_at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class Command:
    entity_id: str
    orchestrator_id: str
    command_id: str
    type: str
    params: JsonObject
    created_at: datetime
    expires_at: datetime
    acked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str  # "admin:<name>", "orchestrator:<entity>/<id>", "anonymous:<address>"
    action: str  # "register", "token.refresh", "entity.create", "sync.full", ...
    outcome: str  # "ok" or an error code
    entity_id: str | None = None
    details: JsonObject = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Firmware releases and their assignment to entities

#: The event an assignment writes (``wire.FirmwareUpdateEvent``), in the assignment's transaction.
FIRMWARE_UPDATE_EVENT = "firmware_update"


class ReleaseStatus(StrEnum):
    #: Verified manifest stored; the artifact has not been uploaded (and checked) yet.
    PENDING_UPLOAD = "pending_upload"
    #: Artifact stored and verified against the manifest: offered by ``/latest``.
    AVAILABLE = "available"
    #: No longer offered as latest nor assignable; an uploaded artifact is still served.
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class BeaconStatusRecord:
    """The latest status a gateway reported for one beacon (``body`` as reported)."""

    entity_id: str
    beacon_id: str
    orchestrator_id: str
    last_seen: datetime
    received_at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class FirmwareStatusRecord:
    """One reported step of a release on a beacon (``beacon_id`` None: on the gateway)."""

    entity_id: str
    firmware_id: str
    beacon_id: str | None
    orchestrator_id: str
    status: str
    at: datetime
    received_at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class TaskStatusRecord:
    """The latest status a gateway reported for one task."""

    entity_id: str
    task_id: str
    orchestrator_id: str
    status: str
    at: datetime
    received_at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class RolloutStatusRecord:
    """The latest summary a gateway reported for one rollout (``body`` as reported)."""

    entity_id: str
    rollout_id: str
    firmware_id: str
    orchestrator_id: str
    state: str
    at: datetime
    received_at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class Release:
    """A signed release the server hosts. The manifest fields are copies of the verified
    manifest inside ``envelope`` (the DSSE envelope's JCS bytes, served as they are)."""

    release_id: str
    name: str
    version: str
    target: str
    kind: str  # "app" | "image"
    secure_version: int
    min_previous_version: str | None
    manifest_sha256: str
    envelope: bytes
    #: Size the artifact must have: the image's size, or the sum of the app files' sizes.
    artifact_size: int
    device_type: str
    channel: str  # "stable" | "beta" | "canary"
    changelog: tuple[str, ...]
    compatible_hardware: tuple[str, ...]
    status: ReleaseStatus
    created_at: datetime
    created_by: str
    #: SHA-256 (hex) of the uploaded artifact: its blob's address. None until uploaded.
    artifact_sha256: str | None = None
    uploaded_at: datetime | None = None
    withdrawn_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReleaseAssignment:
    """A release assigned to an entity with its rollout policy (a ``firmware_update`` event)."""

    entity_id: str
    assignment_id: str
    release_id: str
    policy: JsonObject
    priority: str
    created_at: datetime
    created_by: str
    #: The seq of the firmware_update event written with it (set by the store).
    seq: int = 0


# ---------------------------------------------------------------------------------------------


class Store(Protocol):
    """Everything the server keeps. Methods are coroutine-safe; each is atomic."""

    async def open(self) -> None:
        """Connect, create or migrate the schema (SQLite) or indexes (MongoDB)."""

    async def close(self) -> None: ...

    # -- entities ---------------------------------------------------------------------------
    async def create_entity(self, entity: JsonObject, now: datetime) -> None:
        """Create an entity (ConflictError if its id exists); its sequence starts at 0."""

    async def update_entity(self, entity: JsonObject, now: datetime) -> None:
        """Replace an entity's document (NotFoundError if absent)."""

    async def get_entity(self, entity_id: str) -> JsonObject:
        """The entity's document (NotFoundError)."""

    async def list_entities(self) -> list[JsonObject]: ...

    async def entity_state(self, entity_id: str) -> EntityState:
        """Head and floor of the entity's history, current checksums and counts."""

    # -- mall data --------------------------------------------------------------------------
    async def write_documents(
        self, entity_id: str, writes: Sequence[DocumentWrite], now: datetime
    ) -> WriteResult:
        """Apply ``writes`` in order, atomically, with change-log rows, checksums and one
        ``data_update`` event. Writes that change nothing (a put of an identical document)
        produce no change row. Raises NotFoundError / ConflictError and then writes nothing.

        Each resulting change takes the next seq; the event's seq is the last change's seq and
        its data is a ``wire.DataUpdateEvent`` (``seq``, ``changes`` ids by collection,
        ``checksum``). Nothing changed: no seq, no event. Errors: NotFoundError("entity", id);
        NotFoundError(collection, doc_id) for update/delete of a missing document;
        ConflictError(collection, doc_id, "exists") for a create of an existing one."""

    async def get_document(self, entity_id: str, collection: str, doc_id: str) -> JsonObject: ...

    async def list_documents(
        self, entity_id: str, collection: str, *, after_id: str | None = None, limit: int = 500
    ) -> list[JsonObject]:
        """Documents ordered by id, for paging admin views."""

    async def snapshot(self, entity_id: str, collections: Sequence[str]) -> Snapshot:
        """A consistent snapshot (one read transaction) of ``collections``."""

    async def changes_since(self, entity_id: str, cursor: int, limit: int) -> ChangePage:
        """Change-log rows with ``seq > cursor`` in order, at most ``limit``.

        HistoryExpiredError when ``cursor < floor`` or ``cursor > head``."""

    async def seq_at(self, entity_id: str, moment: datetime) -> int:
        """The cursor that yields every change made at or after ``moment`` (for ``since=``):
        (the lowest seq of a change with ``updated_at >= moment``) - 1, or the head when there
        is none. HistoryExpiredError when a pruned change may have been made at or after
        ``moment``."""

    # -- events -----------------------------------------------------------------------------
    async def append_event(
        self, entity_id: str, event_type: str, data: JsonObject, now: datetime
    ) -> StoredEvent:
        """Write an event with the entity's next sequence number."""

    async def events_since(self, entity_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Retained events with ``seq > after_seq`` in order.

        HistoryExpiredError when ``after_seq`` is below the floor or above the head."""

    def watch_events(self) -> AsyncIterator[StoredEvent]:
        """Every event committed from now on, by this process or (MongoDB) any other.

        Subscribes at the call, not at the first iteration: subscribe, read history, then
        iterate, and nothing falls in between. The iterator buffers a bounded number of events;
        a consumer that falls behind gets WatchOverflowError (memory never grows without bound).
        The returned object has ``aclose()``, which unsubscribes; ``close()`` of the store ends
        every iteration."""

    async def prune_history(self, entity_id: str, before: datetime) -> int:
        """Drop change-log rows and events older than ``before``; raise the floor. Returns the
        new floor."""

    # -- orchestrators ----------------------------------------------------------------------
    async def get_orchestrator(self, entity_id: str, orchestrator_id: str) -> Orchestrator: ...

    async def list_orchestrators(self, entity_id: str | None = None) -> list[Orchestrator]: ...

    async def save_pending(
        self, registration: OrchestratorRegistration, now: datetime
    ) -> Orchestrator:
        """Record a registration that has neither token nor known key (status pending).
        A pending record with the same key is updated in place; one with another key gets
        ConflictError("orchestrator", ..., "key_mismatch"); an active or disabled one is left
        alone (ConflictError reason "active" / "disabled"). NotFoundError for an unknown
        entity."""

    async def activate(
        self, registration: OrchestratorRegistration, now: datetime, *, token_hash: str | None
    ) -> Orchestrator:
        """Pin the key and make the orchestrator active, atomically with consuming the
        enrollment token when ``token_hash`` is given.

        ConflictError("enrollment_token", ...) when the token is unknown, used, expired or bound
        to another entity/orchestrator (reason "unknown", "used", "expired", "wrong_binding");
        ConflictError("orchestrator", ..., "key_mismatch") when another key is pinned;
        ConflictError(..., "disabled") when disabled.

        An orchestrator already pinned to this key is re-registered (its details updated) and a
        token is then ignored, not consumed. Without a token the key must equal the pinned or
        the pre-registered key ("key_mismatch" otherwise); with neither, "not_enrolled" (the
        caller then records it with ``save_pending``). NotFoundError for an unknown entity."""

    async def approve(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        """Make a pending orchestrator active, pinning the key it registered with. An active
        one is returned unchanged; a disabled one gets ConflictError(..., "disabled")."""

    async def disable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        """Disable; tokens issued before ``now`` stop working at once."""

    async def enable(self, entity_id: str, orchestrator_id: str, now: datetime) -> Orchestrator:
        """Undo ``disable``: active again if its key was pinned, else pending."""

    async def create_enrollment_token(self, token: EnrollmentToken) -> None: ...

    async def list_enrollment_tokens(
        self, entity_id: str | None = None
    ) -> list[EnrollmentToken]: ...

    async def preregister_key(self, key: PreregisteredKey) -> None:
        """ConflictError when the orchestrator already has a pinned key."""

    async def get_preregistered_key(
        self, entity_id: str, orchestrator_id: str
    ) -> PreregisteredKey | None: ...

    async def remember_nonce(self, nonce: str, expires_at: datetime, now: datetime) -> bool:
        """Record a request nonce; False if it is already known and unexpired (a replay)."""

    # -- server credentials -----------------------------------------------------------------
    async def add_signing_key(self, key: SigningKey) -> None: ...

    async def list_signing_keys(self) -> list[SigningKey]: ...

    async def retire_signing_key(
        self, kid: str, retired_at: datetime, expires_at: datetime
    ) -> None: ...

    async def create_admin_token(self, token: AdminToken) -> None: ...

    async def get_admin_token(self, token_hash: str) -> AdminToken | None: ...

    # -- heartbeats and commands ------------------------------------------------------------
    async def record_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Store the heartbeat and set the orchestrator's ``last_heartbeat_at``."""

    async def list_heartbeats(
        self, entity_id: str, orchestrator_id: str, limit: int = 100
    ) -> list[Heartbeat]:
        """Most recent first."""

    async def enqueue_command(self, command: Command) -> None: ...

    async def pending_commands(
        self, entity_id: str, orchestrator_id: str, now: datetime
    ) -> list[Command]:
        """Unacknowledged, unexpired commands, oldest first."""

    async def ack_commands(
        self, entity_id: str, orchestrator_id: str, command_ids: Sequence[str], now: datetime
    ) -> None: ...

    # -- audit ------------------------------------------------------------------------------
    async def audit(self, record: AuditRecord) -> None:
        """Append to the audit log (never updated or deleted)."""

    async def list_audit(
        self, *, entity_id: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Most recent first."""

    # -- releases and assignments -------------------------------------------------------------
    async def create_release(self, release: Release) -> None:
        """Store a new release (normally ``pending_upload``). ConflictError("release", id,
        "exists") when the id is taken, ConflictError("release", "<name> <version> <target>",
        "duplicate") when a release with the same name, version and target exists."""

    async def get_release(self, release_id: str) -> Release:
        """NotFoundError("release", id)."""

    async def list_releases(
        self,
        *,
        target: str | None = None,
        device_type: str | None = None,
        channel: str | None = None,
        status: ReleaseStatus | None = None,
    ) -> list[Release]:
        """Releases matching every given filter, oldest first (then by id)."""

    async def mark_release_uploaded(
        self, release_id: str, artifact_sha256: str, now: datetime
    ) -> Release:
        """``pending_upload`` -> ``available`` with the artifact's address, atomically (of two
        concurrent uploads one wins). NotFoundError; ConflictError("release", id, <status>)
        when the release is not ``pending_upload``."""

    async def withdraw_release(self, release_id: str, now: datetime) -> Release:
        """Status ``withdrawn`` (kept, with its artifact). A withdrawn release is returned
        unchanged. NotFoundError."""

    async def assign_release(
        self, assignment: ReleaseAssignment, event_data: JsonObject, now: datetime
    ) -> StoredEvent:
        """Record the assignment and append a ``firmware_update`` event carrying
        ``event_data`` with the entity's next seq, in one transaction; the stored assignment's
        ``seq`` is the event's. NotFoundError("entity") / NotFoundError("release");
        ConflictError("release", id, <status>) unless the release is ``available``;
        ConflictError("firmware_assignment", id, "exists") for a taken assignment id."""

    async def list_assignments(self, entity_id: str) -> list[ReleaseAssignment]:
        """The entity's assignments in seq order. NotFoundError("entity")."""

    # -- reports from gateways --------------------------------------------------------------
    async def record_beacon_statuses(self, records: Sequence[BeaconStatusRecord]) -> None:
        """Keep the newest report per (entity, beacon): a record whose ``last_seen`` is older
        than the stored one is ignored (reports can arrive out of order)."""

    async def list_beacon_statuses(self, entity_id: str) -> list[BeaconStatusRecord]:
        """Ordered by beacon id."""

    async def record_firmware_status(self, record: FirmwareStatusRecord) -> None:
        """Append (the history of a rollout); the oldest beyond a per-entity bound go."""

    async def list_firmware_status(
        self, entity_id: str, firmware_id: str, *, limit: int = 100
    ) -> list[FirmwareStatusRecord]:
        """Newest first (by ``at``, then arrival)."""

    async def record_task_status(self, record: TaskStatusRecord) -> None:
        """Keep the newest report per (entity, task) by ``at``."""

    async def list_task_statuses(
        self, entity_id: str, *, limit: int = 100
    ) -> list[TaskStatusRecord]:
        """Most recently reported first."""

    async def record_rollout_status(self, record: RolloutStatusRecord) -> None:
        """Keep the newest report per (entity, rollout) by ``at``: an older one is ignored
        (reports can arrive late from a gateway's outbox); one as new replaces it."""

    async def list_rollout_statuses(
        self,
        entity_id: str,
        *,
        state: str | None = None,
        firmware_id: str | None = None,
        limit: int = 100,
    ) -> list[RolloutStatusRecord]:
        """The entity's rollouts matching every given filter, newest ``at`` first (then by
        rollout id)."""
