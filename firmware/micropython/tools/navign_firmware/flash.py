"""A simulated ESP32 flash as one host file, laid out as a MicroPython OTA build lays out a board.

* the partition table at 0x8000 in ESP-IDF's binary format (32-byte entries, magic ``AA 50``, then
  the MD5 entry), as ``gen_esp32part.py`` writes it;
* ``otadata`` (two 4 KiB sectors of ``esp_ota_select_entry_t``), erased: a fresh board boots
  ``ota_0``;
* two OTA app partitions; ``ota_0`` holds an ESP-IDF app image (:func:`make_image`);
* ``vfs``: the partition MicroPython mounts as littlefs2 (formatted and filled by
  :mod:`navign_firmware.sim`, with the real littlefs of the unix port).

The images are real ESP-IDF app images in layout (header, segments, XOR checksum, appended
SHA-256, an ``esp_app_desc_t`` carrying the version) so that esptool's own image parser reads
them; their code is filler, since what runs is the unix port. The ``host/esp32.py`` shim reads this
file with ESP-IDF's semantics.

Public: :class:`PartitionSpec`, :class:`FlashLayout`, :data:`CHIP_IDS`, :func:`layout`,
:func:`partition_table`, :func:`make_image`, :func:`image_version`, :func:`create_flash`,
:func:`read_partition`.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

BLOCK: Final = 4096
TABLE_OFFSET: Final = 0x8000
#: ESP-IDF chip ids (``esp_image_header_t.chip_id``).
CHIP_IDS: Final = {"esp32": 0x0000, "esp32c3": 0x0005, "esp32s3": 0x0009}
APP_DESC_MAGIC: Final = 0xABCD5432
IMAGE_MAGIC: Final = 0xE9
#: Where ``esp_app_desc_t`` starts in an image: after the 24-byte image header and the first
#: segment's 8-byte header.
APP_DESC_OFFSET: Final = 32

TYPE_APP: Final = 0
TYPE_DATA: Final = 1


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    label: str
    type: int
    subtype: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FlashLayout:
    size: int
    partitions: tuple[PartitionSpec, ...]

    def find(self, label: str) -> PartitionSpec:
        for p in self.partitions:
            if p.label == label:
                return p
        raise KeyError(label)


def layout(app_size: int = 0x180000, vfs_size: int = 0xF0000) -> FlashLayout:
    """MicroPython's ``partitions-4MiB-ota.csv`` (nvs, otadata, phy_init, ota_0, ota_1, vfs) with
    the app and vfs sizes changeable, so tests can use a smaller flash file."""
    if app_size % 0x10000 or vfs_size % BLOCK or app_size <= 0 or vfs_size < 16 * BLOCK:
        raise ValueError("app_size must be a multiple of 64 KiB and vfs_size of 4 KiB (≥ 64 KiB)")
    ota0 = 0x10000
    ota1 = ota0 + app_size
    vfs = ota1 + app_size
    parts = (
        PartitionSpec("nvs", TYPE_DATA, 0x02, 0x9000, 0x4000),
        PartitionSpec("otadata", TYPE_DATA, 0x00, 0xD000, 0x2000),
        PartitionSpec("phy_init", TYPE_DATA, 0x01, 0xF000, 0x1000),
        PartitionSpec("ota_0", TYPE_APP, 0x10, ota0, app_size),
        PartitionSpec("ota_1", TYPE_APP, 0x11, ota1, app_size),
        PartitionSpec("vfs", TYPE_DATA, 0x81, vfs, vfs_size),
    )
    return FlashLayout(vfs + vfs_size, parts)


def partition_table(flash: FlashLayout) -> bytes:
    """The binary partition table (3 KiB, 0xFF padded) with its MD5 entry."""
    out = bytearray()
    for p in flash.partitions:
        label = p.label.encode()
        out += struct.pack(
            "<2sBBII16sI",
            b"\xaa\x50",
            p.type,
            p.subtype,
            p.offset,
            p.size,
            label.ljust(16, b"\x00"),
            0,
        )
    digest = hashlib.md5(out, usedforsecurity=False).digest()
    out += b"\xeb\xeb" + b"\xff" * 14 + digest
    return bytes(out.ljust(0xC00, b"\xff"))


def make_image(
    version: str,
    chip: str = "esp32",
    size: int = 96 * 1024,
    *,
    secure_version: int = 0,
    project: str = "navign-beacon",
    seed: int = 0,
    filler: bytes | None = None,
) -> bytes:
    """An ESP-IDF app image of about ``size`` bytes whose ``esp_app_desc_t`` says ``version``:
    two segments (the descriptor in a DROM segment, filler in an IROM one), the XOR checksum and
    the appended SHA-256. The filler is random bytes, or ``filler`` repeated."""
    if chip not in CHIP_IDS:
        raise ValueError(f"unknown chip {chip!r}")
    if len(version.encode()) > 31 or len(project.encode()) > 31:
        raise ValueError("version and project must fit in 31 bytes")
    desc = struct.pack(
        "<II8x32s32s16s16s32s32sHHB3x72x",
        APP_DESC_MAGIC,
        secure_version,
        version.encode(),
        project.encode(),
        b"00:00:00",
        b"Nov 27 2026",
        b"v5.4-sim",
        hashlib.sha256(f"{project}-{version}-{seed}".encode()).digest(),
        0,
        0,
        16,
    )
    assert len(desc) == 256
    filler_len = max(16, size - 24 - 8 - len(desc) - 8 - 48) // 4 * 4
    if filler:
        code = (filler * (filler_len // len(filler) + 1))[:filler_len]
    else:
        code = random.Random(f"{version}/{seed}").randbytes(filler_len)  # noqa: S311 - filler
    header = struct.pack(
        "<BBBBIB3sHBHH4sB",
        IMAGE_MAGIC,
        2,  # segments
        2,  # SPI mode DIO
        0x20,  # 4 MB, 40 MHz
        0x40080000,  # entry point
        0xEE,  # wp pin: disabled
        b"\x00\x00\x00",
        CHIP_IDS[chip],
        0,
        0,
        0xFFFF,
        b"\x00" * 4,
        1,  # hash appended
    )
    assert len(header) == 24
    body = bytearray(header)
    checksum = 0xEF
    for load_addr, data in ((0x3F400020, desc), (0x400D0020, code)):
        body += struct.pack("<II", load_addr, len(data))
        body += data
        for b in data:
            checksum ^= b
    body += b"\x00" * (15 - len(body) % 16)
    body.append(checksum)
    body += hashlib.sha256(body).digest()
    return bytes(body)


def image_version(image: bytes) -> tuple[str, int]:
    """``(version, secure_version)`` from an image's ``esp_app_desc_t``."""
    magic, secure_version = struct.unpack_from("<II", image, APP_DESC_OFFSET)
    if image[0] != IMAGE_MAGIC or magic != APP_DESC_MAGIC:
        raise ValueError("not an ESP-IDF app image with an app descriptor")
    raw = image[APP_DESC_OFFSET + 16 : APP_DESC_OFFSET + 48]
    return raw.split(b"\x00")[0].decode(), secure_version


def create_flash(path: Path, flash: FlashLayout, image: bytes) -> None:
    """Write an erased flash file (all 0xFF) with the partition table and ``image`` in ota_0."""
    ota0 = flash.find("ota_0")
    if len(image) > ota0.size:
        raise ValueError("the image does not fit in ota_0")
    erased = b"\xff" * (1024 * 1024)
    with path.open("wb") as out:
        left = flash.size
        while left:
            n = min(left, len(erased))
            out.write(erased[:n])
            left -= n
        out.seek(TABLE_OFFSET)
        out.write(partition_table(flash))
        out.seek(ota0.offset)
        out.write(image)


def read_partition(path: Path, flash: FlashLayout, label: str) -> bytes:
    p = flash.find(label)
    with path.open("rb") as f:
        f.seek(p.offset)
        return f.read(p.size)
