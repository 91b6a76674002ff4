"""``POST /api/orchestrators/heartbeat``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import Field

from navign_proto.mall import Identifier
from navign_proto.wire._types import (
    Count,
    LooseKeyword,
    StrictWireMessage,
    UtcDateTime,
    Version,
    WireMessage,
)
from navign_proto.wire.registration import HEARTBEAT_INTERVAL_MAX, HEARTBEAT_INTERVAL_MIN

COMMANDS_MAX: Final = 100


class GatewayStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


Amount = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


# extra="forbid" here and below: the server validates heartbeats, and server and gateway
# ship from this repository (the server is upgraded first), so an unknown field is a bug.
class HeartbeatMetrics(StrictWireMessage):
    cpu_percent: float = Field(ge=0, le=100, allow_inf_nan=False)
    memory_used_mb: Amount
    disk_used_gb: Amount
    cache_size_mb: Amount


class HeartbeatRequest(StrictWireMessage):
    orchestrator_id: Identifier
    entity_id: Identifier
    status: GatewayStatus
    version: Version
    uptime_seconds: int = Field(ge=0, le=100 * 365 * 86_400)
    connected_robots: Count
    active_tasks: Count
    pending_tasks: Count
    metrics: HeartbeatMetrics
    timestamp: UtcDateTime
    #: Ids of commands carried out since the last heartbeat (ours): the server stops resending
    #: them. Commands are idempotent, so a lost acknowledgement only repeats one.
    acked_commands: list[Identifier] = Field(default_factory=list, max_length=100)


class CommandType(StrEnum):
    """Commands this version acts on; others arrive as plain strings and are skipped."""

    RESYNC = "resync"
    RESTART = "restart"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a command name, not a secret
    REPORT_INVENTORY = "report_inventory"
    ROLLOUT_PAUSE = "rollout_pause"
    ROLLOUT_RESUME = "rollout_resume"
    ROLLOUT_ABORT = "rollout_abort"
    ROLLOUT_APPROVE = "rollout_approve"


class Command(WireMessage):
    id: Identifier
    type: LooseKeyword
    params: dict[str, Any] = Field(default_factory=dict, max_length=100)

    @property
    def known_type(self) -> CommandType | None:
        try:
            return CommandType(self.type)
        except ValueError:
            return None


class HeartbeatResponse(WireMessage):
    acknowledged: bool
    server_time: UtcDateTime
    next_heartbeat_seconds: int = Field(ge=HEARTBEAT_INTERVAL_MIN, le=HEARTBEAT_INTERVAL_MAX)
    commands: list[Command] = Field(default_factory=list, max_length=COMMANDS_MAX)
