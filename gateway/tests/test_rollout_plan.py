"""The rollout's pure rules: policy parsing, targets, waves, holds and maintenance windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from navign_gateway.rollout import PolicyError, parse_policy
from navign_gateway.rollout.plan import Candidate, hold_after, in_window, plan_waves, select_targets

BEACONS = [f"b-{i:03d}" for i in range(1, 21)]


def candidates(chip: str = "esp32") -> list[Candidate]:
    return [Candidate(b, chip) for b in BEACONS]


def test_targets_narrow_by_every_non_empty_list() -> None:
    everyone = [*candidates(), Candidate("c-1", "esp32c3")]
    base = {"target": "esp32", "device_type": "beacon", "channel": "stable"}
    assert select_targets(everyone, policy=parse_policy(None), **base) == BEACONS
    listed = parse_policy({"targets": {"beacon_ids": ["b-002", "b-001", "c-1", "nope"]}})
    assert select_targets(everyone, policy=listed, **base) == ["b-001", "b-002"]
    assert (
        select_targets(everyone, policy=parse_policy({"targets": {"chips": ["esp32s3"]}}), **base)
        == []
    )
    beta_only = parse_policy({"targets": {"channels": ["beta"]}})
    assert select_targets(everyone, policy=beta_only, **base) == []
    other_type = parse_policy({"targets": {"device_types": ["robot"]}})
    assert select_targets(everyone, policy=other_type, **base) == []


def test_waves_cover_every_target_once_with_the_canary_first() -> None:
    policy = parse_policy({"canary": ["b-007"], "canary_size": {"count": 3}, "batch_size": 5})
    waves = plan_waves("fwa-1", BEACONS, policy)
    assert waves[0][0] == "b-007"
    assert len(waves[0]) == 3
    assert [len(w) for w in waves] == [3, 5, 5, 5, 2]
    flat = [b for w in waves for b in w]
    assert sorted(flat) == BEACONS
    assert len(flat) == len(set(flat))
    # Stable for one rollout, different canaries for another.
    assert plan_waves("fwa-1", BEACONS, policy) == waves
    assert plan_waves("fwa-2", BEACONS, policy)[0][1:] != waves[0][1:]


def test_wave_percentages_and_the_default_canary() -> None:
    policy = parse_policy(
        {"canary_size": {"percent": 10}, "waves": [{"percent": 25}, {"percent": 25}]}
    )
    assert [len(w) for w in plan_waves("r", BEACONS, policy)] == [2, 5, 5, 8]
    assert [len(w) for w in plan_waves("r", BEACONS, parse_policy(None))] == [2, 18]
    assert [len(w) for w in plan_waves("r", ["only"], parse_policy(None))] == [1]
    assert plan_waves("r", [], parse_policy(None)) == []
    listed = parse_policy({"canary": ["b-001", "b-002"]})
    assert plan_waves("r", BEACONS, listed)[0] == ["b-001", "b-002"]


def test_holds_follow_the_wave_or_the_policy() -> None:
    policy = parse_policy({"hold_seconds": 60, "waves": [{"percent": 50, "hold_seconds": 5}]})
    assert hold_after(policy, 1) == 60  # after the canary
    assert hold_after(policy, 2) == 5
    assert hold_after(policy, 3) == 60


def test_maintenance_windows_in_local_time_and_across_midnight() -> None:
    # 2026-01-01 is a Thursday.
    policy = parse_policy(
        {
            "maintenance_windows": [
                {"days": ["thu"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"}
            ]
        }
    )
    windows = policy.windows

    def at(h: int, m: int = 0, d: int = 1) -> datetime:
        return datetime(2026, 1, d, h, m, tzinfo=UTC)

    assert in_window(windows, at(21, 0))  # 22:00 in Berlin, Thursday
    assert not in_window(windows, at(20, 59))
    assert in_window(windows, at(4, 59, d=2))  # Friday 05:59 local: Thursday's window
    assert not in_window(windows, at(5, 0, d=2))
    assert not in_window(windows, at(21, 0, d=2))  # Friday evening: not a listed day
    assert in_window((), at(12))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"canary_size": {"count": 0}}, "canary_size.count"),
        ({"canary_size": {"count": 1, "percent": 5}}, "canary_size"),
        ({"maintenance_windows": [{"start": "25:00", "end": "01:00"}]}, "start"),
        ({"maintenance_windows": [{"start": "01:00", "end": "01:00"}]}, "same time"),
        (
            {"maintenance_windows": [{"start": "01:00", "end": "02:00", "timezone": "Mars/Base"}]},
            "timezone",
        ),
        ({"failure_threshold": 2}, "failure_threshold"),
        ({"manual_approval": "yes"}, "manual_approval"),
        ({"targets": {"beacon_ids": "b-1"}}, "targets.beacon_ids"),
    ],
)
def test_a_malformed_policy_says_which_key(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(PolicyError, match=problem.replace(".", r"\.")):
        parse_policy(raw)


def test_unknown_keys_are_tolerated_and_the_summary_reads_well() -> None:
    policy = parse_policy({"canary_size": {"count": 2}, "manual_approval": True, "future_key": 1})
    assert policy.summary() == "canary 2, manual approval, halt above 20% failed"
