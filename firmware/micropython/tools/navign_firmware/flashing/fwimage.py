"""What a MicroPython firmware file for an ESP32 is, checked before a board is touched.

MicroPython's ``firmware.bin`` for the ESP32 family is the whole start of the flash, written at
the chip's bootloader offset (0x1000 on the ESP32, 0x0 on the ESP32-C3 and -S3): the
second-stage bootloader (an ESP image), the partition table at flash address 0x8000, and the
MicroPython app (an ESP image whose ``esp_app_desc_t`` names the project ``micropython``) at its
app partition. :func:`inspect` reads all three and refuses a file that is not such an image for
the chip asked for, with the reason in words; it never trusts the file name.

Public: :data:`BOOTLOADER_OFFSET`, :data:`CHIP_IDS`, :class:`FirmwareInfo`,
:class:`NotMicroPythonImageError`, :func:`inspect`, :func:`inspect_bytes`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Flash address of the bootloader, where the firmware file is written.
BOOTLOADER_OFFSET: Final = {"esp32": 0x1000, "esp32c3": 0x0, "esp32s3": 0x0}
#: ``esp_image_header_t.chip_id`` per chip.
CHIP_IDS: Final = {"esp32": 0x0000, "esp32c3": 0x0005, "esp32s3": 0x0009}
_CHIP_NAMES: Final = {
    0x0000: "esp32",
    0x0002: "esp32s2",
    0x0005: "esp32c3",
    0x0009: "esp32s3",
    0x000C: "esp32c2",
    0x000D: "esp32c6",
    0x0010: "esp32h2",
}
TABLE_ADDRESS: Final = 0x8000
IMAGE_MAGIC: Final = 0xE9
APP_DESC_MAGIC: Final = 0xABCD5432
#: Where ``esp_app_desc_t`` starts in an app image (after the image and first segment headers).
APP_DESC_OFFSET: Final = 32
#: The largest flash of an ESP32 module we support (16 MiB).
MAX_FLASH: Final = 16 * 1024 * 1024


class NotMicroPythonImageError(ValueError):
    """The file is not a MicroPython firmware image for the chip (the message says why)."""


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    chip: str
    offset: int
    size: int
    sha256: str
    #: MicroPython's version as its app descriptor says it (e.g. ``v1.24.1``).
    version: str
    app_address: int
    #: Labels of the partitions, in table order.
    partitions: tuple[str, ...]


def _chip_of(header: bytes) -> int:
    return int(struct.unpack_from("<H", header, 12)[0])


def _chip_name(chip_id: int) -> str:
    return _CHIP_NAMES.get(chip_id, f"chip id {chip_id}")


def _partitions(table: bytes) -> list[tuple[str, int, int, int]]:
    """``(label, type, subtype, address)`` per entry; raises NotMicroPythonImageError."""
    out: list[tuple[str, int, int, int]] = []
    for i in range(0, len(table) - 32, 32):
        entry = table[i : i + 32]
        if entry[:2] == b"\xeb\xeb":
            digest = hashlib.md5(table[:i], usedforsecurity=False).digest()
            if entry[16:32] != digest:
                raise NotMicroPythonImageError("its partition table's MD5 does not match")
            return out
        if entry[:2] != b"\xaa\x50":
            break
        ptype, subtype, address = struct.unpack_from("<BBI", entry, 2)
        label = entry[12:28].split(b"\x00")[0].decode("ascii", "replace")
        out.append((label, ptype, subtype, address))
    if not out:
        raise NotMicroPythonImageError("it has no partition table at flash address 0x8000")
    return out


def inspect(path: Path, chip: str) -> FirmwareInfo:
    """Check that ``path`` is a MicroPython firmware image for ``chip``; raises
    :class:`NotMicroPythonImageError` (or OSError when it cannot be read)."""
    if chip not in BOOTLOADER_OFFSET:
        raise NotMicroPythonImageError(f"unknown chip {chip!r}")
    return inspect_bytes(path.read_bytes(), chip)


def inspect_bytes(data: bytes, chip: str) -> FirmwareInfo:
    """:func:`inspect` for bytes: the file, or the flash from the bootloader offset on."""
    if chip not in BOOTLOADER_OFFSET:
        raise NotMicroPythonImageError(f"unknown chip {chip!r}")
    offset = BOOTLOADER_OFFSET[chip]
    if len(data) < TABLE_ADDRESS - offset + 0x1000:
        raise NotMicroPythonImageError(f"it is too small ({len(data)} bytes) to hold a bootloader")
    if offset + len(data) > MAX_FLASH:
        raise NotMicroPythonImageError(f"it is larger ({len(data)} bytes) than a 16 MiB flash")
    if data[0] != IMAGE_MAGIC:
        hint = ""
        if chip == "esp32" and len(data) > 0x1000 and data[0x1000] == IMAGE_MAGIC:
            hint = " (it looks like a file for flash address 0x0, e.g. for an ESP32-C3 or -S3)"
        elif chip != "esp32" and data[0] == 0xFF and data[0x1000 - offset] == IMAGE_MAGIC:
            hint = " (it looks like a file for flash address 0x1000, i.e. for an ESP32)"
        raise NotMicroPythonImageError(f"it does not start with an ESP bootloader image{hint}")
    if _chip_of(data) != CHIP_IDS[chip]:
        raise NotMicroPythonImageError(
            f"its bootloader is for {_chip_name(_chip_of(data))}, not {chip}"
        )
    parts = _partitions(data[TABLE_ADDRESS - offset : TABLE_ADDRESS - offset + 0xC00])
    apps = [p for p in parts if p[1] == 0]
    if not apps:
        raise NotMicroPythonImageError("its partition table has no app partition")
    app_address = apps[0][3]
    start = app_address - offset
    app = data[start : start + APP_DESC_OFFSET + 256]
    if len(app) < APP_DESC_OFFSET + 256 or app[0] != IMAGE_MAGIC:
        raise NotMicroPythonImageError(f"it holds no app image at flash address {app_address:#x}")
    if _chip_of(app) != CHIP_IDS[chip]:
        raise NotMicroPythonImageError(f"its app is for {_chip_name(_chip_of(app))}, not {chip}")
    magic = struct.unpack_from("<I", app, APP_DESC_OFFSET)[0]
    if magic != APP_DESC_MAGIC:
        raise NotMicroPythonImageError("its app has no ESP-IDF app descriptor")
    desc = app[APP_DESC_OFFSET:]
    version = desc[16:48].split(b"\x00")[0].decode("ascii", "replace")
    project = desc[48:80].split(b"\x00")[0].decode("ascii", "replace")
    if project.lower() != "micropython":
        raise NotMicroPythonImageError(f"its app is {project!r}, not MicroPython")
    if not any(p[1] == 1 and p[0] in ("vfs", "ffat") for p in parts):
        raise NotMicroPythonImageError("its partition table has no filesystem partition (vfs)")
    return FirmwareInfo(
        chip=chip,
        offset=offset,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        version=version,
        app_address=app_address,
        partitions=tuple(p[0] for p in parts),
    )
