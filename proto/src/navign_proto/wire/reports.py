"""What gateways report to the server: beacon status batches, firmware install status, task
status and rollout progress (``POST /api/orchestrators/reports/...``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field, StringConstraints, model_validator

from navign_proto.mall import Identifier, MacAddress
from navign_proto.wire._types import Count, StrictWireMessage, UtcDateTime
from navign_proto.wire.events import TaskLocation

BEACON_BATCH_MAX: Final = 1000
ShortCode = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
]
VersionText = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class OtaState(StrEnum):
    """A beacon's update state, as the rollout engine tracks it (idle when no update runs)."""

    IDLE = "idle"
    PENDING = "pending"
    OFFERED = "offered"
    TRANSFERRING = "transferring"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class BeaconStatus(StrictWireMessage):
    beacon_id: Identifier
    mac: MacAddress | None = None
    firmware_version: VersionText | None = None
    app_version: VersionText | None = None
    ota_state: OtaState = OtaState.IDLE
    rssi: int | None = Field(None, ge=-127, le=20)
    last_seen: UtcDateTime


class BeaconStatusReport(StrictWireMessage):
    entity_id: Identifier
    beacons: list[BeaconStatus] = Field(min_length=1, max_length=BEACON_BATCH_MAX)


class FirmwareInstallStatus(StrEnum):
    """The seed's firmware status values."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class FirmwareStatusReport(StrictWireMessage):
    """One step of one release on one beacon (or on the gateway itself: no beacon_id)."""

    entity_id: Identifier
    firmware_id: Identifier
    beacon_id: Identifier | None = None
    status: FirmwareInstallStatus
    error_code: ShortCode | None = None
    message: Annotated[str, StringConstraints(max_length=1000)] | None = None
    at: UtcDateTime


class TaskStatus(StrEnum):
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatusReport(StrictWireMessage):
    entity_id: Identifier
    task_id: Identifier
    status: TaskStatus
    robot_id: Identifier | None = None
    progress_percent: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    location: TaskLocation | None = None
    message: Annotated[str, StringConstraints(max_length=1000)] | None = None
    at: UtcDateTime


class RolloutState(StrEnum):
    """Where a gateway's rollout of one release stands."""

    PENDING = "pending"
    RUNNING = "running"
    HOLDING = "holding"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    COMPLETED = "completed"


#: The beacon states a rollout counts (``OtaState`` but ``idle``), each a field of RolloutCounts.
ROLLOUT_COUNT_STATES: Final = tuple(s.value for s in OtaState if s is not OtaState.IDLE)


class RolloutCounts(StrictWireMessage):
    """Beacons of a rollout by their update state; the states add up to ``total``."""

    total: Count
    pending: Count
    offered: Count
    transferring: Count
    verifying: Count
    installing: Count
    rebooting: Count
    confirmed: Count
    failed: Count
    rolled_back: Count

    @model_validator(mode="after")
    def _states_add_up(self) -> RolloutCounts:
        states = sum(getattr(self, name) for name in ROLLOUT_COUNT_STATES)
        if states != self.total:
            raise ValueError(f"the states add up to {states}, not to total {self.total}")
        return self


class RolloutStatusReport(StrictWireMessage):
    """A rollout's summary after a change: state, wave and beacons per state."""

    entity_id: Identifier
    #: The server's assignment id (``fwa-...``), or ``ro-<seq>`` for an event without one.
    rollout_id: Identifier
    firmware_id: Identifier
    state: RolloutState
    state_reason: Annotated[str, StringConstraints(max_length=1000)] = ""
    current_wave: Count
    wave_count: Count
    counts: RolloutCounts
    at: UtcDateTime

    @model_validator(mode="after")
    def _wave_in_range(self) -> RolloutStatusReport:
        if self.current_wave > self.wave_count:
            raise ValueError(
                f"current_wave {self.current_wave} is beyond wave_count {self.wave_count}"
            )
        return self


class ReportAccepted(StrictWireMessage):
    accepted: int = Field(ge=0)
