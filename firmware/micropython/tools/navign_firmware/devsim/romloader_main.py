"""The ROM-loader simulator (:mod:`.romloader`) as a process of its own, on a pty:
``python -m navign_firmware.devsim.romloader_main --chip esp32 --flash FILE
[--mac aa:bb:cc:dd:ee:ff] [--flash-size 4MB] [--fault SPEC ...] [--stats FILE]`` prints
``PORT /dev/pts/N`` when ready and serves until SIGTERM/SIGINT or EOF on stdin; ``--stats`` gets
JSON counters (bytes each way, commands by name) on exit.

Public: :func:`main` (the runner).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from navign_firmware.devsim.esp32chips import CHIPS, DEFAULT_MAC
from navign_firmware.devsim.loaderfaults import Fault, parse_fault
from navign_firmware.devsim.romloader import QUIET_RESET, RomLoader
from navign_firmware.devsim.serialpty import PtyPort

#: The runner's poll interval (s), and how long it serves at most (s).
POLL: Final = 0.1
MAX_SERVE: Final = 24 * 3600.0


def _size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024 * 1024}
    for suffix, unit in units.items():
        if text.upper().endswith(suffix):
            return int(text[: -len(suffix)]) * unit
    return int(text, 0)


def _mac_arg(text: str) -> bytes:
    mac = bytes.fromhex(text.replace(":", "")) if len(text) == 17 else b""
    if len(mac) != 6:
        raise argparse.ArgumentTypeError(f"not a MAC (aa:bb:cc:dd:ee:ff): {text!r}")
    return mac


def _fault_arg(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m navign_firmware.devsim.romloader_main")
    p.add_argument("--chip", default="esp32", choices=tuple(CHIPS))
    p.add_argument("--flash", type=Path, required=True, help="the flash image file")
    p.add_argument("--flash-size", type=_size, default=4 * 1024 * 1024, help="e.g. 4MB")
    p.add_argument("--mac", type=_mac_arg, default=DEFAULT_MAC, help="aa:bb:cc:dd:ee:ff")
    p.add_argument(
        "--fault",
        type=_fault_arg,
        action="append",
        default=[],
        help="KIND:COMMAND:N (drop, bad_checksum, silent, die; COMMAND * is any)",
    )
    p.add_argument("--stats", type=Path, help="write JSON counters here on exit")
    p.add_argument("--quiet-reset", type=float, help=f"default {QUIET_RESET} s")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(message)s",
    )
    stop: list[bool] = [False]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with PtyPort() as port:
        loader = RomLoader(
            args.chip,
            args.flash,
            write=port.write,
            mac=args.mac,
            flash_size=args.flash_size,
            faults=args.fault,
            quiet_reset=args.quiet_reset,
        )
        stdin = sys.stdin.fileno()
        sys.stdout.write(f"PORT {port.path}\n")  # the readiness line
        sys.stdout.flush()
        deadline = time.monotonic() + MAX_SERVE
        while not stop[0] and time.monotonic() < deadline:
            ready, _, _ = select.select([port.fileno(), stdin], [], [], POLL)
            if stdin in ready and not os.read(stdin, 4096):
                break  # EOF: whoever started us is gone
            if port.fileno() in ready and (data := port.read(0)):
                loader.feed(data)
        if args.stats is not None:
            args.stats.write_text(
                json.dumps(
                    {
                        "chip": args.chip,
                        "rx_bytes": port.rx_bytes,
                        "tx_bytes": port.tx_bytes,
                        "dropped": port.dropped,
                        "stub_running": loader.stub_running,
                        "commands": dict(loader.commands),
                    },
                    indent=1,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
