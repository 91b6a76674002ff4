"""Provisioning beacons on the bench with ``flash.sh beacon`` (issue 7, item 5).

Simulated boards (``navign_firmware.devsim.board``: the ROM loader, then the real MicroPython
with the board's littlefs) move bytes at the baud rate the host set on the port, as a UART does
(``--paced``), so the times are those of a USB-UART line, not of a pty. The MicroPython image
is ``--app-kib`` of code-like bytes (zlib shrinks it about as much as MicroPython's own).

* **One board**: ``flash.sh beacon`` (bash, our Python, esptool at ``--baud``, mpremote at
  115,200 baud, the read-back), against the same work done by calling esptool and mpremote
  directly (the same arguments, a prebuilt app and a written config): the overhead of flash.sh.
  Runs are interleaved; medians are quoted.
* **Bytes on the wire** per board, each way (the board simulator's counters).
* **Four boards at once** against one: ``flash.sh beacon`` with four ``--port``.

    uv run python bench/flash.py --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

from navign_firmware import build
from navign_firmware.devsim.board import BoardProcess
from navign_firmware.devsim.firmware import write_firmware
from navign_firmware.flashing import beacon, tools
from navign_firmware.unix import SRC

NAME = "flash"
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900.0
TEMPLATE = {
    "beacon_id": "bench-{minor:04d}",
    "entity_uuid": "6e617669-676e-4d61-6c6c-000000000001",
    "major": 7,
    "minor": 1,
    "wifi": {"ssid": "mall-ops", "password": "correct horse"},
}


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.boards = 0
        self.firmware = write_firmware(
            workdir / "micropython.bin", "esp32", app_size=args.app_kib * 1024, like_code=True
        )
        self.template = workdir / "beacon.json"
        self.template.write_text(json.dumps(TEMPLATE))
        # What the direct path copies: the same files flash.sh builds, and one rendered config.
        self.stage = workdir / "stage"
        build.build_app(self.stage / "app" / "a", target="esp32")
        shutil.copy2(SRC / "boot.py", self.stage / "boot.py")
        shutil.copy2(SRC / "main.py", self.stage / "main.py")
        self.config = workdir / "config.json"
        self.config.write_text(json.dumps({**TEMPLATE, "beacon_id": "bench-0001", "chip": "esp32"}))

    def board(self) -> BoardProcess:
        self.boards += 1
        n = self.boards
        return BoardProcess(
            self.workdir / f"board{n}", mac=f"a4:cf:12:00:{n // 256:02x}:{n % 256:02x}", paced=True
        )

    def flash_sh(self, boards: list[BoardProcess]) -> float:
        ports: list[str] = []
        for b in boards:
            ports += ["--port", b.port]
        argv = ["bash", str(ROOT / "flash.sh"), "beacon", *ports, "--chip", "esp32",
                "--micropython", str(self.firmware), "--config", str(self.template),
                "--minor-start", "1", "--baud", str(self.args.baud)]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"flash.sh failed: {done.stdout}{done.stderr}")
        return seconds

    def direct(self, board: BoardProcess) -> float:
        started = time.monotonic()
        result = tools.run_tool(
            tools.esptool_argv(board.port, "esp32", self.args.baud, "write-flash", "-z",
                               "0x1000", str(self.firmware)),
            timeout=TIMEOUT,
        )  # fmt: skip
        if result.code != 0:
            raise RuntimeError(f"esptool failed: {result.output[-2000:]}")
        result = tools.run_tool(
            beacon.provision_argv(board.port, self.config),
            timeout=TIMEOUT,
            cwd=self.stage,
        )  # fmt: skip
        if result.code != 0 or '"selftest": 1' not in result.output:
            raise RuntimeError(f"mpremote failed: {result.output[-2000:]}")
        return time.monotonic() - started


def measure(bench: Bench, runs: int) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    ours: list[float] = []
    theirs: list[float] = []
    wire: list[dict[str, Any]] = []
    for i in range(runs):
        for which in ("flash.sh", "direct") if i % 2 == 0 else ("direct", "flash.sh"):
            board = bench.board()
            try:
                if which == "flash.sh":
                    ours.append(bench.flash_sh([board]))
                else:
                    theirs.append(bench.direct(board))
            finally:
                stats = board.stop()
            if which == "flash.sh":
                wire.append(stats)
            h.say(f"  run {i + 1} {which}: {(ours if which == 'flash.sh' else theirs)[-1]:.2f} s")
    return ours, theirs, wire


def parallel(bench: Bench, count: int, runs: int) -> list[float]:
    times: list[float] = []
    for i in range(runs):
        boards = [bench.board() for _ in range(count)]
        try:
            times.append(bench.flash_sh(boards))
        finally:
            for b in boards:
                b.stop()
        h.say(f"  run {i + 1}: {count} boards in {times[-1]:.2f} s")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each way, one board")
    parser.add_argument("--parallel", type=int, default=4, help="boards in the parallel run")
    parser.add_argument("--parallel-runs", type=int, default=3)
    parser.add_argument("--app-kib", type=int, default=1500, help="MicroPython app size")
    parser.add_argument("--baud", type=int, default=460800)
    h.common_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="navign-bench-flash-") as tmp:
        bench = Bench(args.workdir or Path(tmp), args)
        h.say(f"== one board: flash.sh against esptool + mpremote directly ({args.runs} runs)")
        ours, theirs, wire = measure(bench, args.runs)
        h.say(f"== {args.parallel} boards at once ({args.parallel_runs} runs)")
        many = parallel(bench, args.parallel, args.parallel_runs)
        image = bench.firmware.stat().st_size
    one = h.median(ours)
    direct = h.median(theirs)
    ratio = one / direct
    rx = h.median([float(w.get("rx_bytes", 0)) for w in wire])
    tx = h.median([float(w.get("tx_bytes", 0)) for w in wire])
    together = h.median(many)
    figures = [
        h.Figure(NAME, f"MicroPython image written ({args.app_kib} KiB app)", image, "bytes"),
        h.Figure(NAME, "one board: flash.sh beacon (median)", round(one, 2), "s"),
        h.Figure(NAME, "one board: esptool + mpremote directly (median)", round(direct, 2), "s"),
        h.Figure(NAME, "flash.sh over direct", round(ratio, 3), "×", "<= 1.10", ratio <= 1.10,
                 goal=True),
        h.Figure(NAME, "flash.sh's own time (median difference)", round(one - direct, 2), "s"),
        h.Figure(NAME, "bytes on the wire per board, host → board", rx, "bytes"),
        h.Figure(NAME, "bytes on the wire per board, board → host", tx, "bytes"),
        h.Figure(NAME, f"{args.parallel} boards at once (median)", round(together, 2), "s"),
        h.Figure(NAME, f"{args.parallel} boards at once ÷ one board", round(together / one, 2),
                 "×"),
    ]  # fmt: skip
    h.emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
