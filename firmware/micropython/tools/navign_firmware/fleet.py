"""Simulated beacons that live for a whole test (or a demo): powered on again after every reset,
as a chip reboots, and seen on the air (:mod:`navign_firmware.air`) while they advertise.

:class:`LiveBeacon` runs one :class:`~navign_firmware.sim.SimBeacon` in a thread: each power-on
is one process; a reset or a watchdog reset is followed at once by the next power-on; every
``adv`` event the board reports is published to the air under its BLE address (its uid) with its
GATT port, and withdrawn when it stops advertising or the power-on ends. Events are recorded
(each with ``n``, the power-on it belongs to), with two of the harness's own: ``power_on`` and
``power_off`` (``end``: ``reset``, ``wdt``, ``cut``, ``stopped``, ``brick``, ``exit``,
``timeout``). :meth:`LiveBeacon.cut_power` kills the board's process at once (SIGKILL, through a
pidfd: only the process this beacon started) and powers it on again after a delay, or leaves it
off. A board that bricks or exits unexpectedly stays off (its ``failure`` says why).

:class:`Fleet` runs up to :data:`MAX_FLEET` of them. :func:`provision_board` creates a
provisioned board as the bench would (image in ota_0, boot.py, main.py, the app in /app/a,
/config.json) and records how to run it in ``board.json``; :func:`load_board` reads it back.

    python -m navign_firmware.fleet provision BOARDS/b-0001 --beacon-id b-0001 \\
        --uid a4cf12000001 --release-key <hex> [--wifi] [--gateway http://127.0.0.1:8080]
    python -m navign_firmware.fleet run BOARDS --air AIR      # until SIGINT or SIGTERM

Public: :class:`LiveBeacon`, :class:`Fleet`, :func:`provision_board`, :func:`load_board`,
:func:`load_boards`, :func:`main`, :data:`MAX_FLEET`, :data:`WIFI_SSID`, :data:`WIFI_PASSWORD`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from navign_firmware import build, flash
from navign_firmware.air import DEFAULT_RSSI, Air, AirError, address_from_uid
from navign_firmware.sim import Boot, Event, SimBeacon

logger = logging.getLogger(__name__)

MAX_FLEET: Final = 128
#: The simulated mall's Wi-Fi (host/network.py's access point, NAVIGN_SIM_WIFI).
WIFI_SSID: Final = "mall-ops"
WIFI_PASSWORD: Final = "correct horse"  # noqa: S105 - the simulated access point
DEFAULT_ENTITY_UUID: Final = "6e617669-676e-4d61-6c6c-000000000001"
BOARD_FILE: Final = "board.json"
#: Seconds a board stays off after cut_power() before it is powered on again (by default).
POWER_CUT_OFF_S: Final = 0.5
_BEACON_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_KEY = re.compile(r"^04[0-9a-fA-F]{128}$")


class LiveBeacon:
    """One board powered for a whole test; see the module docstring."""

    def __init__(
        self,
        board: SimBeacon,
        *,
        air: Air | None = None,
        rssi: int = DEFAULT_RSSI,
        off_after_cut: float | None = POWER_CUT_OFF_S,
        max_boots: int = 1000,
        boot_timeout: float = 24 * 3600.0,
    ) -> None:
        self.board = board
        self.address = address_from_uid(board.uid)
        self.air = air
        self.rssi = rssi
        self.off_after_cut = off_after_cut
        self.max_boots = max_boots
        self.boot_timeout = boot_timeout
        self.events: list[Event] = []
        self.failure: str | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._cut = False  # cut_power() asked to end the running power-on
        self._off = False  # stays off until power_on()
        self._off_for: float | None = None
        self._powered = False
        self._n = 0
        self._last_adv: tuple[bytes | None, bytes | None] = (None, None)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LiveBeacon({self.address}, {self.board.workdir})"

    # --- control ---------------------------------------------------------------------------
    def start(self) -> LiveBeacon:
        if self._thread is not None:
            raise RuntimeError("the beacon was started already")
        self._thread = threading.Thread(
            target=self._run, name=f"beacon-{self.address}", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> LiveBeacon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def powered(self) -> bool:
        """True while a power-on runs."""
        return self._powered

    @property
    def power_ons(self) -> int:
        return self._n

    def cut_power(
        self, off_for: float | None = None, *, stay_off: bool = False, timeout: float = 10.0
    ) -> None:
        """Cut the power now; the board is powered on again after ``off_for`` seconds (default:
        the beacon's ``off_after_cut``), or never with ``stay_off`` (until :meth:`power_on`).
        Returns once the power-on has ended."""
        with self._cond:
            self._off_for = (
                None if stay_off else (self.off_after_cut if off_for is None else off_for)
            )
            if not self._powered:
                self._off = self._off_for is None
                self._cond.notify_all()
                return
            self._cut = True
            n = self._n
        self._kill_now()
        self.wait_for(lambda e: e["ev"] == "power_off" and e["n"] == n, timeout)

    def power_on(self) -> None:
        """Power a board on again that was left off."""
        with self._cond:
            self._off = False
            self.failure = None
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Cut the power for good and end the thread."""
        self._request_stop()
        if self._powered:
            self._kill_now()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self} did not stop")
        self._withdraw()

    def _request_stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _kill_now(self) -> None:
        # The board's process is a child of this beacon's thread: find it among that thread's
        # children, pin it with a pidfd (no PID reuse race) and SIGKILL it. Without /proc's
        # children list, SimBeacon ends the power-on at its next check (within 0.25 s).
        thread = self._thread
        if thread is None or thread.native_id is None:
            return
        listing = Path(f"/proc/{os.getpid()}/task/{thread.native_id}/children")
        try:
            children = listing.read_text().split()
        except OSError:
            return
        for pid in children:
            try:
                fd = os.pidfd_open(int(pid))
            except OSError:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if pid in listing.read_text().split() and b"poweron.py" in cmdline:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)

    # --- events ----------------------------------------------------------------------------
    def mark(self) -> int:
        """The number of events so far (for :meth:`wait_for`'s ``since``)."""
        with self._cond:
            return len(self.events)

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 30.0, *, since: int = 0
    ) -> Event:
        """The first event from index ``since`` on (recorded or to come) that matches; raises
        TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = since
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = max(seen, len(self.events))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self}: no such event in {timeout} s")
                self._cond.wait(min(left, 0.5))

    def _record(self, event: Event) -> None:
        with self._cond:
            event["n"] = self._n
            self.events.append(event)
            self._cond.notify_all()

    # --- the power-on loop -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._n < self.max_boots:
                with self._cond:
                    while self._off and not self._stopping:
                        self._cond.wait(1.0)
                    if self._stopping:
                        return
                    self._n += 1
                    self._cut = False
                    self._powered = True
                    self._last_adv = (None, None)
                self._record({"ev": "power_on", "t": 0.0})
                try:
                    boot = self.board.power_on(timeout=self.boot_timeout, until=self._until)
                finally:
                    self._withdraw()
                    with self._cond:
                        self._powered = False
                end = self._end(boot)
                self._record({"ev": "power_off", "end": end, "code": boot.code, "t": boot.seconds})
                if not self._after(end):
                    return
            self.failure = f"powered on {self.max_boots} times (max_boots)"
        finally:
            self._withdraw()

    def _end(self, boot: Boot) -> str:
        # Our own SIGKILL ends a power-on as "exit" (or "stopped" when SimBeacon saw it first);
        # a power-on that ended by itself while the power was being cut counts as cut too.
        if boot.end == "brick" or not (self._cut or self._stopping):
            return boot.end
        return "stopped" if self._stopping else "cut"

    def _after(self, end: str) -> bool:
        # What follows a power-on that ended: False ends the thread.
        with self._cond:
            if self._stopping:
                return False
            if end == "cut":
                if self._off_for is None:
                    self._off = True
                else:
                    self._cond.wait_for(lambda: self._stopping, self._off_for)
            elif end in ("brick", "exit"):
                self.failure = f"{end}; see {self.board.log_path}"
                logger.warning("%s stayed off: %s", self, self.failure)
                self._off = True
            return not self._stopping

    def _until(self, event: Event) -> bool:
        if event["ev"] != "tick":
            self._on_event(event)  # first the air, so that a waiter for the event finds it there
            self._record(event)
        return self._stopping or self._cut

    def _on_event(self, event: Event) -> None:
        if self.air is None:
            return
        if event["ev"] == "ble" and not event.get("active"):
            self._withdraw()
        if event["ev"] != "adv":
            return
        if event.get("interval_us") is None:
            self._withdraw()
            return
        adv = bytes.fromhex(event["adv"]) if event.get("adv") else self._last_adv[0]
        resp = bytes.fromhex(event["resp"]) if event.get("resp") else self._last_adv[1]
        self._last_adv = (adv, resp)
        try:
            self.air.publish(
                self.address,
                adv=adv or b"",
                resp=resp,
                interval_us=int(event["interval_us"]),
                connectable=bool(event.get("connectable", True)),
                gatt_port=self.board.ble_port,
                rssi=self.rssi,
            )
        except (AirError, OSError) as exc:
            logger.warning("%s: cannot publish its advertising: %s", self, exc)

    def _withdraw(self) -> None:
        if self.air is not None:
            with contextlib.suppress(OSError):
                self.air.withdraw(self.address)


class Fleet:
    """Several :class:`LiveBeacon` at once (each its own thread)."""

    def __init__(self, boards: Sequence[SimBeacon], *, air: Air | None = None, **live: Any) -> None:
        if len(boards) > MAX_FLEET:
            raise ValueError(f"at most {MAX_FLEET} beacons in one fleet, not {len(boards)}")
        addresses = [address_from_uid(b.uid) for b in boards]
        if len(set(addresses)) != len(addresses):
            raise ValueError("two boards of the fleet have the same uid")
        self.beacons = [LiveBeacon(board, air=air, **live) for board in boards]

    def start(self) -> Fleet:
        for beacon in self.beacons:
            beacon.start()
        return self

    def wait_advertising(self, timeout: float = 60.0) -> None:
        """Wait until every beacon advertised at least once."""
        deadline = time.monotonic() + timeout
        for beacon in self.beacons:
            left = max(0.0, deadline - time.monotonic())
            beacon.wait_for(lambda e: e["ev"] == "adv", left)

    def stop(self) -> None:
        for beacon in self.beacons:  # all at once, then one by one
            beacon._request_stop()
        for beacon in self.beacons:
            beacon.stop()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the bench: provisioning -----------------------------------------------------------------
def provision_board(
    workdir: Path,
    *,
    beacon_id: str,
    uid: str,
    release_keys: Sequence[str],
    wifi: bool = False,
    gateway_url: str | None = None,
    major: int = 7,
    minor: int = 1,
    entity_uuid: str = DEFAULT_ENTITY_UUID,
    chip: str = "esp32",
    image_version: str = "1.0.0",
    device_files: Mapping[str, bytes] | None = None,
    config: Mapping[str, Any] | None = None,
) -> SimBeacon:
    """A new provisioned board in ``workdir`` (which must not exist or be empty): image
    ``image_version`` in ota_0, ``device_files`` (default: boot.py, main.py, the app 1.0.0) and
    /config.json; ``config`` adds or overrides config keys. Bad arguments raise ValueError and
    leave nothing behind; a failure half-way removes what was written."""
    address_from_uid(uid)
    if not _BEACON_ID.match(beacon_id):
        raise ValueError(f"beacon_id {beacon_id!r}: 1-64 of A-Z a-z 0-9 . _ : -")
    if not release_keys or not all(_KEY.match(k) for k in release_keys):
        raise ValueError("release_keys: one or more 65-byte P-256 points in hex (04...)")
    doc: dict[str, Any] = {
        "beacon_id": beacon_id,
        "entity_uuid": entity_uuid,
        "major": major,
        "minor": minor,
        "chip": chip,
        "release_keys": [k.lower() for k in release_keys],
        "ota": {"trial_boots": 3, "health_timeout_s": 20},
    }
    if wifi:
        doc["wifi"] = {"ssid": WIFI_SSID, "password": WIFI_PASSWORD}
    if gateway_url is not None:
        doc["gateway"] = _gateway_hint(gateway_url)
    doc.update(config or {})
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir} is not empty")
    env = {"NAVIGN_SIM_WIFI": f"{WIFI_SSID}:{WIFI_PASSWORD}"}
    files = dict(device_files) if device_files is not None else build.device_files(version="1.0.0")
    files["config.json"] = json.dumps(doc).encode()
    board = SimBeacon(workdir, chip=chip, uid=uid.lower(), env=env)
    try:
        board.create(flash.make_image(image_version), files)
        meta = {"beacon_id": beacon_id, "uid": uid.lower(), "chip": chip, "env": env}
        tmp = workdir / (BOARD_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(workdir / BOARD_FILE)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return board


def _gateway_hint(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"gateway_url {url!r}: http://host[:port] expected")
    return {"host": parts.hostname, "port": port or 8080}


def load_board(workdir: Path) -> SimBeacon:
    """The board :func:`provision_board` made in ``workdir``."""
    try:
        meta = json.loads((workdir / BOARD_FILE).read_text())
        return SimBeacon(workdir, chip=meta["chip"], uid=meta["uid"], env=meta["env"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{workdir} is not a provisioned board: {exc}") from None


def load_boards(directory: Path) -> list[SimBeacon]:
    """Every provisioned board in the folders of ``directory``, by name."""
    return [load_board(p) for p in sorted(directory.iterdir()) if (p / BOARD_FILE).is_file()]


# --- the command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m navign_firmware.fleet", description="Simulated Navign beacons."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prov = commands.add_parser("provision", help="create one provisioned board in a new folder")
    prov.add_argument("workdir", type=Path)
    prov.add_argument("--beacon-id", required=True)
    prov.add_argument("--uid", required=True, help="12 hex digits (its BLE address)")
    prov.add_argument("--release-key", action="append", required=True, help="04... (hex)")
    prov.add_argument("--wifi", action="store_true", help="configure the mall Wi-Fi")
    prov.add_argument("--gateway", help="the gateway hint, http://host:port")
    prov.add_argument("--minor", type=int, default=1)
    run = commands.add_parser("run", help="run every board of a folder until SIGINT/SIGTERM")
    run.add_argument("boards", type=Path)
    run.add_argument("--air", type=Path, help="the air directory (default: $NAVIGN_SIM_AIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.command == "provision":
            board = provision_board(
                args.workdir,
                beacon_id=args.beacon_id,
                uid=args.uid,
                release_keys=args.release_key,
                wifi=args.wifi,
                gateway_url=args.gateway,
                minor=args.minor,
            )
            logger.info("provisioned %s (%s)", board.workdir, address_from_uid(board.uid))
            return 0
        return _run_fleet(args.boards, Air(args.air))
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"navign_firmware.fleet: {exc}\n")
        return 1


def _run_fleet(directory: Path, air: Air) -> int:
    boards = load_boards(directory)
    if not boards:
        raise ValueError(f"no provisioned boards in {directory}")
    air.clear_stale()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with Fleet(boards, air=air) as fleet:
        for beacon in fleet.beacons:
            logger.info("%s: %s, GATT on 127.0.0.1:%d", beacon.address, beacon.board.workdir,
                        beacon.board.ble_port)  # fmt: skip
        logger.info("%d beacons on the air %s; SIGINT or SIGTERM stops them", len(boards), air.path)
        while not done.wait(1.0):
            pass
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
