"""The checks ``flash.sh sd`` makes on a gateway image before writing it, and its errors.

An image is a ``.img``, or an ``.img.xz`` read through :mod:`lzma`. :func:`inspect_image` wants an
MBR whose partition 1 is FAT and holds a FAT file system, and takes the size of an ``.img.xz`` from
its index (:func:`xz_uncompressed_size`: every stream's footer, index and header are checked, so a
truncated download fails before anything is written). :func:`sidecar_sha256` checks
``IMAGE.sha256`` when it exists.

The errors of ``flash.sh sd`` (:class:`SdError` and its subclasses) are defined here, below every
other ``sd`` module, so that all of them can raise them.

Public: :class:`SdError` and its subclasses (:class:`ImageError`, :class:`InputError`,
:class:`DeviceError`, :class:`WriteError`, :class:`VerifyError`, :class:`ProvisionError`),
:class:`MbrPartition`, :class:`ImageInfo`, :func:`parse_mbr`, :func:`xz_uncompressed_size`,
:func:`inspect_image`, :func:`open_image`, :func:`read_exact`, :class:`Progress`,
:func:`sidecar_sha256`, and the constants :data:`SECTOR`, :data:`DEFAULT_BLOCK`,
:data:`FAT_TYPES`.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol

SECTOR: Final = 512
DEFAULT_BLOCK: Final = 4 * 1024 * 1024
#: MBR partition types of a FAT boot partition (FAT32 CHS, FAT32 LBA, FAT16 LBA).
FAT_TYPES: Final = {0x0B: "FAT32", 0x0C: "FAT32 (LBA)", 0x0E: "FAT16 (LBA)"}
XZ_HEADER_MAGIC: Final = b"\xfd7zXZ\x00"
XZ_MAX_STREAMS: Final = 4096
XZ_MAX_INDEX: Final = 16 * 1024 * 1024


class SdError(Exception):
    """``flash.sh sd`` failed; the message is one line (what, where, and what to do)."""


class ImageError(SdError):
    """The image is missing, unreadable, truncated, corrupt, not a gateway image or fails its
    checksum."""


class InputError(SdError):
    """gateway.toml, the Wi-Fi file or the authorized keys cannot be used."""


class DeviceError(SdError):
    """The device cannot be inspected, is refused, or nobody confirmed overwriting it."""


class WriteError(SdError):
    """Writing or flushing the device failed."""


class VerifyError(SdError):
    """What was read back from the device differs from what was written."""


class ProvisionError(SdError):
    """mtools is missing or failed, or a provisioned file read back differently."""


@dataclass(frozen=True, slots=True)
class MbrPartition:
    number: int
    type: int
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    path: Path
    compressed: bool
    #: Bytes written to the card (uncompressed).
    size: int
    file_size: int
    boot: MbrPartition


def parse_mbr(sector: bytes) -> tuple[MbrPartition, ...]:
    """The used primary partitions of an MBR (byte offsets and sizes, 512-byte sectors)."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise ImageError("no MBR partition table (no 55 AA signature at byte 510)")
    parts: list[MbrPartition] = []
    for i in range(4):
        ptype, lba, count = struct.unpack_from("<4xB3xII", sector, 446 + 16 * i)
        if ptype == 0xEE:
            raise ImageError("a GPT disk image; a Raspberry Pi image has an MBR (msdos) table")
        if ptype and count:
            parts.append(MbrPartition(i + 1, ptype, lba * SECTOR, count * SECTOR))
    return tuple(parts)


def _fat_boot_sector_ok(sector: bytes) -> bool:
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        return False
    bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", sector, 11)
    return (
        bytes_per_sector in (512, 1024, 2048, 4096)
        and per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved > 0
        and fats in (1, 2)
    )


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if pos + i >= len(buf):
            break
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("bad integer in the xz index")


def _xz_stream(f: IO[bytes], end: int) -> tuple[int, int]:
    """(uncompressed size, start) of the xz stream ending at ``end``."""
    f.seek(end - 12)
    footer = f.read(12)
    if len(footer) != 12 or footer[10:] != b"YZ" or zlib.crc32(footer[4:10]) != int.from_bytes(
        footer[:4], "little"
    ):  # fmt: skip
        raise ValueError("no xz stream footer at the end (truncated download?)")
    backward = (int.from_bytes(footer[4:8], "little") + 1) * 4
    index_start = end - 12 - backward
    if backward > XZ_MAX_INDEX or index_start < 12:
        raise ValueError("the xz index is out of bounds")
    f.seek(index_start)
    index = f.read(backward)
    if index[:1] != b"\x00" or zlib.crc32(index[:-4]) != int.from_bytes(index[-4:], "little"):
        raise ValueError("the xz index is corrupt")
    count, pos = _varint(index, 1)
    blocks = uncompressed = 0
    for _ in range(min(count, len(index))):
        unpadded, pos = _varint(index, pos)
        size, pos = _varint(index, pos)
        blocks += (unpadded + 3) // 4 * 4
        uncompressed += size
    start = index_start - blocks - 12
    f.seek(max(start, 0))
    header = f.read(12)
    if start < 0 or header[:6] != XZ_HEADER_MAGIC or header[6:8] != footer[8:10]:
        raise ValueError("the xz stream header is missing or does not match its footer")
    return uncompressed, start


def xz_uncompressed_size(path: Path) -> int:
    """The uncompressed size of an ``.xz`` file from its index (every stream's footer, index and
    header are checked, so a truncated file fails). Raises :class:`ImageError`."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            total = 0
            for streams in range(XZ_MAX_STREAMS):
                while end >= 4 and f.seek(end - 4) >= 0 and f.read(4) == b"\0\0\0\0":
                    end -= 4  # stream padding
                if end == 0:
                    if streams == 0:
                        raise ValueError("no xz stream in it")
                    return total
                size, end = _xz_stream(f, end)
                total += size
    except ValueError as exc:
        raise ImageError(f"{path}: not a complete xz file: {exc}") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    raise ImageError(f"{path}: more than {XZ_MAX_STREAMS} xz streams")


def open_image(path: Path, compressed: bool) -> IO[bytes]:
    """The image's bytes as written to the card (decompressed when ``compressed``)."""
    return lzma.open(path, "rb") if compressed else path.open("rb")


def read_exact(source: IO[bytes], size: int) -> bytes:
    """``size`` bytes from ``source``; fewer only at its end."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = source.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def inspect_image(path: Path) -> ImageInfo:
    """Size and boot partition of a gateway image; raises :class:`ImageError` when it is missing,
    unreadable, truncated, corrupt at its start, or has no MBR whose partition 1 is FAT."""
    name = path.name
    if not (name.endswith(".img") or name.endswith(".img.xz")):
        raise ImageError(f"{path}: the image must be a .img or .img.xz file")
    compressed = name.endswith(".xz")
    try:
        file_size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"{path}: not a regular file")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    size = xz_uncompressed_size(path) if compressed else file_size
    try:
        with open_image(path, compressed) as source:
            parts = parse_mbr(read_exact(source, SECTOR))
            boot = next((p for p in parts if p.number == 1), None)
            if boot is None or boot.type not in FAT_TYPES:
                found = f"type 0x{boot.type:02x}" if boot else "no partition 1"
                raise ImageError(f"partition 1 is not FAT ({found}); not a Raspberry Pi image")
            if boot.start < SECTOR or boot.start + boot.size > size:
                raise ImageError("partition 1 lies outside the image (truncated?)")
            for skipped in range(SECTOR, boot.start, DEFAULT_BLOCK):  # on to partition 1
                read_exact(source, min(DEFAULT_BLOCK, boot.start - skipped))
            if not _fat_boot_sector_ok(read_exact(source, SECTOR)):
                raise ImageError("partition 1 holds no FAT file system")
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except (lzma.LZMAError, EOFError, OSError) as exc:
        raise ImageError(f"{path}: corrupt or unreadable: {exc}") from None
    return ImageInfo(path, compressed, size, file_size, boot)


class Progress(Protocol):
    """Where :func:`sidecar_sha256` reports how far it has read."""

    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


def sidecar_sha256(image: ImageInfo, make_progress: Callable[[str, int], Progress]) -> str | None:
    """Check ``IMAGE.sha256`` (of the file as published) when it exists; its digest, or None.
    ``make_progress(label, total)`` makes the display of the hashing's progress."""
    sidecar = Path(f"{image.path}.sha256")
    if not sidecar.exists():
        return None
    try:
        words = sidecar.read_text(encoding="utf-8", errors="replace")[:4096].split()
    except OSError as exc:
        raise ImageError(f"{sidecar}: cannot read: {exc.strerror or exc}") from None
    expected = words[0].lower() if words else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ImageError(f"{sidecar}: does not start with a SHA-256 in hex")
    digest = hashlib.sha256()
    progress = make_progress("sha256", image.file_size)
    done = 0
    try:
        with image.path.open("rb") as f:
            while chunk := f.read(DEFAULT_BLOCK):
                digest.update(chunk)
                done += len(chunk)
                progress.update(done)
    except OSError as exc:
        raise ImageError(f"{image.path}: cannot read: {exc.strerror or exc}") from None
    finally:
        progress.close()
    if digest.hexdigest() != expected:
        raise ImageError(
            f"{image.path}: SHA-256 {digest.hexdigest()[:16]}… differs from {sidecar.name} "
            f"({expected[:16]}…): a damaged or different download; nothing written"
        )
    return expected
