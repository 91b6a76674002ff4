import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSPORT_UNSPECIFIED: _ClassVar[Transport]
    TRANSPORT_WIFI: _ClassVar[Transport]
    TRANSPORT_BLE: _ClassVar[Transport]

class OtaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OTA_STATE_UNSPECIFIED: _ClassVar[OtaState]
    OTA_STATE_IDLE: _ClassVar[OtaState]
    OTA_STATE_PENDING: _ClassVar[OtaState]
    OTA_STATE_OFFERED: _ClassVar[OtaState]
    OTA_STATE_TRANSFERRING: _ClassVar[OtaState]
    OTA_STATE_VERIFYING: _ClassVar[OtaState]
    OTA_STATE_INSTALLING: _ClassVar[OtaState]
    OTA_STATE_REBOOTING: _ClassVar[OtaState]
    OTA_STATE_CONFIRMED: _ClassVar[OtaState]
    OTA_STATE_FAILED: _ClassVar[OtaState]
    OTA_STATE_ROLLED_BACK: _ClassVar[OtaState]

class FirmwareKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIRMWARE_KIND_UNSPECIFIED: _ClassVar[FirmwareKind]
    FIRMWARE_KIND_APP: _ClassVar[FirmwareKind]
    FIRMWARE_KIND_IMAGE: _ClassVar[FirmwareKind]

class UplinkState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPLINK_STATE_UNSPECIFIED: _ClassVar[UplinkState]
    UPLINK_STATE_CONNECTED: _ClassVar[UplinkState]
    UPLINK_STATE_CONNECTING: _ClassVar[UplinkState]
    UPLINK_STATE_OFFLINE: _ClassVar[UplinkState]
    UPLINK_STATE_PENDING_APPROVAL: _ClassVar[UplinkState]
    UPLINK_STATE_REFUSED: _ClassVar[UplinkState]

class BeaconChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BEACON_CHANGE_UNSPECIFIED: _ClassVar[BeaconChange]
    BEACON_CHANGE_ADDED: _ClassVar[BeaconChange]
    BEACON_CHANGE_UPDATED: _ClassVar[BeaconChange]
    BEACON_CHANGE_REMOVED: _ClassVar[BeaconChange]
    BEACON_CHANGE_SNAPSHOT_END: _ClassVar[BeaconChange]

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PENDING: _ClassVar[RolloutState]
    ROLLOUT_STATE_RUNNING: _ClassVar[RolloutState]
    ROLLOUT_STATE_HOLDING: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_HALTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ABORTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_COMPLETED: _ClassVar[RolloutState]
TRANSPORT_UNSPECIFIED: Transport
TRANSPORT_WIFI: Transport
TRANSPORT_BLE: Transport
OTA_STATE_UNSPECIFIED: OtaState
OTA_STATE_IDLE: OtaState
OTA_STATE_PENDING: OtaState
OTA_STATE_OFFERED: OtaState
OTA_STATE_TRANSFERRING: OtaState
OTA_STATE_VERIFYING: OtaState
OTA_STATE_INSTALLING: OtaState
OTA_STATE_REBOOTING: OtaState
OTA_STATE_CONFIRMED: OtaState
OTA_STATE_FAILED: OtaState
OTA_STATE_ROLLED_BACK: OtaState
FIRMWARE_KIND_UNSPECIFIED: FirmwareKind
FIRMWARE_KIND_APP: FirmwareKind
FIRMWARE_KIND_IMAGE: FirmwareKind
UPLINK_STATE_UNSPECIFIED: UplinkState
UPLINK_STATE_CONNECTED: UplinkState
UPLINK_STATE_CONNECTING: UplinkState
UPLINK_STATE_OFFLINE: UplinkState
UPLINK_STATE_PENDING_APPROVAL: UplinkState
UPLINK_STATE_REFUSED: UplinkState
BEACON_CHANGE_UNSPECIFIED: BeaconChange
BEACON_CHANGE_ADDED: BeaconChange
BEACON_CHANGE_UPDATED: BeaconChange
BEACON_CHANGE_REMOVED: BeaconChange
BEACON_CHANGE_SNAPSHOT_END: BeaconChange
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_PENDING: RolloutState
ROLLOUT_STATE_RUNNING: RolloutState
ROLLOUT_STATE_HOLDING: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_HALTED: RolloutState
ROLLOUT_STATE_ABORTED: RolloutState
ROLLOUT_STATE_COMPLETED: RolloutState

class FirmwareCacheUsage(_message.Message):
    __slots__ = ("used_bytes", "capacity_bytes", "release_count")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COUNT_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    capacity_bytes: int
    release_count: int
    def __init__(self, used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., release_count: _Optional[int] = ...) -> None: ...

class DataChecksums(_message.Message):
    __slots__ = ("global_checksum", "collections")
    class CollectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GLOBAL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    global_checksum: str
    collections: _containers.ScalarMap[str, str]
    def __init__(self, global_checksum: _Optional[str] = ..., collections: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GatewayStatus(_message.Message):
    __slots__ = ("gateway_id", "entity_id", "version", "uptime", "uplink_state", "uplink_detail", "last_sync_time", "last_sync_sequence", "checksums", "firmware_cache")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    UPLINK_STATE_FIELD_NUMBER: _ClassVar[int]
    UPLINK_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_CACHE_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    entity_id: str
    version: str
    uptime: _duration_pb2.Duration
    uplink_state: UplinkState
    uplink_detail: str
    last_sync_time: _timestamp_pb2.Timestamp
    last_sync_sequence: int
    checksums: DataChecksums
    firmware_cache: FirmwareCacheUsage
    def __init__(self, gateway_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., version: _Optional[str] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., uplink_state: _Optional[_Union[UplinkState, str]] = ..., uplink_detail: _Optional[str] = ..., last_sync_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_sync_sequence: _Optional[int] = ..., checksums: _Optional[_Union[DataChecksums, _Mapping]] = ..., firmware_cache: _Optional[_Union[FirmwareCacheUsage, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: GatewayStatus
    def __init__(self, status: _Optional[_Union[GatewayStatus, _Mapping]] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ("min_interval",)
    MIN_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    min_interval: _duration_pb2.Duration
    def __init__(self, min_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: GatewayStatus
    def __init__(self, status: _Optional[_Union[GatewayStatus, _Mapping]] = ...) -> None: ...

class Beacon(_message.Message):
    __slots__ = ("beacon_id", "mac", "chip_target", "firmware_version", "app_version", "ota_state", "rollout_id", "rssi_dbm", "last_seen", "transport", "online")
    BEACON_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    CHIP_TARGET_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    OTA_STATE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    RSSI_DBM_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    beacon_id: str
    mac: str
    chip_target: str
    firmware_version: str
    app_version: str
    ota_state: OtaState
    rollout_id: str
    rssi_dbm: int
    last_seen: _timestamp_pb2.Timestamp
    transport: Transport
    online: bool
    def __init__(self, beacon_id: _Optional[str] = ..., mac: _Optional[str] = ..., chip_target: _Optional[str] = ..., firmware_version: _Optional[str] = ..., app_version: _Optional[str] = ..., ota_state: _Optional[_Union[OtaState, str]] = ..., rollout_id: _Optional[str] = ..., rssi_dbm: _Optional[int] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transport: _Optional[_Union[Transport, str]] = ..., online: _Optional[bool] = ...) -> None: ...

class BeaconFilter(_message.Message):
    __slots__ = ("chip_target", "firmware_version", "app_version", "ota_states", "transport", "online_only")
    CHIP_TARGET_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    OTA_STATES_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ONLY_FIELD_NUMBER: _ClassVar[int]
    chip_target: str
    firmware_version: str
    app_version: str
    ota_states: _containers.RepeatedScalarFieldContainer[OtaState]
    transport: Transport
    online_only: bool
    def __init__(self, chip_target: _Optional[str] = ..., firmware_version: _Optional[str] = ..., app_version: _Optional[str] = ..., ota_states: _Optional[_Iterable[_Union[OtaState, str]]] = ..., transport: _Optional[_Union[Transport, str]] = ..., online_only: _Optional[bool] = ...) -> None: ...

class ListBeaconsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: BeaconFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[BeaconFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBeaconsResponse(_message.Message):
    __slots__ = ("beacons", "next_page_token", "total_size")
    BEACONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    beacons: _containers.RepeatedCompositeFieldContainer[Beacon]
    next_page_token: str
    total_size: int
    def __init__(self, beacons: _Optional[_Iterable[_Union[Beacon, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetBeaconRequest(_message.Message):
    __slots__ = ("beacon_id",)
    BEACON_ID_FIELD_NUMBER: _ClassVar[int]
    beacon_id: str
    def __init__(self, beacon_id: _Optional[str] = ...) -> None: ...

class GetBeaconResponse(_message.Message):
    __slots__ = ("beacon",)
    BEACON_FIELD_NUMBER: _ClassVar[int]
    beacon: Beacon
    def __init__(self, beacon: _Optional[_Union[Beacon, _Mapping]] = ...) -> None: ...

class WatchBeaconsRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: BeaconFilter
    def __init__(self, filter: _Optional[_Union[BeaconFilter, _Mapping]] = ...) -> None: ...

class WatchBeaconsResponse(_message.Message):
    __slots__ = ("change", "beacon")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    BEACON_FIELD_NUMBER: _ClassVar[int]
    change: BeaconChange
    beacon: Beacon
    def __init__(self, change: _Optional[_Union[BeaconChange, str]] = ..., beacon: _Optional[_Union[Beacon, _Mapping]] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("release_id", "name", "version", "secure_version", "target", "kind", "size_bytes", "manifest_sha256", "verified", "cached_at", "min_previous_version")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SECURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    CACHED_AT_FIELD_NUMBER: _ClassVar[int]
    MIN_PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    name: str
    version: str
    secure_version: int
    target: str
    kind: FirmwareKind
    size_bytes: int
    manifest_sha256: str
    verified: bool
    cached_at: _timestamp_pb2.Timestamp
    min_previous_version: str
    def __init__(self, release_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., secure_version: _Optional[int] = ..., target: _Optional[str] = ..., kind: _Optional[_Union[FirmwareKind, str]] = ..., size_bytes: _Optional[int] = ..., manifest_sha256: _Optional[str] = ..., verified: _Optional[bool] = ..., cached_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_previous_version: _Optional[str] = ...) -> None: ...

class ListReleasesRequest(_message.Message):
    __slots__ = ("target", "kind", "page_size", "page_token")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    target: str
    kind: FirmwareKind
    page_size: int
    page_token: str
    def __init__(self, target: _Optional[str] = ..., kind: _Optional[_Union[FirmwareKind, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListReleasesResponse(_message.Message):
    __slots__ = ("releases", "next_page_token", "cache")
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[Release]
    next_page_token: str
    cache: FirmwareCacheUsage
    def __init__(self, releases: _Optional[_Iterable[_Union[Release, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cache: _Optional[_Union[FirmwareCacheUsage, _Mapping]] = ...) -> None: ...

class RolloutPolicy(_message.Message):
    __slots__ = ("wave_count", "max_concurrent", "max_failure_ratio", "manual_approval", "max_attempts", "summary")
    WAVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    MANUAL_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    wave_count: int
    max_concurrent: int
    max_failure_ratio: float
    manual_approval: bool
    max_attempts: int
    summary: str
    def __init__(self, wave_count: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., max_failure_ratio: _Optional[float] = ..., manual_approval: _Optional[bool] = ..., max_attempts: _Optional[int] = ..., summary: _Optional[str] = ...) -> None: ...

class RolloutCounts(_message.Message):
    __slots__ = ("total", "pending", "offered", "transferring", "verifying", "installing", "rebooting", "confirmed", "failed", "rolled_back")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OFFERED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRING_FIELD_NUMBER: _ClassVar[int]
    VERIFYING_FIELD_NUMBER: _ClassVar[int]
    INSTALLING_FIELD_NUMBER: _ClassVar[int]
    REBOOTING_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    total: int
    pending: int
    offered: int
    transferring: int
    verifying: int
    installing: int
    rebooting: int
    confirmed: int
    failed: int
    rolled_back: int
    def __init__(self, total: _Optional[int] = ..., pending: _Optional[int] = ..., offered: _Optional[int] = ..., transferring: _Optional[int] = ..., verifying: _Optional[int] = ..., installing: _Optional[int] = ..., rebooting: _Optional[int] = ..., confirmed: _Optional[int] = ..., failed: _Optional[int] = ..., rolled_back: _Optional[int] = ...) -> None: ...

class RolloutBeacon(_message.Message):
    __slots__ = ("beacon_id", "wave", "state", "attempts", "failure_reason", "bytes_transferred", "from_version", "updated_at")
    BEACON_ID_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    BYTES_TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    beacon_id: str
    wave: int
    state: OtaState
    attempts: int
    failure_reason: str
    bytes_transferred: int
    from_version: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, beacon_id: _Optional[str] = ..., wave: _Optional[int] = ..., state: _Optional[_Union[OtaState, str]] = ..., attempts: _Optional[int] = ..., failure_reason: _Optional[str] = ..., bytes_transferred: _Optional[int] = ..., from_version: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "release", "policy", "state", "current_wave", "counts", "beacons", "state_reason", "created_at", "updated_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    BEACONS_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    release: Release
    policy: RolloutPolicy
    state: RolloutState
    current_wave: int
    counts: RolloutCounts
    beacons: _containers.RepeatedCompositeFieldContainer[RolloutBeacon]
    state_reason: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., state: _Optional[_Union[RolloutState, str]] = ..., current_wave: _Optional[int] = ..., counts: _Optional[_Union[RolloutCounts, _Mapping]] = ..., beacons: _Optional[_Iterable[_Union[RolloutBeacon, _Mapping]]] = ..., state_reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[RolloutState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[RolloutState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class WatchRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class WatchRolloutResponse(_message.Message):
    __slots__ = ("rollout", "changed_beacons")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BEACONS_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    changed_beacons: _containers.RepeatedCompositeFieldContainer[RolloutBeacon]
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., changed_beacons: _Optional[_Iterable[_Union[RolloutBeacon, _Mapping]]] = ...) -> None: ...

class PauseRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PauseRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ResumeRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResumeRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class AbortRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ApproveWaveRequest(_message.Message):
    __slots__ = ("rollout_id", "wave")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    wave: int
    def __init__(self, rollout_id: _Optional[str] = ..., wave: _Optional[int] = ...) -> None: ...

class ApproveWaveResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...
