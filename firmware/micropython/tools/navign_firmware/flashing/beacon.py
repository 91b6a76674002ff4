"""``flash.sh beacon``: flash MicroPython onto new boards and provision them, several at once.

Per board (each in its own thread, the tools as subprocesses with timeouts):

1. esptool writes the MicroPython image at the chip's bootloader offset, compressed, and
   verifies it (esptool's MD5 check after writing); its connect banner gives the board's MAC;
2. the board's config is rendered from the template with that MAC (:mod:`.provision`);
3. one mpremote run wipes the filesystem, copies ``boot.py``, ``main.py``, the compiled app
   (``/app/a/navign/*.mpy``) and ``/config.json``, soft-resets (so ``boot.py`` runs), and reads
   back: the firmware's self-test (app version, config SHA-256, config/advertising/signature
   checks) and the size and SHA-256 of every file on the board; then resets the board into the
   beacon app.

A board is PASS only when every read-back value equals what was sent. Everything that can be
checked without a board (ports, the firmware file, the template and every rendered config,
keys) is checked before the first board is touched.

Public: :func:`add_parser`, :func:`run`, :func:`provision_argv`, :class:`BoardResult`, :data:`WIPE`,
:data:`READBACK`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from navign_firmware import build
from navign_firmware.flashing import fwimage, provision, record, tools
from navign_firmware.flashing.display import BoardProgress
from navign_firmware.unix import SRC

CHIPS: Final = tuple(fwimage.BOOTLOADER_OFFSET)
DEFAULT_BAUD: Final = 460800
#: esptool's budget: connecting and verifying, plus the image at a tenth of the line rate.
ESPTOOL_BASE_TIMEOUT: Final = 60.0
MPREMOTE_TIMEOUT: Final = 120.0
#: Where USB serial adapters of ESP32 boards appear (named in the error for a wrong port).
SERIAL_PATTERNS: Final = ("ttyUSB*", "ttyACM*")

#: Removes every file and folder on the board's filesystem (a provisioned board holds exactly
#: what this command copies; nothing left from an earlier life).
WIPE: Final = (
    "import os\n"
    "def _rm(p):\n"
    " for e in list(os.ilistdir(p or '/')):\n"
    "  q=p+'/'+e[0]\n"
    "  if e[1]&0x4000:\n"
    "   _rm(q);os.rmdir(q)\n"
    "  else:\n"
    "   os.remove(q)\n"
    "_rm('')\n"
    "del _rm"
)
READBACK: Final = "import navign.selftest as t\nt.run()\nt.files()"


def provision_argv(port: str, config: Path) -> list[str]:
    """The one mpremote run that provisions a board (run in the staged folder: boot.py, main.py
    and app/): wipe, copy, soft-reset, read back (:data:`READBACK`), reset."""
    return tools.mpremote_argv(
        port,
        "exec", WIPE,
        "+", "fs", "cp", "-r", "boot.py", "main.py", "app", str(config), ":",
        "+", "soft-reset",
        "+", "exec", READBACK,
        "+", "reset",
    )  # fmt: skip


class BeaconError(RuntimeError):
    """Nothing was flashed: the command line, a file or a config is not usable."""


@dataclass(frozen=True, slots=True)
class BoardResult:
    port: str
    ok: bool
    reason: str = ""
    mac: bytes | None = None
    identity: provision.BeaconIdentity | None = None
    app_version: str = ""
    seconds: float = 0.0

    def line(self, chip: str) -> str:
        mac = ":".join(f"{b:02x}" for b in self.mac) if self.mac else "-"
        if not self.ok:
            return f"FAIL  {self.port}  {chip}  {mac}  {self.reason}"
        ident = self.identity
        assert ident is not None
        return (
            f"PASS  {self.port}  {chip}  {mac}  {ident.beacon_id}  major {ident.major} "
            f"minor {ident.minor}  app {self.app_version}  config {ident.config_sha256[:8]}  "
            f"{self.seconds:.1f} s"
        )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "beacon",
        help="flash MicroPython onto boards and provision them as beacons",
        description=(
            "Write MicroPython with esptool (compressed, verified), copy the beacon app, its "
            "config and the release keys with mpremote, and read everything back. Several "
            "--port options flash boards in parallel."
        ),
    )
    p.add_argument(
        "--port",
        action="append",
        required=True,
        metavar="PORT",
        help="serial port of a board (repeat for several boards)",
    )
    p.add_argument("--chip", required=True, choices=CHIPS)
    p.add_argument(
        "--micropython",
        required=True,
        type=Path,
        metavar="FW.bin",
        help="MicroPython firmware image for the chip",
    )
    p.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="beacon.json",
        help="beacon config template (beacon_id may use {mac}, {index}, {minor}...)",
    )
    p.add_argument(
        "--minor-start",
        type=int,
        metavar="N",
        help="board i gets iBeacon minor N+i (needed for several boards)",
    )
    p.add_argument("--major", type=int, help="iBeacon major for every board")
    p.add_argument("--entity-uuid", help="the mall's iBeacon UUID (overrides the template's)")
    p.add_argument(
        "--release-key",
        action="append",
        type=Path,
        default=[],
        metavar="KEY.pem",
        help="release public key the beacon trusts (repeat for several)",
    )
    p.add_argument("--erase", action="store_true", help="erase the whole flash first")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"default {DEFAULT_BAUD}")
    p.add_argument(
        "--record",
        type=Path,
        metavar="FILE.csv",
        help="append one row per board (MAC, id, result) to this CSV file",
    )
    p.add_argument(
        "--record-server",
        metavar="ENTITY",
        help="record each PASS board's MAC, major, minor and chip in ENTITY's plan on the server "
        "with navign-admin (connection from $NAVIGN_ADMIN_SERVER and $NAVIGN_ADMIN_TOKEN, or "
        "--admin-server and --admin-token-file); the entity is checked before any board is touched",
    )
    p.add_argument("--admin-server", metavar="URL", help="server for --record-server")
    p.add_argument(
        "--admin-token-file", type=Path, metavar="FILE", help="admin token for --record-server"
    )
    p.set_defaults(run=run)


def _check_ports(ports: Sequence[str]) -> None:
    if len(set(ports)) != len(ports):
        raise BeaconError("a port is given twice")
    for port in ports:
        try:
            mode = os.stat(port).st_mode
        except OSError:
            raise BeaconError(f"port {port} does not exist{_known_ports()}") from None
        if not stat.S_ISCHR(mode):
            raise BeaconError(f"{port} is not a serial port (not a character device)")


def _known_ports() -> str:
    found = sorted(str(p) for pattern in SERIAL_PATTERNS for p in Path("/dev").glob(pattern))
    return f" (serial ports here: {', '.join(found)})" if found else " (no serial port found)"


def _app_version() -> str:
    found = re.search(r'^APP_VERSION = "([^"]+)"$', (SRC / "navign/__init__.py").read_text(), re.M)
    if found is None:
        raise BeaconError("src/navign/__init__.py has no APP_VERSION")
    return found.group(1)


def _stage(root: Path, chip: str) -> dict[str, tuple[int, str]]:
    """boot.py, main.py and the compiled app under ``root`` as on the board; returns the
    board's expected files (path → size, SHA-256), config excluded."""
    try:
        build.build_app(root / "app" / "a", target=chip)
    except build.BuildError as exc:
        raise BeaconError(f"could not build the beacon app: {exc}") from None
    shutil.copy2(SRC / "boot.py", root / "boot.py")
    shutil.copy2(SRC / "main.py", root / "main.py")
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out["/" + path.relative_to(root).as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return out


@dataclass(frozen=True, slots=True)
class _Batch:
    chip: str
    baud: int
    firmware: fwimage.FirmwareInfo
    firmware_path: Path
    template: provision.Template
    erase: bool
    stage: Path
    expected: dict[str, tuple[int, str]]
    app_version: str


def _flash(batch: _Batch, index: int, port: str, progress: BoardProgress) -> BoardResult:
    started = time.monotonic()
    progress.update(port, "connecting")
    command = ["write-flash", "-z"]
    if batch.erase:
        command.append("--erase-all")
    command += [f"{batch.firmware.offset:#x}", str(batch.firmware_path)]

    def on_esptool(chunk: str) -> None:
        percent = tools.last_percent(chunk)
        if percent is not None:
            progress.update(port, "writing", f"{percent:5.1f} %")
        elif "Hash of data verified" in chunk:
            progress.update(port, "verified")

    timeout = ESPTOOL_BASE_TIMEOUT + batch.firmware.size * 100 / batch.baud
    result = tools.run_tool(
        tools.esptool_argv(port, batch.chip, batch.baud, *command),
        timeout=timeout,
        on_output=on_esptool,
    )
    mac = tools.parse_mac(result.output)
    if result.timed_out:
        return BoardResult(port, False, f"esptool: no answer within {timeout:.0f} s", mac)
    if result.code != 0:
        return BoardResult(port, False, f"esptool: {tools.last_error(result.output)}", mac)
    if "Hash of data verified" not in result.output:
        return BoardResult(port, False, "esptool did not verify what it wrote", mac)
    if mac is None:
        return BoardResult(port, False, "esptool did not report the board's MAC", mac)
    identity = batch.template.render(index, mac)
    board_dir = batch.stage.parent / f"board-{index}"
    board_dir.mkdir()
    config = board_dir / "config.json"
    config.write_bytes(identity.config)

    progress.update(port, "starting MicroPython")
    silent = tools.probe_repl(port)
    if silent is not None:
        return BoardResult(port, False, f"MicroPython: {silent}", mac, identity)
    progress.update(port, "copying app and config")
    result = tools.run_tool(
        provision_argv(port, config),
        timeout=MPREMOTE_TIMEOUT,
        cwd=batch.stage,
    )
    if result.timed_out:
        return BoardResult(
            port, False, f"mpremote: no answer within {MPREMOTE_TIMEOUT:.0f} s", mac, identity
        )
    if result.code != 0:
        return BoardResult(
            port, False, f"mpremote: {tools.last_error(result.output)}", mac, identity
        )
    progress.update(port, "checking")
    reason = _check_readback(batch, identity, result.output)
    seconds = time.monotonic() - started
    if reason:
        return BoardResult(port, False, reason, mac, identity, seconds=seconds)
    progress.update(port, "done")
    return BoardResult(port, True, "", mac, identity, batch.app_version, seconds)


def _check_readback(batch: _Batch, identity: provision.BeaconIdentity, output: str) -> str:
    """Why the board's read-back does not match what was sent ("" when it does)."""
    docs = tools.json_lines(output)
    reports = [d for d in docs if d.get("selftest") == 1]
    files = {str(d["file"]): [d.get("size"), d.get("sha256")] for d in docs if "file" in d}
    if not reports or not files:
        return f"the board gave no read-back ({tools.last_error(output)})"
    report = reports[-1]
    if report.get("app_version") != batch.app_version:
        return f"the board runs app {report.get('app_version')}, not {batch.app_version}"
    if report.get("config_sha256") != identity.config_sha256:
        return "the board's /config.json differs from what was sent"
    errors = report.get("config_errors")
    if isinstance(errors, list) and errors:
        return f"the board refuses its config: {', '.join(map(str, errors))}"
    checks = report.get("checks")
    if not isinstance(checks, dict) or not checks or not all(checks.values()):
        return f"the board's self-test failed: {checks}"
    expected = {p: [s, h] for p, (s, h) in batch.expected.items()}
    expected["/config.json"] = [len(identity.config), identity.config_sha256]
    if files != expected:
        missing = sorted(set(expected) - set(files))
        extra = sorted(set(files) - set(expected))
        wrong = sorted(p for p in set(files) & set(expected) if files[p] != expected[p])
        return f"the board's files differ: missing {missing}, extra {extra}, different {wrong}"
    return ""


def _prepare(args: argparse.Namespace, stage: Path) -> _Batch:
    ports: list[str] = args.port
    _check_ports(ports)
    if not args.baud or args.baud < 9600:
        raise BeaconError(f"--baud {args.baud} is too low")
    try:
        firmware = fwimage.inspect(args.micropython, args.chip)
    except fwimage.NotMicroPythonImageError as exc:
        raise BeaconError(
            f"{args.micropython} is not a MicroPython image for {args.chip}: {exc}"
        ) from None
    except OSError as exc:
        raise BeaconError(f"{args.micropython}: {exc.strerror or exc}") from None
    template = provision.load_template(
        args.config,
        chip=args.chip,
        minor_start=args.minor_start,
        major=args.major,
        entity_uuid=args.entity_uuid,
        release_keys=args.release_key,
    )
    template.check_batch(len(ports))
    # Every board's config, with a stand-in MAC, through the firmware's own validator.
    rendered = [template.render(i, bytes(6)) for i in range(len(ports))]
    for identity, errors in zip(
        rendered, provision.validate([r.config for r in rendered]), strict=True
    ):
        if errors:
            raise BeaconError(
                f"config {args.config} fails the firmware's validation for board "
                f"{identity.index} ({ports[identity.index]}): {'; '.join(errors)}"
            )
    if len({(r.major, r.minor) for r in rendered}) != len(rendered):
        raise BeaconError("two boards would get the same major/minor")
    app_root = stage / "stage"
    app_root.mkdir()
    expected = _stage(app_root, args.chip)
    if args.record_server is not None:
        record.check_server(args.record_server, record.Connection.from_args(args))
    return _Batch(
        args.chip,
        args.baud,
        firmware,
        args.micropython.resolve(),
        template,
        args.erase,
        app_root,
        expected,
        _app_version(),
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports: list[str] = args.port
    with tempfile.TemporaryDirectory(prefix="navign-flash-") as tmp:
        try:
            batch = _prepare(args, Path(tmp))
        except provision.ProvisionError as exc:
            raise BeaconError(str(exc)) from None
        with BoardProgress(ports) as progress, ThreadPoolExecutor(len(ports)) as pool:
            futures = [
                pool.submit(_flash, batch, i, port, progress) for i, port in enumerate(ports)
            ]
            results = [f.result() for f in futures]
    for result in results:
        print(result.line(args.chip), file=out, flush=True)
    if args.record is not None:
        rows = []
        for r in results:
            ident = r.identity
            rows.append(
                {
                    "port": r.port,
                    "chip": args.chip,
                    "mac": ":".join(f"{b:02x}" for b in r.mac) if r.mac else "",
                    "beacon_id": ident.beacon_id if ident else "",
                    "entity_uuid": ident.entity_uuid if ident else "",
                    "major": str(ident.major) if ident else "",
                    "minor": str(ident.minor) if ident else "",
                    "app_version": r.app_version,
                    "config_sha256": ident.config_sha256 if ident else "",
                    "result": "PASS" if r.ok else f"FAIL: {r.reason}",
                }
            )
        provision.record_csv(args.record, rows)
    passed = sum(r.ok for r in results)
    print(f"beacon: {passed} of {len(results)} boards provisioned", file=out, flush=True)
    code = 0 if passed == len(results) else 1
    if args.record_server is not None:
        conn = record.Connection.from_args(args)
        failures = record.record_on_server(args.record_server, results, args.chip, conn)
        for line in failures:
            print(line, file=out, flush=True)
        print(
            f"record: {passed - len(failures)} of {passed} beacons recorded on the server "
            f"({args.record_server})",
            file=out,
            flush=True,
        )
        code = 1 if failures else code
    return code
