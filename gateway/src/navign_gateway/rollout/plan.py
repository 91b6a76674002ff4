"""Pure planning: which beacons a rollout covers, in which wave, and when updates may run.

Kept free of I/O so every rule is tested directly:

- :func:`select_targets`: the beacons of the release's chip that every non-empty target list of
  the policy admits (protocol §6.7: each list narrows);
- :func:`plan_waves`: the canary first (the listed beacons, then a count or a percentage of the
  rest), then the policy's waves (each a percentage of all targets), or batches, or everything
  else in one wave. The order within "the rest" is a hash of rollout id and beacon id: stable
  across restarts, different from one rollout to the next (the same beacons are not always the
  canaries);
- :func:`hold_after`: how long to hold after a wave;
- :func:`in_window`: whether now is inside a maintenance window (local time in its timezone).

Public: :class:`Candidate`, :func:`select_targets`, :func:`plan_waves`, :func:`hold_after`,
:func:`in_window`.
"""

from __future__ import annotations

import hashlib
import math
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from navign_gateway.rollout.model import DEFAULT_CANARY_PERCENT, Policy, Window


@dataclass(frozen=True, slots=True)
class Candidate:
    """A beacon the gateway knows of (inventory or mall copy)."""

    beacon_id: str
    chip: str
    device_type: str = "beacon"


def select_targets(
    candidates: Iterable[Candidate],
    *,
    target: str,
    device_type: str,
    channel: str,
    policy: Policy,
) -> list[str]:
    """Ids of the beacons the rollout covers, sorted."""
    if policy.chips and target not in policy.chips:
        return []
    if policy.device_types and device_type not in policy.device_types:
        return []
    if policy.channels and channel not in policy.channels:
        return []
    listed = set(policy.beacon_ids)
    chosen = {
        c.beacon_id
        for c in candidates
        if c.chip == target
        and c.device_type == device_type
        and (not listed or c.beacon_id in listed)
    }
    return sorted(chosen)


def _shuffle_key(rollout_id: str, beacon_id: str) -> bytes:
    return hashlib.sha256(f"{rollout_id}\0{beacon_id}".encode()).digest()


def plan_waves(rollout_id: str, targets: Sequence[str], policy: Policy) -> list[list[str]]:
    """The waves, first to last; wave 1 is the canary. Every target is in exactly one wave."""
    total = len(targets)
    if total == 0:
        return []
    wanted = set(targets)
    canary = [b for b in dict.fromkeys(policy.canary) if b in wanted]
    rest = sorted(wanted - set(canary), key=lambda b: _shuffle_key(rollout_id, b))
    # The canary stage's size counts the listed beacons; the rest of it comes from "rest".
    if policy.canary_count is not None:
        size = policy.canary_count
    elif policy.canary_percent is not None or not canary:
        size = max(1, math.ceil(total * (policy.canary_percent or DEFAULT_CANARY_PERCENT) / 100))
    else:
        size = len(canary)
    extra = max(0, min(size - len(canary), len(rest)))
    waves = [canary + rest[:extra]]
    rest = rest[extra:]
    if policy.waves:
        for percent, _hold in policy.waves:
            if not rest:
                break
            size = max(1, math.ceil(total * percent / 100))
            waves.append(rest[:size])
            rest = rest[size:]
        if rest:
            waves.append(rest)
    elif policy.batch_size:
        waves += [rest[i : i + policy.batch_size] for i in range(0, len(rest), policy.batch_size)]
    elif rest:
        waves.append(rest)
    return [w for w in waves if w]


def hold_after(policy: Policy, wave: int) -> int:
    """Seconds to hold after ``wave`` (1-based) completes, before the next one starts."""
    if policy.waves and wave >= 2 and wave - 2 < len(policy.waves):
        return policy.waves[wave - 2][1]
    return policy.hold_seconds


def in_window(windows: Sequence[Window], now: datetime) -> bool:
    """True when there are no windows, or ``now`` (aware) is inside one of them."""
    if not windows:
        return True
    for window in windows:
        local = now.astimezone(zoneinfo.ZoneInfo(window.timezone))
        minute = local.hour * 60 + local.minute
        if window.start < window.end:
            if local.weekday() in window.days and window.start <= minute < window.end:
                return True
            continue
        # Crosses midnight: the evening part belongs to today, the morning part to yesterday.
        if local.weekday() in window.days and minute >= window.start:
            return True
        yesterday = (local - timedelta(days=1)).weekday()
        if yesterday in window.days and minute < window.end:
            return True
    return False
