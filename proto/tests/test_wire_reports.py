"""``wire.RolloutStatusReport``: what a gateway's rollout engine sends after each change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from navign_proto.wire import (
    InvalidMessageError,
    OtaState,
    RolloutCounts,
    RolloutState,
    RolloutStatusReport,
    decode_message,
)
from navign_proto.wire.reports import ROLLOUT_COUNT_STATES


def counts(**given: int) -> dict[str, int]:
    states = {state: given.get(state, 0) for state in ROLLOUT_COUNT_STATES}
    return {**states, "total": given.get("total", sum(states.values()))}


def report(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entity_id": "mall-riverside",
        "rollout_id": "fwa-0123456789abcdef",
        "firmware_id": "fw-esp32c3-1.2.0-5e1ecb55ccfc",
        "state": "running",
        "state_reason": "",
        "current_wave": 1,
        "wave_count": 3,
        "counts": counts(pending=6, transferring=1, confirmed=2, failed=1),
        "at": "2026-11-27T10:00:00.250000Z",
    }
    body.update(changes)
    return body


def decode(body: dict[str, Any]) -> RolloutStatusReport:
    return decode_message(RolloutStatusReport, json.dumps(body).encode())


def test_a_gateway_summary_round_trips() -> None:
    parsed = decode(report())
    assert parsed.state is RolloutState.RUNNING
    assert parsed.counts.total == 10
    assert parsed.at == datetime(2026, 11, 27, 10, 0, 0, 250000, tzinfo=UTC)
    assert parsed.model_dump(mode="json")["at"] == "2026-11-27T10:00:00.250000Z"
    # The counted states are the beacon update states but idle: the gateway's EntryState.
    assert tuple(s.value for s in OtaState if s is not OtaState.IDLE) == ROLLOUT_COUNT_STATES
    assert set(RolloutCounts.model_fields) == {*ROLLOUT_COUNT_STATES, "total"}


def test_defaults_and_edges() -> None:
    body = report(current_wave=0, wave_count=0, state="pending", counts=counts())
    del body["state_reason"]
    parsed = decode(body)
    assert parsed.state_reason == ""
    assert parsed.counts.total == 0
    assert decode(report(rollout_id="ro-42", state_reason="x" * 1000)).rollout_id == "ro-42"
    for state in ("holding", "paused", "halted", "aborted", "completed"):
        assert decode(report(state=state)).state.value == state


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"counts": counts(confirmed=2, total=3)}, "counts"),  # states do not add up
        ({"counts": {**counts(confirmed=2), "confirmed": -1, "total": -1}}, "counts.confirmed"),
        ({"counts": {k: v for k, v in counts().items() if k != "failed"}}, "counts.failed"),
        ({"counts": {**counts(), "idle": 0}}, "counts.idle"),
        ({"counts": {**counts(confirmed=1), "confirmed": 1.5}}, "counts.confirmed"),
        ({"current_wave": 4}, ""),  # beyond wave_count
        ({"current_wave": -1}, "current_wave"),
        ({"state": "exploded"}, "state"),
        ({"state_reason": "x" * 1001}, "state_reason"),
        ({"rollout_id": "../etc"}, "rollout_id"),
        ({"rollout_id": "r" * 65}, "rollout_id"),
        ({"firmware_id": ""}, "firmware_id"),
        ({"at": "2026-11-27T10:00:00"}, "at"),  # no offset
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_reports_are_refused(changes: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        decode(report(**changes))
    locations = [".".join(str(p) for p in e["loc"]) for e in info.value.errors]
    assert any(loc == where or loc.startswith(f"{where}.") for loc in locations), locations
