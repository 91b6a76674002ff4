"""``navign.config`` on the real MicroPython interpreter: every field valid and invalid; bad files.

All cases run in one MicroPython process (``unix.run``, 96 KiB heap). Each case is a file; the
process loads it and writes, per case, one JSON line with the errors, the ``Config`` attributes,
``dump()``, ``config_hash()`` and a reload of the dump. The expected values are written out here
from the specification (never computed by the module under test).
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from navign_firmware import unix

UNIQUE_ID: Final = bytes.fromhex("a1b2c3d4e5f6")
UNPROVISIONED_UUID: Final = "a12bf56f-887e-4f9d-8cc9-2a34449026de"

#: What every field takes when the file gives nothing usable (unique id ``UNIQUE_ID``).
DEFAULT_DUMP: Final[dict[str, Any]] = {
    "beacon_id": "unprovisioned-a1b2c3d4e5f6",
    "entity_uuid": UNPROVISIONED_UUID,
    "major": 0,
    "minor": 0,
    "measured_power": -59,
    "tx_power": 0,
    "adv_interval_ms": 200,
    "chip": "esp32",
    "release_keys": [],
    "release_threshold": 1,
    "secure_version": 0,
    "ota": {"trial_boots": 3, "health_timeout_s": 120, "report_interval_s": 30},
}


def _key(i: int) -> str:
    # Format only (65-byte uncompressed point): "04" + 128 hex digits.
    return "04" + hashlib.sha256(bytes([i])).hexdigest() * 2


KEYS: Final = [_key(i) for i in range(10)]

VALID: Final[dict[str, Any]] = {
    "beacon_id": "mall-7.L2:b-0042",
    "entity_uuid": "3F2504E0-4F89-41D3-9A0C-0305E82C3301",
    "major": 513,
    "minor": 4097,
    "measured_power": -65,
    "tx_power": 15,
    "adv_interval_ms": 350,
    "chip": "esp32s3",
    "wifi": {"ssid": "Mall WiFi é", "password": "correct horse battery"},
    "gateway": {"host": "gw-1.mall.example", "port": 9443},
    "release_keys": [KEYS[0], KEYS[1].upper(), KEYS[2]],
    "release_threshold": 2,
    "secure_version": 7,
    "ota": {"trial_boots": 5, "health_timeout_s": 300, "report_interval_s": 10},
}
VALID_DUMP: Final[dict[str, Any]] = {
    **VALID,
    "entity_uuid": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "release_keys": [KEYS[0], KEYS[1], KEYS[2]],
}

#: Marks a key to delete (in a config, or from the expected dump).
DELETE: Final = object()


@dataclass
class Case:
    id: str
    #: The file's bytes; None: no such file; "dir": the path is a directory.
    content: bytes | str | None
    errors: list[tuple[str, str]]
    dump: dict[str, Any]
    unique_id: bytes = UNIQUE_ID
    #: Other acceptable error lists (for what depends on the interpreter's allocator).
    alt_errors: list[list[tuple[str, str]]] = field(default_factory=list)


def _set(doc: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc[p]
    if value is DELETE:
        doc.pop(last, None)
    else:
        doc[last] = value


def _with(base: Mapping[str, Any], changes: Mapping[str, object]) -> dict[str, Any]:
    doc = copy.deepcopy(dict(base))
    for path, value in changes.items():
        _set(doc, path, value)
    return doc


def field_case(
    id: str,
    sets: Mapping[str, object],
    errors: list[tuple[str, str]],
    changes: Mapping[str, object] | None = None,
) -> Case:
    """VALID with ``sets`` applied; expected: ``errors`` and VALID_DUMP with ``changes``
    (``changes`` defaults to ``sets``: a valid value is kept as given)."""
    config = _with(VALID, sets)
    expected = _with(VALID_DUMP, sets if changes is None else changes)
    return Case(id, json.dumps(config).encode(), errors, expected)


def bad(path: str, value: object, reason: str, default: object, id: str = "") -> Case:
    """One invalid field: it takes ``default``, the error is (path, reason), the rest is kept."""
    return field_case(
        id or f"{path}-{reason}-{value!r}"[:60], {path: value}, [(path, reason)], {path: default}
    )


def ok(path: str, value: object, id: str = "") -> Case:
    return field_case(id or f"{path}-ok-{value!r}"[:60], {path: value}, [])


def _dump_of_file(doc: dict[str, Any]) -> dict[str, Any]:
    return _with(DEFAULT_DUMP, doc)


NO_KEYS: Final = {"release_keys": [], "release_threshold": 1}
THRESHOLD_TOO_HIGH: Final = ("release_threshold", "out_of_range")
PADDED_4096: Final = json.dumps(VALID).encode().ljust(4096, b" ")

CASES: Final[list[Case]] = [
    # A full valid configuration (any-case UUID and keys are stored lowercase).
    field_case("valid", {}, []),
    # beacon_id
    bad("beacon_id", 7, "wrong_type", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", None, "wrong_type", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", "", "out_of_range", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", "a" * 65, "out_of_range", DEFAULT_DUMP["beacon_id"], "beacon_id-65"),
    bad("beacon_id", "mall 7", "bad_format", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", "bcn/1", "bad_format", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", "bcn#1", "bad_format", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", "bcné", "bad_format", DEFAULT_DUMP["beacon_id"]),
    bad("beacon_id", DELETE, "missing", DEFAULT_DUMP["beacon_id"], "beacon_id-missing"),
    ok("beacon_id", "a" * 64, "beacon_id-64"),
    ok("beacon_id", "A.z_-0:9", "beacon_id-charset"),
    # entity_uuid
    bad("entity_uuid", 5, "wrong_type", UNPROVISIONED_UUID),
    bad("entity_uuid", "3f2504e04f8941d39a0c0305e82c3301", "bad_format", UNPROVISIONED_UUID),
    bad("entity_uuid", "3f2504e0-4f89-41d3-9a0c-0305e82c330g", "bad_format", UNPROVISIONED_UUID),
    bad("entity_uuid", "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}", "bad_format", UNPROVISIONED_UUID),
    bad("entity_uuid", "3f2504e04-f89-41d3-9a0c-0305e82c3301", "bad_format", UNPROVISIONED_UUID),
    bad("entity_uuid", "3f2504e0_4f89_41d3_9a0c_0305e82c3301", "bad_format", UNPROVISIONED_UUID),
    bad("entity_uuid", DELETE, "missing", UNPROVISIONED_UUID, "entity_uuid-missing"),
    # major, minor: ints 0..65535; JSON true/false and 1.0 are not ints
    *[
        c
        for name in ("major", "minor")
        for c in (
            bad(name, True, "wrong_type", 0),
            bad(name, False, "wrong_type", 0),
            bad(name, 1.0, "wrong_type", 0),
            bad(name, "1", "wrong_type", 0),
            bad(name, None, "wrong_type", 0),
            bad(name, -1, "out_of_range", 0),
            bad(name, 65536, "out_of_range", 0),
            bad(name, DELETE, "missing", 0, f"{name}-missing"),
            ok(name, 0),
            ok(name, 65535),
        )
    ],
    # measured_power: -127..-1
    bad("measured_power", 0, "out_of_range", -59),
    bad("measured_power", -128, "out_of_range", -59),
    bad("measured_power", 59, "out_of_range", -59),
    bad("measured_power", True, "wrong_type", -59),
    bad("measured_power", -59.5, "wrong_type", -59),
    ok("measured_power", -127),
    ok("measured_power", -1),
    field_case("measured_power-absent", {"measured_power": DELETE}, [], {"measured_power": -59}),
    # tx_power against the chip's levels (VALID's chip is esp32s3: -24..18 in steps of 3)
    ok("tx_power", 18),
    ok("tx_power", -24),
    bad("tx_power", 21, "unsupported", 0),
    bad("tx_power", -27, "unsupported", 0),
    bad("tx_power", 5, "unsupported", 0),
    bad("tx_power", "0", "wrong_type", 0),
    bad("tx_power", True, "wrong_type", 0),
    bad("tx_power", 15.0, "wrong_type", 0),
    field_case("tx_power-absent", {"tx_power": DELETE}, [], {"tx_power": 0}),
    field_case("esp32-tx9", {"chip": "esp32", "tx_power": 9}, []),
    field_case("esp32-tx-12", {"chip": "esp32", "tx_power": -12}, []),
    field_case(
        "esp32-tx15",
        {"chip": "esp32", "tx_power": 15},
        [("tx_power", "unsupported")],
        {"chip": "esp32", "tx_power": 0},
    ),
    field_case(
        "esp32-tx-24",
        {"chip": "esp32", "tx_power": -24},
        [("tx_power", "unsupported")],
        {"chip": "esp32", "tx_power": 0},
    ),
    field_case("esp32c3-tx18", {"chip": "esp32c3", "tx_power": 18}, []),
    # chip: validated first; a bad chip falls back to esp32, where 15 dBm is not a level
    *[
        field_case(
            f"chip-{value!r}",
            {"chip": value},
            [("chip", reason), ("tx_power", "unsupported")],
            {"chip": "esp32", "tx_power": 0},
        )
        for value, reason in (
            ("esp32c6", "unsupported"),
            ("ESP32S3", "unsupported"),
            (3, "wrong_type"),
            (None, "wrong_type"),
        )
    ],
    field_case(
        "chip-bad-tx-ok",
        {"chip": "esp8266", "tx_power": 3},
        [("chip", "unsupported")],
        {"chip": "esp32", "tx_power": 3},
    ),
    field_case(
        "chip-absent", {"chip": DELETE, "tx_power": 6}, [], {"chip": "esp32", "tx_power": 6}
    ),
    # adv_interval_ms: 100..10240
    bad("adv_interval_ms", 99, "out_of_range", 200),
    bad("adv_interval_ms", 10241, "out_of_range", 200),
    bad("adv_interval_ms", "200", "wrong_type", 200),
    bad("adv_interval_ms", 200.0, "wrong_type", 200),
    ok("adv_interval_ms", 100),
    ok("adv_interval_ms", 10240),
    # wifi: optional; any bad member drops it (None: not in the dump)
    bad("wifi", "Mall", "wrong_type", DELETE),
    bad("wifi", ["Mall", "pw"], "wrong_type", DELETE),
    field_case("wifi-null", {"wifi": None}, [], {"wifi": DELETE}),
    field_case("wifi-absent", {"wifi": DELETE}, []),
    field_case("wifi-empty", {"wifi": {}}, [("wifi.ssid", "missing")], {"wifi": DELETE}),
    field_case(
        "wifi.ssid-missing", {"wifi.ssid": DELETE}, [("wifi.ssid", "missing")], {"wifi": DELETE}
    ),
    field_case(
        "wifi.ssid-empty", {"wifi.ssid": ""}, [("wifi.ssid", "out_of_range")], {"wifi": DELETE}
    ),
    field_case(
        "wifi.ssid-33", {"wifi.ssid": "x" * 33}, [("wifi.ssid", "out_of_range")], {"wifi": DELETE}
    ),
    # 17 characters but 34 bytes of UTF-8: the limit is in bytes
    field_case(
        "wifi.ssid-34-bytes",
        {"wifi.ssid": "é" * 17},
        [("wifi.ssid", "out_of_range")],
        {"wifi": DELETE},
    ),
    field_case("wifi.ssid-int", {"wifi.ssid": 5}, [("wifi.ssid", "wrong_type")], {"wifi": DELETE}),
    field_case(
        "wifi.ssid-surrogate",
        {"wifi.ssid": "ab\ud800"},
        [("wifi.ssid", "bad_format")],
        {"wifi": DELETE},
    ),
    ok("wifi.ssid", "x" * 32, "wifi.ssid-32"),
    ok("wifi.ssid", "é" * 16, "wifi.ssid-32-bytes"),
    field_case(
        "wifi.password-7",
        {"wifi.password": "x" * 7},
        [("wifi.password", "out_of_range")],
        {"wifi": DELETE},
    ),
    field_case(
        "wifi.password-64",
        {"wifi.password": "x" * 64},
        [("wifi.password", "out_of_range")],
        {"wifi": DELETE},
    ),
    field_case(
        "wifi.password-int",
        {"wifi.password": 12345678},
        [("wifi.password", "wrong_type")],
        {"wifi": DELETE},
    ),
    field_case(
        "wifi.password-umlaut",
        {"wifi.password": "pässwort1"},
        [("wifi.password", "bad_format")],
        {"wifi": DELETE},
    ),
    field_case(
        "wifi.password-tab",
        {"wifi.password": "tab\there1"},
        [("wifi.password", "bad_format")],
        {"wifi": DELETE},
    ),
    ok("wifi.password", "x" * 8, "wifi.password-8"),
    ok("wifi.password", "~" * 63, "wifi.password-63"),
    ok("wifi.password", "", "wifi.password-open"),
    field_case("wifi.password-absent", {"wifi.password": DELETE}, [], {"wifi.password": ""}),
    field_case("wifi-unknown-member", {"wifi.pass": "secret12"}, [("wifi.pass", "unknown")], {}),
    # gateway: optional; a bad host drops it, a bad port takes 8080
    bad("gateway", "gw-1.mall.example", "wrong_type", DELETE),
    bad("gateway", [], "wrong_type", DELETE),
    field_case("gateway-null", {"gateway": None}, [], {"gateway": DELETE}),
    field_case("gateway-absent", {"gateway": DELETE}, []),
    field_case(
        "gateway-empty", {"gateway": {}}, [("gateway.host", "missing")], {"gateway": DELETE}
    ),
    *[
        field_case(
            f"gateway.host-{reason}-{host!r}"[:60],
            {"gateway.host": host},
            [("gateway.host", reason)],
            {"gateway": DELETE},
        )
        for host, reason in (
            ("", "out_of_range"),
            ("a" * 254, "out_of_range"),
            (80, "wrong_type"),
            ("gw_1.mall", "bad_format"),
            ("-gw.mall", "bad_format"),
            ("gw-.mall", "bad_format"),
            ("gw..mall", "bad_format"),
            ("gw.mall.", "bad_format"),
            ("a" * 64 + ".mall", "bad_format"),
            ("gw.mall:8080", "bad_format"),
            ("256.0.0.1", "bad_format"),
            ("1.2.3", "bad_format"),
            ("1.2.3.4.5", "bad_format"),
            ("10.0.0.01", "bad_format"),
            ("gw.mall.é", "bad_format"),
        )
    ],
    ok("gateway.host", "10.0.0.1"),
    ok("gateway.host", "255.255.255.255"),
    ok("gateway.host", "localhost"),
    ok("gateway.host", "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, "host-253"),
    bad("gateway.port", 0, "out_of_range", 8080),
    bad("gateway.port", 65536, "out_of_range", 8080),
    bad("gateway.port", "9443", "wrong_type", 8080),
    bad("gateway.port", True, "wrong_type", 8080),
    field_case("gateway.port-absent", {"gateway.port": DELETE}, [], {"gateway.port": 8080}),
    ok("gateway.port", 1),
    ok("gateway.port", 65535),
    field_case(
        "gateway-unknown-member", {"gateway.hostname": "x"}, [("gateway.hostname", "unknown")], {}
    ),
    # release_keys: a bad list falls back to no keys (then the threshold of 2 is out of range)
    *[
        field_case(
            f"release_keys-{id}",
            {"release_keys": value},
            [("release_keys", reason), THRESHOLD_TOO_HIGH],
            NO_KEYS,
        )
        for id, value, reason in (
            ("string", KEYS[0], "wrong_type"),
            ("object", {"k": KEYS[0]}, "wrong_type"),
            ("nine", KEYS[:9], "out_of_range"),
            ("short", [KEYS[0], KEYS[1][:128]], "bad_format"),
            ("long", [KEYS[0], KEYS[1] + "00"], "bad_format"),
            ("compressed", [KEYS[0], "02" + KEYS[1][2:]], "bad_format"),
            ("not-hex", [KEYS[0], KEYS[1][:100] + "zz" + KEYS[1][102:]], "bad_format"),
            ("int", [KEYS[0], 4], "wrong_type"),
            ("null", [KEYS[0], None], "wrong_type"),
            ("duplicate", [KEYS[0], KEYS[1], KEYS[0].upper()], "duplicate"),
        )
    ],
    field_case("release_keys-eight", {"release_keys": KEYS[:8]}, []),
    field_case("release_keys-empty", {"release_keys": []}, [THRESHOLD_TOO_HIGH], NO_KEYS),
    field_case(
        "release_keys-empty-no-threshold",
        {"release_keys": [], "release_threshold": DELETE},
        [],
        NO_KEYS,
    ),
    field_case(
        "release_keys-absent",
        {"release_keys": DELETE, "release_threshold": DELETE},
        [],
        NO_KEYS,
    ),
    # release_threshold: 1..len(keys); a bad one falls back to all keys (3 here), never to 1
    bad("release_threshold", 4, "out_of_range", 3),
    bad("release_threshold", 0, "out_of_range", 3),
    bad("release_threshold", True, "wrong_type", 3),
    bad("release_threshold", "2", "wrong_type", 3),
    ok("release_threshold", 1),
    ok("release_threshold", 3),
    field_case(
        "release_threshold-absent", {"release_threshold": DELETE}, [], {"release_threshold": 1}
    ),
    # secure_version: 0..2**32-1
    bad("secure_version", -1, "out_of_range", 0),
    bad("secure_version", 2**32, "out_of_range", 0),
    bad("secure_version", 2**64, "out_of_range", 0),
    bad("secure_version", "7", "wrong_type", 0),
    bad("secure_version", 7.0, "wrong_type", 0),
    bad("secure_version", True, "wrong_type", 0),
    ok("secure_version", 2**32 - 1),
    ok("secure_version", 0),
    # ota: optional; each member falls back on its own
    bad("ota", "x", "wrong_type", DEFAULT_DUMP["ota"]),
    bad("ota", [], "wrong_type", DEFAULT_DUMP["ota"]),
    field_case("ota-null", {"ota": None}, [], {"ota": DEFAULT_DUMP["ota"]}),
    field_case("ota-empty", {"ota": {}}, [], {"ota": DEFAULT_DUMP["ota"]}),
    field_case("ota-absent", {"ota": DELETE}, [], {"ota": DEFAULT_DUMP["ota"]}),
    bad("ota.trial_boots", 0, "out_of_range", 3),
    bad("ota.trial_boots", 11, "out_of_range", 3),
    bad("ota.trial_boots", "3", "wrong_type", 3),
    ok("ota.trial_boots", 1),
    ok("ota.trial_boots", 10),
    bad("ota.health_timeout_s", 9, "out_of_range", 120),
    bad("ota.health_timeout_s", 3601, "out_of_range", 120),
    bad("ota.health_timeout_s", 120.5, "wrong_type", 120),
    ok("ota.health_timeout_s", 10),
    ok("ota.health_timeout_s", 3600),
    bad("ota.report_interval_s", 4, "out_of_range", 30),
    bad("ota.report_interval_s", 3601, "out_of_range", 30),
    bad("ota.report_interval_s", True, "wrong_type", 30),
    ok("ota.report_interval_s", 5),
    ok("ota.report_interval_s", 3600),
    field_case("ota-unknown-member", {"ota.trials": 4}, [("ota.trials", "unknown")], {}),
    # unknown top-level keys: recorded, nothing falls back
    field_case("unknown-key", {"majr": 1}, [("majr", "unknown")], {}),
    field_case(
        "unknown-keys", {"zeta": {}, "alpha": None}, [("alpha", "unknown"), ("zeta", "unknown")], {}
    ),
    # several bad fields at once: each recorded, the rest kept
    field_case(
        "several-bad",
        {"major": -1, "chip": "x", "gateway.port": 0, "ota.trial_boots": 99},
        [
            ("major", "out_of_range"),
            ("chip", "unsupported"),
            ("tx_power", "unsupported"),
            ("gateway.port", "out_of_range"),
            ("ota.trial_boots", "out_of_range"),
        ],
        {"major": 0, "chip": "esp32", "tx_power": 0, "gateway.port": 8080, "ota.trial_boots": 3},
    ),
    # Files: anything unusable gives all defaults and exactly one error.
    Case("file-missing", None, [("file", "missing")], DEFAULT_DUMP),
    Case("file-directory", "dir", [("file", "unreadable")], DEFAULT_DUMP),
    Case("file-broken-json", b'{"beacon_id": "b1",', [("file", "bad_json")], DEFAULT_DUMP),
    Case("file-single-quotes", b"{'beacon_id': 'b1'}", [("file", "bad_json")], DEFAULT_DUMP),
    Case("file-trailing-garbage", b'{"major": 1} x', [("file", "bad_json")], DEFAULT_DUMP),
    Case("file-empty", b"", [("file", "bad_json")], DEFAULT_DUMP),
    Case("file-array", json.dumps([VALID]).encode(), [("file", "not_an_object")], DEFAULT_DUMP),
    Case("file-null", b"null", [("file", "not_an_object")], DEFAULT_DUMP),
    Case("file-string", b'"config"', [("file", "not_an_object")], DEFAULT_DUMP),
    Case("file-number", b"42", [("file", "not_an_object")], DEFAULT_DUMP),
    Case(
        "file-5000-bytes",
        json.dumps(VALID).encode().ljust(5000, b" "),
        [("file", "too_large")],
        DEFAULT_DUMP,
    ),
    Case("file-4097-bytes", PADDED_4096 + b" ", [("file", "too_large")], DEFAULT_DUMP),
    Case("file-4096-bytes", PADDED_4096, [], VALID_DUMP),
    Case("file-binary-garbage", bytes(range(256)) * 4, [("file", "bad_encoding")], DEFAULT_DUMP),
    Case(
        "file-invalid-utf8-in-string",
        b'{"beacon_id": "b\xff1", "major": 1}',
        [("file", "bad_encoding")],
        DEFAULT_DUMP,
    ),
    Case("file-nul-bytes", b"\x00\x01\x02garbage", [("file", "bad_json")], DEFAULT_DUMP),
    Case(
        "file-deep-nesting",
        b"[" * 4000,
        [("file", "no_memory")],
        DEFAULT_DUMP,
        alt_errors=[[("file", "bad_json")]],
    ),
    # An empty object: the identity fields are missing, the rest are optional.
    Case(
        "file-empty-object",
        b"{}",
        [
            ("beacon_id", "missing"),
            ("entity_uuid", "missing"),
            ("major", "missing"),
            ("minor", "missing"),
        ],
        DEFAULT_DUMP,
    ),
    Case(
        "file-minimal",
        json.dumps(
            {"beacon_id": "b1", "entity_uuid": UNPROVISIONED_UUID, "major": 1, "minor": 2}
        ).encode(),
        [],
        _dump_of_file({"beacon_id": "b1", "major": 1, "minor": 2}),
    ),
    Case(
        "no-unique-id",
        None,
        [("file", "missing")],
        {**DEFAULT_DUMP, "beacon_id": "unprovisioned-"},
        unique_id=b"",
    ),
]

RUNNER: Final = r"""
import binascii, gc, json
from navign import config

ATTRS = ("beacon_id", "entity_uuid", "major", "minor", "measured_power", "tx_power",
         "adv_interval_ms", "chip", "wifi", "gateway", "release_threshold", "secure_version",
         "trial_boots", "health_timeout_s", "fallback", "can_update")

def emit(out, o):
    json.dump(o, out)
    out.write("\n")

def run_case(out, cid, path, uid):
    c = config.load(path, binascii.unhexlify(uid))
    d = config.dump(c)
    with open(path + ".rt", "w") as f:
        json.dump(d, f)
    c2 = config.load(path + ".rt")
    emit(out, {
        "id": cid,
        "errors": c.errors,
        "dump": d,
        "redacted": config.dump(c, True),
        "attrs": dict((a, getattr(c, a)) for a in ATTRS),
        "uuid_bytes": binascii.hexlify(c.uuid_bytes).decode(),
        "release_keys": [binascii.hexlify(k).decode() for k in c.release_keys],
        "hash": config.config_hash(path),
        "rt_errors": c2.errors,
        "rt_dump": config.dump(c2),
    })

with open(PLAN) as plan, open(OUT, "w") as out:
    emit(out, {"id": "__meta__", "levels": config.CHIP_TX_LEVELS,
               "default_path": config.DEFAULT_PATH, "max": config.MAX_BYTES})
    for line in plan:
        run_case(out, *json.loads(line))
        gc.collect()
print("done")
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case run in one MicroPython process; result by case id (and "__meta__")."""
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    root = tmp_path_factory.mktemp("configs")
    plan, paths = [], {}
    for i, case in enumerate(CASES):
        path = root / f"case{i}.json"
        if case.content == "dir":
            path.mkdir()
        elif isinstance(case.content, bytes):
            path.write_bytes(case.content)
        plan.append(json.dumps([case.id, str(path), case.unique_id.hex()]))
        paths[case.id] = str(path)
    (root / "plan.jsonl").write_text("\n".join(plan) + "\n")
    out = root / "out.jsonl"
    header = f"PLAN = {str(root / 'plan.jsonl')!r}\nOUT = {str(out)!r}\n"
    assert unix.run(header + RUNNER, timeout=300).stdout.split() == ["done"]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: {**r, "path": paths.get(r["id"], "")} for r in lines}


def _errors(raw: list[list[str]]) -> list[tuple[str, str]]:
    return sorted((f, r) for f, r in raw)


def _case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_errors(results: dict[str, dict[str, Any]], case: Case) -> None:
    got = _errors(results[case.id]["errors"])
    assert got in [sorted(case.errors), *(sorted(e) for e in case.alt_errors)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_effective_config(results: dict[str, dict[str, Any]], case: Case) -> None:
    assert results[case.id]["dump"] == case.dump


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_attributes(results: dict[str, dict[str, Any]], case: Case) -> None:
    """The Config attributes are what dump() shows; the derived ones follow."""
    r = results[case.id]
    attrs, dump = r["attrs"], case.dump
    for name in (
        "beacon_id",
        "entity_uuid",
        "major",
        "minor",
        "measured_power",
        "tx_power",
        "adv_interval_ms",
        "chip",
        "release_threshold",
        "secure_version",
    ):
        assert attrs[name] == dump[name], name
    assert attrs["trial_boots"] == dump["ota"]["trial_boots"]
    assert attrs["health_timeout_s"] == dump["ota"]["health_timeout_s"]
    assert attrs["wifi"] == dump.get("wifi")
    assert attrs["gateway"] == dump.get("gateway")
    assert r["uuid_bytes"] == uuid.UUID(dump["entity_uuid"]).bytes.hex()
    assert r["release_keys"] == dump["release_keys"]
    assert all(len(bytes.fromhex(k)) == 65 for k in r["release_keys"])
    assert attrs["can_update"] is bool(dump["release_keys"])
    assert attrs["fallback"] is bool(case.errors)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dump_round_trip(results: dict[str, dict[str, Any]], case: Case) -> None:
    """load(json of dump(cfg)) is the same configuration, with no errors."""
    r = results[case.id]
    assert r["rt_errors"] == []
    assert r["rt_dump"] == r["dump"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_config_hash(results: dict[str, dict[str, Any]], case: Case) -> None:
    """SHA-256 of the file's bytes, whatever they are; None when there is no readable file."""
    got = results[case.id]["hash"]
    if isinstance(case.content, bytes):
        assert got == hashlib.sha256(Path(results[case.id]["path"]).read_bytes()).hexdigest()
    else:
        assert got is None


def test_valid_config_in_detail(results: dict[str, dict[str, Any]]) -> None:
    r = results["valid"]
    assert r["errors"] == []
    assert r["attrs"]["fallback"] is False
    assert r["attrs"]["can_update"] is True
    assert r["uuid_bytes"] == "3f2504e04f8941d39a0c0305e82c3301"
    assert r["attrs"]["wifi"] == {"ssid": "Mall WiFi é", "password": "correct horse battery"}
    assert r["attrs"]["gateway"] == {"host": "gw-1.mall.example", "port": 9443}
    assert r["release_keys"][1] == KEYS[1].lower()


def test_defaults(results: dict[str, dict[str, Any]]) -> None:
    r = results["file-missing"]
    assert r["dump"] == DEFAULT_DUMP
    assert r["attrs"]["fallback"] is True
    assert r["attrs"]["can_update"] is False
    assert r["attrs"]["wifi"] is None
    assert r["attrs"]["gateway"] is None
    assert r["uuid_bytes"] == "a12bf56f887e4f9d8cc92a34449026de"


def test_redacted_dump(results: dict[str, dict[str, Any]]) -> None:
    r = results["valid"]
    assert r["redacted"]["wifi"]["password"] == "<redacted>"
    assert r["redacted"] == _with(r["dump"], {"wifi.password": "<redacted>"})
    assert results["wifi-absent"]["redacted"] == results["wifi-absent"]["dump"]


def test_module_constants(results: dict[str, dict[str, Any]]) -> None:
    meta = results["__meta__"]
    steps = list(range(-24, 19, 3))
    assert meta["levels"] == {
        "esp32": [-12, -9, -6, -3, 0, 3, 6, 9],
        "esp32c3": steps,
        "esp32s3": steps,
    }
    assert meta["default_path"] == "/config.json"
    assert meta["max"] == 4096


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    assert set(results) == {c.id for c in CASES} | {"__meta__"}
    assert _case("valid").dump == VALID_DUMP
