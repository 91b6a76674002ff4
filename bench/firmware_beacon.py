"""The beacon firmware on the MicroPython unix port (issue 5, item 11).

* signature verification: ``navign.p256.verify`` on a golden vector, timed inside MicroPython
  (median of ``--verify-runs``), with the host CPU named so it can be scaled to an ESP32;
* OTA throughput over loopback: a simulated board (real firmware, 96 KiB heap, 4 MiB flash laid
  out as MicroPython's OTA build) updated over Wi-Fi from the firmware's test gateway, from the
  first "receiving" advertisement to the reset into the new version (download, flash writes,
  read-back check, switch), for an image and an app bundle; and over the simulated BLE link (the
  link itself adds no delay: this is what the beacon's side can take), median of ``--runs``;
* heap: the smallest heap in which each kind of update still succeeds (bisected in 2 KiB steps),
  so the headroom below the 96 KiB target, and the free heap the idle beacon reports.

    uv run python bench/firmware_beacon.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as h

from navign_firmware import blelink, build, flash, measure
from navign_firmware.sim import Event, SimBeacon
from navign_firmware.testing import (
    BeaconGateway,
    Release,
    app_release,
    image_release,
    public_point_hex,
    release_key,
)

BENCH = "beacon firmware"
HEAP = 96 * 1024
BEACON_ID = "b-bench"
WIFI = "bench:secret-wifi"
LAYOUT = flash.layout()  # 4 MiB: ota_0 and ota_1 of 1.5 MiB, vfs of 960 KiB


def config(port: int | None) -> bytes:
    doc: dict[str, Any] = {
        "beacon_id": BEACON_ID,
        "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
        "major": 1,
        "minor": 2,
        "release_keys": [public_point_hex(release_key())],
        "ota": {"trial_boots": 3, "health_timeout_s": 30},
    }
    if port is not None:
        doc["wifi"] = {"ssid": "bench", "password": "secret-wifi"}
        doc["gateway"] = {"host": "127.0.0.1", "port": port}
    return json.dumps(doc).encode()


def new_board(workdir: Path, files: dict[str, bytes], cfg: bytes, heap: int = HEAP) -> SimBeacon:
    board = SimBeacon(workdir, flash_layout=LAYOUT, app_heap=heap, env={"NAVIGN_SIM_WIFI": WIFI})
    board.create(flash.make_image("1.0.0"), {**files, "config.json": cfg})
    return board


def _reports(gateway: BeaconGateway) -> list[dict[str, Any]]:
    return gateway.reports(BEACON_ID)


def wifi_update(
    workdir: Path, files: dict[str, bytes], release: Release, heap: int = HEAP
) -> tuple[bool, float]:
    """Install ``release`` over Wi-Fi: (committed?, seconds from "receiving" to the reset)."""
    with BeaconGateway() as gateway:
        gateway.publish(release)
        gateway.assign(BEACON_ID, release)
        board = new_board(workdir, files, config(gateway.port), heap)
        first = board.power_on(timeout=120)
        receiving = [e["t"] for e in first.events if e["ev"] == "adv" and e.get("resp")
                     and bytes.fromhex(e["resp"])[20] == 1]  # fmt: skip
        resets = [e["t"] for e in first.events if e["ev"] == "reset"]
        if first.end != "reset" or not receiving or not resets:
            return False, 0.0

        def committed(event: Event) -> bool:
            return any((r.get("result") or {}).get("outcome") == "committed"
                       for r in _reports(gateway))  # fmt: skip

        try:
            board.run(until=committed, max_boots=3, timeout=90)
        except (TimeoutError, RuntimeError):
            return False, 0.0
        return True, resets[0] - receiving[0]


def ble_update(workdir: Path, files: dict[str, bytes], release: Release,
               heap: int = HEAP) -> tuple[bool, float]:  # fmt: skip
    """Push ``release`` over the simulated BLE link: (switched?, seconds of the push)."""
    board = new_board(workdir, files, config(None), heap)
    run = board.start(timeout=300)
    try:
        run.wait_for(lambda e: e["ev"] == "gatt")
        with blelink.GattLink(board.ble_port, timeout=30) as link:
            started = time.monotonic()
            blelink.push(link, release.envelope, release.artifact)
            seconds = time.monotonic() - started
        return run.join(60).end == "reset", seconds
    except (blelink.RejectedError, blelink.LinkClosedError, TimeoutError, RuntimeError):
        return False, 0.0
    finally:
        run.stop()


def smallest_heap(attempt: Callable[[int], bool], low: int = 32 * 1024) -> int:
    """The smallest heap (a multiple of 2 KiB, at most 96 KiB) in which ``attempt`` succeeds,
    or 0 when it fails even at 96 KiB."""
    step = 2 * 1024
    if not attempt(HEAP):
        return 0
    lo, hi = low // step, HEAP // step  # attempt(hi * step) succeeds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid * step):
            hi = mid
        else:
            lo = mid
    return hi * step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-runs", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image-kib", type=int, default=1024)
    h.common_arguments(parser)
    args = parser.parse_args()
    figures: list[h.Figure] = []

    cpu = measure.host_cpu()
    times = measure.signature_verification_ms(args.verify_runs)
    figures.append(h.Figure(BENCH, f"P-256 signature verification, median ({cpu})",
                            statistics.median(times), "ms"))  # fmt: skip

    files = build.device_files(version="1.0.0")
    image = image_release("2.0.0", size=args.image_kib * 1024)
    app = app_release("1.1.0")
    small_image = image_release("2.0.0", size=256 * 1024)
    with tempfile.TemporaryDirectory(prefix="navign-fw-bench-") as tmp:
        scratch = Path(tmp)
        counter = iter(range(10_000))

        def place() -> Path:
            return scratch / f"b{next(counter)}"

        for label, release, size in (("image", image, len(image.artifact)),
                                     ("app bundle", app, len(app.artifact))):  # fmt: skip
            seconds = []
            for _ in range(args.runs):
                ok, took = wifi_update(place(), files, release)
                if not ok:
                    sys.exit(f"the Wi-Fi {label} update failed")
                seconds.append(took)
            median = statistics.median(seconds)
            figures.append(h.Figure(BENCH, f"Wi-Fi OTA, {label} of {size // 1024} KiB, "
                                    "receive→reset, median", median, "s"))  # fmt: skip
            figures.append(h.Figure(BENCH, f"Wi-Fi OTA throughput, {label}",
                                    size / 1024 / median, "KiB/s"))  # fmt: skip
        seconds = []
        for _ in range(args.runs):
            ok, took = ble_update(place(), files, small_image)
            if not ok:
                sys.exit("the BLE push failed")
            seconds.append(took)
        median = statistics.median(seconds)
        figures.append(h.Figure(BENCH, "BLE OTA throughput (simulated link, MTU 247), image of "
                                "256 KiB, median", 256 / median, "KiB/s"))  # fmt: skip

        for label, attempt in (
            ("Wi-Fi app update", lambda heap: wifi_update(place(), files, app, heap)[0]),
            ("Wi-Fi image update", lambda heap: wifi_update(place(), files, small_image, heap)[0]),
            ("BLE image push", lambda heap: ble_update(place(), files, small_image, heap)[0]),
        ):
            least = smallest_heap(attempt)
            h.say(f"{label}: smallest heap {least} bytes")
            figures.append(h.Figure(BENCH, f"smallest heap in which a {label} succeeds",
                                    least / 1024, "KiB", "<= 96", 0 < least <= HEAP,
                                    goal=True))  # fmt: skip
            figures.append(h.Figure(BENCH, f"heap headroom for a {label} (96 KiB − smallest)",
                                    (HEAP - least) / 1024 if least else 0, "KiB"))  # fmt: skip
        with BeaconGateway() as gateway:
            board = new_board(place(), files, config(gateway.port))
            board.power_on(timeout=30, until=lambda e: bool(_reports(gateway)))
            free = [r["free_heap"] for r in _reports(gateway)]
        figures.append(h.Figure(BENCH, "free heap of the idle beacon (its report, after a "
                                "collection)", free[0] / 1024, "KiB"))  # fmt: skip
    h.emit(figures, args.json)


if __name__ == "__main__":
    main()
