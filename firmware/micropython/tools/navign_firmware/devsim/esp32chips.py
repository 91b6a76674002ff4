"""The ESP32 chips the ROM-loader simulator (:mod:`.romloader`) plays, as esptool 5.x tells them
apart (register addresses and formats are those esptool's ``targets/`` read):

* ``esp32`` (chip magic at 0x40001000, GET_SECURITY_INFO fails), ``esp32c3`` and ``esp32s3``
  (GET_SECURITY_INFO carries chip id 5 / 9). The MAC and the chip revision live in modelled eFuse
  words; UART_CLKDIV gives a 40 MHz crystal.
* The SPI flash behind the SPI user-command registers (opcodes 9F flash id, 5A SFDP, 05/35/15
  status; others, such as 66/99, do nothing), a Winbond id whose size code matches the flash.

Public: :class:`ChipModel`, :data:`CHIPS`, :data:`DEFAULT_MAC`, :data:`SPI_CMD_USR` (the bit of
the SPI command register that starts a user command) and :data:`SFDP`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

SPI_CMD_USR: Final = 1 << 18
DEFAULT_MAC: Final = bytes.fromhex("240ac4000001")
#: SFDP header: signature, revision 1.6, one header after the first, then JEDEC's basic table.
SFDP: Final = b"SFDP\x06\x01\x01\xff\x00\x06\x01\x10\x30\x00\x00\xff"


@dataclass(frozen=True, slots=True)
class ChipModel:
    """What tells one chip from another on the loader's wire."""

    name: str
    image_chip_id: int
    security_info: bool  # GET_SECURITY_INFO answered (with the chip id)
    spi_base: int
    spi_usr1: int
    spi_usr2: int
    spi_miso_dlen: int
    spi_w0: int
    spi_addr_msb: bool
    mac_lo: int  # eFuse word with MAC bytes 2..5 (big-endian)
    mac_hi: int  # eFuse word with MAC bytes 0..1 in its low 16 bits
    registers: Mapping[int, int]  # fixed registers (magic, eFuse revision words, clocks)

    def read_register(self, addr: int, mac: bytes, written: Mapping[int, int]) -> int:
        """The register at ``addr``: a MAC eFuse word, else what was ``written`` there, else a
        fixed register, else 0."""
        if addr == self.mac_lo:
            return int.from_bytes(mac[2:6], "big")
        if addr == self.mac_hi:
            return int.from_bytes(mac[0:2], "big")
        return written.get(addr, self.registers.get(addr, 0))

    def security_info_reply(self) -> bytes | None:
        """GET_SECURITY_INFO's payload (flags, key purposes, chip id), ``None`` if unsupported."""
        if not self.security_info:
            return None
        return struct.pack("<IBBBBBBBBII", 0, 0, *([0] * 7), self.image_chip_id, 0)

    def spi_user_command(self, regs: Mapping[int, int], flash_size: int) -> tuple[int, int] | None:
        """Run the user command the SPI registers ``regs`` describe on a flash of ``flash_size``
        bytes: ``(W0 address, its new value)``, or ``None`` for a command that answers nothing."""
        opcode = regs.get(self.spi_base + self.spi_usr2, 0) & 0xFF
        bits = min(32, (regs.get(self.spi_base + self.spi_miso_dlen, 0) & 0x3FF) + 1)
        addr = regs.get(self.spi_base + 4, 0)
        if self.spi_addr_msb:
            addr >>= 32 - (((regs.get(self.spi_base + self.spi_usr1, 0) >> 26) & 0x3F) + 1)
        if opcode == 0x9F:  # RDID: Winbond (EF), 40 series, size code log2(bytes)
            answer = 0xEF | 0x40 << 8 | (flash_size.bit_length() - 1) << 16
        elif opcode == 0x5A:  # RDSFDP
            answer = int.from_bytes(SFDP[addr : addr + 4].ljust(4, b"\xff"), "little")
        elif opcode in (0x05, 0x35, 0x15):  # status registers: idle, unprotected
            answer = 0
        else:
            return None
        return self.spi_base + self.spi_w0, answer & ((1 << bits) - 1)


_ESP32_SPI: Final = {"spi_usr1": 0x20, "spi_usr2": 0x24, "spi_miso_dlen": 0x2C, "spi_w0": 0x80}
_C3_S3_SPI: Final = {"spi_usr1": 0x1C, "spi_usr2": 0x20, "spi_miso_dlen": 0x28, "spi_w0": 0x58}

CHIPS: Final[Mapping[str, ChipModel]] = {
    # ESP32-D0WD-V3 (revision v3.0), 240 MHz, 40 MHz crystal (UART_CLKDIV 347 at 115200 Bd)
    "esp32": ChipModel(
        name="esp32",
        image_chip_id=0,
        security_info=False,
        spi_base=0x3FF42000,
        **_ESP32_SPI,
        spi_addr_msb=True,
        mac_lo=0x3FF5A004,
        mac_hi=0x3FF5A008,
        registers={
            0x40001000: 0x00F01D83,  # chip magic
            0x3FF5A00C: (1 << 15) | (1 << 13) | (1 << 9),  # rev bit 0, 240 MHz rated, D0WD
            0x3FF5A010: 64,  # CK8M frequency (with RTCCALICFG1: a 40 MHz ROM crystal estimate)
            0x3FF5A014: 1 << 20,  # rev bit 1, minor 0
            0x3FF6607C: 1 << 31,  # APB_CTL_DATE: rev bit 2
            0x3FF40014: 347,  # UART_CLKDIV
            0x3FF5F06C: 1600 << 7,  # RTCCALICFG1
        },
    ),
    # ESP32-C3 (QFN32) (revision v0.4)
    "esp32c3": ChipModel(
        name="esp32c3",
        image_chip_id=5,
        security_info=True,
        spi_base=0x60002000,
        **_C3_S3_SPI,
        spi_addr_msb=False,
        mac_lo=0x60008844,
        mac_hi=0x60008848,
        registers={0x60008850: 4 << 18, 0x60000014: 347},  # BLOCK1 word 3: minor 4
    ),
    # ESP32-S3 (QFN56) (revision v0.2), eFuse block version 1.1
    "esp32s3": ChipModel(
        name="esp32s3",
        image_chip_id=9,
        security_info=True,
        spi_base=0x60002000,
        **_C3_S3_SPI,
        spi_addr_msb=False,
        mac_lo=0x60007044,
        mac_hi=0x60007048,
        registers={0x60007050: (2 << 18) | (1 << 24), 0x6000706C: 1, 0x60000014: 347},
    ),
}
