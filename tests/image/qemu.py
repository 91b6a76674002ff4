"""A gateway image booted in QEMU (``-M virt``, the image's own kernel and initrd, its card as a
virtio disk), reaching a server on the host's loopback only through one guestfwd address.

The guest's network is ``restrict=on``: it can reach nothing but the forwarded address
(:data:`SERVER_ADDRESS` in the guest → the server on 127.0.0.1 on the host), so no test traffic
leaves this machine (no DNS, no NTP; the guest's clock comes from QEMU's RTC, set from the host).
Stopping QEMU is a power cut: the card keeps what the guest had written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from navign_firmware.flashing.sdimage import parse_mbr

#: What the gateway's config names as its server, inside the guest.
SERVER_ADDRESS: Final = "10.0.2.100:8080"
KERNEL_CMDLINE: Final = "root=LABEL=RASPIROOT ro rootwait console=ttyAMA0 net.ifnames=0"
MTOOLS_ENV: Final = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}
SHUTDOWN_TIMEOUT: Final = 180.0
RELAY: Final = Path(__file__).resolve().parent / "tcprelay.py"


def fat_offset(card: Path) -> int:
    with card.open("rb") as f:
        return parse_mbr(f.read(512))[0].start


def fat_read(card: Path, name: str) -> bytes | None:
    """A file of the card's FAT partition (``None`` when it is not there)."""
    done = subprocess.run(
        ["mtype", "-i", f"{card}@@{fat_offset(card)}", f"::{name}"],
        capture_output=True, timeout=60, check=False, env={**os.environ, **MTOOLS_ENV},
    )  # fmt: skip
    return done.stdout if done.returncode == 0 else None


def fat_list(card: Path, folder: str) -> list[str]:
    done = subprocess.run(
        ["mdir", "-b", "-i", f"{card}@@{fat_offset(card)}", f"::{folder}"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **MTOOLS_ENV},
    )  # fmt: skip
    return sorted(line.rsplit("/", 1)[-1] for line in done.stdout.split() if line)


def fat_write(card: Path, name: str, data: bytes, scratch: Path) -> None:
    source = scratch / "fat-write.tmp"
    source.write_bytes(data)
    subprocess.run(
        ["mcopy", "-o", "-i", f"{card}@@{fat_offset(card)}", str(source), f"::{name}"],
        capture_output=True, timeout=60, check=True, env={**os.environ, **MTOOLS_ENV},
    )  # fmt: skip


def ssh(
    key: Path, port: int, command: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``command`` as root on the booted gateway, through the forwarded ``port`` (the host key
    is new at every first boot: not checked)."""
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=30", "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


class BootedGateway:
    """QEMU running ``card``; its serial console goes to ``workdir/console.log``."""

    def __init__(
        self,
        card: Path,
        workdir: Path,
        server_port: int,
        ssh_port: int | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.console = workdir / "console.log"
        self.monitor = workdir / "monitor.sock"
        self.card = card
        offset = fat_offset(card)
        boot = workdir / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        listing = subprocess.run(
            ["mdir", "-b", "-i", f"{card}@@{offset}", "::"],
            capture_output=True, text=True, timeout=60, check=True,
            env={**os.environ, **MTOOLS_ENV},
        ).stdout.split()  # fmt: skip
        names = [line.rsplit("/", 1)[-1] for line in listing]
        kernel = sorted(n for n in names if n.startswith("vmlinuz-"))[-1]
        initrd = sorted(n for n in names if n.startswith("initrd.img-"))[-1]
        for name in (kernel, initrd):
            subprocess.run(
                ["mcopy", "-o", "-i", f"{card}@@{offset}", f"::{name}", str(boot / name)],
                capture_output=True, timeout=120, check=True, env={**os.environ, **MTOOLS_ENV},
            )  # fmt: skip
        host, port = SERVER_ADDRESS.split(":")
        argv = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
            "-display", "none", "-serial", f"file:{self.console}",
            "-rtc", "base=utc",
            "-kernel", str(boot / kernel), "-initrd", str(boot / initrd),
            "-append", KERNEL_CMDLINE,
            "-drive", f"if=none,file={card},format=raw,id=hd0",
            "-device", "virtio-blk-pci,drive=hd0",
            "-netdev",
            # One relay process per guest connection (a tcp: chardev would be one stream
            # shared by every connection, mixing their bytes).
            f"user,id=n0,restrict=on,guestfwd=tcp:{host}:{port}-cmd:{sys.executable} "
            f"{RELAY} 127.0.0.1 {server_port}"
            + (f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else "")
            + (f",hostfwd=tcp:127.0.0.1:{grpc_port}-:50051" if grpc_port else ""),
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            # A watchdog for systemd to arm (RuntimeWatchdogSec), as it arms the Pi's.
            "-device", "i6300esb",
            "-monitor", f"unix:{self.monitor},server,nowait",
            "-no-reboot",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(workdir / "qemu.log").open("wb"),
        )  # fmt: skip
        self.started = time.monotonic()

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def power_off(self) -> None:
        """Pull the plug (SIGKILL to QEMU)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def shut_down(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Press the power button (ACPI/GPIO, as a person would): systemd shuts down and QEMU
        exits. ``False`` (and the plug pulled) when it did not within ``timeout``."""
        if self.process.poll() is not None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.monitor))
            sock.sendall(b"system_powerdown\n")
            time.sleep(0.5)
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.power_off()
            return False

    def journal(self, scratch: Path) -> list[dict[str, str]]:
        """The guest's persistent journal, read from the card's /var partition (QEMU stopped)."""
        scratch.mkdir(parents=True, exist_ok=True)
        with self.card.open("rb") as f:
            var = parse_mbr(f.read(512))[2]
        part = scratch / "var.ext4"
        with self.card.open("rb") as src, part.open("wb") as dst:
            src.seek(var.start)
            left = var.size
            while left:
                chunk = src.read(min(left, 1 << 22))
                if not chunk:
                    break
                dst.write(chunk)
                left -= len(chunk)
        out = scratch / "journal"
        subprocess.run(["debugfs", "-R", f"rdump /log/journal {out.parent}", str(part)],
                       capture_output=True, timeout=120, check=True)  # fmt: skip
        out.mkdir(exist_ok=True)
        text = subprocess.run(
            ["journalctl", "-D", str(out), "-o", "json", "--no-pager"],
            capture_output=True, text=True, timeout=120, check=False,
        ).stdout  # fmt: skip
        entries: list[dict[str, str]] = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append({k: str(v) for k, v in entry.items()})
        return entries
