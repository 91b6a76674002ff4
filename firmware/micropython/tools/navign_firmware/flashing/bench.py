"""``flash.sh bench``: a lab self-test of one connected beacon, PASS or FAIL with reasons.

1. esptool (reset into the loader, then back into the app): the chip, its MAC and the flash
   chip's id and size;
2. mpremote: MicroPython's version and the firmware's own self-test (``navign.selftest``: the
   config is valid, the advertisement frames are well formed, a known P-256 signature verifies
   and a tampered one does not) and the free heap, judged against ``--min-free-heap``.

Public: :func:`add_parser`, :func:`run`, :func:`parse_flash_id`.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, Final, TextIO

from navign_firmware.flashing import tools

DEFAULT_MIN_FREE_HEAP: Final = 32 * 1024
ESPTOOL_TIMEOUT: Final = 60.0
MPREMOTE_TIMEOUT: Final = 60.0
SELFTEST: Final = "import navign.selftest as t\nt.run()"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench",
        help="self-test a connected beacon (chip, flash, firmware, config, heap)",
        description="Identify a connected beacon with esptool and run the firmware's own "
        "self-test over its REPL with mpremote. Exit 0 on PASS, 1 on FAIL.",
    )
    p.add_argument("--port", required=True, metavar="PORT")
    p.add_argument("--chip", default="auto", choices=("auto", "esp32", "esp32c3", "esp32s3"))
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--min-free-heap", type=int, default=DEFAULT_MIN_FREE_HEAP, metavar="BYTES")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


_FAMILY = re.compile(r"(?:Connected to|Detecting chip type\.\.\.)\s*(ESP32[-\w]*)")
_CHIP_TYPE = re.compile(r"Chip (?:type|is):\s*(.+)")
_MANUFACTURER = re.compile(r"Manufacturer:\s*([0-9a-fA-F]+)")
_DEVICE = re.compile(r"Device:\s*([0-9a-fA-F]+)")
_SIZE = re.compile(r"Detected flash size:\s*(\S+)")


def parse_flash_id(output: str) -> dict[str, Any]:
    """chip, mac, flash manufacturer/device ids and size from esptool's ``flash-id`` output."""
    family = _FAMILY.findall(output)
    chip_type = _CHIP_TYPE.search(output)
    mac = tools.parse_mac(output)
    man = _MANUFACTURER.search(output)
    dev = _DEVICE.search(output)
    size = _SIZE.search(output)
    return {
        "chip": family[-1].lower().replace("-", "") if family else None,
        "chip_type": chip_type.group(1).strip() if chip_type else None,
        "mac": ":".join(f"{b:02x}" for b in mac) if mac else None,
        "flash_manufacturer": man.group(1).lower() if man else None,
        "flash_device": dev.group(1).lower() if dev else None,
        "flash_size": size.group(1) if size else None,
    }


def _selftest(report: dict[str, Any], reasons: list[str], args: argparse.Namespace) -> None:
    silent = tools.probe_repl(args.port)
    if silent is not None:
        reasons.append(f"MicroPython: {silent}")
        return
    result = tools.run_tool(
        tools.mpremote_argv(args.port, "exec", SELFTEST), timeout=MPREMOTE_TIMEOUT
    )
    if result.timed_out or result.code != 0:
        why = "no answer" if result.timed_out else tools.last_error(result.output)
        reasons.append(f"mpremote: {why}")
        return
    found = [d for d in tools.json_lines(result.output) if d.get("selftest") == 1]
    if not found:
        reasons.append("the firmware's self-test printed no report (is the beacon app installed?)")
        return
    test = found[-1]
    report["selftest"] = test
    report["micropython"] = test.get("micropython")
    raw_checks = test.get("checks")
    checks: dict[str, object] = raw_checks if isinstance(raw_checks, dict) else {}
    raw_errors = test.get("config_errors")
    errors = [str(e) for e in raw_errors] if isinstance(raw_errors, list) else []
    for name in ("config", "adv", "signature"):
        if not checks.get(name):
            detail = ": " + ", ".join(errors) if name == "config" and errors else ""
            reasons.append(f"self-test {name} failed{detail}")
    free = test.get("free_heap")
    if not isinstance(free, int) or free < args.min_free_heap:
        reasons.append(f"free heap {free} bytes < {args.min_free_heap}")


def run(args: argparse.Namespace, out: TextIO) -> int:
    reasons: list[str] = []
    report: dict[str, Any] = {"port": args.port}
    result = tools.run_tool(
        tools.esptool_argv(args.port, args.chip, args.baud, "flash-id"), timeout=ESPTOOL_TIMEOUT
    )
    if result.timed_out or result.code != 0:
        why = "no answer" if result.timed_out else tools.last_error(result.output)
        reasons.append(f"esptool: {why}")
    else:
        report.update(parse_flash_id(result.output))
        for name in ("chip", "mac", "flash_manufacturer"):
            if not report.get(name):
                reasons.append(f"esptool did not report the {name.replace('_', ' ')}")
        _selftest(report, reasons, args)
    report["result"] = "FAIL" if reasons else "PASS"
    report["reasons"] = reasons
    if args.json:
        print(json.dumps(report, sort_keys=True), file=out, flush=True)
    else:
        test = report.get("selftest") or {}
        chip = report.get("chip_type") or report.get("chip")
        lines = [
            f"port         {args.port}",
            f"chip         {chip}  MAC {report.get('mac')}",
            f"flash        manufacturer {report.get('flash_manufacturer')} device "
            f"{report.get('flash_device')} size {report.get('flash_size')}",
            f"micropython  {report.get('micropython')}",
            f"beacon       {test.get('beacon_id')}  app {test.get('app_version')}  "
            f"major {test.get('major')} minor {test.get('minor')}",
            f"free heap    {test.get('free_heap')} bytes",
        ]
        print("\n".join(lines), file=out)
        verdict = "PASS" if not reasons else "FAIL: " + "; ".join(reasons)
        print(f"bench: {verdict}", file=out, flush=True)
    return 0 if not reasons else 1
