from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import BaseModel, ValidationError

from navign_proto.wire import (
    EVENT_MODELS,
    HTTP_STATUS,
    ChecksumResponse,
    Checksums,
    CommandType,
    ConfigUpdateEvent,
    DataUpdateEvent,
    ErrorCode,
    ErrorEnvelope,
    EventType,
    FirmwareInfo,
    FirmwareUpdateEvent,
    HeartbeatRequest,
    HeartbeatResponse,
    InvalidMessageError,
    MalformedMessageError,
    PingEvent,
    RegisterRequest,
    RegisterResponse,
    ResyncRequiredEvent,
    SyncDeltaResponse,
    SyncFullResponse,
    TaskCreateEvent,
    TaskType,
    TokenRefreshResponse,
    UnknownEvent,
    WireError,
    decode_message,
    format_rfc3339,
    parse_event,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def pem_of(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


P256_PEM = pem_of(ec.derive_private_key(0xC0FFEE, ec.SECP256R1()))


def assert_round_trip(model: type[BaseModel], text: str) -> BaseModel:
    """JSON text in -> model -> JSON text out, equal as JSON values."""
    instance = model.model_validate_json(text)
    assert json.loads(instance.model_dump_json()) == json.loads(text)
    return instance


# --- registration ---------------------------------------------------------------------------


def register_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entity_id": "mall-riverside",
        "orchestrator_id": "gw-riverside-01",
        "version": "0.3.1",
        "capabilities": ["task_assignment", "firmware_distribution", "beacon_management"],
        "public_key": P256_PEM,
        "heartbeat_interval": 60,
        "local_address": "https://gw-riverside-01.local:50051",
        "enrollment_token": "enr_2f9c1d7a4b",
    }
    return body | changes


def test_register_request_round_trip() -> None:
    text = json.dumps(register_body())
    request = assert_round_trip(RegisterRequest, text)
    assert isinstance(request, RegisterRequest)
    assert request.heartbeat_interval == 60


def test_register_request_defaults() -> None:
    body = register_body()
    del body["heartbeat_interval"], body["enrollment_token"], body["capabilities"]
    request = RegisterRequest.model_validate(body)
    assert request.heartbeat_interval == 60
    assert request.enrollment_token is None
    assert request.capabilities == []


def other_key_pems() -> list[Any]:
    p384 = pem_of(ec.derive_private_key(7, ec.SECP384R1()))
    edkey = pem_of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    return [
        pytest.param(p384, "P-256", id="P-384 key"),
        pytest.param(edkey, "P-256", id="Ed25519 key"),
        pytest.param("not a key", "PEM", id="garbage"),
        pytest.param(P256_PEM.replace("A", "B", 3), "PEM", id="corrupted PEM"),
        pytest.param(P256_PEM + "x" * 1024, "at most 1024", id="oversized"),
    ]


@pytest.mark.parametrize(("pem", "message"), other_key_pems())
def test_register_request_rejects_non_p256_keys(pem: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        RegisterRequest.model_validate(register_body(public_key=pem))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heartbeat_interval": 5}, "greater than or equal to 10"),
        ({"heartbeat_interval": 3601}, "less than or equal to 3600"),
        ({"enrolment_token": "typo"}, "Extra inputs are not permitted"),
        ({"capabilities": ["sync", "sync"]}, "must not repeat"),
        ({"capabilities": ["Has Space"]}, "pattern"),
        ({"capabilities": [f"c{i}" for i in range(33)]}, "at most 32"),
        ({"orchestrator_id": ""}, "at least 1 character"),
        ({"local_address": "gw local"}, "pattern"),
        ({"version": "x" * 65}, "at most 64"),
        ({"enrollment_token": "has space"}, "pattern"),
    ],
)
def test_register_request_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        RegisterRequest.model_validate(register_body(**changes))
    assert message in str(info.value)


REGISTER_RESPONSE = """
{
  "token": "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJndy0xIn0.c2ln",
  "expires_at": 1736330400,
  "assigned_id": "gw-riverside-01",
  "sync_endpoints": {
    "events": "https://api.navign.example.com/api/orchestrators/events",
    "data_sync": "/api/orchestrators/sync",
    "firmware": "https://api.navign.example.com/api/firmware"
  },
  "initial_sync_required": true
}
"""


def test_register_response_round_trip_and_ignores_new_fields() -> None:
    response = assert_round_trip(RegisterResponse, REGISTER_RESPONSE)
    assert isinstance(response, RegisterResponse)
    assert response.sync_endpoints.data_sync == "/api/orchestrators/sync"
    newer = json.loads(REGISTER_RESPONSE) | {"refresh_after": 1736300000}
    assert RegisterResponse.model_validate(newer) == response


def test_token_refresh_response() -> None:
    text = '{"token": "abc.def.ghi", "expires_at": 1736330400}'
    refresh = assert_round_trip(TokenRefreshResponse, text)
    assert isinstance(refresh, TokenRefreshResponse)
    with pytest.raises(ValidationError):
        TokenRefreshResponse.model_validate({"token": "", "expires_at": 1})


@pytest.mark.parametrize("url", ["ftp://x.example.com/e", "//evil.example.com/e", "events", ""])
def test_sync_endpoints_must_be_http_urls_or_absolute_paths(url: str) -> None:
    body = json.loads(REGISTER_RESPONSE)
    body["sync_endpoints"]["events"] = url
    with pytest.raises(ValidationError):
        RegisterResponse.model_validate(body)


# --- timestamps -----------------------------------------------------------------------------


def test_timestamps_are_utc_with_z() -> None:
    text = full_sync_text(timestamp="2025-01-08T18:30:00+08:00")
    response = SyncFullResponse.model_validate_json(text)
    assert response.timestamp == datetime(2025, 1, 8, 10, 30, tzinfo=UTC)
    assert response.timestamp.tzinfo is UTC
    assert json.loads(response.model_dump_json())["timestamp"] == "2025-01-08T10:30:00Z"


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError, match="UTC offset"):
        SyncFullResponse.model_validate_json(full_sync_text(timestamp="2025-01-08T10:30:00"))


def test_format_rfc3339() -> None:
    when = datetime(2025, 1, 8, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-5)))
    assert format_rfc3339(when) == "2025-01-08T15:00:00.250000Z"
    with pytest.raises(ValueError, match="naive"):
        format_rfc3339(datetime(2025, 1, 8))


# --- sync -----------------------------------------------------------------------------------


def full_sync_text(**changes: Any) -> str:
    body: dict[str, Any] = {
        "entity_id": "mall-riverside",
        "sync_id": "sync-20250108-0001",
        "timestamp": "2025-01-08T10:30:00Z",
        "checksum": A,
        "data": {
            "areas": [
                {"id": "area-1f-atrium", "name": "Atrium", "future_field": {"nested": [1, 2]}}
            ],
            "beacons": [{"id": "b-1", "major": 1, "minor": 101}, {"id": "b-2"}],
            "merchants": [],
            "connections": [{"id": "c-1", "type": "escalator"}],
        },
        "metadata": {
            "total_areas": 1,
            "total_beacons": 2,
            "total_merchants": 0,
            "total_connections": 1,
        },
        "seq": 1042,
    }
    return json.dumps(body | changes)


def test_full_sync_round_trip_keeps_documents_as_received() -> None:
    response = assert_round_trip(SyncFullResponse, full_sync_text())
    assert isinstance(response, SyncFullResponse)
    assert response.data.areas[0]["future_field"] == {"nested": [1, 2]}
    assert response.seq == 1042


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"checksum": A.upper()}, "pattern"),
        ({"checksum": "a" * 64}, "pattern"),
        ({"checksum": "sha256:" + "a" * 63}, "pattern"),
        ({"seq": -1}, "greater than or equal to 0"),
        ({"data": {"areas": [{"name": "no id"}]}}, "no string 'id'"),
        ({"data": {"areas": [{"id": 7}]}}, "no string 'id'"),
        ({"data": {"beacons": [{"id": "b-1"}, {"id": "b-1"}]}}, "appears twice"),
        ({"data": {"beacons": ["b-1"]}}, "Input should be an object"),
        ({"metadata": {"total_areas": 1}}, "Field required"),
    ],
)
def test_full_sync_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SyncFullResponse.model_validate_json(full_sync_text(**changes))
    assert message in str(info.value)


def delta_text(changes: list[dict[str, Any]], **extra: Any) -> str:
    body: dict[str, Any] = {
        "entity_id": "mall-riverside",
        "sync_id": "sync-20250108-0002",
        "timestamp": "2025-01-08T10:35:00Z",
        "base_checksum": A,
        "new_checksum": B,
        "changes": changes,
        "has_more": True,
        "next_cursor": "1045",
    }
    return json.dumps(body | extra)


UPDATE = {
    "type": "beacons",
    "operation": "update",
    "id": "b-1",
    "data": {"id": "b-1", "name": "Atrium escalator foot", "minor": 201},
    "updated_at": "2025-01-08T10:31:00Z",
    "seq": 1043,
}
DELETE = {
    "type": "merchants",
    "operation": "delete",
    "id": "m-closed",
    "updated_at": "2025-01-08T10:32:00Z",
    "seq": 1045,
}


def test_delta_round_trip() -> None:
    response = assert_round_trip(SyncDeltaResponse, delta_text([UPDATE, DELETE]))
    assert isinstance(response, SyncDeltaResponse)
    assert [c.operation for c in response.changes] == ["update", "delete"]
    assert response.changes[1].data is None
    last_page = SyncDeltaResponse.model_validate_json(
        delta_text([DELETE], has_more=False, next_cursor=None)
    )
    assert last_page.next_cursor is None


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        ([DELETE | {"data": {"id": "m-closed"}}], {}, "delete change must not carry data"),
        ([{k: v for k, v in UPDATE.items() if k != "data"}], {}, "update change must carry data"),
        ([UPDATE | {"operation": "create", "data": None}], {}, "create change must carry data"),
        ([UPDATE | {"data": {"id": "b-2"}}], {}, "differs from change id"),
        ([UPDATE | {"type": "robots"}], {}, "areas"),
        ([UPDATE | {"operation": "upsert"}], {}, "create"),
        ([UPDATE | {"updated_at": "yesterday"}], {}, "datetime"),
        ([DELETE, UPDATE], {}, "out of order"),
        ([UPDATE], {"next_cursor": None}, "next_cursor is missing"),
        ([UPDATE], {"next_cursor": "c" * 513}, "at most 512"),
    ],
)
def test_delta_rules(changes: list[dict[str, Any]], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SyncDeltaResponse.model_validate_json(delta_text(changes, **extra))
    assert message in str(info.value)


CHECKSUM_RESPONSE = json.dumps(
    {
        "entity_id": "mall-riverside",
        "timestamp": "2025-01-08T10:40:00Z",
        "seq": 1045,
        "checksums": {"areas": A, "beacons": B, "merchants": C, "connections": A, "global": B},
    }
)


def test_checksum_response_uses_global_key_both_ways() -> None:
    response = assert_round_trip(ChecksumResponse, CHECKSUM_RESPONSE)
    assert isinstance(response, ChecksumResponse)
    assert response.checksums.global_ == B
    assert response.checksums.for_collection("merchants") == C
    assert "global" in response.model_dump(mode="json")["checksums"]
    assert "global_" not in response.model_dump_json()


def test_checksums_can_be_built_by_attribute_name() -> None:
    built = Checksums(areas=A, beacons=B, merchants=C, connections=A, global_=B)
    assert built == ChecksumResponse.model_validate_json(CHECKSUM_RESPONSE).checksums
    assert built.model_dump()["global"] == B


@pytest.mark.parametrize("bad", ["sha256:" + "G" * 64, "md5:" + "a" * 32, "", B + "0"])
def test_checksums_are_validated(bad: str) -> None:
    body = json.loads(CHECKSUM_RESPONSE)
    body["checksums"]["global"] = bad
    with pytest.raises(ValidationError, match="global"):
        ChecksumResponse.model_validate(body)


def test_checksums_require_global() -> None:
    body = json.loads(CHECKSUM_RESPONSE)
    del body["checksums"]["global"]
    with pytest.raises(ValidationError, match="global"):
        ChecksumResponse.model_validate(body)


# --- heartbeat ------------------------------------------------------------------------------


def heartbeat_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "orchestrator_id": "gw-riverside-01",
        "entity_id": "mall-riverside",
        "status": "degraded",
        "version": "0.3.1",
        "uptime_seconds": 86400,
        "connected_robots": 3,
        "active_tasks": 1,
        "pending_tasks": 4,
        "metrics": {
            "cpu_percent": 12.5,
            "memory_used_mb": 412.0,
            "disk_used_gb": 3.2,
            "cache_size_mb": 48.5,
        },
        "timestamp": "2025-01-08T10:00:00Z",
    }
    return body | changes


def test_heartbeat_request_round_trip() -> None:
    assert_round_trip(HeartbeatRequest, json.dumps(heartbeat_body(acked_commands=["cmd-17"])))
    # The seed's body, without our acknowledgement list, is accepted as it is.
    assert HeartbeatRequest.model_validate(heartbeat_body()).acked_commands == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "fine"}, "healthy"),
        ({"uptime_seconds": -1}, "greater than or equal to 0"),
        ({"connected_robots": 1.5}, "fractional part"),
        ({"timestamp": "2025-01-08T10:00:00"}, "UTC offset"),
        ({"metrics": {"cpu_percent": 100.5}}, "less than or equal to 100"),
        ({"uptime": 5}, "Extra inputs are not permitted"),
    ],
)
def test_heartbeat_request_rules(changes: dict[str, Any], message: str) -> None:
    body = heartbeat_body(**changes)
    if "metrics" in changes:
        body["metrics"] = heartbeat_body()["metrics"] | changes["metrics"]
    with pytest.raises(ValidationError) as info:
        HeartbeatRequest.model_validate(body)
    assert message in str(info.value)


def test_heartbeat_metrics_reject_nan() -> None:
    body = heartbeat_body()
    body["metrics"]["memory_used_mb"] = float("nan")
    with pytest.raises(ValidationError, match="finite"):
        HeartbeatRequest.model_validate(body)


HEARTBEAT_RESPONSE = """
{
  "acknowledged": true,
  "server_time": "2025-01-08T10:00:01Z",
  "next_heartbeat_seconds": 60,
  "commands": [
    {"id": "cmd-1", "type": "resync", "params": {"collections": ["beacons"]}},
    {"id": "cmd-2", "type": "self_destruct", "params": {}},
    {"id": "cmd-3", "type": "report_inventory", "params": {}}
  ]
}
"""


def test_heartbeat_response_tolerates_unknown_commands() -> None:
    response = assert_round_trip(HeartbeatResponse, HEARTBEAT_RESPONSE)
    assert isinstance(response, HeartbeatResponse)
    kinds = [command.known_type for command in response.commands]
    assert kinds == [CommandType.RESYNC, None, CommandType.REPORT_INVENTORY]
    assert response.commands[1].type == "self_destruct"


def test_heartbeat_response_bounds() -> None:
    body = json.loads(HEARTBEAT_RESPONSE)
    body["next_heartbeat_seconds"] = 1
    with pytest.raises(ValidationError, match="greater than or equal to 10"):
        HeartbeatResponse.model_validate(body)


# --- firmware -------------------------------------------------------------------------------

FIRMWARE = {
    "firmware_id": "fw-beacon-1.4.0-c3",
    "version": "1.4.0",
    "target": "esp32c3",
    "device_type": "beacon",
    "channel": "stable",
    "size_bytes": 48213,
    "checksum": A,
    "download_url": "/api/firmware/fw-beacon-1.4.0-c3/download",
    "fallback_url": "https://cdn.navign.example.com/fw/fw-beacon-1.4.0-c3.bin",
    "changelog": ["Faster advertising restart", "Fix trial-boot health check"],
    "compatible_hardware": ["navign-beacon-rev2"],
    "min_previous_version": "1.2.0",
    "secure_version": 2,
    "kind": "app",
    "manifest_url": "/api/firmware/fw-beacon-1.4.0-c3/manifest",
}


def test_firmware_info_round_trip() -> None:
    assert_round_trip(FirmwareInfo, json.dumps(FIRMWARE))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "esp8266"}, "esp32c3"),
        ({"channel": "nightly"}, "stable"),
        ({"kind": "bundle"}, "app"),
        ({"size_bytes": 0}, "greater than or equal to 1"),
        ({"checksum": "deadbeef"}, "pattern"),
        ({"download_url": "ftp://x/y"}, "pattern"),
        ({"secure_version": -1}, "greater than or equal to 0"),
    ],
)
def test_firmware_info_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        FirmwareInfo.model_validate(FIRMWARE | changes)
    assert message in str(info.value)


# --- SSE events -----------------------------------------------------------------------------


def test_every_event_type_has_a_model() -> None:
    assert set(EVENT_MODELS) == set(EventType)
    for name, model in EVENT_MODELS.items():
        assert model.event_type == name


def test_data_update_event() -> None:
    data = json.dumps(
        {"seq": 1046, "changes": {"beacons": ["b-1", "b-2"], "areas": []}, "checksum": B}
    )
    event = parse_event("data_update", data)
    assert isinstance(event, DataUpdateEvent)
    assert event.changes.beacons == ["b-1", "b-2"]
    assert event.changes.merchants == []
    assert event.seq == 1046


def test_firmware_update_event_is_flat_with_rollout() -> None:
    rollout = {
        "waves": [{"percent": 10, "hold_seconds": 86400}, {"percent": 100}],
        "canary": ["b-1f-atrium-01"],
        "batch_size": 5,
        "failure_threshold": 0.05,
        "maintenance_window": "03:00-05:00",
    }
    data = json.dumps(FIRMWARE | {"priority": "high", "rollout_strategy": rollout})
    event = parse_event("firmware_update", data.encode())
    assert isinstance(event, FirmwareUpdateEvent)
    assert event.firmware_id == "fw-beacon-1.4.0-c3"
    assert event.rollout_strategy is not None
    assert event.rollout_strategy.waves[0].percent == 10
    dumped = json.loads(event.model_dump_json())
    assert dumped["rollout_strategy"]["maintenance_window"] == "03:00-05:00"


def test_task_create_event() -> None:
    source = {"area_id": "area-1f-west-wing", "x": 12.0, "y": 8.0, "floor": "F1"}
    data: dict[str, Any] = {
        "task_id": "task-7781",
        "type": "delivery",
        "priority": "urgent",
        "entity_id": "mall-riverside",
        "sources": [source],
        "terminals": [
            {"area_id": "area-2f-east-wing", "x": 88.0, "y": 8.0, "z": 5.0},
            {"area_id": "area-2f-east-wing", "x": 90.0, "y": 9.0, "z": 5.0},
        ],
        "metadata": {"order": "A-1001"},
        "created_at": "2025-01-08T10:41:00Z",
    }
    event = parse_event("task_create", json.dumps(data))
    assert isinstance(event, TaskCreateEvent)
    assert event.known_type is TaskType.DELIVERY
    assert event.terminals[0].z == 5.0
    assert len(event.terminals) == 2
    expected = data | {"sources": [source | {"z": 0.0}]}
    assert json.loads(event.model_dump_json(exclude_none=True)) == expected
    odd = parse_event("task_create", json.dumps(data | {"type": "window_cleaning"}))
    assert isinstance(odd, TaskCreateEvent)
    assert odd.known_type is None


def test_config_update_event() -> None:
    data = {
        "type": "robot_selection",
        "config": {"weights": [0.6, 0.3, 0.1], "min_battery": 25},
        "version": 3,
    }
    event = parse_event("config_update", json.dumps(data))
    assert isinstance(event, ConfigUpdateEvent)
    assert json.loads(event.model_dump_json()) == data


@pytest.mark.parametrize("data", ["", "  ", b"", "{}"])
def test_ping_may_carry_no_data(data: str | bytes) -> None:
    event = parse_event("ping", data)
    assert isinstance(event, PingEvent)
    assert event.server_time is None


def test_ping_with_server_time() -> None:
    event = parse_event("ping", '{"server_time": "2025-01-08T10:00:30Z"}')
    assert isinstance(event, PingEvent)
    assert event.server_time == datetime(2025, 1, 8, 10, 0, 30, tzinfo=UTC)


def test_resync_required_event() -> None:
    everything = parse_event("resync_required", '{"reason": "cursor expired"}')
    assert isinstance(everything, ResyncRequiredEvent)
    assert everything.collections == "all"
    assert set(everything.collection_names) == {"areas", "beacons", "merchants", "connections"}
    some = parse_event(
        "resync_required", '{"reason": "checksum mismatch", "collections": ["beacons"]}'
    )
    assert isinstance(some, ResyncRequiredEvent)
    assert some.collection_names == ("beacons",)


@pytest.mark.parametrize("data", ['{"anything": 1}', "not json at all", b"\xff\xfe"])
def test_unknown_event_type_is_tolerated(data: str | bytes) -> None:
    event = parse_event("access_log_request", data)
    assert event == UnknownEvent(event_type="access_log_request", data=data)


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        '{"seq": 1,',
        "[1, 2]",
        '"text"',
        "null",
        b"\xff\xfe{}",
        '{"seq": 1, "seq": 2}',  # duplicate keys: two readers could see two messages
        '{"seq": 1, "x": NaN}',  # NaN has no canonical form and would break checksums
    ],
)
def test_malformed_event_raises(data: str | bytes) -> None:
    with pytest.raises(MalformedMessageError) as info:
        parse_event("data_update", data)
    assert isinstance(info.value, WireError)
    assert info.value.message_type == "data_update"


@pytest.mark.parametrize(
    ("event_type", "data", "location"),
    [
        ("data_update", '{"seq": "many", "checksum": "' + A + '"}', "seq"),
        ("data_update", '{"seq": 1}', "checksum"),
        ("data_update", '{"seq": 1, "checksum": "' + A + '", "changes": {"areas": "a1"}}', "areas"),
        ("resync_required", '{"reason": "x", "collections": ["robots"]}', "collections"),
        ("task_create", '{"task_id": "t1"}', "sources"),
        (
            "firmware_update",
            json.dumps({k: v for k, v in FIRMWARE.items() if k != "checksum"}),
            "checksum",
        ),
        ("ping", '{"server_time": "2025-01-08T10:00:30"}', "server_time"),
    ],
)
def test_wrong_shape_for_known_event_raises(event_type: str, data: str, location: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        parse_event(event_type, data)
    assert info.value.message_type == event_type
    assert any(location in ".".join(map(str, e["loc"])) for e in info.value.errors)
    assert location in str(info.value)


def test_decode_message_for_http_responses() -> None:
    response = decode_message(HeartbeatResponse, HEARTBEAT_RESPONSE.encode())
    assert response.acknowledged is True
    with pytest.raises(MalformedMessageError, match="HeartbeatResponse"):
        decode_message(HeartbeatResponse, b"<html>502 Bad Gateway</html>")
    with pytest.raises(InvalidMessageError, match="acknowledged"):
        decode_message(HeartbeatResponse, b"{}")


# --- errors ---------------------------------------------------------------------------------

ERROR_TEXT = """
{
  "error": {
    "code": "SYNC_CURSOR_EXPIRED",
    "message": "cursor 12 is older than the retained change log; resync in full",
    "details": {"oldest_seq": 500},
    "request_id": "req-8f14e45f"
  }
}
"""


def test_error_envelope_round_trip() -> None:
    envelope = ErrorEnvelope.model_validate_json(ERROR_TEXT)
    assert envelope.error.known_code is ErrorCode.SYNC_CURSOR_EXPIRED
    assert envelope.http_status == 410
    out = json.loads(envelope.model_dump_json(exclude_none=True))
    assert out == json.loads(ERROR_TEXT)


def test_error_envelope_build() -> None:
    envelope = ErrorEnvelope.of(
        ErrorCode.AUTH_NONCE_REUSED, "nonce already used", request_id="req-1"
    )
    assert json.loads(envelope.model_dump_json(exclude_none=True)) == {
        "error": {
            "code": "AUTH_NONCE_REUSED",
            "message": "nonce already used",
            "request_id": "req-1",
        }
    }
    assert envelope.http_status == 401


def test_unknown_error_code_parses() -> None:
    text = '{"error": {"code": "QUOTA_GONE", "message": "m", "request_id": "r", "extra": 1}}'
    envelope = ErrorEnvelope.model_validate_json(text)
    assert envelope.error.code == "QUOTA_GONE"
    assert envelope.error.known_code is None
    assert envelope.http_status == 500


def test_seed_error_with_timestamp_parses() -> None:
    body = json.loads(ERROR_TEXT)
    body["error"]["timestamp"] = "2025-01-08T10:00:00Z"
    envelope = ErrorEnvelope.model_validate(body)
    assert envelope.error.timestamp == datetime(2025, 1, 8, 10, tzinfo=UTC)


def test_error_envelope_requires_code_and_request_id() -> None:
    with pytest.raises(ValidationError, match="request_id"):
        ErrorEnvelope.model_validate_json('{"error": {"code": "X", "message": "m"}}')


def test_every_error_code_has_a_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.AUTH_MISSING, 401),
        (ErrorCode.AUTH_TOKEN_EXPIRED, 401),
        (ErrorCode.AUTH_INVALID_SIGNATURE, 401),
        (ErrorCode.AUTH_FORBIDDEN, 403),
        (ErrorCode.ORCHESTRATOR_PENDING_APPROVAL, 403),
        (ErrorCode.ORCHESTRATOR_DISABLED, 403),
        (ErrorCode.ENTITY_NOT_FOUND, 404),
        (ErrorCode.SYNC_CHECKSUM_MISMATCH, 409),
        (ErrorCode.SYNC_CURSOR_EXPIRED, 410),
        (ErrorCode.PAYLOAD_TOO_LARGE, 413),
        (ErrorCode.RANGE_NOT_SATISFIABLE, 416),
        (ErrorCode.VALIDATION_ERROR, 422),
        (ErrorCode.RATE_LIMIT_EXCEEDED, 429),
        (ErrorCode.SERVICE_UNAVAILABLE, 503),
    ],
)
def test_error_status(code: ErrorCode, status: int) -> None:
    assert HTTP_STATUS[code] == status
