"""From the server's ``task_create`` event to the ``task.Task`` robots receive (protocol §7.1),
and the urgency that orders the queue.

The wire's enums and ``task.proto``'s differ in spelling, and ``task.proto`` has no field for
an area: the mapping lives here, in one place, so that the tower and the server agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from navign_proto.grpc import task_pb2
from navign_proto.wire import Priority, TaskCreateEvent, TaskType

_TYPES: Final[Mapping[TaskType, task_pb2.TaskType]] = {
    TaskType.DELIVERY: task_pb2.TASK_TYPE_DELIVERY,
    TaskType.PATROL: task_pb2.TASK_TYPE_PATROL,
    TaskType.RETURN_HOME: task_pb2.TASK_TYPE_RETURN_HOME,
    TaskType.EMERGENCY: task_pb2.TASK_TYPE_EMERGENCY,
}
_PRIORITIES: Final[Mapping[Priority, task_pb2.Priority]] = {
    Priority.LOW: task_pb2.PRIORITY_LOW,
    Priority.NORMAL: task_pb2.PRIORITY_NORMAL,
    Priority.HIGH: task_pb2.PRIORITY_HIGH,
    Priority.URGENT: task_pb2.PRIORITY_URGENT,
}
#: Emergency tasks go before every other; then higher priority; then first come.
_EMERGENCY_URGENCY: Final = 8


def task_from_event(event: TaskCreateEvent, received_at: float) -> task_pb2.Task:
    """The ``task.Task`` of a ``task_create`` event, as protocol §7.1 maps it.

    ``type`` and ``priority`` by name (a type ``task.proto`` does not know becomes
    ``TASK_TYPE_UNSPECIFIED``); each location becomes a ``task.Location`` (``floor`` "" when
    absent) and its ``area_id`` goes into ``metadata`` as ``source.N.area_id`` /
    ``terminal.N.area_id``, N being the 0-based index in the list (overriding an event key of
    the same name); ``created_at`` in unix seconds (floor), the receive time when absent.
    """
    known = event.known_type
    metadata = dict(event.metadata)
    for prefix, locations in (("source", event.sources), ("terminal", event.terminals)):
        for index, location in enumerate(locations):
            metadata[f"{prefix}.{index}.area_id"] = location.area_id
    created = event.created_at.timestamp() if event.created_at is not None else received_at
    return task_pb2.Task(
        id=event.task_id,
        type=task_pb2.TASK_TYPE_UNSPECIFIED if known is None else _TYPES[known],
        sources=[
            task_pb2.Location(x=p.x, y=p.y, z=p.z, floor=p.floor or "") for p in event.sources
        ],
        terminals=[
            task_pb2.Location(x=p.x, y=p.y, z=p.z, floor=p.floor or "") for p in event.terminals
        ],
        priority=_PRIORITIES[event.priority],
        created_at=math.floor(created),
        entity_id=event.entity_id,
        metadata=metadata,
    )


def urgency_of(task: task_pb2.Task) -> int:
    """The queue's order key (higher first): the priority, above all of them for emergencies."""
    return int(task.priority) + (
        _EMERGENCY_URGENCY if task.type == task_pb2.TASK_TYPE_EMERGENCY else 0
    )
