"""``navign.adv`` on the real MicroPython interpreter, decoded by an independent decoder (bumble).

All cases run in one MicroPython process (``unix.run``, 96 KiB heap) that prints one JSON line per
case with the payload's hex. The bytes are then parsed with ``bumble.core.AdvertisingData`` (never
with our own parser) and checked against values written out here from the specification.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from bumble import core as bumble_core
from bumble.core import AdvertisingData

from navign_firmware import unix

NAVIGN_SERVICE_UUID: Final = "221c9a15-8a12-4b95-a639-f74aa402c53d"
UNPROVISIONED_UUID: Final = "a12bf56f-887e-4f9d-8cc9-2a34449026de"
APPLE: Final = 0x004C
MAX_PAYLOAD: Final = 31

FLAG_CONFIG_FALLBACK: Final = 0x01
FLAG_TRIAL: Final = 0x02
FLAG_WIFI: Final = 0x04
FLAG_FW_PRERELEASE: Final = 0x08
FLAG_APP_PRERELEASE: Final = 0x10
FLAG_NO_KEYS: Final = 0x20
STATES: Final = {
    "IDLE": 0,
    "RECEIVING": 1,
    "VERIFYING": 2,
    "INSTALLING": 3,
    "TRIAL": 4,
    "FAILED": 5,
}


@dataclass(frozen=True)
class IBeaconCase:
    id: str
    uuid_hex: str
    major: object
    minor: object
    power: object
    #: False: ibeacon() must raise ValueError.
    valid: bool = True


@dataclass(frozen=True)
class NavignCase:
    id: str
    beacon_id: str
    fw: str
    app: str
    state: object
    flags: object
    #: Expected payload fields (None: navign() must raise ValueError).
    fw_triple: tuple[int, int, int] | None = None
    app_triple: tuple[int, int, int] | None = None
    expect_flags: int = 0


U1: Final = "3f2504e04f8941d39a0c0305e82c3301"

IBEACON_CASES: Final = [
    IBeaconCase("typical", U1, 513, 4097, -59),
    IBeaconCase("extremes", "ff" * 16, 65535, 65535, -127),
    IBeaconCase("zeros", "00" * 16, 0, 0, -1),
    IBeaconCase("int8-min", U1, 1, 2, -128),
    IBeaconCase("int8-max", U1, 1, 2, 127),
    IBeaconCase("byte-order", "000102030405060708090a0b0c0d0e0f", 0x1234, 0xABCD, -70),
    IBeaconCase("unprovisioned", UNPROVISIONED_UUID.replace("-", ""), 0, 0, -59),
    IBeaconCase("uuid-15", "00" * 15, 1, 1, -59, valid=False),
    IBeaconCase("uuid-17", "00" * 17, 1, 1, -59, valid=False),
    IBeaconCase("major-neg", U1, -1, 1, -59, valid=False),
    IBeaconCase("major-65536", U1, 65536, 1, -59, valid=False),
    IBeaconCase("minor-65536", U1, 1, 65536, -59, valid=False),
    IBeaconCase("major-bool", U1, True, 1, -59, valid=False),
    IBeaconCase("major-float", U1, 1.0, 1, -59, valid=False),
    IBeaconCase("power-129", U1, 1, 1, -129, valid=False),
    IBeaconCase("power-128", U1, 1, 1, 128, valid=False),
]

NAVIGN_CASES: Final = [
    NavignCase("basic", "mall-7.L2:b-0042", "1.29.0", "1.0.0", 0, 0, (1, 29, 0), (1, 0, 0)),
    NavignCase(
        "fw-prerelease",
        "b1",
        "1.29.0-preview",
        "1.0.0",
        0,
        0,
        (1, 29, 0),
        (1, 0, 0),
        FLAG_FW_PRERELEASE,
    ),
    NavignCase(
        "app-prerelease",
        "b1",
        "1.29.0",
        "2.0.0-rc.1",
        4,
        FLAG_TRIAL,
        (1, 29, 0),
        (2, 0, 0),
        FLAG_TRIAL | FLAG_APP_PRERELEASE,
    ),
    NavignCase(
        "both-prerelease-build",
        "b1",
        "1.2.3-beta+exp.sha.5114f85",
        "4.5.6-alpha.1",
        1,
        0,
        (1, 2, 3),
        (4, 5, 6),
        FLAG_FW_PRERELEASE | FLAG_APP_PRERELEASE,
    ),
    NavignCase("build-not-prerelease", "b1", "1.2.3+build.5", "0.0.0", 0, 0, (1, 2, 3), (0, 0, 0)),
    NavignCase("clamp", "b1", "256.1000.99999", "255.256.0", 0, 0, (255, 255, 255), (255, 255, 0)),
    NavignCase(
        "clamp-prerelease",
        "b1",
        "300.0.0-x",
        "7.8.9",
        0,
        0,
        (255, 0, 0),
        (7, 8, 9),
        FLAG_FW_PRERELEASE,
    ),
    NavignCase(
        "flag-already-set",
        "b1",
        "1.0.0-rc",
        "1.0.0",
        0,
        FLAG_FW_PRERELEASE,
        (1, 0, 0),
        (1, 0, 0),
        FLAG_FW_PRERELEASE,
    ),
    NavignCase("all-flags", "b1", "1.0.0", "1.0.0", 5, 0x3F, (1, 0, 0), (1, 0, 0), 0x3F),
    NavignCase("flags-0xff", "b1", "1.0.0", "1.0.0", 0, 0xFF, (1, 0, 0), (1, 0, 0), 0xFF),
    *[
        NavignCase(f"state-{name}", "b1", "1.0.0", "1.0.0", value, 0, (1, 0, 0), (1, 0, 0))
        for name, value in STATES.items()
    ],
    NavignCase("state-255", "b1", "1.0.0", "1.0.0", 255, 0, (1, 0, 0), (1, 0, 0)),
    NavignCase("utf8-id", "bcn-é", "1.0.0", "1.0.0", 0, 0, (1, 0, 0), (1, 0, 0)),
    NavignCase("empty-id", "", "1.0.0", "1.0.0", 0, 0, (1, 0, 0), (1, 0, 0)),
    NavignCase("long-id", "x" * 64, "1.0.0", "1.0.0", 0, 0, (1, 0, 0), (1, 0, 0)),
    *[
        NavignCase(f"bad-fw-{v!r}", "b1", v, "1.0.0", 0, 0)
        for v in (
            "1.2",
            "vv1.2.3",
            "1.2.3.4",
            "1..3",
            "1.2.3-",
            "",
            "1.2.x",
            " 1.2.3",
            "1.-2.3",
            "x",
        )
    ],
    NavignCase("bad-app", "b1", "1.0.0", "1.0", 0, 0),
    # The version ESP-IDF writes into an image: git describe, with a "v".
    NavignCase(
        "idf-version",
        "b1",
        "v1.29.0-12-gabcdef-dirty",
        "V2.3.4",
        0,
        0,
        (1, 29, 0),
        (2, 3, 4),
        FLAG_FW_PRERELEASE,
    ),
    NavignCase("bad-state-256", "b1", "1.0.0", "1.0.0", 256, 0),
    NavignCase("bad-state-neg", "b1", "1.0.0", "1.0.0", -1, 0),
    NavignCase("bad-state-bool", "b1", "1.0.0", "1.0.0", True, 0),
    NavignCase("bad-flags-256", "b1", "1.0.0", "1.0.0", 0, 256),
    NavignCase("bad-flags-neg", "b1", "1.0.0", "1.0.0", 0, -1),
]


@dataclass(frozen=True)
class PayloadsCase:
    id: str
    #: The config file's JSON (None: no file).
    config: dict[str, Any] | None
    fw: str
    app: str
    state: int
    extra: int
    expect_flags: int
    beacon_id: str
    uuid: str
    major: int
    minor: int
    power: int
    app_triple: tuple[int, int, int]
    fw_triple: tuple[int, int, int] = (1, 29, 0)


KEY: Final = "04" + "ab" * 64
FULL: Final[dict[str, Any]] = {
    "beacon_id": "mall-7.L2:b-0042",
    "entity_uuid": "3F2504E0-4F89-41D3-9A0C-0305E82C3301",
    "major": 65535,
    "minor": 258,
    "measured_power": -127,
    "wifi": {"ssid": "Mall", "password": "secret123"},
    "release_keys": [KEY],
}
NO_WIFI: Final = {k: v for k, v in FULL.items() if k != "wifi"}

PAYLOADS_CASES: Final = [
    PayloadsCase(
        "provisioned",
        FULL,
        "1.29.0",
        "1.0.0",
        0,
        0,
        FLAG_WIFI,
        FULL["beacon_id"],
        U1,
        65535,
        258,
        -127,
        (1, 0, 0),
    ),
    PayloadsCase(
        "no-wifi-trial",
        NO_WIFI,
        "1.29.0",
        "1.1.0-rc.1",
        4,
        FLAG_TRIAL,
        FLAG_TRIAL | FLAG_APP_PRERELEASE,
        FULL["beacon_id"],
        U1,
        65535,
        258,
        -127,
        (1, 1, 0),
    ),
    PayloadsCase(
        "typo-no-keys",
        {**NO_WIFI, "release_keys": [], "majr": 1},
        "1.29.0",
        "1.0.0",
        2,
        0,
        FLAG_CONFIG_FALLBACK | FLAG_NO_KEYS,
        FULL["beacon_id"],
        U1,
        65535,
        258,
        -127,
        (1, 0, 0),
    ),
    PayloadsCase(
        "missing-file",
        None,
        "1.29.0-preview",
        "1.0.0",
        5,
        0,
        FLAG_CONFIG_FALLBACK | FLAG_NO_KEYS | FLAG_FW_PRERELEASE,
        "unprovisioned-0102abcd",
        UNPROVISIONED_UUID.replace("-", ""),
        0,
        0,
        -59,
        (1, 0, 0),
    ),
    # A version that does not parse never stops advertising: 0.0.0 with the prerelease flag.
    PayloadsCase(
        "unparsable-versions",
        FULL,
        "",
        "1.0",
        0,
        0,
        FLAG_WIFI | FLAG_FW_PRERELEASE | FLAG_APP_PRERELEASE,
        FULL["beacon_id"],
        U1,
        65535,
        258,
        -127,
        (0, 0, 0),
        (0, 0, 0),
    ),
]

ALL_IDS: Final = (
    [c.id for c in IBEACON_CASES] + [c.id for c in NAVIGN_CASES] + [c.id for c in PAYLOADS_CASES]
)

RUNNER: Final = r"""
import binascii, gc, json
from navign import adv, config

def hx(b):
    return binascii.hexlify(b).decode()

def emit(o):
    print(json.dumps(o))

emit({"id": "__meta__", "uuid": adv.NAVIGN_SERVICE_UUID,
      "flags": [adv.FLAG_CONFIG_FALLBACK, adv.FLAG_TRIAL, adv.FLAG_WIFI, adv.FLAG_FW_PRERELEASE,
                adv.FLAG_APP_PRERELEASE, adv.FLAG_NO_KEYS],
      "states": [adv.IDLE, adv.RECEIVING, adv.VERIFYING, adv.INSTALLING, adv.TRIAL, adv.FAILED]})
for cid, u, major, minor, power in json.loads(IB):
    try:
        emit({"id": cid, "hex": hx(adv.ibeacon(binascii.unhexlify(u), major, minor, power))})
    except ValueError:
        emit({"id": cid, "error": "ValueError"})
for cid, bid, fw, app, state, flags in json.loads(NV):
    try:
        emit({"id": cid, "hex": hx(adv.navign(bid, fw, app, state, flags))})
    except ValueError:
        emit({"id": cid, "error": "ValueError"})
    gc.collect()
for cid, path, fw, app, state, extra in json.loads(PL):
    cfg = config.load(path, b"\x01\x02\xab\xcd")
    a, r = adv.payloads(cfg, fw, app, state, extra)
    emit({"id": cid, "adv": hx(a), "resp": hx(r)})
print("done")
"""


def _run(tmp: Path) -> dict[str, dict[str, Any]]:
    ib = [[c.id, c.uuid_hex, c.major, c.minor, c.power] for c in IBEACON_CASES]
    nv = [[c.id, c.beacon_id, c.fw, c.app, c.state, c.flags] for c in NAVIGN_CASES]
    pl = []
    for i, p in enumerate(PAYLOADS_CASES):
        path = tmp / f"config{i}.json"
        if p.config is not None:
            path.write_text(json.dumps(p.config))
        pl.append([p.id, str(path), p.fw, p.app, p.state, p.extra])
    header = "".join(
        f"{name} = {json.dumps(value)!r}\n" for name, value in (("IB", ib), ("NV", nv), ("PL", pl))
    )
    lines = unix.run(header + RUNNER).stdout.splitlines()
    assert lines[-1] == "done"
    results = [json.loads(line) for line in lines[:-1]]
    by_id = {r["id"]: r for r in results}
    assert len(by_id) == len(results)
    return by_id


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case run in one MicroPython process; result by case id."""
    assert len(set(ALL_IDS)) == len(ALL_IDS), "case ids must be unique"
    return _run(tmp_path_factory.mktemp("adv"))


@dataclass(frozen=True)
class IBeacon:
    flags: int
    proximity_uuid: uuid.UUID
    major: int
    minor: int
    power: int


@dataclass(frozen=True)
class NavignFrame:
    service: bumble_core.UUID
    payload: bytes


def decode_ibeacon(data: bytes) -> IBeacon:
    """With bumble: Flags + Manufacturer Specific Data (Apple), then the iBeacon layout."""
    assert len(data) <= MAX_PAYLOAD
    ad = AdvertisingData.from_bytes(data)
    # Re-encoding gives the same bytes only if every AD structure's length byte was right.
    assert bytes(ad) == data
    assert [t for t, _ in ad.ad_structures] == [
        AdvertisingData.Type.FLAGS,
        AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA,
    ]
    flags = ad.get(AdvertisingData.Type.FLAGS)
    msd = ad.get(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA)
    assert flags is not None
    assert msd is not None
    company, body = msd
    assert company == APPLE
    assert body[:2] == b"\x02\x15"  # iBeacon type, 21 bytes follow
    assert len(body) == 2 + 21
    major, minor, power = struct.unpack(">HHb", body[18:23])
    return IBeacon(flags, uuid.UUID(bytes=bytes(body[2:18])), major, minor, power)


def decode_navign(data: bytes) -> NavignFrame:
    """With bumble: exactly one Service Data - 128-bit UUID structure."""
    assert len(data) <= MAX_PAYLOAD
    ad = AdvertisingData.from_bytes(data)
    assert bytes(ad) == data
    assert [t for t, _ in ad.ad_structures] == [AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID]
    sd = ad.get(AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID)
    assert sd is not None
    service, payload = sd
    return NavignFrame(service, bytes(payload))


def check_navign(
    frame: NavignFrame,
    *,
    beacon_id: str,
    flags: int,
    state: int,
    fw: tuple[int, int, int],
    app: tuple[int, int, int],
) -> None:
    assert str(frame.service) == NAVIGN_SERVICE_UUID.upper()
    assert frame.service == bumble_core.UUID(NAVIGN_SERVICE_UUID)
    p = frame.payload
    assert len(p) == 13
    assert p[0] == 1  # frame version
    assert p[1] == flags
    assert p[2] == state
    assert p[3:7] == hashlib.sha256(beacon_id.encode("utf-8")).digest()[:4]
    assert tuple(p[7:10]) == fw
    assert tuple(p[10:13]) == app


@pytest.mark.parametrize("case", IBEACON_CASES, ids=lambda c: c.id)
def test_ibeacon(results: dict[str, dict[str, Any]], case: IBeaconCase) -> None:
    r = results[case.id]
    if not case.valid:
        assert r == {"id": case.id, "error": "ValueError"}
        return
    data = bytes.fromhex(r["hex"])
    assert len(data) == 30
    assert data[:2] == b"\x02\x01"
    assert data[3:5] == b"\x1a\xff"
    beacon = decode_ibeacon(data)
    assert beacon.flags == 0x06  # LE General Discoverable, BR/EDR not supported
    assert beacon.proximity_uuid == uuid.UUID(hex=case.uuid_hex)
    assert (beacon.major, beacon.minor, beacon.power) == (case.major, case.minor, case.power)


@pytest.mark.parametrize("case", NAVIGN_CASES, ids=lambda c: c.id)
def test_navign(results: dict[str, dict[str, Any]], case: NavignCase) -> None:
    r = results[case.id]
    if case.fw_triple is None or case.app_triple is None:
        assert r == {"id": case.id, "error": "ValueError"}
        return
    data = bytes.fromhex(r["hex"])
    assert len(data) == 31
    assert data[:2] == b"\x1e\x21"
    assert isinstance(case.state, int)
    check_navign(
        decode_navign(data),
        beacon_id=case.beacon_id,
        flags=case.expect_flags,
        state=case.state,
        fw=case.fw_triple,
        app=case.app_triple,
    )


@pytest.mark.parametrize("case", PAYLOADS_CASES, ids=lambda c: c.id)
def test_payloads(results: dict[str, dict[str, Any]], case: PayloadsCase) -> None:
    r = results[case.id]
    beacon = decode_ibeacon(bytes.fromhex(r["adv"]))
    assert beacon.proximity_uuid == uuid.UUID(hex=case.uuid)
    assert (beacon.major, beacon.minor, beacon.power) == (case.major, case.minor, case.power)
    check_navign(
        decode_navign(bytes.fromhex(r["resp"])),
        beacon_id=case.beacon_id,
        flags=case.expect_flags,
        state=case.state,
        fw=case.fw_triple,
        app=case.app_triple,
    )


def test_service_uuid_bytes(results: dict[str, dict[str, Any]]) -> None:
    """The UUID goes out little-endian: bumble reads it back, and the raw bytes are reversed."""
    data = bytes.fromhex(results["basic"]["hex"])
    assert data[2:18] == uuid.UUID(NAVIGN_SERVICE_UUID).bytes[::-1]
    assert data[2:18] == bytes.fromhex("3dc502a44af739a6954b128a159a1c22")


def test_constants(results: dict[str, dict[str, Any]]) -> None:
    meta = results["__meta__"]
    assert meta["uuid"] == NAVIGN_SERVICE_UUID
    assert meta["flags"] == [
        FLAG_CONFIG_FALLBACK,
        FLAG_TRIAL,
        FLAG_WIFI,
        FLAG_FW_PRERELEASE,
        FLAG_APP_PRERELEASE,
        FLAG_NO_KEYS,
    ]
    assert meta["states"] == list(STATES.values())


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    assert set(results) == {*ALL_IDS, "__meta__"}
