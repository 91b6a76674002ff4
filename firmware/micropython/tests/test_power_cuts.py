"""Power cuts at 100 random moments of updates (download, flash writes, the switch, the first boot
on trial, the commit): after every one the board boots a complete, verified version, old or new,
and in the end it still updates.

A cut is SIGKILL of the board's process: the flash file keeps exactly the writes that completed,
so littlefs and the otadata sectors see what they would see on a board losing power. Updates
alternate between app bundles and full images, each assigned as soon as the previous one is
committed, so that the cuts keep landing in every phase; the phase of each cut is read from the
OTA state the board last advertised.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import pytest

from navign_firmware.sim import Boot, Event, SimBeacon
from navign_firmware.testing import BeaconGateway, Release, app_release, image_release

from .conftest import BEACON_ID, beacon_config

pytestmark = pytest.mark.slow

CUTS = 100
#: OTA state byte of the Navign frame (docs/protocol.md §8.4) → phase name.
PHASES = {0: "idle", 1: "receiving", 2: "verifying", 3: "installing", 4: "trial", 5: "failed"}


def _phase(boot: Boot) -> str:
    """What the board was doing when the power went: the OTA state it last advertised."""
    adverts = [e for e in boot.events if e["ev"] == "adv" and e.get("resp")]
    if not adverts:
        return "booting"
    return PHASES.get(bytes.fromhex(adverts[-1]["resp"])[20], "?")


def _advertises(state: int) -> Callable[[Event], bool]:
    """``until``: the board advertises this OTA state (the power is cut at that moment)."""

    def check(event: Event) -> bool:
        return (
            event["ev"] == "adv"
            and bool(event.get("resp"))
            and (bytes.fromhex(event["resp"])[20] == state)
        )

    return check


def _committed(gateway: BeaconGateway, release: Release) -> bool:
    return any(
        (r.get("result") or {}).get("manifest_sha256") == release.manifest_sha256
        and (r.get("result") or {}).get("outcome") == "committed"
        for r in gateway.reports(BEACON_ID)
    )


class Plan:
    """App and image releases with rising versions, made on demand."""

    def __init__(self) -> None:
        self.apps: dict[str, Release] = {}
        self.images: dict[str, Release] = {}
        self.count = 0

    def next(self) -> Release:
        self.count += 1
        n = (self.count + 1) // 2
        if self.count % 2:
            release = app_release(f"1.{n}.0")
            self.apps[release.manifest.version] = release
        else:
            release = image_release(f"2.{n}.0", size=128 * 1024)
            self.images[release.manifest.version] = release
        return release


@pytest.mark.timeout(1200)
def test_power_cuts_at_random_moments_never_leave_a_broken_beacon(
    make_beacon: Callable[..., SimBeacon],
    gateway: BeaconGateway,
    device_files: dict[str, bytes],
) -> None:
    rng = random.Random(5)
    initial = {
        path.removeprefix("app/a/"): (len(data), hashlib.sha256(data).hexdigest())
        for path, data in device_files.items()
        if path.startswith("app/a/")
    }
    # Check-ins every 5 s: an update fits well inside one power-on even on a loaded machine.
    ota = {"trial_boots": 3, "health_timeout_s": 15, "report_interval_s": 5}
    board = make_beacon(beacon_config(gateway.port, ota=ota))
    gateway.faults.rate = 400_000  # about a slow WiFi link: downloads take a good part of a second
    plan = Plan()
    current = plan.next()
    gateway.publish(current)
    gateway.assign(BEACON_ID, current)
    phases: dict[str, int] = {}
    previous_end = ""
    for cut in range(CUTS):
        # Most cuts come at a random time after power-on. Some wait for the start of the switch
        # (state verifying), and half of the first boots after an install are cut as they
        # start their trial (state trial), so that those short phases are hit however fast the
        # machine is; a boot that does not reach the phase gets a timed cut.
        # (Every such boot is cut until three trials were hit: how often an install completes
        # inside a short power-on depends on the machine's speed.)
        if previous_end == "reset" and (cut % 2 or phases.get("trial", 0) < 3):
            target: int | None = 4  # an update was just installed: this is its first boot
        else:
            target = 2 if cut % 4 == 2 else None
        boot = board.power_on(
            cut_after=rng.uniform(0.02, 1.2) if target is None else 4.0,
            until=None if target is None else _advertises(target),
            timeout=30,
        )
        assert boot.end in ("cut", "stopped", "reset"), (cut, boot.end, board.log_path)
        previous_end = boot.end
        if boot.end in ("cut", "stopped"):
            phase = _phase(boot)
            phases[phase] = phases.get(phase, 0) + 1
        # Every boot starts a complete image (the bootloader checks its appended SHA-256), unless
        # the power went before the bootloader chose one...
        if boot.version is None:
            assert boot.end == "cut", (cut, boot.events)
            assert not boot.find("boot"), (cut, boot.events)
        else:
            assert boot.version in {"1.0.0", *plan.images}, (cut, boot.events)
        # ...and the app boot.py selects has every file of its version, byte for byte.
        try:
            state = json.loads(board.read("/ota/boot.json"))
        except Exception:  # noqa: BLE001 - no state yet: the provisioned app in slot a
            state = {"active": "a"}
        version = state.get("version") or "1.0.0"
        files = (
            initial
            if version == "1.0.0"
            else {f.path: (f.size, f.sha256) for f in plan.apps[version].manifest.files or ()}
        )
        assert board.hashes(f"/app/{state['active']}") == files, (cut, state)
        if _committed(gateway, current):
            current = plan.next()
            gateway.publish(current)
            gateway.assign(BEACON_ID, current)
    # Cuts hit every phase of an update, not only the quiet ones.
    for phase in ("idle", "receiving", "verifying", "trial"):
        assert phases.get(phase, 0) >= 3, phases
    assert plan.count >= 4, "the cuts must not stop updates from progressing"
    # Without cuts it finishes what is assigned, and keeps updating.
    board.run(until=lambda e: _committed(gateway, current), max_boots=20, timeout=300)
    last = plan.next()
    gateway.publish(last)
    gateway.assign(BEACON_ID, last)
    board.run(until=lambda e: _committed(gateway, last), max_boots=20, timeout=300)
