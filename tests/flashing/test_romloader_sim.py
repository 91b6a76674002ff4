"""The ROM-loader simulator (:mod:`navign_firmware.devsim.romloader`): the real esptool CLI
against the standalone runner (:mod:`navign_firmware.devsim.romloader_main`) on a pty, and the
protocol engine fed frames directly (its error statuses, faults and resets, which esptool alone
cannot reach)."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from navign_firmware.devsim import romloader
from navign_firmware.devsim.esp32chips import CHIPS
from navign_firmware.devsim.loaderfaults import Fault, parse_fault
from navign_firmware.devsim.loaderwire import Op, checksum
from navign_firmware.devsim.romloader import RomLoader
from navign_firmware.flash import make_image

ESPTOOL = str(Path(sys.executable).parent / "esptool")
#: No esptool run here may take longer (a fault test that hangs fails instead).
ESPTOOL_TIMEOUT = 60.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
MAC = "a4:cf:12:3c:5d:7e"
FLASH_SIZE = 4 * 1024 * 1024


class LoaderProcess:
    """``python -m navign_firmware.devsim.romloader_main`` on a pty, and esptool runs against it."""

    def __init__(self, workdir: Path, chip: str, faults: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.flash = workdir / f"flash-{chip}.bin"
        self.stats_path = workdir / f"stats-{chip}.json"
        argv = [
            sys.executable,
            "-m",
            "navign_firmware.devsim.romloader_main",
            "--chip",
            chip,
            "--flash",
            str(self.flash),
            "--mac",
            MAC,
            "--stats",
            str(self.stats_path),
        ]
        for fault in faults:
            argv += ["--fault", fault]
        self._log = (workdir / "loader.log").open("ab")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                line = self.proc.stdout.readline()
                break
        if not line.startswith(b"PORT /dev/pts/"):
            self.stop()
            raise RuntimeError(f"the loader did not start: {line!r}")
        self.port = line.decode().split()[1]
        cfg = workdir / "esptool.cfg"
        cfg.touch()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ESPTOOL_")}
        self.env["ESPTOOL_CFGFILE"] = str(cfg)

    def esptool(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ESPTOOL, "--port", self.port, *map(str, args)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=ESPTOOL_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str | Path) -> str:
        """esptool's output (stdout, then stderr: its warnings and errors) from a run that
        must succeed."""
        run = self.esptool(*args)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout + run.stderr

    def flash_bytes(self, offset: int, length: int) -> bytes:
        with self.flash.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def stop(self, how: str = "eof") -> dict[str, object]:
        """Stop the runner (EOF on its stdin, or SIGTERM); its JSON stats."""
        if self.proc.poll() is None:
            if how == "eof" and self.proc.stdin is not None:
                self.proc.stdin.close()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._log.close()
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except (OSError, ValueError):
            return {}


@pytest.fixture
def loader_sim(tmp_path: Path) -> Iterator[Callable[..., LoaderProcess]]:
    """``loader_sim(chip, faults=(...))`` starts a runner; all are stopped after the test."""
    started: list[LoaderProcess] = []

    def start(chip: str = "esp32", faults: tuple[str, ...] = ()) -> LoaderProcess:
        workdir = tmp_path / f"sim{len(started)}"
        workdir.mkdir()
        sim = LoaderProcess(workdir, chip, faults)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def app_image(tmp_path: Path, chip: str) -> tuple[Path, bytes]:
    data = make_image("1.2.3", chip, size=48 * 1024, project="navign-beacon")
    path = tmp_path / f"app-{chip}.bin"
    path.write_bytes(data)
    return path, data


def config_blob(tmp_path: Path) -> tuple[Path, bytes]:
    """Data that compresses well (the random app filler does not), so FLASH_DEFL_* is used."""
    data = b"".join(b"beacon %06d major 7 minor 42\n" % i for i in range(3000))
    path = tmp_path / "config.bin"
    path.write_bytes(data)
    return path, data


# -- the real esptool against the runner ----------------------------------------------------


@pytest.mark.parametrize(
    ("chip", "name", "description"),
    [
        ("esp32", "ESP32", "ESP32-D0WD-V3 (revision v3.0)"),
        ("esp32c3", "ESP32-C3", "ESP32-C3 (QFN32) (revision v0.4)"),
        ("esp32s3", "ESP32-S3", "ESP32-S3 (QFN56) (revision v0.2)"),
    ],
)
def test_auto_detection_mac_and_flash_id(
    loader_sim: Callable[..., LoaderProcess], chip: str, name: str, description: str
) -> None:
    sim = loader_sim(chip)
    out = sim.ok("--chip", "auto", "chip-id")
    assert f"Detecting chip type... {name}" in out
    assert description in out
    assert f"MAC:                {MAC}" in out
    assert "Crystal frequency:  40MHz" in out
    assert "crystal freq" not in out.lower().replace("crystal frequency:", "")
    out = sim.ok("--chip", "auto", "--no-stub", "flash-id")
    assert "Manufacturer: ef" in out
    assert "Device: 4016" in out
    assert "Detected flash size: 4MB" in out
    assert "Failed to communicate with the flash chip" not in out
    stats = sim.stop()
    assert isinstance(stats["commands"], dict)
    assert stats["commands"]["GET_SECURITY_INFO"] >= 2
    assert int(str(stats["rx_bytes"])) > 0
    assert int(str(stats["tx_bytes"])) > 0


@pytest.mark.parametrize("stub", [False, True], ids=["rom", "stub"])
def test_esp32_write_flash_compressed(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path, stub: bool
) -> None:
    sim = loader_sim("esp32")
    app, app_data = app_image(tmp_path, "esp32")
    blob, blob_data = config_blob(tmp_path)
    before = sim.flash_bytes(0, 0x1000)
    stub_args = ["-b", "921600"] if stub else ["--no-stub", "-b", "460800"]
    out = sim.ok(
        "--chip",
        "esp32",
        *stub_args,
        "write-flash",
        "--no-progress",
        "-z",
        "--flash-mode",
        "keep",
        "--flash-size",
        "keep",
        "0x1000",
        app,
        "0x20000",
        blob,
    )
    assert out.count("Hash of data verified.") == 2
    assert sim.flash_bytes(0x1000, len(app_data)) == app_data
    assert sim.flash_bytes(0x20000, len(blob_data)) == blob_data
    assert sim.flash_bytes(0, 0x1000) == before  # nothing outside the written sectors
    assert set(sim.flash_bytes(0x20000 + len(blob_data), 0x1000)) == {0xFF}
    out = sim.ok("--chip", "esp32", *stub_args, "verify-flash", "0x1000", app, "0x20000", blob)
    assert out.count("Verification successful (digest matched).") == 2
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert commands["FLASH_DEFL_DATA"] > 0
    assert commands["CHANGE_BAUDRATE"] == 2  # a pty ignores the rate; the ack is enough
    assert ("MEM_END" in commands) is stub
    # The ROM path never sends FLASH_DEFL_END (it would leave the loader); the stub's does.
    assert ("FLASH_DEFL_END" in commands) is stub


@pytest.mark.parametrize("chip", ["esp32c3", "esp32s3"])
def test_c3_s3_write_at_zero(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path, chip: str
) -> None:
    sim = loader_sim(chip)
    app, app_data = app_image(tmp_path, chip)
    sim.ok("--chip", "auto", "write-flash", "--no-progress", "0x0", app)
    assert sim.flash_bytes(0, len(app_data)) == app_data
    out = sim.ok("--no-stub", "verify-flash", "0x0", app)  # ROM MD5: 32 hex characters
    assert "Verification successful (digest matched)." in out


def test_stub_read_flash_and_erase_flash(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32")
    blob, blob_data = config_blob(tmp_path)
    sim.ok("write-flash", "--no-progress", "0x10000", blob)
    sim.ok("read-flash", "--no-progress", "0x10000", str(len(blob_data)), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == blob_data
    sim.ok("--no-stub", "read-flash", "--no-progress", "0x10000", "200", tmp_path / "slow.bin")
    assert (tmp_path / "slow.bin").read_bytes() == blob_data[:200]
    sim.ok("erase-region", "0x11000", "0x1000")
    assert set(sim.flash_bytes(0x11000, 0x1000)) == {0xFF}
    assert sim.flash_bytes(0x10000, 0x1000) == blob_data[:0x1000]
    out = sim.ok("erase-flash")
    assert "Flash memory erased successfully" in out
    assert sim.flash.stat().st_size == FLASH_SIZE
    assert sim.flash_bytes(0, FLASH_SIZE).count(b"\xff") == FLASH_SIZE


def test_rom_refuses_stub_only_erase(loader_sim: Callable[..., LoaderProcess]) -> None:
    run = loader_sim("esp32").esptool("--no-stub", "erase-flash")
    assert run.returncode == 2
    assert "ROM does not support function erase_flash" in run.stdout + run.stderr


def test_wrong_chip_image_is_refused(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32")
    app, _ = app_image(tmp_path, "esp32c3")
    run = sim.esptool("write-flash", "--no-progress", "0x1000", app)
    assert run.returncode != 0
    assert "is not an ESP32 image" in run.stdout + run.stderr
    assert sim.flash_bytes(0, 0x40000).count(b"\xff") == 0x40000
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert "FLASH_DEFL_BEGIN" not in commands
    assert "FLASH_BEGIN" not in commands


def test_back_to_back_runs_start_in_the_rom(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    """A run that leaves the stub running (a pty cannot reset the chip), straight away followed
    by a ROM-only run with an explicit chip: the quiet period before its SYNC counts as reset."""
    sim = loader_sim("esp32")
    app, app_data = app_image(tmp_path, "esp32")
    sim.ok("--chip", "esp32", "read-mac")
    out = sim.ok("--chip", "esp32", "--no-stub", "write-flash", "--no-progress", "0x1000", app)
    assert "Hash of data verified." in out
    assert sim.flash_bytes(0x1000, len(app_data)) == app_data
    out = sim.ok("--chip", "esp32", "--after", "no-reset", "read-mac")
    assert "Staying in bootloader." in out
    stats = sim.stop(how="sigterm")
    assert stats["stub_running"] is False  # FLASH_BEGIN(0, 0) + FLASH_END(reboot) left it


# -- faults --------------------------------------------------------------------------------


def test_dropped_sync_answer_is_retried(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32", faults=("drop:SYNC:1",))
    app, app_data = app_image(tmp_path, "esp32")
    sim.ok("--no-stub", "write-flash", "--no-progress", "0x1000", app)
    assert sim.flash_bytes(0x1000, len(app_data)) == app_data
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert commands["SYNC"] == 2


def test_block_with_a_checksum_error_is_sent_again(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32", faults=("bad_checksum:FLASH_DATA:3",))
    app, app_data = app_image(tmp_path, "esp32")
    sim.ok("--no-stub", "write-flash", "--no-progress", "0x1000", app)
    assert sim.flash_bytes(0x1000, len(app_data)) == app_data
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert commands["FLASH_DATA"] == -(-len(app_data) // 1024) + 1


def test_persistent_checksum_errors_fail_readably(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32", faults=("bad_checksum:FLASH_DATA:3+",))
    app, _ = app_image(tmp_path, "esp32")
    run = sim.esptool("--no-stub", "write-flash", "--no-progress", "0x1000", app)
    assert run.returncode == 2
    assert "Failed to write to target flash after seq 2 (result was 0107: Checksum error)" in (
        run.stdout + run.stderr
    )
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert commands["FLASH_DATA"] == 2 + 3  # esptool tries a block 3 times


def test_bad_checksum_on_md5_is_an_error(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path
) -> None:
    sim = loader_sim("esp32c3", faults=("bad_checksum:SPI_FLASH_MD5:1",))
    app, _ = app_image(tmp_path, "esp32c3")
    run = sim.esptool("write-flash", "--no-progress", "0x0", app)
    assert run.returncode == 2
    assert "Failed to calculate md5sum (result was C100: Bad data checksum)" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "blocks_seen"), [("die:FLASH_DATA:5", 5), ("drop:FLASH_DATA:5", 7)]
)
def test_no_answer_mid_write_fails_in_bounded_time(
    loader_sim: Callable[..., LoaderProcess], tmp_path: Path, fault: str, blocks_seen: int
) -> None:
    """A device that stops answering, or one lost answer to a data block: esptool 5.6 does not
    survive either (its SLIP reader is finished after a read timeout, so the block's retries
    fail at once with "No more data to read"), but it exits after its 3 s timeout. Its two
    retries of the block are sent (a dead device never counts them)."""
    sim = loader_sim("esp32", faults=(fault,))
    app, _ = app_image(tmp_path, "esp32")
    started = time.monotonic()
    run = sim.esptool("--no-stub", "write-flash", "--no-progress", "0x1000", app)
    took = time.monotonic() - started
    assert run.returncode == 2
    assert "A fatal error occurred" in run.stdout + run.stderr
    assert took < 15
    commands = sim.stop()["commands"]
    assert isinstance(commands, dict)
    assert commands["FLASH_DATA"] == blocks_seen  # none after the one that went unanswered


# -- the engine, fed frames directly --------------------------------------------------------


def frame(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    raw = struct.pack("<BBHI", 0, op, len(data), chk) + data
    return b"\xc0" + raw.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def replies(wire: bytes) -> list[bytes]:
    out = []
    for part in wire.split(b"\xc0"):
        if part:
            out.append(part.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
    return out


def xor_checksum(data: bytes) -> int:
    state = 0xEF
    for b in data:
        state ^= b
    return state


class Wire:
    def __init__(self, tmp_path: Path, faults: Sequence[Fault] = ()) -> None:
        self.sent = bytearray()
        self.now = 100.0
        self.path = tmp_path / "flash.bin"
        self.loader = RomLoader(
            "esp32",
            self.path,
            write=self.sent.extend,
            flash_size=64 * 1024,
            faults=faults,
            clock=lambda: self.now,
        )

    def ask(self, op: int, data: bytes = b"", chk: int = 0) -> list[bytes]:
        self.sent.clear()
        self.loader.feed(frame(op, data, chk))
        return replies(bytes(self.sent))

    def status(self, op: int, data: bytes = b"", chk: int = 0) -> bytes:
        (reply,) = self.ask(op, data, chk)
        assert reply[:2] == bytes([1, op])
        return reply[8:]

    def start_stub(self) -> None:
        assert self.ask(Op.MEM_END, struct.pack("<II", 0, 0x40080000))[-1] == b"OHAI"
        assert self.loader.stub_running


def test_checksum_matches_the_rom_definition() -> None:
    for data in (b"", b"\x01", bytes(range(256)) * 7 + b"abc", os.urandom(16384 + 5)):
        assert checksum(data) == xor_checksum(data)


def test_new_flash_file_is_erased(tmp_path: Path) -> None:
    Wire(tmp_path)
    assert (tmp_path / "flash.bin").read_bytes() == b"\xff" * 64 * 1024


def test_rom_and_stub_error_statuses(tmp_path: Path) -> None:
    wire = Wire(tmp_path)
    assert wire.status(0x42) == b"\x01\x05\x00\x00"  # unknown command: invalid message
    assert wire.status(Op.GET_SECURITY_INFO) == b"\x01\x05\x00\x00"  # not on ESP32
    assert wire.status(Op.FLASH_DATA, bytes(16)) == b"\x01\x06\x00\x00"  # no BEGIN
    assert wire.status(Op.FLASH_BEGIN, struct.pack("<IIII", 4096, 4, 1024, 0)) == b"\x00" * 4
    block = b"\x12\x34" * 512
    header = struct.pack("<IIII", len(block), 0, 0, 0)
    bad = xor_checksum(block) ^ 1
    assert wire.status(Op.FLASH_DATA, header + block, bad) == b"\x01\x07\x00\x00"
    assert set(wire.path.read_bytes()[:4096]) == {0xFF}  # a refused block is not written
    assert wire.status(Op.FLASH_DATA, header + block, xor_checksum(block)) == bytes(4)
    assert wire.path.read_bytes()[:1024] == block
    past = struct.pack("<IIII", 8192, 8, 1024, 60 * 1024)  # 4 KiB past the end of 64 KiB
    assert wire.status(Op.FLASH_BEGIN, past) == b"\x01\x08\x00\x00"
    md5 = wire.status(Op.SPI_FLASH_MD5, struct.pack("<IIII", 0, 1024, 0, 0))
    assert md5 == hashlib.md5(block, usedforsecurity=False).hexdigest().encode() + bytes(4)
    wire.start_stub()
    assert wire.status(0x42) == b"\xc3\x00"  # the stub's "invalid command"
    md5 = wire.status(Op.SPI_FLASH_MD5, struct.pack("<IIII", 0, 1024, 0, 0))
    assert md5 == hashlib.md5(block, usedforsecurity=False).digest() + b"\x00\x00"
    assert wire.status(Op.ERASE_REGION, struct.pack("<II", 60 * 1024, 8192)) == b"\xc4\x00"


def test_sync_answers_and_quiet_period_reset(tmp_path: Path) -> None:
    wire = Wire(tmp_path)
    sync = b"\x07\x07\x12\x20" + b"\x55" * 32
    answers = wire.ask(Op.SYNC, sync)
    assert len(answers) == romloader.SYNC_REPLIES
    assert all(struct.unpack_from("<I", a, 4)[0] != 0 for a in answers)  # ROM: val != 0
    wire.start_stub()
    wire.now += romloader.QUIET_RESET / 2  # esptool syncing again at once: still the stub
    assert all(struct.unpack_from("<I", a, 4)[0] == 0 for a in wire.ask(Op.SYNC, sync))
    assert wire.loader.stub_running
    wire.now += romloader.QUIET_RESET + 0.01  # a new esptool run after a (silent) reset
    assert all(struct.unpack_from("<I", a, 4)[0] != 0 for a in wire.ask(Op.SYNC, sync))
    assert not wire.loader.stub_running


def test_busy_reset_and_deflate_repeats(tmp_path: Path) -> None:
    wire = Wire(tmp_path)
    plain = b"navign " * 3000
    packed = zlib.compress(plain, 9)
    assert wire.status(
        Op.FLASH_DEFL_BEGIN, struct.pack("<IIII", len(plain), 2, 1024, 0x1000)
    ) == bytes(4)
    blocks = [packed[i : i + 1024] for i in range(0, len(packed), 1024)]
    for seq, block in enumerate(blocks):
        data = struct.pack("<IIII", len(block), seq, 0, 0) + block
        assert wire.status(Op.FLASH_DEFL_DATA, data, xor_checksum(block)) == bytes(4)
        if seq == 0:  # its answer was lost and esptool sent it again: not inflated twice
            assert wire.status(Op.FLASH_DEFL_DATA, data, xor_checksum(block)) == bytes(4)
    assert wire.path.read_bytes()[0x1000 : 0x1000 + len(plain)] == plain
    wire.start_stub()
    wire.loader.feed(frame(Op.READ_REG, b"\x00\x10\x00\x40")[:5])
    busy = wire.loader.busy
    wire.loader.reset()
    assert (busy, wire.loader.busy, wire.loader.stub_running) == (True, False, False)
    (reply,) = wire.ask(Op.READ_REG, struct.pack("<I", 0x40001000))
    assert struct.unpack_from("<I", reply, 4)[0] == 0x00F01D83
    assert reply[8:] == bytes(4)  # a ROM status again


def test_faults(tmp_path: Path) -> None:
    faults = [
        parse_fault("drop:READ_REG:2"),
        parse_fault("silent:SPI_ATTACH:1"),
        parse_fault("die:*:6"),
    ]
    wire = Wire(tmp_path, faults=faults)
    reg = struct.pack("<I", 0x40001000)
    assert len(wire.ask(Op.READ_REG, reg)) == 1
    assert wire.ask(Op.READ_REG, reg) == []  # dropped
    assert len(wire.ask(Op.READ_REG, reg)) == 1
    assert wire.ask(Op.SPI_ATTACH, bytes(8)) == []  # silent from the first on
    assert wire.ask(Op.SPI_ATTACH, bytes(8)) == []
    assert wire.ask(Op.READ_REG, reg) == []  # the 6th command: dead from now on
    wire.loader.reset()
    assert wire.ask(Op.SYNC, bytes(36)) == []
    assert wire.loader.commands["READ_REG"] == 4


def test_fault_specs() -> None:
    assert parse_fault("die:FLASH_DEFL_DATA:5") == Fault("die", "FLASH_DEFL_DATA", 5)
    assert parse_fault("bad_checksum:*:2+") == Fault("bad_checksum", None, 2, onwards=True)
    for bad in ("drop:FLASH_DATA", "explode:SYNC:1", "drop:NOPE:1", "drop:SYNC:0", "drop:SYNC:x"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)
    assert set(CHIPS) == {"esp32", "esp32c3", "esp32s3"}
    with pytest.raises(ValueError, match="unknown chip"):
        RomLoader("esp8266", Path("/nonexistent"), write=lambda b: None)
