"""The simulated board's MicroPython REPL (``navign_firmware.devsim.repl``, ``host/replboard.py``)
driven by the real mpremote CLI over a pty: exec/eval, the filesystem commands (raw paste),
soft and hard resets, Ctrl-C into a busy main.py, and the beacon firmware itself. What mpremote
writes must land in the littlefs of the board's flash file, exactly as a beacon mounts it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from navign_firmware import build, flash
from navign_firmware.devsim.repl import MicroPythonRepl
from navign_firmware.devsim.serialpty import PtyPort
from navign_firmware.sim import SimBeacon

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
#: One mpremote run (mpremote on a pty has no timeout of its own).
RUN_TIMEOUT = 30.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: How long the beacon app may take to come up.
APP_TIMEOUT = 30.0
#: A 60 KB ``fs cp`` with raw paste takes well under a second here; the plain raw REPL (256
#: bytes every 10 ms) would need about 10 s for its ~230 KB of ``w(b'...')`` commands.
CP_BUDGET = 5.0


def _make_flash(path: Path) -> None:
    flash.create_flash(
        path,
        flash.layout(app_size=0x40000, vfs_size=0x80000),
        flash.make_image("1.29.0", "esp32", project="micropython"),
    )


class Runner:
    """``python -m navign_firmware.devsim.repl`` on ``workdir/flash.bin``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.flash = workdir / "flash.bin"
        self.stats_path = workdir / "stats.json"
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = (workdir / "runner.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "navign_firmware.devsim.repl",
                "--flash",
                str(self.flash),
                "--stats",
                str(self.stats_path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                self.stop()
                raise TimeoutError("the runner printed no PORT line")
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                self.stop()
                raise RuntimeError("the runner ended before printing its port")
            line += chunk
        assert line.startswith(b"PORT /dev/pts/"), line
        assert line.count(b"\n") == 1, line
        self.port = line.split()[1].decode()
        self.stats: dict[str, int] = {}

    def mpremote(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        proc = subprocess.run(
            [MPREMOTE, "connect", self.port, *args],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def read_line_until(self, marker: bytes) -> bytes:
        """What the board writes while no mpremote is connected, up to ``marker``."""
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY)
        try:
            return _read_until(fd, marker)
        finally:
            os.close(fd)

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        if self.stats_path.exists():
            self.stats = json.loads(self.stats_path.read_text())
        return self.stats


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    _make_flash(tmp_path / "flash.bin")
    board = Runner(tmp_path)
    try:
        yield board
    finally:
        board.stop()


def test_exec_eval_and_chained_commands(runner: Runner) -> None:
    started = time.monotonic()
    assert runner.mpremote("exec", "print('hello', 1 + 1)").stdout == "hello 2\n"
    first = time.monotonic() - started
    assert runner.mpremote("eval", "1 + 2").stdout == "3\n"
    # One session: the globals persist between chained commands (the board's __main__)...
    chained = runner.mpremote("exec", "x = 21", "+", "eval", "x * 2", "+", "eval", "x")
    assert chained.stdout == "42\n21\n"
    # ...and the next session starts with a soft reset: a fresh heap, empty globals.
    assert runner.mpremote("eval", "'x' in globals()").stdout == "False\n"
    info = runner.mpremote(
        "exec", "import gc, machine; print(machine.reset_cause(), gc.mem_free())"
    )
    cause, free = info.stdout.split()
    assert int(cause) == 5  # SOFT_RESET: mpremote soft-resets at connect
    assert 90 * 1024 < int(free) <= 96 * 1024  # the app's heap, as on the beacon
    stats = runner.stop()
    assert stats["soft_resets"] >= 5
    assert stats["boots"] == 1
    assert first < 5.0


def test_runner_stops_at_stdin_eof(runner: Runner) -> None:
    assert runner.mpremote("eval", "6 * 7").stdout == "42\n"
    assert runner.proc.stdin is not None
    runner.proc.stdin.close()
    assert runner.proc.wait(timeout=STOP_TIMEOUT) == 0
    stats = runner.stop()
    assert stats["rx_bytes"] > 0
    assert stats["tx_bytes"] > 0
    assert stats["boots"] == 1


def test_traceback_gives_a_nonzero_exit(runner: Runner) -> None:
    bad = runner.mpremote("exec", "def f():\n    1 / 0\nf()", check=False)
    assert bad.returncode == 1
    assert 'File "<stdin>", line 2, in f' in bad.stdout
    assert bad.stdout.rstrip().endswith("ZeroDivisionError: divide by zero")
    assert "replboard" not in bad.stdout
    assert "host/" not in bad.stdout  # the shims' frames are C on a board
    missing = runner.mpremote("fs", "cat", ":nope.txt", check=False)
    assert missing.returncode != 0
    assert "No such file" in missing.stdout + missing.stderr
    syntax = runner.mpremote("exec", "x = (", check=False)
    assert syntax.returncode == 1
    assert "SyntaxError" in syntax.stdout


@pytest.mark.slow
def test_filesystem_commands_land_in_littlefs(runner: Runner, tmp_path: Path) -> None:
    data = random.Random(7).randbytes(60_000)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.txt").write_text("alpha\nbeta\n")
    (pkg / "sub" / "b.py").write_text("B = 2\n")

    started = time.monotonic()
    runner.mpremote("fs", "cp", str(big), ":big.bin")
    cp_seconds = time.monotonic() - started
    assert cp_seconds < CP_BUDGET, cp_seconds
    runner.mpremote("fs", "cp", "-r", str(pkg), ":")
    listing = runner.mpremote("fs", "ls", ":").stdout
    assert "60000 big.bin" in listing
    assert "pkg/" in listing
    assert "boot.py" in listing  # written when the first boot formatted the filesystem
    assert runner.mpremote("fs", "cat", ":pkg/a.txt").stdout == "alpha\nbeta\n"
    digest = runner.mpremote("fs", "sha256sum", ":big.bin").stdout
    assert hashlib.sha256(data).hexdigest() in digest
    # The same file again: mpremote's hash check finds it up to date.
    assert "Up to date" in runner.mpremote("fs", "cp", str(big), ":big.bin").stdout
    runner.mpremote("fs", "mkdir", ":logs", "+", "fs", "rm", ":pkg/a.txt")
    listing = runner.mpremote("fs", "ls", ":pkg").stdout
    assert "a.txt" not in listing
    assert "sub/" in listing
    assert (
        runner.mpremote(
            "exec", "import sys; sys.path.append('/pkg')", "+", "eval", "__import__('sub.b').b.B"
        ).stdout
        == "2\n"
    )
    stats = runner.stop()
    assert stats["raw_pastes"] >= len(data) // 256  # every w(b'...') went in raw-paste mode
    assert stats["rx_bytes"] > len(data)

    # After the power is off, the flash file's littlefs holds what mpremote wrote.
    beacon = SimBeacon(tmp_path)
    files = beacon.listing()
    assert files["/big.bin"] == 60_000
    assert files["/pkg/sub/b.py"] == 6
    assert files["/logs/"] == -1
    assert "/pkg/a.txt" not in files
    assert beacon.read("/big.bin") == data
    assert beacon.read("/pkg/sub/b.py") == b"B = 2\n"


def test_soft_reset_reset_and_a_busy_main(runner: Runner) -> None:
    boot = "with open('count', 'a') as f:\n    f.write('b')\n"
    main = "with open('count', 'a') as f:\n    f.write('m')\nwhile True:\n    pass\n"
    runner.mpremote(
        "exec", f"open('boot.py', 'w').write({boot!r})\nopen('main.py', 'w').write({main!r})"
    )
    runner.mpremote("soft-reset")
    count = runner.mpremote("exec", "print(open('count').read())").stdout.strip()
    assert set(count) == {"b"}  # a soft reset in the raw REPL runs boot.py, never main.py

    started = time.monotonic()
    runner.mpremote("reset")
    # mpremote's reset sleeps 100 ms on the board before machine.reset(): a run that connects
    # sooner interrupts it with its Ctrl-C, on hardware too. Wait for the ROM's line.
    runner.read_line_until(b"rst:0xc (SW_CPU_RESET)")
    # The board reboots and runs main.py, an endless loop: mpremote's Ctrl-C at connect stops it.
    after = runner.mpremote("exec", "print(open('count').read())").stdout.strip()
    reset_and_exec = time.monotonic() - started
    assert after.endswith("bmb"), after  # reset: boot.py, main.py; then mpremote's soft reset
    assert after.count("m") == 1
    stats = runner.stop()
    assert stats["boots"] == 2
    assert stats["interrupts"] >= 1
    assert reset_and_exec < 10.0


def _read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {marker!r} in {got!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            got += os.read(fd, 4096)
    return got


def _drain(fd: int, quiet: float = 0.3, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], quiet)
        if not ready:
            return got
        got += os.read(fd, 4096)
    raise TimeoutError(f"the board kept talking: {got[-200:]!r}")


def test_friendly_and_raw_repl_bytes(runner: Runner) -> None:
    fd = os.open(runner.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\r\x03")
        _drain(fd)  # the boot's output, and the prompts
        os.write(fd, b"\x02")
        banner = _read_until(fd, b">>> ")
        assert b"MicroPython v1.29.0 on 2026-11-27; Generic ESP32 module with ESP32\r\n" in banner
        assert banner.endswith(b'Type "help()" for more information.\r\n>>> ')
        os.write(fd, b"1 + 1\r")
        assert _read_until(fd, b">>> ") == b"1 + 1\r\n2\r\n>>> "
        os.write(fd, b"for i in range(2):\r    print(i)\r\r")
        assert _read_until(fd, b"1\r\n>>> ").endswith(b"... \r\n0\r\n1\r\n>>> ")
        os.write(fd, b"abc\x03")
        assert _read_until(fd, b">>> ") == b"abc\r\n>>> "
        os.write(fd, b"\x01")
        assert _read_until(fd, b">") == b"\r\nraw REPL; CTRL-B to exit\r\n>"
        os.write(fd, b"print('a\\nb')\x04")
        assert _read_until(fd, b"\x04>") == b"OKa\r\nb\r\n\x04\x04>"
        os.write(fd, b"\x05A\x01")
        head = _read_until(fd, b"R\x01\x80\x00\x01")
        assert head == b"R\x01\x80\x00\x01"  # raw paste: window 128, plus one more window
        os.write(fd, b"1/0\x04")
        tail = _read_until(fd, b"\x04>")
        assert tail.startswith(b"\x04\x04Traceback (most recent call last):\r\n")
        assert tail.endswith(b"ZeroDivisionError: divide by zero\r\n\x04>")
        os.write(fd, b"\x02")
        _read_until(fd, b">>> ")
    finally:
        os.close(fd)


class _Relay:
    """An embedded :class:`MicroPythonRepl` on a pty, relayed by a thread (as a board simulator
    embeds it); :attr:`output` is everything the board wrote."""

    def __init__(self, flash_path: Path) -> None:
        self.port = PtyPort()
        self.output = bytearray()
        self._lock = threading.Lock()
        self.repl = MicroPythonRepl(
            flash_path=flash_path, chip="esp32", uid="a4cf12000042", write=self._write
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _write(self, data: bytes) -> None:
        with self._lock:
            self.output += data
        self.port.write(data)

    def start(self) -> None:
        self.repl.boot()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            fds = [self.port.master]
            board = self.repl.fileno()
            if board is not None:
                fds.append(board)
            ready, _, _ = select.select(fds, [], [], 0.1)
            if self.port.master in ready:
                self.repl.feed(self.port.read(0))
            self.repl.pump()

    def count(self, marker: bytes) -> int:
        with self._lock:
            return self.output.count(marker)

    def wait_for(self, marker: bytes, times: int = 1, timeout: float = APP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.count(marker) < times:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{marker!r} not seen {times}x in {bytes(self.output)!r}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT)
        self.repl.stop()
        self.port.close()


@pytest.mark.slow
def test_beacon_firmware_keeps_the_repl_reachable(tmp_path: Path) -> None:
    beacon = SimBeacon(tmp_path)
    beacon.create(
        flash.make_image("1.29.0", "esp32", project="micropython"),
        build.device_files(target="unix"),
    )
    relay = _Relay(beacon.flash_path)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    def mpremote(*args: str) -> str:
        proc = subprocess.run(
            [MPREMOTE, "connect", relay.port.path, *args],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    relay.start()
    try:
        relay.wait_for(b"navign app")  # boot.py picked the slot, main.py runs the beacon app
        assert relay.repl.state == "main"
        assert relay.repl.partition == "ota_0"
        assert relay.repl.heap_free is not None
        assert 95 * 1024 <= relay.repl.heap_free <= 97 * 1024
        # Without a soft reset, the interrupted app is still in the board's memory.
        assert mpremote("resume", "exec", "import sys; print('navign.app' in sys.modules)") == (
            "True\n"
        )
        assert b"KeyboardInterrupt" in relay.output
        assert mpremote("exec", "import machine; print(machine.unique_id().hex())") == (
            "a4cf12000042\n"
        )
        assert relay.count(b"navign app") == 1  # the soft reset in the raw REPL skipped main.py
        mpremote("reset")
        relay.wait_for(b"navign app", times=2)  # the app runs again after the hard reset
        assert mpremote("exec", "import os; print(sorted(os.listdir('/app/a/navign'))[0])") == (
            "__init__.mpy\n"
        )
        assert relay.repl.boots == 2
    finally:
        relay.close()
