"""A NOR flash chip kept in an image file, for the ROM-loader simulator (:mod:`.romloader`):
erasing sets whole 4 KiB sectors to 0xFF, and programming only turns bits from 1 to 0 (it ANDs
into what is there, so programming the same data twice is harmless).

Public: :class:`NorFlash` and :data:`SECTOR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

SECTOR: Final = 0x1000


class NorFlash:
    """The flash of ``size`` bytes (a power of two, at least a sector) in the file ``path``,
    which is created all 0xFF when missing and padded with 0xFF up to ``size``."""

    def __init__(self, path: Path, size: int) -> None:
        if size < SECTOR or size & (size - 1):
            raise ValueError("flash_size must be a power of two of at least 4 KiB")
        self.path = path
        self.size = size
        have = path.stat().st_size if path.exists() else 0
        if have > size:
            raise ValueError(f"{path} is larger than flash_size ({size})")
        if have < size:
            with path.open("ab") as f:
                f.write(b"\xff" * (size - have))

    def fits(self, offset: int, length: int) -> bool:
        """``length`` bytes at ``offset`` lie within the flash."""
        return not (offset < 0 or length < 0 or offset + length > self.size)

    def read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def erase(self, offset: int, length: int) -> None:
        """Erase the sectors ``length`` bytes at ``offset`` touch (up to the end of the flash)."""
        start = offset - offset % SECTOR
        end = min(-(-(offset + length) // SECTOR) * SECTOR, self.size)
        with self.path.open("r+b") as f:
            f.seek(start)
            f.write(b"\xff" * (end - start))

    def program(self, offset: int, data: bytes) -> None:
        """NOR programming: bits only go from 1 to 0. FF padding past the end is dropped; any
        other data outside the flash raises :exc:`ValueError` (and nothing is written)."""
        if offset + len(data) > self.size:
            if data[max(0, self.size - offset) :].strip(b"\xff"):
                raise ValueError("data past the end of the flash")
            data = data[: max(0, self.size - offset)]
        if not self.fits(offset, len(data)):
            raise ValueError("data outside the flash")
        with self.path.open("r+b") as f:
            f.seek(offset)
            old = f.read(len(data))
            new = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(
                len(data), "little"
            )
            f.seek(offset)
            f.write(new)
