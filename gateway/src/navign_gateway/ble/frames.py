"""The beacon's advertising frames as a scanner reads them (protocol §8.4): the iBeacon frame in
the manufacturer data and the Navign status frame in the 128-bit service data.

Pure functions over the bytes bleak hands over (``AdvertisementData.manufacturer_data`` and
``service_data``), so the scanner and the tests share one decoder. A frame of an unknown version
or the wrong length is ignored (None), never an error: a scanner hears everything in range.

Public: :data:`NAVIGN_SERVICE`, :class:`StatusFrame`, :class:`IBeacon`, :func:`parse_status`,
:func:`parse_ibeacon`, :func:`beacon_hash`, :func:`version_core` and the flag/state constants.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Final

NAVIGN_SERVICE: Final = "221c9a15-8a12-4b95-a639-f74aa402c53d"
APPLE: Final = 0x004C

FLAG_CONFIG_FALLBACK: Final = 0x01
FLAG_TRIAL: Final = 0x02
FLAG_WIFI: Final = 0x04
FLAG_FW_PRERELEASE: Final = 0x08
FLAG_APP_PRERELEASE: Final = 0x10
FLAG_NO_KEYS: Final = 0x20

#: OTA state numbers of the status frame, by name (§8.4).
OTA_STATES: Final = ("idle", "receiving", "verifying", "installing", "trial", "failed")

_CORE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(-[^+]*)?(\+.*)?")


@dataclass(frozen=True, slots=True)
class StatusFrame:
    flags: int
    ota_state: str
    id_hash: bytes
    firmware: tuple[int, int, int]
    app: tuple[int, int, int]

    @property
    def trial(self) -> bool:
        return bool(self.flags & FLAG_TRIAL)

    @property
    def wifi(self) -> bool:
        return bool(self.flags & FLAG_WIFI)

    def runs(self, kind: str, version: str) -> bool:
        """True when the frame shows ``version`` (its numeric core and prerelease flag) as the
        running app or image, committed (not on trial)."""
        core = version_core(version)
        if core is None or self.trial:
            return False
        numbers, prerelease = core
        if kind == "app":
            return self.app == numbers and bool(self.flags & FLAG_APP_PRERELEASE) == prerelease
        return self.firmware == numbers and bool(self.flags & FLAG_FW_PRERELEASE) == prerelease


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: bytes
    major: int
    minor: int
    measured_power: int


def version_core(version: str) -> tuple[tuple[int, int, int], bool] | None:
    """``MAJOR.MINOR.PATCH`` clamped to 255 each, and whether there is a prerelease part, as
    the beacon sends them; None for a version that does not parse."""
    match = _CORE.fullmatch(version)
    if match is None:
        return None
    numbers = (min(int(match[1]), 255), min(int(match[2]), 255), min(int(match[3]), 255))
    return numbers, match[4] is not None


def beacon_hash(beacon_id: str) -> bytes:
    """The 4 bytes a status frame carries instead of the beacon id."""
    return hashlib.sha256(beacon_id.encode()).digest()[:4]


def parse_status(service_data: dict[str, bytes]) -> StatusFrame | None:
    data = service_data.get(NAVIGN_SERVICE)
    if data is None or len(data) != 13 or data[0] != 0x01:
        return None
    state = data[2]
    return StatusFrame(
        flags=data[1],
        ota_state=OTA_STATES[state] if state < len(OTA_STATES) else "unknown",
        id_hash=bytes(data[3:7]),
        firmware=(data[7], data[8], data[9]),
        app=(data[10], data[11], data[12]),
    )


def parse_ibeacon(manufacturer_data: dict[int, bytes]) -> IBeacon | None:
    data = manufacturer_data.get(APPLE)
    if data is None or len(data) != 23 or data[0] != 0x02 or data[1] != 0x15:
        return None
    major, minor, power = struct.unpack(">HHb", data[18:23])
    return IBeacon(bytes(data[2:18]), major, minor, power)
