"""The rollout policy an admin gives with a firmware assignment, validated at the edge; and the
parameters of the heartbeat commands that steer a gateway's rollout (protocol §3.7).

It is ``wire.RolloutPolicy`` (what gateways read in ``firmware_update.rollout_strategy``) plus the
keys issue 3 asks an operator to set, typed here: ``targets``, ``canary_size``,
``manual_approval`` and ``maintenance_windows``. The wire model keeps unknown keys
(``extra="allow"``), so gateways receive these unchanged; at the admin edge an unknown key is an
error, so a misspelt one fails loudly instead of being carried silently.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Final, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from navign_proto.mall import Chip, Identifier
from navign_proto.wire import FirmwareChannel, RolloutPolicy
from navign_proto.wire._types import Keyword, StrictWireMessage
from navign_proto.wire.events import RolloutWave

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEK: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_ZONE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")


class RolloutTargets(StrictWireMessage):
    """Which beacons the rollout covers; every non-empty list narrows it (all of them apply)."""

    chips: list[Chip] = Field(default_factory=list, max_length=8)
    device_types: list[Keyword] = Field(default_factory=list, max_length=16)
    channels: list[FirmwareChannel] = Field(default_factory=list, max_length=3)
    beacon_ids: list[Identifier] = Field(default_factory=list, max_length=10_000)


class CanarySize(StrictWireMessage):
    """How many beacons form the canary stage: exactly one of ``count`` and ``percent``."""

    count: int | None = Field(default=None, ge=1, le=10_000)
    percent: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give exactly one of count and percent")
        return self


class MaintenanceWindow(StrictWireMessage):
    """When beacons may be updated: ``start``-``end`` local time on ``days``. ``end`` before
    ``start`` crosses midnight (the window belongs to the day it starts)."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEK), min_length=1, max_length=7)
    start: str = Field(pattern=CLOCK_PATTERN)
    end: str = Field(pattern=CLOCK_PATTERN)
    timezone: str = Field("UTC", min_length=1, max_length=64)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not _ZONE_RE.fullmatch(value):
            raise ValueError("timezone must be an IANA name such as Europe/Berlin or UTC")
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start == self.end:
            raise ValueError("a maintenance window needs different start and end times")
        if len(set(self.days)) != len(self.days):
            raise ValueError("a day is listed twice")
        return self


class Wave(RolloutWave):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RolloutPolicyInput(RolloutPolicy):
    model_config = ConfigDict(extra="forbid", frozen=True)

    waves: list[Wave] = Field(default_factory=list, max_length=16)  # type: ignore[assignment]
    targets: RolloutTargets | None = None
    canary_size: CanarySize | None = None
    #: After the canary stage, wait for an operator (``hold_seconds`` is then a minimum).
    manual_approval: bool = False
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=32)


class RolloutCommandParams(StrictWireMessage):
    """``params`` of ``rollout_pause``, ``rollout_resume`` and ``rollout_abort``."""

    #: The gateway's rollout id: the assignment id (``fwa-...``) or ``ro-<seq>``.
    rollout_id: Identifier
    reason: str = Field("", max_length=1000)


class RolloutApproveParams(RolloutCommandParams):
    """``params`` of ``rollout_approve``: the wave let go (the one after the current wave)."""

    wave: Annotated[int, Field(strict=True, ge=1, le=10_000_000)]


#: Heartbeat command types that steer a rollout, and what their ``params`` must be.
ROLLOUT_COMMANDS: Final[Mapping[str, type[RolloutCommandParams]]] = {
    "rollout_pause": RolloutCommandParams,
    "rollout_resume": RolloutCommandParams,
    "rollout_abort": RolloutCommandParams,
    "rollout_approve": RolloutApproveParams,
}
