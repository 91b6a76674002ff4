"""The rollout engine: carries a release assigned by the server to the targeted beacons of the
mall, wave by wave, and keeps going while the server is unreachable.

One rollout per ``firmware_update`` event (its id is the server's ``assignment_id``). It waits
(``PENDING``) until the firmware cache holds the release verified, then plans its waves from the
beacons the gateway knows (inventory and mall copy) and runs them:

- a wave's beacons are offered the release as transport capacity allows: over Wi-Fi the offer is
  the assignment in the answer to the beacon's next §8.2 report (the beacon fetches the release
  itself); over BLE a push task connects and sends it (§8.5), at most ``ble_concurrency`` at once;
- each entry moves pending → offered → transferring → verifying → installing → rebooting →
  confirmed | failed | rolled_back, on what the beacon itself says (reports, BLE replies, its
  advertisement). Every state has a deadline; a failed attempt is retried with backoff up to
  ``max_attempts``; a refusal by the beacon (bad signature, downgrade, ...) is final. An entry is
  confirmed only on the beacon's evidence that it committed the version after its health check;
- a wave whose failures exceed the policy's threshold halts the rollout at once (the beacons
  already working finish); a completed wave holds (time, or an operator's approval after the
  canary), then the next one starts; updates start only inside the maintenance windows;
- operators pause, resume, abort and approve (gRPC ``navign.gateway.v1.RolloutService`` and
  server commands); a call the state does not allow raises :class:`RolloutControlError`.

Every change is saved with its reports to the server in one transaction (:mod:`.store`), so a
restarted gateway continues where it stopped.

Public: :class:`RolloutEngine`, :class:`Timeouts`, :class:`PushResult`, :class:`BleDelivery`,
:class:`RolloutControlError`, :data:`FIRMWARE_REPORT_PATH`, :data:`ROLLOUT_REPORT_PATH`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from navign_gateway.beacons import BeaconInventory, BeaconRecord
from navign_gateway.ble.frames import version_core
from navign_gateway.db import Database
from navign_gateway.firmware import CachedRelease
from navign_gateway.rollout import plan, store
from navign_gateway.rollout.model import (
    ACTIVE_ENTRY,
    FAILED_ENTRY,
    Entry,
    EntryState,
    Policy,
    PolicyError,
    Rollout,
    RolloutState,
    parse_policy,
)
from navign_proto.wire import FirmwareUpdateEvent

log = logging.getLogger(__name__)

FIRMWARE_REPORT_PATH: Final = "/api/orchestrators/reports/firmware"
ROLLOUT_REPORT_PATH: Final = "/api/orchestrators/reports/rollouts"
#: The beacon's refusals that no retry can change (§8.2 ``refused`` reasons, §8.5 REJECT codes).
FINAL_REFUSALS: Final = frozenset(
    {
        "invalid_signature",
        "downgrade",
        "wrong_target",
        "secure_version",
        "min_previous_version",
        "expired",
        "no_keys",
        "too_large",
        "invalid_format",
        "manifest_mismatch",
        "artifact_mismatch",
    }
)
#: Entry states as the server's firmware status (§3.16); pending and offered are not reported.
WIRE_STATUS: Final = {
    EntryState.TRANSFERRING: "downloading",
    EntryState.VERIFYING: "verifying",
    EntryState.INSTALLING: "installing",
    EntryState.REBOOTING: "installing",
    EntryState.CONFIRMED: "success",
    EntryState.FAILED: "failed",
    EntryState.ROLLED_BACK: "rolled_back",
}
_WIFI_PROGRESS: Final = {
    "receiving": EntryState.TRANSFERRING,
    "verifying": EntryState.VERIFYING,
    "installing": EntryState.INSTALLING,
}
_ORDER: Final = list(EntryState)
#: A BLE progress report of bytes alone is saved at most this often per entry.
BYTES_SAVE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds an entry may stay in a state before the attempt counts as failed."""

    offered_wifi: float = 300.0
    progress: float = 600.0
    rebooting: float = 600.0
    #: A targeted beacon not heard from this long after its wave started fails as ``offline``.
    offline: float = 1800.0
    retry_base: float = 30.0
    retry_max: float = 600.0


@dataclass(frozen=True, slots=True)
class PushResult:
    """How a BLE push ended: ``committed``, ``rolled_back``, ``refused`` or ``failed``."""

    outcome: str
    reason: str = ""


class BleDelivery(Protocol):
    """Pushes a release to one beacon over BLE (§8.5), through the reboot and the check-in."""

    async def push(
        self,
        address: str,
        release: CachedRelease,
        progress: Callable[[EntryState, int], None],
    ) -> PushResult: ...


class RolloutControlError(Exception):
    """An operator's call the rollout's state does not allow (``code``: ``not_found`` or
    ``failed_precondition``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


RolloutListener = Callable[[Rollout, list[Entry]], None]


def _now_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RolloutEngine:
    def __init__(
        self,
        db: Database,
        inventory: BeaconInventory,
        releases: Callable[[str], CachedRelease | None],
        entity_id: str,
        *,
        ble: BleDelivery | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        wifi_concurrency: int = 50,
        ble_concurrency: int = 3,
        timeouts: Timeouts | None = None,
        tick: float = 1.0,
    ) -> None:
        self._db = db
        self._inventory = inventory
        self._releases = releases
        self._entity_id = entity_id
        self._ble = ble
        self._clock = clock
        self._max_attempts = max_attempts
        self._wifi_concurrency = wifi_concurrency
        self._ble_concurrency = ble_concurrency
        self.timeouts = timeouts or Timeouts()
        self._tick = tick
        self._rollouts: dict[str, Rollout] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._dirty_rollouts: set[str] = set()
        self._dirty_entries: set[tuple[str, str]] = set()
        self._reports: list[tuple[str, dict[str, Any]]] = []
        self._listeners: list[RolloutListener] = []
        self._ble_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._bytes_saved: dict[tuple[str, str], float] = {}
        self.on_outbox: Callable[[], None] | None = None

    # -- start ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._db.migrate(store.COMPONENT, store.MIGRATIONS)
        for rollout in await store.load(self._db, max_attempts=self._max_attempts):
            self._rollouts[rollout.rollout_id] = rollout
            for entry in rollout.entries.values():
                if not entry.terminal and not rollout.terminal:
                    self._inventory.set_rollout(entry.beacon_id, rollout.rollout_id, entry.state)
        # A BLE push in flight when the gateway stopped starts again (the beacon resumes from
        # what its flash holds): back to pending, the attempt not counted twice.
        now = self._clock()
        for rollout in self._rollouts.values():
            for entry in rollout.entries.values():
                if entry.transport == "ble" and entry.state in ACTIVE_ENTRY:
                    if entry.state is EntryState.REBOOTING:
                        continue
                    entry.attempts = max(0, entry.attempts - 1)
                    self._set(rollout, entry, EntryState.PENDING, now, report=False)
        await self._commit()

    # -- reads ------------------------------------------------------------------------------

    def rollouts(self) -> list[Rollout]:
        """Newest first (copies without entries)."""
        ordered = sorted(self._rollouts.values(), key=lambda r: (r.seq, r.rollout_id), reverse=True)
        return [replace(r, entries={}) for r in ordered]

    def get(self, rollout_id: str) -> Rollout:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise RolloutControlError("not_found", f"no rollout {rollout_id!r}")
        return replace(rollout, entries={k: replace(v) for k, v in rollout.entries.items()})

    def subscribe(self, listener: RolloutListener) -> Callable[[], None]:
        """``listener(rollout, changed_entries)`` after every saved change."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- server events ------------------------------------------------------------------------

    async def submit(self, event: FirmwareUpdateEvent, seq: int) -> Rollout:
        """The rollout of a ``firmware_update`` event; the same event again changes nothing."""
        rollout_id = event.assignment_id or f"ro-{seq}"
        async with self._lock:
            existing = self._rollouts.get(rollout_id)
            if existing is not None:
                return self.get(rollout_id)
            raw = (
                event.rollout_strategy.model_dump(mode="json", exclude_none=True)
                if event.rollout_strategy is not None
                else {}
            )
            now = self._clock()
            try:
                policy = parse_policy(raw, max_attempts=self._max_attempts)
                reason = ""
                state = RolloutState.PENDING
            except PolicyError as exc:
                policy, reason = Policy(max_attempts=self._max_attempts), f"policy refused: {exc}"
                state = RolloutState.HALTED
            rollout = Rollout(
                rollout_id=rollout_id,
                firmware_id=event.firmware_id,
                seq=seq,
                target=event.target,
                kind=event.kind.value,
                version=event.version,
                device_type=event.device_type,
                channel=event.channel.value,
                policy=policy,
                raw_policy=raw,
                state=state,
                state_reason=reason,
                created_at=now,
                updated_at=now,
            )
            self._rollouts[rollout_id] = rollout
            self._touch(rollout, now)
            log.info("rollout %s of %s: %s", rollout_id, event.firmware_id, policy.summary())
            await self._commit()
        self._wake.set()
        return self.get(rollout_id)

    async def release_refused(self, firmware_id: str, reason: str) -> None:
        """The cache refused the release (signature, size): its pending rollouts halt."""
        async with self._lock:
            now = self._clock()
            for rollout in self._rollouts.values():
                if rollout.firmware_id == firmware_id and rollout.state is RolloutState.PENDING:
                    self._state(rollout, RolloutState.HALTED, f"release refused: {reason}", now)
            await self._commit()

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Step every ``tick`` seconds, or at once when woken, until cancelled."""
        try:
            while True:
                try:
                    await self.step()
                except Exception:
                    log.exception("rollout step failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._tick)
                self._wake.clear()
        finally:
            for task in self._ble_tasks.values():
                task.cancel()
            await asyncio.gather(*self._ble_tasks.values(), return_exceptions=True)

    async def step(self) -> None:
        async with self._lock:
            now = self._clock()
            for rollout in sorted(self._rollouts.values(), key=lambda r: r.seq):
                if rollout.state is RolloutState.COMPLETED:
                    continue
                self._check_entries(rollout, now)
                if rollout.state is RolloutState.PENDING:
                    self._plan(rollout, now)
                if rollout.state is RolloutState.HOLDING:
                    self._hold(rollout, now)
                if rollout.state is RolloutState.RUNNING:
                    self._run_wave(rollout, now)
            await self._commit()

    # -- planning -----------------------------------------------------------------------------

    def _candidates(self) -> list[plan.Candidate]:
        found: dict[str, plan.Candidate] = {}
        for beacon_id, (chip, _mac, _major, _minor) in self._inventory.mall_beacons().items():
            found[beacon_id] = plan.Candidate(beacon_id, chip)
        for record in self._inventory.all():
            if record.chip:
                found[record.beacon_id] = plan.Candidate(
                    record.beacon_id, record.chip, record.device_type
                )
        return list(found.values())

    def _running_version(self, record: BeaconRecord | None, kind: str) -> str:
        if record is None:
            return ""
        return (record.app_version if kind == "app" else record.firmware_version) or ""

    def _plan(self, rollout: Rollout, now: float) -> None:
        release = self._releases(rollout.firmware_id)
        if release is None:
            return  # still downloading or verifying
        rollout.manifest_sha256 = release.manifest_sha256
        targets = plan.select_targets(
            self._candidates(),
            target=rollout.target,
            device_type=rollout.device_type,
            channel=rollout.channel,
            policy=rollout.policy,
        )
        waves = plan.plan_waves(rollout.rollout_id, targets, rollout.policy)
        for number, wave in enumerate(waves, start=1):
            for beacon_id in wave:
                record = self._inventory.get(beacon_id)
                entry = Entry(
                    beacon_id,
                    number,
                    from_version=self._running_version(record, rollout.kind),
                    updated_at=now,
                )
                rollout.entries[beacon_id] = entry
                self._dirty_entries.add((rollout.rollout_id, beacon_id))
                if (
                    entry.from_version == rollout.version
                    and record is not None
                    and not record.trial
                ):
                    self._set(rollout, entry, EntryState.CONFIRMED, now, reason="already running")
                else:
                    self._inventory.set_rollout(beacon_id, rollout.rollout_id, entry.state)
        # An older rollout of the same target and kind gives way: its pending beacons get this
        # release instead, those already updating finish.
        for other in self._rollouts.values():
            if (
                other is not rollout
                and not other.terminal
                and other.seq < rollout.seq
                and (other.target, other.kind) == (rollout.target, rollout.kind)
            ):
                self._state(other, RolloutState.ABORTED, f"superseded by {rollout.rollout_id}", now)
        rollout.wave_count = len(waves)
        if not waves:
            self._state(rollout, RolloutState.COMPLETED, "no beacon matches the targets", now)
            return
        self._start_wave(rollout, 1, now)

    def _start_wave(self, rollout: Rollout, wave: int, now: float) -> None:
        rollout.current_wave = wave
        rollout.wave_started_at = now
        rollout.hold_until = None
        rollout.awaiting_approval = False
        rollout.tolerated = 0
        self._state(rollout, RolloutState.RUNNING, "", now)

    # -- waves ----------------------------------------------------------------------------------

    def _hold(self, rollout: Rollout, now: float) -> None:
        if rollout.awaiting_approval:
            return
        if rollout.hold_until is None or now >= rollout.hold_until:
            self._start_wave(rollout, rollout.current_wave + 1, now)

    def _run_wave(self, rollout: Rollout, now: float) -> None:
        wave = rollout.wave_entries(rollout.current_wave)
        failed = [e for e in wave if e.state in FAILED_ENTRY]
        allowed = rollout.policy.failure_threshold * len(wave)
        if len(failed) - rollout.tolerated > 0 and len(failed) > allowed + rollout.tolerated:
            reasons = sorted({e.failure_reason or e.state.value for e in failed})
            self._state(
                rollout,
                RolloutState.HALTED,
                f"wave {rollout.current_wave}: {len(failed)} of {len(wave)} beacons failed"
                f" ({', '.join(reasons)[:200]}); threshold"
                f" {rollout.policy.failure_threshold:.0%}",
                now,
            )
            return
        if all(e.terminal for e in wave):
            if rollout.current_wave >= rollout.wave_count:
                counts = rollout.counts()
                self._state(
                    rollout,
                    RolloutState.COMPLETED,
                    f"{counts['confirmed']} of {counts['total']} confirmed",
                    now,
                )
                return
            hold = plan.hold_after(rollout.policy, rollout.current_wave)
            manual = rollout.policy.manual_approval and rollout.current_wave == 1
            if manual or hold > 0:
                rollout.hold_until = now + hold
                rollout.awaiting_approval = manual
                reason = (
                    f"wave {rollout.current_wave + 1} waits for approval"
                    if manual
                    else f"holding {hold} s before wave {rollout.current_wave + 1}"
                )
                self._state(rollout, RolloutState.HOLDING, reason, now)
            else:
                self._start_wave(rollout, rollout.current_wave + 1, now)
                self._run_wave(rollout, now)
            return
        self._dispatch(rollout, wave, now)

    def _busy_elsewhere(self, rollout: Rollout, beacon_id: str) -> bool:
        for other in self._rollouts.values():
            if other is rollout:
                continue
            entry = other.entries.get(beacon_id)
            if entry is not None and entry.state in ACTIVE_ENTRY:
                return True
        return False

    def _in_flight(self, transport: str) -> int:
        return sum(
            1
            for r in self._rollouts.values()
            for e in r.entries.values()
            if e.transport == transport
            and e.state in ACTIVE_ENTRY
            and e.state is not EntryState.REBOOTING
        )

    def _dispatch(self, rollout: Rollout, wave: list[Entry], now: float) -> None:
        if not plan.in_window(rollout.policy.windows, datetime.fromtimestamp(now, UTC)):
            if rollout.state_reason != "outside the maintenance windows":
                rollout.state_reason = "outside the maintenance windows"
                self._touch(rollout, now)
            return
        if rollout.state_reason == "outside the maintenance windows":
            rollout.state_reason = ""
            self._touch(rollout, now)
        release = self._releases(rollout.firmware_id)
        if release is None:
            return  # evicted or refused after planning: wait for the cache to have it again
        wifi_free = self._wifi_concurrency - self._in_flight("wifi")
        # A beacon rebooting into its update holds no connection (its check-in takes one
        # briefly, within the central's limit): the next transfer may start meanwhile.
        ble_free = self._ble_concurrency - sum(
            1
            for rid, bid in self._ble_tasks
            if self._rollouts[rid].entries[bid].state is not EntryState.REBOOTING
        )
        started = rollout.wave_started_at or now
        for entry in sorted(wave, key=lambda e: e.beacon_id):
            if entry.state is not EntryState.PENDING or entry.not_before > now:
                continue
            if self._busy_elsewhere(rollout, entry.beacon_id):
                continue
            record = self._inventory.get(entry.beacon_id)
            if record is None or not record.online(now) or record.trial:
                if now - started >= self.timeouts.offline:
                    self._set(rollout, entry, EntryState.FAILED, now, reason="offline")
                continue
            if record.reachable_over_wifi(now) and wifi_free > 0:
                wifi_free -= 1
                entry.transport = "wifi"
                entry.attempts += 1
                entry.bytes_transferred = 0
                self._set(rollout, entry, EntryState.OFFERED, now)
            elif (
                record.ble_address
                and self._ble is not None
                and ble_free > 0
                and not record.reachable_over_wifi(now)
            ):
                ble_free -= 1
                entry.transport = "ble"
                entry.attempts += 1
                entry.bytes_transferred = 0
                self._set(rollout, entry, EntryState.OFFERED, now)
                key = (rollout.rollout_id, entry.beacon_id)
                task = asyncio.ensure_future(
                    self._ble_push(rollout.rollout_id, entry.beacon_id, record.ble_address, release)
                )
                task.set_name(f"ble-push-{entry.beacon_id}")
                self._ble_tasks[key] = task
                task.add_done_callback(self._forget_push(key))

    def _forget_push(self, key: tuple[str, str]) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._ble_tasks.pop(key, None)

        return forget

    # -- deadlines and evidence -------------------------------------------------------------

    def _check_entries(self, rollout: Rollout, now: float) -> None:
        for entry in rollout.entries.values():
            if entry.state not in ACTIVE_ENTRY:
                continue
            if entry.state is EntryState.REBOOTING:
                record = self._inventory.get(entry.beacon_id)
                if record is not None and self._advertises(record, rollout):
                    self._set(rollout, entry, EntryState.CONFIRMED, now)
                    continue
            if (rollout.rollout_id, entry.beacon_id) in self._ble_tasks:
                continue  # the push task owns its deadlines
            if entry.deadline is not None and now >= entry.deadline:
                reason = {
                    EntryState.OFFERED: "no_response",
                    EntryState.REBOOTING: "no_confirmation",
                }.get(entry.state, "stalled")
                self._attempt_failed(rollout, entry, reason, now)

    @staticmethod
    def _advertises(record: BeaconRecord, rollout: Rollout) -> bool:
        """The beacon's advertisement shows the release's version committed (§8.4)."""
        core = version_core(rollout.version)
        shown = record.adv_app if rollout.kind == "app" else record.adv_firmware
        if core is None or shown is None or record.flags is None or record.flags & 0x02:
            return False
        prerelease_flag = 0x10 if rollout.kind == "app" else 0x08
        return shown == core[0] and bool(record.flags & prerelease_flag) == core[1]

    def _attempt_failed(self, rollout: Rollout, entry: Entry, reason: str, now: float) -> None:
        if entry.attempts >= rollout.policy.max_attempts:
            self._set(rollout, entry, EntryState.FAILED, now, reason=reason)
            return
        delay = min(
            self.timeouts.retry_max, self.timeouts.retry_base * 2 ** max(0, entry.attempts - 1)
        )
        entry.not_before = now + delay
        entry.failure_reason = reason
        self._set(rollout, entry, EntryState.PENDING, now, reason=reason, report=False)

    # -- Wi-Fi: reports and assignments (§8.2) -------------------------------------------------

    def _entries_of(self, beacon_id: str) -> Iterable[tuple[Rollout, Entry]]:
        for rollout in sorted(self._rollouts.values(), key=lambda r: r.seq, reverse=True):
            entry = rollout.entries.get(beacon_id)
            if entry is not None:
                yield rollout, entry

    async def on_report(self, report: dict[str, Any]) -> dict[str, str] | None:
        """Apply a beacon's §8.2 report (already in the inventory); the assignment to answer."""
        beacon_id = str(report["beacon_id"])
        async with self._lock:
            now = self._clock()
            result = report.get("result")
            if isinstance(result, dict):
                self._apply_result(beacon_id, result, now)
            assignment: dict[str, str] | None = None
            for rollout, entry in self._entries_of(beacon_id):
                if entry.terminal or entry.transport != "wifi":
                    continue
                self._apply_progress(rollout, entry, report, now)
                if (
                    entry.state in ACTIVE_ENTRY
                    and entry.state is not EntryState.REBOOTING
                    and rollout.state is not RolloutState.ABORTED
                    and assignment is None
                ):
                    assignment = {
                        "firmware_id": rollout.firmware_id,
                        "manifest_sha256": rollout.manifest_sha256,
                    }
            await self._commit()
        return assignment

    def _apply_progress(
        self, rollout: Rollout, entry: Entry, report: dict[str, Any], now: float
    ) -> None:
        running = report.get("app_version" if rollout.kind == "app" else "firmware_version")
        state = report.get("ota_state")
        if running == rollout.version and report.get("trial") is None and state != "trial":
            if entry.state in (EntryState.INSTALLING, EntryState.REBOOTING):
                self._set(rollout, entry, EntryState.CONFIRMED, now)
            return
        if running == rollout.version and report.get("trial") == rollout.kind:
            self._advance(rollout, entry, EntryState.REBOOTING, now)
            return
        target = _WIFI_PROGRESS.get(str(state))
        if target is not None:
            self._advance(rollout, entry, target, now)

    def _advance(self, rollout: Rollout, entry: Entry, state: EntryState, now: float) -> None:
        """Forward only: a late report never moves an entry back."""
        if entry.state in ACTIVE_ENTRY and _ORDER.index(state) > _ORDER.index(entry.state):
            self._set(rollout, entry, state, now)

    def _apply_result(self, beacon_id: str, result: dict[str, Any], now: float) -> None:
        manifest = result.get("manifest_sha256")
        for rollout, entry in self._entries_of(beacon_id):
            if rollout.manifest_sha256 != manifest or entry.terminal:
                continue
            self._outcome(rollout, entry, str(result.get("outcome")), result.get("reason"), now)
            return

    def _outcome(
        self, rollout: Rollout, entry: Entry, outcome: str, reason: Any, now: float
    ) -> None:
        text = str(reason) if reason else ""
        if outcome == "installed":
            self._advance(rollout, entry, EntryState.REBOOTING, now)
        elif outcome == "committed":
            self._set(rollout, entry, EntryState.CONFIRMED, now)
        elif outcome == "rolled_back":
            self._set(rollout, entry, EntryState.ROLLED_BACK, now, reason=text or "rolled_back")
        elif outcome == "refused":
            if text == "same_version":
                self._set(rollout, entry, EntryState.CONFIRMED, now, reason="already running")
            elif text in FINAL_REFUSALS or entry.attempts >= rollout.policy.max_attempts:
                self._set(rollout, entry, EntryState.FAILED, now, reason=text or "refused")
            else:
                self._attempt_failed(rollout, entry, text or "refused", now)
        elif outcome == "failed":
            self._attempt_failed(rollout, entry, text or "transfer_failed", now)

    # -- BLE pushes (§8.5) ----------------------------------------------------------------------

    async def _ble_push(
        self, rollout_id: str, beacon_id: str, address: str, release: CachedRelease
    ) -> None:
        assert self._ble is not None
        key = (rollout_id, beacon_id)

        def progress(state: EntryState, sent: int) -> None:
            rollout = self._rollouts[rollout_id]
            entry = rollout.entries[beacon_id]
            now = self._clock()
            entry.bytes_transferred = sent
            if state is not entry.state:
                self._advance(rollout, entry, state, now)
                self._wake.set()
            elif now - self._bytes_saved.get(key, 0.0) >= BYTES_SAVE_SECONDS:
                self._bytes_saved[key] = now
                self._dirty_entries.add(key)
                self._wake.set()

        try:
            result = await self._ble.push(address, release, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in one push must not stop the rollout
            log.exception("BLE push to %s failed", beacon_id)
            result = PushResult("failed", f"error: {exc}"[:100])
        async with self._lock:
            rollout = self._rollouts[rollout_id]
            entry = rollout.entries[beacon_id]
            if not entry.terminal:
                self._outcome(rollout, entry, result.outcome, result.reason, self._clock())
            self._bytes_saved.pop(key, None)
            await self._commit()
        self._wake.set()

    # -- operators ------------------------------------------------------------------------------

    async def control(
        self, rollout_id: str, action: str, *, reason: str = "", wave: int | None = None
    ) -> Rollout:
        """``pause``, ``resume``, ``abort`` or ``approve`` (``wave`` = current_wave + 1)."""
        async with self._lock:
            rollout = self._rollouts.get(rollout_id)
            if rollout is None:
                raise RolloutControlError("not_found", f"no rollout {rollout_id!r}")
            now = self._clock()
            state = rollout.state
            refuse = RolloutControlError(
                "failed_precondition", f"cannot {action} a rollout that is {state.value}"
            )
            if action == "pause":
                if state is RolloutState.PAUSED:
                    return self._copy(rollout)
                if state not in (RolloutState.RUNNING, RolloutState.HOLDING):
                    raise refuse
                rollout.resume_to = state
                self._state(rollout, RolloutState.PAUSED, reason or "paused by an operator", now)
            elif action == "resume":
                if state in (RolloutState.RUNNING, RolloutState.HOLDING):
                    return self._copy(rollout)
                if state not in (RolloutState.PAUSED, RolloutState.HALTED):
                    raise refuse
                if state is RolloutState.HALTED and rollout.current_wave == 0:
                    back = RolloutState.PENDING
                else:
                    back = rollout.resume_to or RolloutState.RUNNING
                if state is RolloutState.HALTED:
                    held = rollout.wave_entries(rollout.current_wave)
                    rollout.tolerated = sum(1 for e in held if e.state in FAILED_ENTRY)
                rollout.resume_to = None
                self._state(rollout, back, "", now)
            elif action == "abort":
                if state is RolloutState.ABORTED:
                    return self._copy(rollout)
                if rollout.terminal:
                    raise refuse
                self._state(rollout, RolloutState.ABORTED, reason or "aborted by an operator", now)
            elif action == "approve":
                if state is not RolloutState.HOLDING or not rollout.awaiting_approval:
                    if state is RolloutState.RUNNING and wave == rollout.current_wave:
                        return self._copy(rollout)  # approved already
                    raise refuse
                if wave != rollout.current_wave + 1:
                    raise RolloutControlError(
                        "failed_precondition",
                        f"wave {wave} is not the one held (next is {rollout.current_wave + 1})",
                    )
                rollout.awaiting_approval = False
                self._touch(rollout, now)
                self._hold(rollout, now)
            else:
                raise ValueError(f"unknown rollout action {action!r}")
            log.info("rollout %s: %s (%s)", rollout_id, action, reason or "no reason given")
            await self._commit()
        self._wake.set()
        return self._copy(rollout)

    @staticmethod
    def _copy(rollout: Rollout) -> Rollout:
        return replace(rollout, entries={})

    # -- changes, reports, saving ----------------------------------------------------------------

    def _touch(self, rollout: Rollout, now: float) -> None:
        rollout.updated_at = now
        self._dirty_rollouts.add(rollout.rollout_id)

    def _state(self, rollout: Rollout, state: RolloutState, reason: str, now: float) -> None:
        if rollout.state is not state:
            log.info("rollout %s: %s -> %s %s", rollout.rollout_id, rollout.state, state, reason)
        rollout.state = state
        rollout.state_reason = reason
        self._touch(rollout, now)
        self._reports.append((ROLLOUT_REPORT_PATH, self._rollout_report(rollout, now)))
        if rollout.terminal:
            for entry in rollout.entries.values():
                if entry.state not in ACTIVE_ENTRY:
                    self._inventory.set_rollout(entry.beacon_id, "", "")

    def _deadline(self, entry: Entry, now: float) -> float | None:
        t = self.timeouts
        if entry.state is EntryState.OFFERED:
            return now + t.offered_wifi
        if entry.state is EntryState.REBOOTING:
            return now + t.rebooting
        if entry.state in ACTIVE_ENTRY:
            return now + t.progress
        return None

    def _set(
        self,
        rollout: Rollout,
        entry: Entry,
        state: EntryState,
        now: float,
        *,
        reason: str = "",
        report: bool = True,
    ) -> None:
        entry.state = state
        entry.updated_at = now
        if state in FAILED_ENTRY or state is EntryState.CONFIRMED:
            entry.failure_reason = reason if state is not EntryState.CONFIRMED else ""
        entry.deadline = self._deadline(entry, now)
        self._dirty_entries.add((rollout.rollout_id, entry.beacon_id))
        self._touch(rollout, now)
        if entry.terminal or (rollout.terminal and state not in ACTIVE_ENTRY):
            self._inventory.set_rollout(entry.beacon_id, "", "")
        else:
            self._inventory.set_rollout(entry.beacon_id, rollout.rollout_id, state.value)
        status = WIRE_STATUS.get(state)
        if report and status is not None:
            body: dict[str, Any] = {
                "entity_id": self._entity_id,
                "firmware_id": rollout.firmware_id,
                "beacon_id": entry.beacon_id,
                "status": status,
                "at": _now_text(now),
            }
            if state in FAILED_ENTRY and reason:
                body["error_code"] = reason[:64] if _is_code(reason) else state.value
                body["message"] = f"{rollout.rollout_id}: {reason}"[:1000]
            elif reason:
                body["message"] = f"{rollout.rollout_id}: {reason}"[:1000]
            else:
                body["message"] = rollout.rollout_id
            self._reports.append((FIRMWARE_REPORT_PATH, body))
        if state is EntryState.CONFIRMED or state in FAILED_ENTRY:
            log.info(
                "rollout %s: %s %s%s",
                rollout.rollout_id,
                entry.beacon_id,
                state.value,
                f" ({reason})" if reason else "",
            )

    def _rollout_report(self, rollout: Rollout, now: float) -> dict[str, Any]:
        return {
            "entity_id": self._entity_id,
            "rollout_id": rollout.rollout_id,
            "firmware_id": rollout.firmware_id,
            "state": rollout.state.value,
            "state_reason": rollout.state_reason[:1000],
            "current_wave": rollout.current_wave,
            "wave_count": rollout.wave_count,
            "counts": rollout.counts(),
            "at": _now_text(now),
        }

    async def _commit(self) -> None:
        """Save what changed, with its reports, in one transaction; then tell listeners."""
        if not (self._dirty_rollouts or self._dirty_entries or self._reports):
            return
        now = self._clock()
        rollout_ids = set(self._dirty_rollouts) | {r for r, _ in self._dirty_entries}
        # A rollout's summary report reflects the counts after every change in this save.
        reports = [
            (path, self._rollout_report(self._rollouts[body["rollout_id"]], now))
            if path == ROLLOUT_REPORT_PATH
            else (path, body)
            for path, body in self._reports
        ]
        changed = sorted(self._dirty_entries)
        if any(p == FIRMWARE_REPORT_PATH for p, _ in reports) and not any(
            p == ROLLOUT_REPORT_PATH for p, _ in reports
        ):
            for rollout_id in sorted({r for r, _ in changed}):
                reports.append(
                    (ROLLOUT_REPORT_PATH, self._rollout_report(self._rollouts[rollout_id], now))
                )
        reports = _dedupe_rollout_reports(reports)
        async with self._db.transaction() as conn:
            await store.save(
                conn,
                [self._rollouts[r] for r in sorted(rollout_ids)],
                [(r, self._rollouts[r].entries[b]) for r, b in changed],
                reports,
                now,
            )
        self._dirty_rollouts.clear()
        self._dirty_entries.clear()
        self._reports.clear()
        if reports and self.on_outbox is not None:
            self.on_outbox()
        for rollout_id in sorted(rollout_ids):
            rollout = self._rollouts[rollout_id]
            entries = [replace(rollout.entries[b]) for r, b in changed if r == rollout_id]
            snapshot = self._copy(rollout)
            for listener in list(self._listeners):
                try:
                    listener(snapshot, entries)
                except Exception:
                    log.exception("rollout listener failed")


def _is_code(text: str) -> bool:
    return bool(text) and len(text) <= 64 and all(c.isalnum() or c in "._-" for c in text)


def _dedupe_rollout_reports(
    reports: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """Keep the firmware reports in order and only the last summary of each rollout (placed
    where it was last produced)."""
    last: dict[str, int] = {}
    for index, (path, body) in enumerate(reports):
        if path == ROLLOUT_REPORT_PATH:
            last[body["rollout_id"]] = index
    return [
        (path, body)
        for index, (path, body) in enumerate(reports)
        if path != ROLLOUT_REPORT_PATH or last[body["rollout_id"]] == index
    ]
