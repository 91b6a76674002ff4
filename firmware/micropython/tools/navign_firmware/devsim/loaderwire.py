"""The ESP32 serial loader's wire format, as esptool 5.x speaks it to the ROM and to its stub:
command codes, error statuses, the data checksum and the framing of answers.

ROM answers carry a 4-byte status (``01 ERR 00 00`` on failure), the stub's a 2-byte one
(``ERR 00``); both travel SLIP-framed.

Public: :class:`Op` (command codes), :data:`NAMES` (code to name), :class:`Err` (failures),
:func:`checksum`, :func:`slip`, :func:`response`, and :data:`ROM_SYNC_VAL` (the ROM's SYNC value).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import Enum, IntEnum
from functools import reduce
from operator import xor
from typing import Final

CHECKSUM_SEED: Final = 0xEF
ROM_SYNC_VAL: Final = 0x20120707


class Op(IntEnum):
    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH = 0xD0
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2
    RUN_USER_CODE = 0xD3


NAMES: Final[Mapping[int, str]] = {op.value: op.name for op in Op}


class Err(Enum):
    """A failure as (ROM error byte after status 01, stub status byte), as esptool decodes them."""

    INVALID = (0x05, 0xC3)  # invalid message / invalid command
    FAILED = (0x06, 0xC4)  # message ok, running result wrong / failed SPI operation
    CHECKSUM = (0x07, 0xC1)
    LENGTH = (0x05, 0xC0)
    WRITE = (0x08, 0xC9)  # flash write error / too much data
    READ_LEN = (0x0A, 0xC4)
    DEFLATE = (0x0B, 0xC7)
    NOT_IN_FLASH = (0x06, 0xC6)


def checksum(data: bytes) -> int:
    """The loader's checksum: XOR of all bytes, seeded with 0xEF (folded 8 bytes at a time)."""
    pad = -len(data) % 8
    words = struct.unpack(f"<{(len(data) + pad) // 8}Q", data + b"\0" * pad)
    return reduce(xor, reduce(xor, words, 0).to_bytes(8, "little"), CHECKSUM_SEED)


def slip(frame: bytes) -> bytes:
    return b"\xc0" + frame.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def response(op: int, val: int, payload: bytes, err: Err | None, *, stub: bool) -> bytes:
    """One answer to ``op`` (before SLIP framing), with the stub's status if ``stub`` is true,
    else the ROM's."""
    if stub:
        status = bytes([err.value[1], 0]) if err else b"\0\0"
    else:
        status = bytes([1, err.value[0], 0, 0]) if err else b"\0\0\0\0"
    body = payload + status
    return struct.pack("<BBHI", 1, op, len(body), val) + body
