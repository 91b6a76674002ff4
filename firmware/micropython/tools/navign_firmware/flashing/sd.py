"""``flash.sh sd``: write a Navign gateway image to an SD card, verify it, and provision it.

    flash.sh sd IMAGE DEVICE --config gateway.toml [--wifi FILE] [--ssh-authorized-keys FILE]
                [--force] [--dry-run] [--yes] [--block-size N]

Before any byte is written: the image (``.img``, or ``.img.xz`` streamed through :mod:`lzma`) is
checked (an MBR whose partition 1 is FAT; the size of an ``.img.xz`` from its index, so a truncated
download fails here), ``IMAGE.sha256`` is checked when it exists (both in
:mod:`navign_firmware.flashing.sdimage`), ``gateway.toml`` is validated by the gateway's own model
(:mod:`navign_firmware.flashing.sdprovision`), the device passes
:func:`navign_firmware.flashing.disks.decide`, and a person confirms (a block device, without
``--yes``, on a terminal only). Then the image is written in blocks, fsynced, read back and
compared by SHA-256, and ``navign/gateway.toml`` (with ``navign/wifi.conf``, ``ssh`` and
``navign/authorized_keys`` when asked) is copied into partition 1 with mtools (no mount), and read
back.

Public: :func:`add_parser`, :func:`run` (which raises the
:class:`~navign_firmware.flashing.sdimage.SdError` subclasses of
:mod:`navign_firmware.flashing.sdimage`).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import lzma
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from navign_firmware.flashing import disks, sdimage, sdprovision

MAX_BLOCK: Final = 64 * 1024 * 1024
TTY_REFRESH: Final = 0.2
PLAIN_REFRESH: Final = 1.0
BLKFLSBUF: Final = 0x1261
BLKRRPART: Final = 0x125F


class _Progress:
    """One updating line on a terminal; a plain line every second elsewhere."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self._label = label
        self._total = total
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._start = self._last = time.monotonic()
        self._done = 0
        self._shown = False

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        rate = self._done / elapsed
        head = f"sd: {self._label} {disks.human_size(self._done)} / {disks.human_size(self._total)}"
        percent = 100 * self._done // self._total if self._total else 100
        tail = f"{rate / 1024 / 1024:.1f} MiB/s"
        if self._done >= self._total:
            tail += f", {_duration(elapsed)}"
        elif rate > 0:
            tail += f", ETA {_duration((self._total - self._done) / rate)}"
        return f"{head} ({percent} %), {tail}"

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if now - self._last >= (TTY_REFRESH if self._tty else PLAIN_REFRESH):
            self._last = now
            self._show(now)

    def _show(self, now: float) -> None:
        line = self._line(now)
        self._stream.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._done >= self._total:
            self._show(time.monotonic())
        if self._tty and self._shown:
            self._stream.write("\n")
            self._stream.flush()


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60} s"


def _flush(fd: int, block: bool) -> None:
    """Drop the cached copy so reading back reads the card (best effort)."""
    try:
        if block:
            fcntl.ioctl(fd, BLKFLSBUF)
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _open_device(device: str, block: bool, flags: int) -> int:
    try:
        return os.open(device, flags | os.O_CLOEXEC | (os.O_EXCL if block else 0))
    except OSError as exc:
        busy = " (in use: mounted or held by a program)" if exc.errno == errno.EBUSY else ""
        raise sdimage.WriteError(f"{device}: cannot open: {exc.strerror or exc}{busy}") from None


def _write_all(fd: int, data: bytes, offset: int, device: str) -> None:
    view = memoryview(data)
    while view:
        try:
            count = os.write(fd, view)
        except OSError as exc:
            raise sdimage.WriteError(
                f"{device}: write failed at byte {offset}: {exc.strerror or exc}; "
                "the card holds a partial image"
            ) from None
        if count <= 0:
            raise sdimage.WriteError(f"{device}: no space left at byte {offset}")
        view = view[count:]
        offset += count


def _write_image(image: sdimage.ImageInfo, device: str, block: bool, block_size: int) -> str:
    """Write the image; the SHA-256 of what was written."""
    digest = hashlib.sha256()
    offset = 0
    partial = f"{device} now holds a partial image: write it again"
    fd = _open_device(device, block, os.O_WRONLY)
    progress = _Progress("write", image.size)
    try:
        with sdimage.open_image(image.path, image.compressed) as source:
            while offset < image.size:
                try:
                    chunk = sdimage.read_exact(source, min(block_size, image.size - offset))
                    if not chunk:
                        raise EOFError(f"it ended at byte {offset} of {image.size}")
                except (lzma.LZMAError, EOFError, OSError) as exc:
                    raise sdimage.ImageError(f"{image.path}: corrupt: {exc}; {partial}") from None
                _write_all(fd, chunk, offset, device)
                digest.update(chunk)
                offset += len(chunk)
                progress.update(offset)
            try:
                extra = source.read(1)  # the end of the xz stream, with its checks
            except (lzma.LZMAError, EOFError) as exc:
                raise sdimage.ImageError(
                    f"{image.path}: corrupt at its end: {exc}; {partial}"
                ) from None
            if extra:
                raise sdimage.ImageError(f"{image.path}: longer than its index says; {partial}")
        try:
            os.fsync(fd)
        except OSError as exc:
            raise sdimage.WriteError(
                f"{device}: flushing to the card failed: {exc.strerror}"
            ) from None
        _flush(fd, block)
    finally:
        os.close(fd)
        progress.close()
    return digest.hexdigest()


def _verify(device: str, size: int, block_size: int, expected: str) -> None:
    digest = hashlib.sha256()
    done = 0
    fd = _open_device(device, False, os.O_RDONLY)
    progress = _Progress("verify", size)
    try:
        while done < size:
            try:
                chunk = os.read(fd, min(block_size, size - done))
            except OSError as exc:
                raise sdimage.VerifyError(
                    f"{device}: read failed at byte {done}: {exc.strerror}"
                ) from None
            if not chunk:
                raise sdimage.VerifyError(f"{device}: reading back ended at byte {done} of {size}")
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
    finally:
        os.close(fd)
        progress.close()
    if digest.hexdigest() != expected:
        raise sdimage.VerifyError(
            f"{device}: the read-back differs from what was written (sha256 "
            f"{digest.hexdigest()[:16]}… != {expected[:16]}…): a failing or fake card?"
        )


def _sync(device: str, block: bool) -> None:
    """fsync the device and drop its cached copy (after mtools wrote to it)."""
    fd = _open_device(device, block, os.O_WRONLY)
    try:
        os.fsync(fd)
        _flush(fd, block)
    except OSError as exc:
        raise sdimage.WriteError(f"{device}: flushing to the card failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def _reread_partitions(device: str) -> None:
    """Ask the kernel to read the new partition table (best effort: /dev/sdX1 appears)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_terminal(facts: disks.DeviceFacts) -> sdimage.DeviceError:
    return sdimage.DeviceError(
        f"{facts.path}: stdin is not a terminal, so nobody can confirm overwriting it: "
        "pass --yes; nothing written"
    )


def _confirm(facts: disks.DeviceFacts, image: sdimage.ImageInfo, yes: bool) -> None:
    if yes or facts.kind == "file":
        return
    if not sys.stdin.isatty():
        raise _no_terminal(facts)
    sys.stderr.write(
        f"Write {image.path.name} ({disks.human_size(image.size)}) to {facts.path} "
        f"({facts.details()})?\n"
        "Everything on it will be lost. Type yes to continue: "
    )
    sys.stderr.flush()
    if sys.stdin.readline(256).strip().lower() not in ("y", "yes"):
        raise sdimage.DeviceError(f"{facts.path}: not confirmed; nothing written")


def _block_size(text: str) -> int:
    match = re.fullmatch(r"(\d{1,12})\s*([KM]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4M, 1M, 65536)")
    size = int(match[1]) * {"": 1, "K": 1024, "M": 1024 * 1024}[match[2].upper()]
    if size < sdimage.SECTOR or size > MAX_BLOCK or size % sdimage.SECTOR:
        raise argparse.ArgumentTypeError("must be a multiple of 512 bytes, at most 64M")
    return size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sd",
        help="write a gateway image to an SD card and provision it",
        description="Write a Navign gateway image (.img or .img.xz) to an SD card (or a file "
        "standing in for one), verify it by reading it back, and put gateway.toml (and "
        "optionally Wi-Fi and SSH keys) into its FAT boot partition under navign/. Refuses "
        "mounted, system and partition devices always, and non-removable disks unless --force.",
    )
    p.add_argument("image", metavar="IMAGE", help="the image: .img or .img.xz")
    p.add_argument("device", metavar="DEVICE", help="the card (/dev/sdX, /dev/mmcblkN) or a file")
    p.add_argument("--config", required=True, metavar="FILE", help="the gateway.toml to install")
    p.add_argument("--wifi", metavar="FILE", help="Wi-Fi settings, installed as navign/wifi.conf")
    p.add_argument(
        "--ssh-authorized-keys",
        metavar="FILE",
        help="OpenSSH public keys: enables SSH (installs ssh and navign/authorized_keys)",
    )
    p.add_argument(
        "--grpc-tls",
        metavar="DIR",
        help="TLS for the gateway's gRPC port: DIR's grpc.crt, grpc.key and clients.pem "
        "(optional: callers' CA), installed as navign/tls/",
    )
    p.add_argument("--force", action="store_true", help="allow a disk that is not removable")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan, write nothing")
    p.add_argument("--yes", action="store_true", help="do not ask before overwriting a device")
    p.add_argument(
        "--block-size",
        type=_block_size,
        default=sdimage.DEFAULT_BLOCK,
        metavar="N",
        help="write in blocks of N bytes (suffix K or M; default 4M)",
    )
    p.set_defaults(run=run)


def _plan(
    out: TextIO,
    image: sdimage.ImageInfo,
    config: str,
    facts: disks.DeviceFacts,
    args: argparse.Namespace,
) -> None:
    kind = "xz" if image.compressed else "raw"
    boot = image.boot
    print(f"image:    {image.path}: {kind}, {disks.human_size(image.size)} ({image.size} bytes)"
          + (f", {disks.human_size(image.file_size)} compressed" if image.compressed else ""),
          file=out)  # fmt: skip
    print(
        f"layout:   MBR; partition 1 {sdimage.FAT_TYPES[boot.type]} at byte {boot.start}, "
        f"{disks.human_size(boot.size)}",
        file=out,
    )
    print(f"config:   {args.config}: {config}", file=out)
    print(f"device:   {facts.describe()}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``flash.sh sd``; 0 when done. Raises :class:`sdimage.SdError` subclasses (one-line
    messages)."""
    image = sdimage.inspect_image(Path(args.image))
    config, config_summary = sdprovision.validate_gateway_config(Path(args.config))
    files = sdprovision.card_files(args, config)
    missing = [tool for tool in sdprovision.MTOOLS if shutil.which(tool) is None]
    if missing:
        raise sdimage.ProvisionError(
            f"mtools is not installed ({', '.join(missing)}): apt install mtools"
        )
    device = os.path.realpath(args.device)
    if "@@" in device:
        raise sdimage.DeviceError(f"{args.device}: a path with '@@' cannot be given to mtools")
    try:
        facts = disks.gather(args.device, image.path)
    except disks.DiskError as exc:
        raise sdimage.DeviceError(str(exc)) from None
    decision = disks.decide(facts, image.size, args.force)
    refused = f"{facts.path}: {decision.explain()}; nothing written"
    block = facts.kind == "block"
    if args.dry_run:
        print("sd: dry run: nothing will be written", file=out)
        _plan(out, image, config_summary, facts, args)
        digest = sdimage.sidecar_sha256(image, _Progress)
        sidecar = f"{image.path.name}.sha256"
        checked = f"matches {sidecar} ({digest[:16]}…)" if digest else f"no {sidecar}: unchecked"
        print(f"sha256:   {checked}", file=out)
        print(f"decision: {decision.explain()}", file=out)
        if not decision.proceed:
            raise sdimage.DeviceError(refused)
        size, chunk = disks.human_size(image.size), disks.human_size(args.block_size)
        print(f"would:    write {size} in {chunk} blocks, fsync, read back, compare", file=out)
        names = ", ".join(f"{f.name} ({len(f.data)} B)" for f in files)
        print(f"would:    copy into partition 1 with mtools: {names}; read back", file=out)
        if block and not args.yes:
            if not sys.stdin.isatty():
                raise _no_terminal(facts)
            print("would:    ask for confirmation", file=out)
        return 0
    if not decision.proceed:
        raise sdimage.DeviceError(refused)
    if decision.overridden:
        sys.stderr.write(f"sd: {facts.path}: {decision.explain()}\n")
    sdimage.sidecar_sha256(image, _Progress)
    _confirm(facts, image, args.yes)
    start = time.monotonic()
    written = _write_image(image, device, block, args.block_size)
    _verify(device, image.size, args.block_size, written)
    try:
        sdprovision.provision(device, image.boot, files, lambda: _sync(device, block))
    except sdimage.ProvisionError as exc:
        raise sdimage.ProvisionError(
            f"{exc} (the image is written and verified, the provisioning is not: run again)"
        ) from None
    if block:
        _reread_partitions(device)
    print(
        f"sd: wrote {image.path.name} ({disks.human_size(image.size)}) to {args.device} in "
        f"{_duration(time.monotonic() - start)}, verified sha256 {written[:12]}…; "
        f"provisioned {', '.join(f.name for f in files)}",
        file=out,
    )
    return 0
