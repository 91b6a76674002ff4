# DSSE envelopes on the beacon: docs/protocol.md §6.5 steps 1 (shape) and 2 (signatures).
# Split from navign.release so that the beacon loads the signature code (this module and
# navign.p256) and the manifest code (navign.release) one after the other, never both at once:
# a beacon's heap holds one of them beside the app, not both. See navign.release for the rules
# and the outcome names.

import binascii
import hashlib

from micropython import const

from navign.errors import Refused

PAYLOAD_TYPE = "application/vnd.navign.release-manifest+json"
MAX_ENVELOPE_BYTES = const(65536)
MAX_SIGNATURES = const(8)

#: DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows it.
SPKI_PREFIX = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200")
#: The PAE (§6.3) up to the payload's length: "DSSEv1" SP len(type) SP type SP.
_PAE_PREFIX = ("DSSEv1 %d %s " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE)).encode()
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def keyid(point):
    h = hashlib.sha256(SPKI_PREFIX)
    h.update(point)
    return binascii.hexlify(h.digest()).decode()


# ---- step 1: envelope shape ---------------------------------------------------------------


def _b64decode(value, what):
    # Standard alphabet, padded: groups of 4 characters, "=" only to pad the last group. value is
    # a str or a memoryview (jcs.parse's views) of UTF-8: checked as bytes, so no character
    # outside the alphabet passes.
    if isinstance(value, str):
        value = memoryview(value)
    elif not isinstance(value, memoryview):
        raise Refused("invalid_format", what + " must be a base64 string")
    n = len(value)
    if n % 4:
        raise Refused("invalid_format", what + " is not padded base64")
    if not n:
        return b""
    pad = 2 if value[n - 2] == 0x3D else (1 if value[n - 1] == 0x3D else 0)
    if pad == 2 and value[n - 1] != 0x3D:
        raise Refused("invalid_format", what + " is not valid base64")
    for c in value[n - 4 : n - pad]:
        if c not in _B64:
            raise Refused("invalid_format", what + " is not valid base64")
    try:
        data = binascii.a2b_base64(value)
    except ValueError:
        raise Refused("invalid_format", what + " is not valid base64") from None
    if len(data) != (n - pad) * 3 // 4:
        raise Refused("invalid_format", what + " is not valid base64")
    # Every group before the last must be of the alphabet only, and MicroPython's decoder skips
    # other characters: re-encode and compare, 256 characters at a time (the last group may
    # have non-zero padding bits, which CPython accepts too).
    dv = memoryview(data)
    full = (n - 4) * 3 // 4
    for off in range(0, full, 192):
        end = min(off + 192, full)
        if binascii.b2a_base64(dv[off:end], newline=False) != value[off * 4 // 3 : end * 4 // 3]:
            raise Refused("invalid_format", what + " is not valid base64")
    return data


def _shape(data):
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("envelope must be bytes")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise Refused("invalid_format", "envelope larger than 65536 bytes")
    from navign import jcs

    try:
        # The payload (the one long string) stays a view of data, not a copy.
        env = jcs.parse(data, 128)
    except ValueError as exc:
        raise Refused("invalid_format", "envelope: " + str(exc)) from None
    if (
        not isinstance(env, dict)
        or len(env) != 3
        or "payloadType" not in env
        or "payload" not in env
        or "signatures" not in env
    ):
        raise Refused(
            "invalid_format", "envelope must have exactly payloadType, payload, signatures"
        )
    if env["payloadType"] != PAYLOAD_TYPE:
        raise Refused("invalid_format", "payloadType must be " + PAYLOAD_TYPE)
    payload = _b64decode(env["payload"], "payload")
    env["payload"] = None  # the view
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
        raise Refused("invalid_format", "signatures must be a list of 1 to 8")
    entries = []
    for entry in sigs:
        if (
            not isinstance(entry, dict)
            or len(entry) != 2
            or "keyid" not in entry
            or "sig" not in entry
        ):
            raise Refused("invalid_format", "each signature must have exactly keyid and sig")
        entries.append((entry["keyid"], _b64decode(entry["sig"], "sig")))
    return payload, entries


# ---- step 2: signatures -------------------------------------------------------------------


def _pae_digest(payload):
    h = hashlib.sha256(_PAE_PREFIX)
    h.update(b"%d " % len(payload))
    h.update(payload)
    return h.digest()


def _signatures(payload, entries, trusted, threshold):
    from navign import p256

    digest = _pae_digest(payload)
    valid = []
    for kid, sig in entries:
        if len(valid) >= threshold:
            break
        if not isinstance(kid, str) or kid in valid:
            continue
        point = trusted.get(kid)
        if point is not None and p256.verify(point, digest, sig):
            valid.append(kid)
    if len(valid) < threshold:
        raise Refused(
            "invalid_signature",
            "%d valid signature(s) by trusted release keys, %d required" % (len(valid), threshold),
        )


def verify(data, trusted, threshold=1):
    # Steps 1-2: the signed payload bytes of a well-formed envelope with at least `threshold`
    # valid signatures by distinct trusted keys. Raises Refused.
    payload, entries = shape(data)
    check_signatures(payload, entries, trusted, threshold)
    return payload


# The two steps apart, for a caller that unloads navign.jcs before navign.p256 is loaded.
shape = _shape
check_signatures = _signatures
