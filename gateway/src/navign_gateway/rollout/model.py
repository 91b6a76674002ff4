"""What a rollout is on the gateway: its states, its per-beacon entries, and the policy it follows.

The policy arrives with the server's ``firmware_update`` event (``rollout_strategy``, protocol
§6.7): ``wire.RolloutPolicy`` plus the keys the admin edge validated (``targets``,
``canary_size``, ``manual_approval``, ``maintenance_windows``). :func:`parse_policy` reads it
leniently (a gateway must not refuse a rollout because the server grew a key) but never guesses:
a malformed known key is an error, and the rollout is refused with that reason.

Public: :class:`RolloutState`, :class:`EntryState`, :class:`Policy`, :class:`Window`,
:class:`Rollout`, :class:`Entry`, :func:`parse_policy`, :class:`PolicyError`, and the sets
:data:`TERMINAL_ROLLOUT`, :data:`TERMINAL_ENTRY`, :data:`FAILED_ENTRY`, :data:`ACTIVE_ENTRY`.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

from navign_proto.wire import RolloutPolicy


class RolloutState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    HOLDING = "holding"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    COMPLETED = "completed"


class EntryState(StrEnum):
    PENDING = "pending"
    OFFERED = "offered"
    TRANSFERRING = "transferring"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


TERMINAL_ROLLOUT: Final = frozenset({RolloutState.ABORTED, RolloutState.COMPLETED})
TERMINAL_ENTRY: Final = frozenset({EntryState.CONFIRMED, EntryState.FAILED, EntryState.ROLLED_BACK})
FAILED_ENTRY: Final = frozenset({EntryState.FAILED, EntryState.ROLLED_BACK})
#: Entries a beacon is working on: they finish even when the rollout is paused or aborted.
ACTIVE_ENTRY: Final = frozenset(
    {
        EntryState.OFFERED,
        EntryState.TRANSFERRING,
        EntryState.VERIFYING,
        EntryState.INSTALLING,
        EntryState.REBOOTING,
    }
)

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")

#: Defaults for what the policy leaves out.
DEFAULT_FAILURE_THRESHOLD: Final = 0.2
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_CANARY_PERCENT: Final = 10.0


class PolicyError(ValueError):
    """The rollout policy cannot be followed (the message says which key and why)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window: ``start``-``end`` minutes after local midnight on ``days``; an end
    before the start crosses midnight and belongs to the day it starts."""

    days: frozenset[int]  # 0 = Monday
    start: int
    end: int
    timezone: str

    def to_json(self) -> dict[str, Any]:
        return {
            "days": [DAYS[d] for d in sorted(self.days)],
            "start": f"{self.start // 60:02d}:{self.start % 60:02d}",
            "end": f"{self.end // 60:02d}:{self.end % 60:02d}",
            "timezone": self.timezone,
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy as the engine follows it (every default filled in)."""

    chips: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    beacon_ids: tuple[str, ...] = ()
    canary: tuple[str, ...] = ()
    canary_count: int | None = None
    canary_percent: float | None = None
    #: Later waves as percentages of all targeted beacons (the rest goes into the last wave).
    waves: tuple[tuple[float, int], ...] = ()
    batch_size: int | None = None
    hold_seconds: int = 0
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    manual_approval: bool = False
    windows: tuple[Window, ...] = ()
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def summary(self) -> str:
        parts: list[str] = []
        if self.canary:
            parts.append(f"canary {len(self.canary)} listed")
        elif self.canary_count is not None:
            parts.append(f"canary {self.canary_count}")
        else:
            parts.append(f"canary {self.canary_percent or DEFAULT_CANARY_PERCENT:g}%")
        if self.waves:
            parts.append("waves " + ", ".join(f"{p:g}%" for p, _ in self.waves))
        elif self.batch_size:
            parts.append(f"batches of {self.batch_size}")
        if self.hold_seconds:
            parts.append(f"hold {self.hold_seconds} s")
        if self.manual_approval:
            parts.append("manual approval")
        parts.append(f"halt above {self.failure_threshold:.0%} failed")
        if self.windows:
            parts.append(f"{len(self.windows)} maintenance window(s)")
        return ", ".join(parts)


@dataclass(slots=True)
class Entry:
    """One beacon in one rollout."""

    beacon_id: str
    wave: int
    state: EntryState = EntryState.PENDING
    attempts: int = 0
    failure_reason: str = ""
    bytes_transferred: int = 0
    from_version: str = ""
    transport: str = ""
    updated_at: float = 0.0
    #: When the current state times out (monotonic seconds are not stored: wall clock).
    deadline: float | None = None
    #: Not before this time (retry backoff), wall clock.
    not_before: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_ENTRY


@dataclass(slots=True)
class Rollout:
    """A staged update of the targeted beacons to one release."""

    rollout_id: str
    firmware_id: str
    seq: int
    target: str
    kind: str
    version: str
    device_type: str
    channel: str
    policy: Policy
    raw_policy: dict[str, Any]
    state: RolloutState = RolloutState.PENDING
    state_reason: str = ""
    current_wave: int = 0
    wave_count: int = 0
    #: End of the current hold (wall clock); None when not holding for time.
    hold_until: float | None = None
    #: HOLDING for an operator's ApproveWave of ``current_wave + 1``.
    awaiting_approval: bool = False
    #: The state PAUSED or HALTED will return to on resume.
    resume_to: RolloutState | None = None
    #: When the current wave started (wall clock), for the offline timeout.
    wave_started_at: float | None = None
    #: Failures of the current wave an operator accepted by resuming a halted rollout.
    tolerated: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    manifest_sha256: str = ""
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_ROLLOUT

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in EntryState}
        for entry in self.entries.values():
            counts[entry.state.value] += 1
        counts["total"] = len(self.entries)
        return counts

    def wave_entries(self, wave: int) -> list[Entry]:
        return [e for e in self.entries.values() if e.wave == wave]


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise PolicyError(f"{key}: expected a list of strings")
    return tuple(raw)


def _clock(text: Any, key: str) -> int:
    match = _CLOCK.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise PolicyError(f"{key}: expected HH:MM")
    return int(match[1]) * 60 + int(match[2])


def _window(raw: Any, index: int) -> Window:
    key = f"maintenance_windows[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{key}: expected an object")
    days = raw.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise PolicyError(f"{key}.days: expected a non-empty list of mon..sun")
    zone = raw.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise PolicyError(f"{key}.timezone: unknown timezone {zone!r}") from None
    start, end = _clock(raw.get("start"), f"{key}.start"), _clock(raw.get("end"), f"{key}.end")
    if start == end:
        raise PolicyError(f"{key}: start and end are the same time")
    return Window(frozenset(DAYS.index(d) for d in days), start, end, zone)


def parse_policy(raw: dict[str, Any] | None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Policy:
    """The engine's policy from the event's ``rollout_strategy`` (None: every default)."""
    raw = dict(raw or {})
    try:
        base = RolloutPolicy.model_validate(raw)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "policy"
        raise PolicyError(f"{where}: {problem['msg']}") from None
    targets = raw.get("targets") or {}
    if not isinstance(targets, dict):
        raise PolicyError("targets: expected an object")
    canary_count: int | None = None
    canary_percent: float | None = None
    size = raw.get("canary_size")
    if size is not None:
        if not isinstance(size, dict) or len(size) != 1:
            raise PolicyError("canary_size: expected {count} or {percent}")
        if "count" in size:
            count = size["count"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise PolicyError("canary_size.count: expected a positive integer")
            canary_count = count
        elif "percent" in size:
            percent = size["percent"]
            if not isinstance(percent, int | float) or not 0 < percent <= 100:
                raise PolicyError("canary_size.percent: expected a number in (0, 100]")
            canary_percent = float(percent)
        else:
            raise PolicyError("canary_size: expected {count} or {percent}")
    approval = raw.get("manual_approval", False)
    if not isinstance(approval, bool):
        raise PolicyError("manual_approval: expected true or false")
    windows = raw.get("maintenance_windows") or []
    if not isinstance(windows, list):
        raise PolicyError("maintenance_windows: expected a list")
    threshold = base.failure_threshold
    return Policy(
        chips=_strings(targets.get("chips"), "targets.chips"),
        device_types=_strings(targets.get("device_types"), "targets.device_types"),
        channels=_strings(targets.get("channels"), "targets.channels"),
        beacon_ids=_strings(targets.get("beacon_ids"), "targets.beacon_ids"),
        canary=tuple(base.canary),
        canary_count=canary_count,
        canary_percent=canary_percent,
        waves=tuple((w.percent, w.hold_seconds) for w in base.waves),
        batch_size=base.batch_size,
        hold_seconds=base.hold_seconds or 0,
        failure_threshold=DEFAULT_FAILURE_THRESHOLD if threshold is None else threshold,
        manual_approval=approval,
        windows=tuple(_window(w, i) for i, w in enumerate(windows)),
        max_attempts=max_attempts,
    )
