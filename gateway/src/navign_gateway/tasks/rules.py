"""The engine's decisions, without SQL or I/O: which robot gets each queued task, what a
robot's report settles, and which assignments are overdue (the rules of the package
docstring).

The engine reads the records, asks these functions, then writes the changes under its lock;
each rule can be read, and tested, on plain records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from navign_gateway.robots import (
    RobotRecord,
    RobotRegistry,
    RobotState,
    SelectionConfig,
    rank_candidates,
)
from navign_gateway.tasks.model import TaskRecord, TaskState

#: A robot in one of these states loses its tasks (requeued).
LOST: tuple[RobotState, ...] = (RobotState.OFFLINE, RobotState.ERROR)


def settle(
    held: Sequence[TaskRecord], robot: RobotRecord
) -> tuple[list[TaskRecord], list[TaskRecord]]:
    """The held tasks a report of a working robot accepts and completes: an assignment is
    accepted when the robot is BUSY with it; an accepted task is complete once the robot's
    current task is another one (``task.proto`` has no "done" field)."""
    current = robot.current_task_id
    accept = [
        r
        for r in held
        if r.state is TaskState.ASSIGNED and robot.state is RobotState.BUSY and r.task_id == current
    ]
    complete = [r for r in held if r.state is TaskState.ACCEPTED and r.task_id != current]
    return accept, complete


def overdue(
    held: Sequence[TaskRecord],
    registry: RobotRegistry,
    *,
    now: float,
    started_at: float,
    accept_timeout: float,
) -> list[tuple[TaskRecord, str]]:
    """The held tasks to requeue, with the reason: the robot is OFFLINE or ERROR, or has not
    reported for ``offline_after`` since the gateway started, or the assignment was not
    accepted within ``accept_timeout`` of the robot being free (a robot with an accepted task
    is not free)."""
    working = {(r.entity_id, r.robot_id) for r in held if r.state is TaskState.ACCEPTED}
    due: list[tuple[TaskRecord, str]] = []
    for record in held:
        assert record.robot_id is not None  # the table's CHECK
        robot = registry.get(record.entity_id, record.robot_id)
        if robot is None:
            if now - started_at >= registry.offline_after:
                due.append((record, f"robot {record.robot_id} not heard from"))
        elif robot.state in LOST:
            due.append((record, f"robot {record.robot_id} is {robot.state.name}"))
        elif (
            record.state is TaskState.ASSIGNED
            and (record.entity_id, record.robot_id) not in working
            and record.wait_since is not None
            and now - record.wait_since >= accept_timeout
        ):
            reason = f"not accepted by {record.robot_id} within {accept_timeout:g} s"
            due.append((record, reason))
    return due


def plan_assignments(
    queued: Sequence[TaskRecord],
    robots: Sequence[RobotRecord],
    loads: Mapping[str, int],
    config: SelectionConfig,
    *,
    load_cap: int,
) -> list[tuple[TaskRecord, str, str]]:
    """(task, robot id, reason) for the queued tasks, in their order, each to its best robot
    (avoiding the task's last robot when another is eligible), until nobody is free. Each
    assignment adds to its robot's load for the next."""
    loads = dict(loads)
    plan: list[tuple[TaskRecord, str, str]] = []
    for record in queued:
        ranked = rank_candidates(
            robots, record.source, loads, config, load_cap=load_cap, avoid=record.last_robot_id
        )
        if not ranked:
            break  # eligibility does not depend on the task: nobody is free
        best = ranked[0]
        reason = f"score {best.score:.4f} of {len(ranked)} candidate(s)"
        loads[best.robot_id] = loads.get(best.robot_id, 0) + 1
        plan.append((record, best.robot_id, reason))
    return plan
