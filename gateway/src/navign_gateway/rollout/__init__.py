"""Firmware rollouts from the gateway to the mall's beacons (the rollout issue): the engine
(:mod:`.engine`), its model and policy (:mod:`.model`), the pure planning rules (:mod:`.plan`),
its tables (:mod:`.store`) and the delivery of its reports to the server (:mod:`.outbox`)."""

from navign_gateway.rollout.engine import (
    FIRMWARE_REPORT_PATH,
    ROLLOUT_REPORT_PATH,
    BleDelivery,
    PushResult,
    RolloutControlError,
    RolloutEngine,
    Timeouts,
)
from navign_gateway.rollout.model import (
    Entry,
    EntryState,
    Policy,
    PolicyError,
    Rollout,
    RolloutState,
    parse_policy,
)
from navign_gateway.rollout.outbox import ReportSender

__all__ = [
    "FIRMWARE_REPORT_PATH",
    "ROLLOUT_REPORT_PATH",
    "BleDelivery",
    "Entry",
    "EntryState",
    "Policy",
    "PolicyError",
    "PushResult",
    "ReportSender",
    "Rollout",
    "RolloutControlError",
    "RolloutEngine",
    "RolloutState",
    "Timeouts",
    "parse_policy",
]
