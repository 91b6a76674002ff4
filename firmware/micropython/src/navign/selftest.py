# The beacon's self-test, run over the REPL on a lab bench (`flash.sh bench`, and the read-back
# after `flash.sh beacon`): `import navign.selftest as t; t.run()` prints one JSON line.
#
# Checks, each true or false in "checks" (docs/protocol.md §8.9):
#   config     /config.json loads with no field falling back (cfg.errors is empty)
#   adv        the iBeacon and Navign frames build from this config, have the legacy PDU's sizes,
#              and the iBeacon frame carries the config's UUID, major and minor
#   signature  P-256 ECDSA verifies a known vector and refuses it with one bit flipped (a
#              verifier that says yes to everything fails)
# Also reported: app and firmware versions, MicroPython's version, the config's SHA-256, the
# beacon's identity, the number of release keys and the free heap (judged by the host).
# `files(root)` prints one JSON line {"file", "size", "sha256"} per file under root (streamed: no
# list of every file on the heap).

import binascii
import gc
import hashlib
import json
import os
import sys

# sha256(_MESSAGE) signed by a P-256 key used for nothing else (generated for this test).
_POINT = (
    "045ae37b960615b81e114db4c9b7576a27f37a43bcdcee98b3406aacc6383af87"
    "faca1902c8b4449d1481182f3f8a8c6a3e578fedda6b786f3a53f29cfacc458d7"
)
_MESSAGE = b"navign beacon self-test vector 1"
_SIG = (
    "8188bd0fe6eee1071f50137c9a9735fb02ca9df30bbc45c1cd00dc5d3d81ccd4"
    "0c71a438a80f4f721f624b531432fe1b4f03de8a2b373e459759036ecb495b76"
)


def _uid():
    try:
        import machine

        return machine.unique_id()
    except Exception:
        return b""


def _firmware_version():
    try:
        from navign import ota

        return ota.firmware_version()
    except Exception:
        return ""


def _check_adv(cfg, fw, app):
    from navign import adv

    try:
        data, resp = adv.payloads(cfg, fw, app, adv.IDLE)
    except Exception:
        return False
    if len(data) != 30 or len(resp) != adv.MAX_PAYLOAD:
        return False
    # Flags (3 bytes), then length, 0xFF, Apple's company id, 0x02 0x15, UUID, major, minor, power.
    if data[3:9] != b"\x1a\xff\x4c\x00\x02\x15" or data[9:25] != cfg.uuid_bytes:
        return False
    major = data[25] << 8 | data[26]
    minor = data[27] << 8 | data[28]
    return major == cfg.major and minor == cfg.minor


def _check_signature():
    from navign import p256

    point = binascii.unhexlify(_POINT)
    digest = hashlib.sha256(_MESSAGE).digest()
    sig = bytearray(binascii.unhexlify(_SIG))
    good = p256.verify(point, digest, bytes(sig))
    sig[40] ^= 0x01
    bad = p256.verify(point, digest, bytes(sig))
    return good and not bad


def run(path="/config.json"):
    # One module at a time, each unloaded after its check: the heap of a beacon is small.
    import navign

    gc.collect()
    signature = _check_signature()
    navign.unload(("p256",))
    fw = _firmware_version()
    navign.unload(("ota", "fs", "errors"))
    from navign import config

    cfg = config.load(path, _uid())
    app = navign.APP_VERSION
    checks = {"config": not cfg.errors, "adv": _check_adv(cfg, fw, app), "signature": signature}
    navign.unload(("adv",))
    out = {
        "selftest": 1,
        "app_version": app,
        "firmware_version": fw,
        "micropython": ".".join(str(v) for v in sys.implementation.version[:3]),
        "config_sha256": config.config_hash(path),
        "config_errors": [e[0] + ": " + e[1] for e in cfg.errors],
        "beacon_id": cfg.beacon_id,
        "entity_uuid": cfg.entity_uuid,
        "major": cfg.major,
        "minor": cfg.minor,
        "chip": cfg.chip,
        "release_keys": len(cfg.release_keys),
        "checks": checks,
    }
    del cfg
    navign.unload(("config",))
    out["free_heap"] = gc.mem_free()
    print(json.dumps(out))


def _hash(path):
    h = hashlib.sha256()
    buf = bytearray(512)
    mv = memoryview(buf)
    size = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            size += n
            h.update(mv[:n])
    return [size, binascii.hexlify(h.digest()).decode()]


def _walk(root):
    for entry in os.ilistdir(root or "/"):
        path = root + "/" + entry[0]
        if entry[1] & 0x4000:
            _walk(path)
        else:
            size, digest = _hash(path)
            print(json.dumps({"file": path, "size": size, "sha256": digest}))


def files(root=""):
    _walk(root.rstrip("/"))
