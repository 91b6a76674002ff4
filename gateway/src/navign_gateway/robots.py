"""The robots the tower reports, and how one of them is chosen for a task.

:class:`RobotRegistry` keeps the latest ``task.RobotInfo`` per (entity, robot id), stamped with
the gateway's own receive time (the tower's ``last_seen`` is kept but never trusted for
liveness: the tower's clock is not ours). A robot not heard from for :data:`OFFLINE_AFTER_S`
becomes ``OFFLINE`` at the next :meth:`RobotRegistry.sweep`. Listeners (the task engine) hear of
every accepted report and of every robot the sweep takes offline.

:func:`rank_candidates` scores the robots that may take a task (:class:`SelectionConfig`, the
``robot_selection`` configuration of protocol §4.2).

Public: :class:`RobotRegistry`, :class:`RobotRecord`, :class:`RobotState`, :class:`Point`,
:class:`SelectionConfig`, :class:`Candidate`, :func:`rank_candidates`, :func:`record_from_info`
and the :class:`RobotError` family.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final

from navign_proto.grpc import task_pb2

log = logging.getLogger(__name__)

#: A robot not heard from for this long is OFFLINE.
OFFLINE_AFTER_S: Final = 30.0
#: A robot not heard from for this long is dropped from the registry (bounded memory).
FORGET_AFTER_S: Final = 24 * 3600.0
#: How often :meth:`RobotRegistry.run_sweeper` sweeps.
SWEEP_INTERVAL_S: Final = 5.0
#: More robots than this (all entities together) is a misbehaving tower, not a mall.
MAX_ROBOTS: Final = 10_000
#: Free-text fields (name, current task id) longer than this are refused.
MAX_TEXT: Final = 256
#: Coordinates beyond this are refused (as ``navign_proto.mall.Coordinate``).
COORDINATE_LIMIT: Final = 1e9

# Robot and entity ids end up in TaskStatusReport.robot_id / entity_id, which are Identifiers.
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Clock = Callable[[], float]
"""Unix time in seconds (``time.time``); tests pass a clock they drive."""


class RobotState(IntEnum):
    """``task.RobotState``: the numbers are the wire's and never change (protocol §7.1)."""

    UNSPECIFIED = 0
    IDLE = 1
    BUSY = 2
    CHARGING = 3
    ERROR = 4
    OFFLINE = 5


class RobotError(Exception):
    """Base of the robot registry's errors."""


class InvalidRobotReportError(RobotError):
    """A status report that cannot be kept; nothing was changed. gRPC: INVALID_ARGUMENT."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RobotRegistryFullError(RobotError):
    """A report for a new robot while :data:`MAX_ROBOTS` are known. gRPC: RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the gateway already tracks {limit} robots")
        self.limit = limit


class InvalidSelectionConfigError(RobotError):
    """A ``robot_selection`` configuration that cannot be applied; nothing was changed."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"robot_selection.{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Point:
    """A ``task.Location``: map units; ``floor`` empty when unknown."""

    x: float
    y: float
    z: float = 0.0
    floor: str = ""

    @classmethod
    def from_proto(cls, location: task_pb2.Location) -> Point:
        return cls(location.x, location.y, location.z, location.floor)

    def distance_to(self, other: Point) -> float | None:
        """Euclidean distance, or None when both floors are named and differ (the map has no
        distance between floors)."""
        if self.floor and other.floor and self.floor != other.floor:
            return None
        return math.dist((self.x, self.y, self.z), (other.x, other.y, other.z))


@dataclass(frozen=True, slots=True)
class RobotRecord:
    """The latest accepted report of one robot."""

    entity_id: str
    robot_id: str
    name: str
    state: RobotState
    battery: float
    location: Point | None
    current_task_id: str
    reported_last_seen: int
    """The tower's ``last_seen`` (unix seconds), kept for display only."""
    last_seen: float
    """When the gateway received the report (its clock); liveness is judged on this."""

    def to_proto(self) -> task_pb2.RobotInfo:
        info = task_pb2.RobotInfo(
            id=self.robot_id,
            name=self.name,
            state=int(self.state),  # type: ignore[arg-type]
            battery_level=self.battery,
            current_task_id=self.current_task_id,
            last_seen=int(self.last_seen),
            entity_id=self.entity_id,
        )
        if self.location is not None:
            p = self.location
            info.current_location.CopyFrom(task_pb2.Location(x=p.x, y=p.y, z=p.z, floor=p.floor))
        return info


def _check_id(field: str, value: str) -> str:
    if not value:
        raise InvalidRobotReportError(field, "must not be empty")
    if not _ID_RE.fullmatch(value):
        raise InvalidRobotReportError(field, "must be 1-64 letters, digits or ._:-")
    return value


def _check_text(field: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidRobotReportError(field, f"longer than {MAX_TEXT} characters")
    return value


def _check_coordinate(field: str, value: float) -> float:
    if not math.isfinite(value) or abs(value) > COORDINATE_LIMIT:
        raise InvalidRobotReportError(field, f"must be finite and within ±{COORDINATE_LIMIT:g}")
    return value


def record_from_info(info: task_pb2.RobotInfo, received_at: float) -> RobotRecord:
    """Validate one ``RobotInfo``; raises :class:`InvalidRobotReportError` naming the field.

    Refused: ids that are empty or not Identifiers (they go into the server's reports), a
    battery outside 0..100 or not finite, a state number ``task.RobotState`` does not define,
    non-finite coordinates, over-long text. ``ROBOT_STATE_UNSPECIFIED`` (a tower that did not
    set the field) is kept: such a robot is never chosen and its reports settle no task.
    """
    entity_id = _check_id("robot.entity_id", info.entity_id)
    robot_id = _check_id("robot.id", info.id)
    try:
        state = RobotState(info.state)
    except ValueError:
        raise InvalidRobotReportError("robot.state", f"unknown RobotState {info.state}") from None
    battery = info.battery_level
    if not math.isfinite(battery) or not 0.0 <= battery <= 100.0:
        raise InvalidRobotReportError("robot.battery_level", f"{battery!r} is not within 0..100")
    location: Point | None = None
    if info.HasField("current_location"):
        loc = info.current_location
        location = Point(
            _check_coordinate("robot.current_location.x", loc.x),
            _check_coordinate("robot.current_location.y", loc.y),
            _check_coordinate("robot.current_location.z", loc.z),
            _check_text("robot.current_location.floor", loc.floor),
        )
    return RobotRecord(
        entity_id=entity_id,
        robot_id=robot_id,
        name=_check_text("robot.name", info.name),
        state=state,
        battery=battery,
        location=location,
        current_task_id=_check_text("robot.current_task_id", info.current_task_id),
        reported_last_seen=info.last_seen,
        last_seen=received_at,
    )


RobotListener = Callable[[RobotRecord], Awaitable[None]]
"""Called with a robot's new record after each accepted report and each offline transition."""


class RobotRegistry:
    """The latest report per (entity, robot), in memory: the tower re-reports every robot
    within seconds, so after a restart the registry refills by itself."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        offline_after: float = OFFLINE_AFTER_S,
        forget_after: float = FORGET_AFTER_S,
        max_robots: int = MAX_ROBOTS,
    ) -> None:
        if not 0 < offline_after <= forget_after:
            raise ValueError("need 0 < offline_after <= forget_after")
        self.clock = clock
        self.offline_after = offline_after
        self.forget_after = forget_after
        self.max_robots = max_robots
        self._robots: dict[str, dict[str, RobotRecord]] = {}  # entity -> robot id -> record
        self._count = 0
        self._listeners: list[RobotListener] = []

    def add_listener(self, listener: RobotListener) -> None:
        self._listeners.append(listener)

    async def _notify(self, record: RobotRecord) -> None:
        for listener in self._listeners:
            try:
                await listener(record)
            except Exception:
                # The report itself is kept: a listener's failure (say, a full disk) must not
                # make the tower resend; the robot's next report or the sweep tries again.
                log.exception("robot %s/%s: listener failed", record.entity_id, record.robot_id)

    async def report(self, info: task_pb2.RobotInfo) -> RobotRecord:
        """Keep ``info`` as the robot's latest status, then tell the listeners.

        Raises :class:`InvalidRobotReportError` or :class:`RobotRegistryFullError`, having
        changed nothing."""
        record = record_from_info(info, self.clock())
        entity = self._robots.setdefault(record.entity_id, {})
        if record.robot_id not in entity:
            if self._count >= self.max_robots:
                if not entity:
                    del self._robots[record.entity_id]
                raise RobotRegistryFullError(self.max_robots)
            self._count += 1
        entity[record.robot_id] = record
        await self._notify(record)
        return record

    async def sweep(self) -> list[RobotRecord]:
        """Mark OFFLINE every robot silent for ``offline_after``; forget the ones silent for
        ``forget_after``. Returns the robots that went offline in this sweep."""
        now = self.clock()
        went_offline: list[RobotRecord] = []
        for entity_id in sorted(self._robots):
            entity = self._robots[entity_id]
            for robot_id in sorted(entity):
                record = entity[robot_id]
                silent = now - record.last_seen
                if silent >= self.forget_after:
                    del entity[robot_id]
                    self._count -= 1
                elif silent >= self.offline_after and record.state is not RobotState.OFFLINE:
                    entity[robot_id] = offline = replace(record, state=RobotState.OFFLINE)
                    went_offline.append(offline)
            if not entity:
                del self._robots[entity_id]
        for record in went_offline:
            log.info("robot %s/%s offline (silent)", record.entity_id, record.robot_id)
            await self._notify(record)
        return went_offline

    async def run_sweeper(self, interval: float = SWEEP_INTERVAL_S) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    def get(self, entity_id: str, robot_id: str) -> RobotRecord | None:
        return self._robots.get(entity_id, {}).get(robot_id)

    def robots(self, entity_id: str) -> list[RobotRecord]:
        """The entity's robots, by id."""
        entity = self._robots.get(entity_id, {})
        return [entity[robot_id] for robot_id in sorted(entity)]

    def online_count(self) -> int:
        """Robots (all entities) whose latest state is not OFFLINE: the heartbeat's
        ``connected_robots``."""
        return sum(
            1
            for entity in self._robots.values()
            for r in entity.values()
            if r.state is not RobotState.OFFLINE
        )


# -- choosing a robot -------------------------------------------------------------------------

DEFAULT_WEIGHTS: Final = {"battery": 0.6, "distance": 0.3, "load": 0.1}
DEFAULT_MIN_BATTERY: Final = 25.0


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSelectionConfigError(key, f"must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidSelectionConfigError(key, "must be finite")
    return number


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """The ``robot_selection`` configuration (protocol §4.2 ``config_update``).

    Shape: ``{"weights": {"battery": w, "distance": w, "load": w}, "min_battery": percent}``.
    Each version is a whole configuration: a key (or weight) it leaves out takes its default
    (weights 0.6 / 0.3 / 0.1, ``min_battery`` 25), so the result never depends on which
    earlier versions this gateway happened to see. Unknown top-level keys are ignored (a newer
    server may send more); an unknown weight name is refused, since it could not be honoured.
    """

    battery_weight: float = DEFAULT_WEIGHTS["battery"]
    distance_weight: float = DEFAULT_WEIGHTS["distance"]
    load_weight: float = DEFAULT_WEIGHTS["load"]
    min_battery: float = DEFAULT_MIN_BATTERY

    @classmethod
    def from_mapping(cls, config: Mapping[str, object]) -> SelectionConfig:
        """Raises :class:`InvalidSelectionConfigError`: weights negative, all zero, not
        numbers or unknown; ``min_battery`` outside 0..100."""
        weights = dict(DEFAULT_WEIGHTS)
        raw_weights = config.get("weights")
        if raw_weights is not None:
            if not isinstance(raw_weights, Mapping):
                raise InvalidSelectionConfigError("weights", "must be an object")
            for name, value in raw_weights.items():
                if name not in weights:
                    raise InvalidSelectionConfigError(
                        f"weights.{name}", "unknown weight (known: battery, distance, load)"
                    )
                weight = _number(f"weights.{name}", value)
                if weight < 0:
                    raise InvalidSelectionConfigError(f"weights.{name}", "must not be negative")
                weights[name] = weight
        if not any(weights.values()):
            raise InvalidSelectionConfigError("weights", "must not all be zero")
        min_battery = DEFAULT_MIN_BATTERY
        if "min_battery" in config:
            min_battery = _number("min_battery", config["min_battery"])
            if not 0 <= min_battery <= 100:
                raise InvalidSelectionConfigError("min_battery", "must be within 0..100")
        return cls(weights["battery"], weights["distance"], weights["load"], min_battery)

    def to_mapping(self) -> dict[str, object]:
        return {
            "weights": {
                "battery": self.battery_weight,
                "distance": self.distance_weight,
                "load": self.load_weight,
            },
            "min_battery": self.min_battery,
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """One eligible robot and how it scored (kept whole so that a choice can be explained)."""

    robot_id: str
    score: float
    battery: float
    distance: float | None
    """Map units to the task's first source; None when unknown (no location, other floor)."""
    distance_norm: float
    load: int


#: Scores are compared at this many decimals, so that float noise never breaks a tie
#: differently on two machines; equal scores go to the smaller robot id.
SCORE_DECIMALS: Final = 9


def rank_candidates(
    robots: Iterable[RobotRecord],
    source: Point,
    loads: Mapping[str, int],
    config: SelectionConfig,
    *,
    load_cap: int,
    avoid: str | None = None,
) -> list[Candidate]:
    """The robots that may take a task starting at ``source``, best first.

    Eligible: state IDLE, ``battery >= min_battery``, and ``load < load_cap``, where a
    robot's load is the number of tasks assigned to it and not yet finished (``loads``).
    ``avoid`` (the robot a requeued task was taken from) is dropped when another robot is
    eligible.

    Score (higher is better), each term within 0..1::

        battery/100 * w_battery + (1 - d_norm) * w_distance + (1 - load/load_cap) * w_load

    ``d`` is the Euclidean distance (x, y, z) from the robot to ``source``;
    ``d_norm = d / d_max`` with ``d_max`` the largest known ``d`` among the eligible robots
    (0 for everyone when ``d_max`` is 0). A robot whose distance is unknown (no location,
    or both floors named and different) gets ``d_norm = 1``, as far as the farthest. Ties
    (equal at :data:`SCORE_DECIMALS` decimals) go to the smaller robot id.
    """
    if load_cap < 1:
        raise ValueError("load_cap must be at least 1")
    eligible = [
        r
        for r in robots
        if r.state is RobotState.IDLE
        and r.battery >= config.min_battery
        and loads.get(r.robot_id, 0) < load_cap
    ]
    if avoid is not None and any(r.robot_id != avoid for r in eligible):
        eligible = [r for r in eligible if r.robot_id != avoid]
    distances = {
        r.robot_id: (None if r.location is None else r.location.distance_to(source))
        for r in eligible
    }
    known = [d for d in distances.values() if d is not None]
    d_max = max(known, default=0.0)
    ranked: list[Candidate] = []
    for robot in eligible:
        d = distances[robot.robot_id]
        d_norm = 1.0 if d is None else (d / d_max if d_max > 0 else 0.0)
        load = loads.get(robot.robot_id, 0)
        score = (
            config.battery_weight * robot.battery / 100.0
            + config.distance_weight * (1.0 - d_norm)
            + config.load_weight * (1.0 - load / load_cap)
        )
        ranked.append(Candidate(robot.robot_id, score, robot.battery, d, d_norm, load))
    ranked.sort(key=lambda c: (-round(c.score, SCORE_DECIMALS), c.robot_id))
    return ranked
