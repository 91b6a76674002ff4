"""A simulated beacon: the real firmware on the MicroPython unix port, on a simulated ESP32 flash.

Each power-on is one ``micropython host/poweron.py`` process (bootloader, littlefs mount,
``/boot.py``, ``/main.py``); ``machine.reset()`` ends it with :data:`RESET_EXIT` and the harness
starts the next one, as the chip would reboot. The board reports what hardware would show (boot
decisions, watchdog, resets, advertising) as JSON lines on a pipe (``host/_sim.py``). The
harness enforces the watchdog: a board that started ``machine.WDT`` and does not feed it in time
is killed and rebooted with reset cause ``wdt``. A power cut is ``SIGKILL`` at any moment:
every flash write that completed is in the flash file, nothing else.

Public: :class:`SimBeacon`, :class:`Running`, :class:`Boot`, :data:`RESET_EXIT`,
:data:`BRICK_EXIT`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from navign_firmware import flash, unix

RESET_EXIT: Final = 3
BRICK_EXIT: Final = 70
POWERON: Final = unix.HOST / "poweron.py"
FSUTIL: Final = unix.HOST / "fsutil.py"
#: Heap for the host shims (esp32, machine, network, bluetooth), which are C on a board.
SHIM_HEAP: Final = 48 * 1024

Event = dict[str, Any]


@dataclass
class Boot:
    """One power-on: the events the board reported and how it ended.

    ``end`` is ``reset`` (machine.reset()), ``wdt`` (the watchdog fired), ``cut`` (the harness
    cut the power), ``stopped`` (``until`` matched), ``brick`` (no bootable app), ``exit``
    (the process ended some other way, ``code`` says how) or ``timeout``.
    """

    events: list[Event] = field(default_factory=list)
    end: str = ""
    code: int | None = None
    seconds: float = 0.0

    def find(self, event: str) -> list[Event]:
        return [e for e in self.events if e.get("ev") == event]

    @property
    def version(self) -> str | None:
        boots = self.find("boot")
        return str(boots[0]["version"]) if boots else None

    @property
    def partition(self) -> str | None:
        boots = self.find("boot")
        return str(boots[0]["partition"]) if boots else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SimBeacon:
    """One simulated board in ``workdir`` (its flash file and logs)."""

    def __init__(
        self,
        workdir: Path,
        *,
        chip: str = "esp32",
        flash_layout: flash.FlashLayout | None = None,
        uid: str = "a4cf12000001",
        app_heap: int = 96 * 1024,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        #: A command the board's power-ons run under, e.g. ``["ip", "netns", "exec", "ns-b"]``
        #: to put the board in another network namespace (the flash tools run without it).
        self.launcher = list(launcher)
        self.chip = chip
        self.layout = flash_layout or flash.layout(app_size=0x40000, vfs_size=0x80000)
        self.uid = uid
        self.app_heap = app_heap
        self.env = dict(env or {})
        #: The loopback port of the board's GATT server (host/bluetooth.py), kept across boots.
        self.ble_port = _free_port()
        self.flash_path = workdir / "flash.bin"
        self.log_path = workdir / "console.log"
        self.boots: list[Boot] = []
        self._next_cause = "pwron"

    # --- the bench: building the board ---------------------------------------------------
    def create(self, image: bytes, files: Mapping[str, bytes] | None = None) -> None:
        """A new board: erased flash, partition table, ``image`` in ota_0, littlefs formatted
        and holding ``files`` (path on the board → bytes)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        flash.create_flash(self.flash_path, self.layout, image)
        self._fsutil("format")
        if files:
            self.put(files)

    def put(self, files: Mapping[str, bytes]) -> None:
        """Copy files onto the board's filesystem (the board must be off)."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            for name, data in files.items():
                target = Path(tmp) / name.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self._fsutil("put", tmp)

    def read(self, path: str) -> bytes:
        """A file from the board's filesystem (the board must be off)."""
        out = self._fsutil("get", path)
        return bytes.fromhex(out.strip())

    def hashes(self, folder: str) -> dict[str, tuple[int, str]]:
        """Every file under ``folder`` on the board: relative path → (size, SHA-256 hex)."""
        result: dict[str, tuple[int, str]] = {}
        for line in self._fsutil("hash", folder).splitlines():
            path, size, digest = line.split(" ")
            result[path] = (int(size), digest)
        return result

    def listing(self) -> dict[str, int]:
        """Every file on the board with its size (folders end with ``/`` and size -1)."""
        result: dict[str, int] = {}
        for line in self._fsutil("ls").splitlines():
            if line.endswith("/"):
                result[line] = -1
            else:
                name, size = line.rsplit(" ", 1)
                result[name] = int(size)
        return result

    def _fsutil(self, *args: str) -> str:
        proc = subprocess.run(
            unix.command([str(FSUTIL), str(self.flash_path), *args], heapsize=None),
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise unix.MicroPythonError(f"fsutil {args[0]}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = unix.environment([unix.HOST], self.env)
        env.update(
            NAVIGN_SIM_FLASH=str(self.flash_path),
            NAVIGN_SIM_CHIP=self.chip,
            NAVIGN_SIM_UID=self.uid,
            NAVIGN_SIM_BLE_PORT=str(self.ble_port),
        )
        if extra:
            env.update(extra)
        return env

    # --- running ---------------------------------------------------------------------------
    def power_on(
        self,
        *,
        timeout: float = 60.0,
        until: Callable[[Event], bool] | None = None,
        cut_after: float | None = None,
    ) -> Boot:
        """One power-on, until the board resets or halts, ``until(event)`` is true (the power is
        then cut; ``until`` also sees ``{"ev": "tick"}`` about every 0.25 s),
        ``cut_after`` seconds pass (a power cut), or ``timeout`` (also cut)."""
        boot = Boot()
        read_fd, write_fd = os.pipe()
        env = self._env(
            {"NAVIGN_SIM_CTL_FD": str(write_fd), "NAVIGN_SIM_RESET_CAUSE": self._next_cause}
        )
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"--- power on ({self._next_cause})\n".encode())
            log.flush()
            proc = subprocess.Popen(
                # The shims' own heap comes on top; poweron.py takes back the rest (a ballast).
                self.launcher
                + unix.command(
                    [str(POWERON), str(self.app_heap)], heapsize=f"{self.app_heap + SHIM_HEAP}"
                ),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
            )
        os.close(write_fd)
        wdt_timeout: float | None = None
        last_feed = started
        last_tick = started
        buffer = b""
        try:
            while True:
                now = time.monotonic()
                deadline = started + timeout
                if cut_after is not None:
                    deadline = min(deadline, started + cut_after)
                if wdt_timeout is not None:
                    deadline = min(deadline, last_feed + wdt_timeout)
                wait = max(0.0, deadline - now)
                ready, _, _ = select.select([read_fd], [], [], min(wait, 0.25))
                if until is not None and time.monotonic() - last_tick >= 0.25:
                    # Conditions outside the board (what a gateway received, a test's stop
                    # request) are checked between its events too.
                    last_tick = time.monotonic()
                    if until({"ev": "tick"}):
                        boot.end = "stopped"
                        break
                if ready:
                    chunk = os.read(read_fd, 65536)
                    if not chunk:  # the board's side closed: it ended
                        boot.code = proc.wait(timeout=30)
                        boot.end = self._classify(boot.code)
                        break
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        event = json.loads(line)
                        if event["ev"] == "feed":
                            last_feed = time.monotonic()
                            continue
                        event["t"] = round(time.monotonic() - started, 4)
                        boot.events.append(event)
                        if event["ev"] == "wdt":
                            wdt_timeout = event["timeout"] / 1000
                            last_feed = time.monotonic()
                        if until is not None and until(event):
                            boot.end = "stopped"
                            break
                    if boot.end:
                        break
                    continue
                now = time.monotonic()
                if wdt_timeout is not None and now >= last_feed + wdt_timeout:
                    boot.end = "wdt"
                    break
                if cut_after is not None and now >= started + cut_after:
                    boot.end = "cut"
                    break
                if now >= started + timeout:
                    boot.end = "timeout"
                    break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            os.close(read_fd)
        if boot.code is None:
            boot.code = proc.returncode
        boot.seconds = time.monotonic() - started
        self._next_cause = {"reset": "soft", "wdt": "wdt"}.get(boot.end, "pwron")
        self.boots.append(boot)
        return boot

    @staticmethod
    def _classify(code: int) -> str:
        if code == RESET_EXIT:
            return "reset"
        if code == BRICK_EXIT:
            return "brick"
        return "exit"

    def start(self, *, timeout: float = 120.0) -> Running:
        """Power on in the background; see :class:`Running`."""
        return Running(self, timeout)

    def run(
        self,
        *,
        until: Callable[[Event], bool],
        max_boots: int = 10,
        timeout: float = 120.0,
        boot_timeout: float = 60.0,
    ) -> list[Boot]:
        """Power on and follow resets and watchdog reboots until ``until(event)`` is true;
        raises TimeoutError after ``max_boots`` boots or ``timeout`` seconds."""
        started = time.monotonic()
        boots: list[Boot] = []
        for _ in range(max_boots):
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                break
            boot = self.power_on(timeout=min(boot_timeout, left), until=until)
            boots.append(boot)
            if boot.end == "stopped":
                return boots
            if boot.end in ("brick", "exit"):
                raise RuntimeError(
                    f"the board stopped: {boot.end} (code {boot.code}); see {self.log_path}"
                )
        raise TimeoutError(f"not reached after {len(boots)} boots; see {self.log_path}")


class Running:
    """A power-on running in a background thread (:meth:`SimBeacon.start`), so a test can
    drive the board (over BLE, say) while it runs."""

    def __init__(self, board: SimBeacon, timeout: float) -> None:
        self.board = board
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.boot: Boot | None = None
        self._thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self._thread.start()

    def _run(self, timeout: float) -> None:
        def until(event: Event) -> bool:
            if event["ev"] != "tick":
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
            return self._stop.is_set()

        try:
            self.boot = self.board.power_on(timeout=timeout, until=until)
        finally:
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """The first event (seen so far or to come) matching ``predicate``; raises
        TimeoutError, or RuntimeError when the power-on ended without one."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if not self._thread.is_alive():
                    end = self.boot.end if self.boot else "?"
                    raise RuntimeError(f"the board's power-on ended ({end}) first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no such event from the board")
                self._cond.wait(min(left, 0.5))

    def join(self, timeout: float = 60.0) -> Boot:
        """Wait until the power-on ends by itself (a reset, say)."""
        self._thread.join(timeout)
        if self._thread.is_alive() or self.boot is None:
            raise TimeoutError("the board is still running")
        return self.boot

    def stop(self) -> Boot:
        """Cut the power now (if it still runs) and return the boot."""
        self._stop.set()
        return self.join()
