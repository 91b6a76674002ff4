"""SSE payloads of ``GET /api/orchestrators/events``: one model per event type.

The SSE ``event:`` field names the type and ``data:`` carries the JSON payload.
``parse_event`` decodes one; an event type this version does not know comes back as an
``UnknownEvent`` (the stream goes on), while a known type with a bad payload raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, cast

from pydantic import ConfigDict, Field, StringConstraints

from navign_proto.mall import CollectionName, Coordinate, Identifier
from navign_proto.wire._types import (
    Count,
    JsonObject,
    Keyword,
    LooseKeyword,
    Seq,
    Sha256Checksum,
    ShortText,
    UtcDateTime,
    WireMessage,
)
from navign_proto.wire.codec import load_json_object, validate_message
from navign_proto.wire.firmware import FirmwareInfo

CHANGED_IDS_MAX: Final = 10_000


class EventType(StrEnum):
    DATA_UPDATE = "data_update"
    FIRMWARE_UPDATE = "firmware_update"
    TASK_CREATE = "task_create"
    CONFIG_UPDATE = "config_update"
    PING = "ping"
    RESYNC_REQUIRED = "resync_required"


class Priority(StrEnum):
    """Same levels as ``task.proto``'s ``Priority``."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class ServerEvent(WireMessage):
    """Base of the event payloads; ``event_type`` is the SSE ``event:`` name."""

    event_type: ClassVar[EventType]


ChangedIds = Annotated[list[Identifier], Field(max_length=CHANGED_IDS_MAX)]


class DataChanges(WireMessage):
    areas: ChangedIds = Field(default_factory=list)
    beacons: ChangedIds = Field(default_factory=list)
    merchants: ChangedIds = Field(default_factory=list)
    connections: ChangedIds = Field(default_factory=list)


class DataUpdateEvent(ServerEvent):
    """Documents changed up to ``seq``; the gateway fetches them with a delta sync."""

    event_type: ClassVar[EventType] = EventType.DATA_UPDATE
    seq: Seq
    changes: DataChanges = Field(default_factory=DataChanges)
    checksum: Sha256Checksum


class RolloutWave(WireMessage):
    model_config = ConfigDict(extra="allow")

    percent: float = Field(gt=0, le=100, allow_inf_nan=False)
    hold_seconds: Count = 0


class RolloutPolicy(WireMessage):
    """How the gateway spreads an update over its beacons. Kept permissive: unknown keys
    are kept (``extra="allow"``) so the rollout design can grow without a protocol break."""

    model_config = ConfigDict(extra="allow")

    waves: list[RolloutWave] = Field(default_factory=list, max_length=16)
    canary: list[Identifier] = Field(default_factory=list, max_length=1_000)
    """Beacon ids updated first, before any wave."""
    batch_size: int | None = Field(default=None, ge=1, le=1_000)
    hold_seconds: Count | None = None
    failure_threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    """Fraction of failed beacons that halts the rollout."""


class FirmwareUpdateEvent(FirmwareInfo, ServerEvent):
    """A new release: the ``FirmwareInfo`` fields at top level, as the seed reads them."""

    event_type: ClassVar[EventType] = EventType.FIRMWARE_UPDATE
    priority: Priority = Priority.NORMAL
    rollout_strategy: RolloutPolicy | None = None
    assignment_id: Identifier | None = None
    """The server's assignment (§6.7): the gateway's rollout id, named in reports and commands."""


class TaskType(StrEnum):
    """Task types ``task.proto`` knows; ``TaskCreateEvent.type`` tolerates others."""

    DELIVERY = "delivery"
    PATROL = "patrol"
    RETURN_HOME = "return_home"
    EMERGENCY = "emergency"


class TaskLocation(WireMessage):
    area_id: Identifier
    x: Coordinate
    y: Coordinate
    z: Coordinate = 0.0
    floor: Annotated[str, StringConstraints(max_length=32)] | None = None


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)]


class TaskCreateEvent(ServerEvent):
    event_type: ClassVar[EventType] = EventType.TASK_CREATE
    task_id: Identifier
    type: LooseKeyword
    priority: Priority = Priority.NORMAL
    entity_id: Identifier
    # As task.Task in task.proto: where to pick up, and where to deliver (or patrol through).
    sources: list[TaskLocation] = Field(min_length=1, max_length=64)
    terminals: list[TaskLocation] = Field(min_length=1, max_length=64)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=64)
    created_at: UtcDateTime | None = None

    @property
    def known_type(self) -> TaskType | None:
        try:
            return TaskType(self.type)
        except ValueError:
            return None


class ConfigUpdateEvent(ServerEvent):
    event_type: ClassVar[EventType] = EventType.CONFIG_UPDATE
    type: Keyword
    config: JsonObject = Field(max_length=256)
    version: Seq


class PingEvent(ServerEvent):
    """Keep-alive. The seed's server sends it with empty data, hence the optional time."""

    event_type: ClassVar[EventType] = EventType.PING
    server_time: UtcDateTime | None = None


class ResyncRequiredEvent(ServerEvent):
    """The server cannot replay what the gateway missed: resync these collections in full."""

    event_type: ClassVar[EventType] = EventType.RESYNC_REQUIRED
    reason: ShortText
    collections: list[CollectionName] | Literal["all"] = "all"

    @property
    def collection_names(self) -> tuple[CollectionName, ...]:
        if self.collections == "all":
            return tuple(CollectionName)
        return tuple(self.collections)


KnownEvent = (
    DataUpdateEvent
    | FirmwareUpdateEvent
    | TaskCreateEvent
    | ConfigUpdateEvent
    | PingEvent
    | ResyncRequiredEvent
)

EVENT_MODELS: Final[dict[str, type[ServerEvent]]] = {
    model.event_type: model
    for model in (
        DataUpdateEvent,
        FirmwareUpdateEvent,
        TaskCreateEvent,
        ConfigUpdateEvent,
        PingEvent,
        ResyncRequiredEvent,
    )
}


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type this version does not know, kept raw so it can be logged."""

    event_type: str
    data: str | bytes


_EMPTY: Final[dict[str, Any]] = {}


def parse_event(event_type: str, data: str | bytes) -> KnownEvent | UnknownEvent:
    """Decode one SSE event.

    Unknown ``event_type``: ``UnknownEvent``. Known type: its model, or
    ``MalformedMessageError`` (not a JSON object) / ``InvalidMessageError`` (wrong shape).
    Blank data is read as ``{}``.
    """
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return UnknownEvent(event_type=event_type, data=data)
    payload = load_json_object(data, message_type=event_type, empty_as=_EMPTY)
    return cast(KnownEvent, validate_message(model, payload, message_type=event_type))
