from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_DELIVERY: _ClassVar[TaskType]
    TASK_TYPE_PATROL: _ClassVar[TaskType]
    TASK_TYPE_RETURN_HOME: _ClassVar[TaskType]
    TASK_TYPE_EMERGENCY: _ClassVar[TaskType]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_URGENT: _ClassVar[Priority]

class RobotState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROBOT_STATE_UNSPECIFIED: _ClassVar[RobotState]
    ROBOT_STATE_IDLE: _ClassVar[RobotState]
    ROBOT_STATE_BUSY: _ClassVar[RobotState]
    ROBOT_STATE_CHARGING: _ClassVar[RobotState]
    ROBOT_STATE_ERROR: _ClassVar[RobotState]
    ROBOT_STATE_OFFLINE: _ClassVar[RobotState]
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_DELIVERY: TaskType
TASK_TYPE_PATROL: TaskType
TASK_TYPE_RETURN_HOME: TaskType
TASK_TYPE_EMERGENCY: TaskType
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_URGENT: Priority
ROBOT_STATE_UNSPECIFIED: RobotState
ROBOT_STATE_IDLE: RobotState
ROBOT_STATE_BUSY: RobotState
ROBOT_STATE_CHARGING: RobotState
ROBOT_STATE_ERROR: RobotState
ROBOT_STATE_OFFLINE: RobotState

class Location(_message.Message):
    __slots__ = ("x", "y", "z", "floor")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    floor: str
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., floor: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "type", "sources", "terminals", "priority", "created_at", "entity_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TERMINALS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: TaskType
    sources: _containers.RepeatedCompositeFieldContainer[Location]
    terminals: _containers.RepeatedCompositeFieldContainer[Location]
    priority: Priority
    created_at: int
    entity_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[TaskType, str]] = ..., sources: _Optional[_Iterable[_Union[Location, _Mapping]]] = ..., terminals: _Optional[_Iterable[_Union[Location, _Mapping]]] = ..., priority: _Optional[_Union[Priority, str]] = ..., created_at: _Optional[int] = ..., entity_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RobotInfo(_message.Message):
    __slots__ = ("id", "name", "state", "current_location", "battery_level", "current_task_id", "last_seen", "entity_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    BATTERY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: RobotState
    current_location: Location
    battery_level: float
    current_task_id: str
    last_seen: int
    entity_id: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[RobotState, str]] = ..., current_location: _Optional[_Union[Location, _Mapping]] = ..., battery_level: _Optional[float] = ..., current_task_id: _Optional[str] = ..., last_seen: _Optional[int] = ..., entity_id: _Optional[str] = ...) -> None: ...

class RobotReportRequest(_message.Message):
    __slots__ = ("robot",)
    ROBOT_FIELD_NUMBER: _ClassVar[int]
    robot: RobotInfo
    def __init__(self, robot: _Optional[_Union[RobotInfo, _Mapping]] = ...) -> None: ...

class RobotReportResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class RobotDistributionRequest(_message.Message):
    __slots__ = ("entity_id",)
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    def __init__(self, entity_id: _Optional[str] = ...) -> None: ...

class TaskAssignment(_message.Message):
    __slots__ = ("robot_id", "task")
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    robot_id: str
    task: Task
    def __init__(self, robot_id: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...
