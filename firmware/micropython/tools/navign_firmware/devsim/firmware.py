"""A stand-in for MicroPython's ``firmware.bin`` for the ESP32 family (test support).

The real file cannot be downloaded here; this one has its layout: a bootloader image at the
chip's bootloader offset, MicroPython's OTA partition table at 0x8000 and an app image whose
``esp_app_desc_t`` says project ``micropython`` at ``ota_0``. esptool's image checks and the
board simulator's boot check read it as they would read the real one. What runs when the
simulated board boots is the MicroPython unix port.

Public: :func:`micropython_firmware`, :func:`write_firmware`.
"""

from __future__ import annotations

import random
from pathlib import Path

from navign_firmware import flash
from navign_firmware.flashing.fwimage import BOOTLOADER_OFFSET, TABLE_ADDRESS

BOOTLOADER_SIZE = 24 * 1024


def micropython_firmware(
    chip: str = "esp32",
    *,
    version: str = "v1.29.0",
    app_size: int = 256 * 1024,
    layout: flash.FlashLayout | None = None,
    like_code: bool = False,
) -> bytes:
    """The bytes of a ``firmware.bin`` for ``chip`` (written at its bootloader offset). The app
    is random bytes (zlib cannot shrink it), or with ``like_code`` bytes that compress about as
    well as MicroPython's own firmware does (to about 65 %)."""
    table = layout or flash.layout()
    offset = BOOTLOADER_OFFSET[chip]
    ota0 = table.find("ota_0")
    bootloader = flash.make_image("v5.4-bootloader", chip, BOOTLOADER_SIZE, project="bootloader")
    filler = _code_like(app_size) if like_code else None
    app = flash.make_image(version, chip, app_size, project="micropython", seed=7, filler=filler)
    out = bytearray(b"\xff" * (ota0.offset - offset))
    out[0 : len(bootloader)] = bootloader
    out[TABLE_ADDRESS - offset : TABLE_ADDRESS - offset + 0xC00] = flash.partition_table(table)
    return bytes(out) + app


def _code_like(size: int) -> bytes:
    """Bytes with about 5 bits of entropy each, which zlib shrinks like Xtensa machine code."""
    rng = random.Random(29)  # noqa: S311 - filler, not a secret
    alphabet = bytes(rng.sample(range(256), 34))
    return bytes(rng.choice(alphabet) for _ in range(size))


def write_firmware(
    path: Path,
    chip: str = "esp32",
    *,
    version: str = "v1.29.0",
    app_size: int = 256 * 1024,
    like_code: bool = False,
) -> Path:
    """:func:`micropython_firmware` written to ``path``."""
    path.write_bytes(
        micropython_firmware(chip, version=version, app_size=app_size, like_code=like_code)
    )
    return path
