# BLE advertising payloads (pure functions returning bytes; wire format in docs/protocol.md §8).
#
# adv_data  = ibeacon(...): Flags + Apple iBeacon manufacturer data (30 bytes).
# scan_resp = navign(...):  one Service Data (128-bit UUID) structure with the Navign status frame
#                           (31 bytes).
# Both fit the 31-byte legacy advertising PDU. Bad arguments raise ValueError (struct.pack on
# MicroPython would silently truncate them).

import binascii
import hashlib
import struct

from micropython import const

NAVIGN_SERVICE_UUID = "221c9a15-8a12-4b95-a639-f74aa402c53d"
# BLE sends 128-bit UUIDs little-endian: the RFC 4122 bytes reversed.
NAVIGN_SERVICE_UUID_LE = bytes(reversed(binascii.unhexlify(NAVIGN_SERVICE_UUID.replace("-", ""))))

MAX_PAYLOAD = const(31)  # legacy advertising / scan response data
FRAME_VERSION = const(1)
COMPANY_APPLE = const(0x004C)

# Flags of the Navign frame (byte 1 of its payload).
FLAG_CONFIG_FALLBACK = const(0x01)  # a config field fell back to its default (cfg.fallback)
FLAG_TRIAL = const(0x02)  # running an app under trial, not yet committed
FLAG_WIFI = const(0x04)  # WiFi configured
FLAG_FW_PRERELEASE = const(0x08)  # the firmware version has a prerelease part
FLAG_APP_PRERELEASE = const(0x10)  # the app version has a prerelease part
FLAG_NO_KEYS = const(0x20)  # no release keys: refuses every update

# OTA states (byte 2 of the Navign frame's payload).
IDLE = const(0)
RECEIVING = const(1)
VERIFYING = const(2)
INSTALLING = const(3)
TRIAL = const(4)
FAILED = const(5)

# Flags AD structure: LE General Discoverable, BR/EDR not supported.
_AD_FLAGS = b"\x02\x01\x06"
# Manufacturer Specific Data, length 0x1A, company 0x004C (LE), iBeacon type 0x02, length 0x15.
_IBEACON_HEAD = b"\x1a\xff\x4c\x00\x02\x15"
# Service Data - 128-bit UUID, length 0x1E (type + 16-byte UUID + 13-byte payload).
_NAVIGN_HEAD = b"\x1e\x21"
_DIGITS = "0123456789"


def ibeacon(uuid_bytes, major, minor, measured_power):
    # The advertising data: Flags + iBeacon (30 bytes). uuid_bytes is the 16-byte proximity UUID,
    # big-endian (as iBeacon sends it: RFC 4122 byte order, not reversed).
    if len(uuid_bytes) != 16:
        raise ValueError("uuid_bytes")
    _check(major, 0, 0xFFFF, "major")
    _check(minor, 0, 0xFFFF, "minor")
    _check(measured_power, -128, 127, "measured_power")
    tail = struct.pack(">HHb", major, minor, measured_power)
    return _AD_FLAGS + _IBEACON_HEAD + bytes(uuid_bytes) + tail


def parse_version(version):
    # SemVer "MAJOR.MINOR.PATCH[-prerelease][+build]" -> (major, minor, patch, prerelease: bool).
    # Only the numeric core is parsed (releases are validated elsewhere, navign.semver); one
    # leading "v" is allowed, as in the version ESP-IDF writes into an image ("v1.29.0-12-gabc").
    # Raises ValueError when the core is not three decimal numbers.
    if type(version) is not str:
        raise ValueError("version")
    if version[:1] in ("v", "V"):
        version = version[1:]
    core = version.split("+", 1)[0]
    parts = core.split("-", 1)
    prerelease = len(parts) == 2
    if prerelease and not parts[1]:
        raise ValueError("version")
    nums = parts[0].split(".")
    if len(nums) != 3:
        raise ValueError("version")
    out = []
    for n in nums:
        if not n:
            raise ValueError("version")
        for c in n:
            if c not in _DIGITS:
                raise ValueError("version")
        out.append(int(n))
    return out[0], out[1], out[2], prerelease


def navign(beacon_id, fw_version, app_version, ota_state, flags):
    # The scan response: the Navign status frame (31 bytes). flags are FLAG_* bits; the two
    # prerelease bits are added here from the versions.
    _check(ota_state, 0, 255, "ota_state")
    _check(flags, 0, 255, "flags")
    fw = parse_version(fw_version)
    app = parse_version(app_version)
    if fw[3]:
        flags |= FLAG_FW_PRERELEASE
    if app[3]:
        flags |= FLAG_APP_PRERELEASE
    if type(beacon_id) is str:
        beacon_id = beacon_id.encode()
    out = bytearray(MAX_PAYLOAD)
    out[0:2] = _NAVIGN_HEAD
    out[2:18] = NAVIGN_SERVICE_UUID_LE
    out[18] = FRAME_VERSION
    out[19] = flags
    out[20] = ota_state
    out[21:25] = hashlib.sha256(beacon_id).digest()[:4]
    for i in range(3):
        out[25 + i] = min(fw[i], 255)
        out[28 + i] = min(app[i], 255)
    return bytes(out)


def payloads(cfg, fw_version, app_version, ota_state, extra_flags=0):
    # (adv_data, scan_resp) for a navign.config.Config. The config sets FLAG_CONFIG_FALLBACK,
    # FLAG_WIFI and FLAG_NO_KEYS; the caller passes the others (FLAG_TRIAL) in extra_flags.
    # A version that does not parse must not stop advertising: it is sent as 0.0.0 with its
    # prerelease flag set.
    flags = extra_flags
    try:
        parse_version(fw_version)
    except ValueError:
        fw_version = "0.0.0-unknown"
    try:
        parse_version(app_version)
    except ValueError:
        app_version = "0.0.0-unknown"
    if cfg.fallback:
        flags |= FLAG_CONFIG_FALLBACK
    if cfg.wifi is not None:
        flags |= FLAG_WIFI
    if not cfg.can_update:
        flags |= FLAG_NO_KEYS
    adv = ibeacon(cfg.uuid_bytes, cfg.major, cfg.minor, cfg.measured_power)
    resp = navign(cfg.beacon_id, fw_version, app_version, ota_state, flags)
    return adv, resp


def _check(v, lo, hi, what):
    if type(v) is not int or v < lo or v > hi:
        raise ValueError(what)
