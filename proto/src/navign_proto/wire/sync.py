"""``GET /api/orchestrators/sync/{full,delta,checksum}``.

Documents travel as plain JSON objects, not as the strict mall models: the gateway stores
them as received, and a field added by a newer server must not break an older gateway.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, Final, Self

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from navign_proto.mall import CollectionName, Identifier
from navign_proto.wire._types import (
    Count,
    JsonObject,
    Seq,
    Sha256Checksum,
    ShortText,
    UtcDateTime,
    WireMessage,
)

SYNC_DOCUMENTS_MAX: Final = 100_000
DELTA_CHANGES_MAX: Final = 10_000
CURSOR_MAX_LENGTH: Final = 512


def _documents_with_ids(documents: list[JsonObject]) -> list[JsonObject]:
    seen: set[str] = set()
    for index, document in enumerate(documents):
        doc_id = document.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"document {index} has no string 'id'")
        if doc_id in seen:
            raise ValueError(f"document id {doc_id!r} appears twice")
        seen.add(doc_id)
    return documents


Documents = Annotated[
    list[JsonObject], Field(max_length=SYNC_DOCUMENTS_MAX), AfterValidator(_documents_with_ids)
]
"""Stored documents of one collection: JSON objects, each with a unique string ``id``."""


class SyncData(WireMessage):
    areas: Documents = Field(default_factory=list)
    beacons: Documents = Field(default_factory=list)
    merchants: Documents = Field(default_factory=list)
    connections: Documents = Field(default_factory=list)


class SyncMetadata(WireMessage):
    total_areas: Count
    total_beacons: Count
    total_merchants: Count
    total_connections: Count


class SyncFullResponse(WireMessage):
    entity_id: Identifier
    sync_id: ShortText
    timestamp: UtcDateTime
    checksum: Sha256Checksum
    data: SyncData
    metadata: SyncMetadata
    seq: Seq
    """The entity sequence number this snapshot corresponds to (ours, not in the seed)."""
    entity: JsonObject | None = Field(default=None, exclude_if=lambda value: value is None)
    """The entity document itself (ours): the gateway's local API serves it offline."""


class ChangeOperation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Change(WireMessage):
    """One change-log row: ``data`` is the whole new document, absent for a delete."""

    type: CollectionName
    operation: ChangeOperation
    id: Identifier
    # A delete has no ``data`` key at all (not ``null``).
    data: JsonObject | None = Field(default=None, exclude_if=lambda value: value is None)
    updated_at: UtcDateTime
    seq: Seq

    @model_validator(mode="after")
    def _data_matches_operation(self) -> Self:
        if self.operation is ChangeOperation.DELETE:
            if self.data is not None:
                raise ValueError("a delete change must not carry data")
            return self
        if self.data is None:
            raise ValueError(f"a {self.operation} change must carry data")
        if "id" in self.data and self.data["id"] != self.id:
            raise ValueError(f"data id {self.data['id']!r} differs from change id {self.id!r}")
        return self


class SyncDeltaResponse(WireMessage):
    entity_id: Identifier
    sync_id: ShortText
    timestamp: UtcDateTime
    base_checksum: Sha256Checksum
    new_checksum: Sha256Checksum
    changes: list[Change] = Field(max_length=DELTA_CHANGES_MAX)
    has_more: bool
    next_cursor: str | None = Field(default=None, min_length=1, max_length=CURSOR_MAX_LENGTH)

    @model_validator(mode="after")
    def _consistent_page(self) -> Self:
        if self.has_more and self.next_cursor is None:
            raise ValueError("has_more is true but next_cursor is missing")
        for before, after in itertools.pairwise(self.changes):
            if after.seq < before.seq:
                raise ValueError(f"changes out of order: seq {after.seq} after {before.seq}")
        return self


class Checksums(WireMessage):
    # The seed's key is ``global``, a Python keyword: the attribute is ``global_``, the
    # JSON key stays ``global`` both ways, and ``global_=`` works in Python code too.
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    areas: Sha256Checksum
    beacons: Sha256Checksum
    merchants: Sha256Checksum
    connections: Sha256Checksum
    global_: Sha256Checksum = Field(alias="global")

    def for_collection(self, name: str) -> str:
        checksum: str = getattr(self, CollectionName(name).value)
        return checksum


class ChecksumResponse(WireMessage):
    entity_id: Identifier
    timestamp: UtcDateTime
    seq: Seq
    checksums: Checksums
