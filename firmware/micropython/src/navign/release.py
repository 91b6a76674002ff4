# Release verification on the beacon: the beacon's side of docs/protocol.md §6 (the CPython
# reference is navign_proto.manifest). Every refusal raises navign.errors.Refused(reason, detail)
# with the outcome names of proto/vectors/manifests.json:
#   "invalid_format"     §6.5 steps 1, 3, 4: envelope shape, schema tag, canonical form, schema
#   "invalid_signature"  §6.5 step 2: fewer than `threshold` distinct trusted keys verify
#   "wrong_target", "same_version", "downgrade", "secure_version", "min_previous_version",
#   "expired"            §6.4 policy, in that order (check_installable)
#   "artifact_mismatch"  §6.5 step 6: an image or app file whose size or SHA-256 differs
#   "too_large"          the envelope does not fit in this beacon's memory (MemoryError)
#
# keyid(point) -> str
#   Lowercase hex SHA-256 of the P-256 SubjectPublicKeyInfo (26-byte DER prefix || point), §2.1.
# open_envelope(data, trusted, threshold=1) -> (manifest, payload, manifest_sha256)
#   data: the DSSE envelope bytes (<= 64 KiB); trusted: {keyid: 65-byte point}. Runs §6.5 steps
#   1-4 in order and stops at the first failure. manifest is the parsed payload (a dict; read
#   optional fields with .get(): an explicit null is accepted as absent, as the CPython
#   reference accepts it, although §6.2 says producers leave such fields out), payload the
#   signed bytes, manifest_sha256 their hex SHA-256. Signatures by keyids not in `trusted` are
#   ignored; a trusted keyid whose signature does not verify counts for nothing; a keyid counts
#   once however often it signs.
#   Memory: the payload is decoded once (3/4 of its base64 size, one block) and parsed into the
#   manifest (about 400 bytes per file entry on the 64-bit unix port); the envelope's base64 is
#   never copied. An envelope that does not fit the heap is refused with "too_large" (the
#   reason navign.ota uses for its size limit): a beacon-specific outcome, not a verdict on the
#   release.
# check_installable(manifest, chip, version, secure_version, now=None, time_floor=None)
#   §6.4 against the beacon's state. Times are strings "YYYY-MM-DDTHH:MM:SSZ" (fixed width,
#   so string order is time order; time_string() makes one from time.gmtime()).
#   Expiry without a trustworthy clock: the beacon's clock may be unset (it starts at its
#   epoch) or wrong, and must not make an expired release installable. The effective time is the
#   latest of `now` (the clock, if the caller trusts it at all) and `time_floor`, the newest
#   `created_at` of any manifest this beacon has verified, which the caller stores: time never
#   goes back below a release the operator has signed. A release expires when the effective
#   time >= expires_at. With neither `now` nor `time_floor`, expiry cannot be checked and is
#   skipped (the signature, target, version and secure_version rules still hold).
# verify_file(path, size, sha256_hex, buf=None)
#   Hash a file in chunks of at most 4096 bytes read into `buf` (a pre-allocated bytearray, a
#   shared module buffer by default); Refused("artifact_mismatch") if it is missing, of another
#   size (stops reading once it is longer) or of another SHA-256.
# Sha256Stream(size, sha256_hex, name="")
#   .update(chunk) while receiving an artifact (refuses as soon as it exceeds `size`),
#   .finish() at the end (refuses a short or different artifact).
# app_file_spans(manifest) -> [(path, offset, size, sha256_hex)]
#   Where each file of an app release lies in its artifact: the files' bytes concatenated in
#   manifest order (navign_proto.manifest.ReleaseBuild). ValueError for an image release.
# time_string(secs=None) -> str: time.gmtime(secs) in the manifest's time format.
#
# Stricter than the CPython verifier, deliberately (each only refuses more): the envelope and the
# payload must be strict UTF-8 without BOM (CPython's json also reads UTF-16/32, a BOM and
# encoded surrogates); base64 must be padded exactly (CPython 3.11 accepts surplus "=" after a
# complete quantum, e.g. "QUJD="); times and versions use ASCII digits only (CPython's \d and
# strptime accept other Unicode digits); nesting deeper than 32 levels is refused.

import binascii
import gc
import hashlib
import time

from micropython import const

from navign import jcs, p256, semver
from navign.errors import Refused

SCHEMA = "navign.release.v1"
PAYLOAD_TYPE = "application/vnd.navign.release-manifest+json"
MAX_ENVELOPE_BYTES = const(65536)
MAX_SIGNATURES = const(8)
MAX_FILES = const(256)
MAX_ARTIFACT_BYTES = const(16777216)
MAX_SECURE_VERSION = 0xFFFFFFFF
MAX_PATH_LENGTH = const(128)
CHUNK = const(4096)
TARGETS = ("esp32", "esp32c3", "esp32c6", "esp32s3")
KINDS = ("app", "image")

#: DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte point follows it.
SPKI_PREFIX = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200")
#: The PAE (§6.3) up to the payload's length: "DSSEv1" SP len(type) SP type SP.
_PAE_PREFIX = ("DSSEv1 %d %s " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE)).encode()

_FIELDS = (
    "schema",
    "name",
    "version",
    "secure_version",
    "target",
    "kind",
    "files",
    "image",
    "min_previous_version",
    "created_at",
    "expires_at",
)
_REQUIRED = ("schema", "name", "version", "secure_version", "target", "kind", "created_at")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_LOWER_HEX = "0123456789abcdef"
_NAME_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_NAME_REST = _NAME_FIRST + "._-"
_PART_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
_PART_REST = _PART_FIRST + ".-"
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_buf = None


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


# ---- step 4: schema -----------------------------------------------------------------------


def _bad(detail):
    raise Refused("invalid_format", "manifest: " + detail)


def _is_int(v):
    return type(v) is int


def _is_sha256(v):
    return isinstance(v, str) and len(v) == 64 and all(c in _LOWER_HEX for c in v)


def _is_name(v):
    if not isinstance(v, str) or not 1 <= len(v) <= 64 or v[0] not in _NAME_FIRST:
        return False
    return all(c in _NAME_REST for c in v)


def _is_path(v):
    if not isinstance(v, str) or len(v) > MAX_PATH_LENGTH:
        return False
    for part in v.split("/"):
        if not 1 <= len(part) <= 64 or part[0] not in _PART_FIRST:
            return False
        for c in part:
            if c not in _PART_REST:
                return False
    return True


def _digits(s, i, j):
    v = 0
    for k in range(i, j):
        c = s[k]
        if c < "0" or c > "9":
            return -1
        v = v * 10 + ord(c) - 48
    return v


def _is_time(v):
    # YYYY-MM-DDTHH:MM:SSZ, a real date and time (years 0001-9999, seconds 00-59).
    if not isinstance(v, str) or len(v) != 20:
        return False
    if v[4] != "-" or v[7] != "-" or v[10] != "T" or v[13] != ":" or v[16] != ":" or v[19] != "Z":
        return False
    year = _digits(v, 0, 4)
    month = _digits(v, 5, 7)
    day = _digits(v, 8, 10)
    hour = _digits(v, 11, 13)
    minute = _digits(v, 14, 16)
    second = _digits(v, 17, 19)
    if year < 1 or not 1 <= month <= 12 or day < 1 or hour < 0 or minute < 0 or second < 0:
        return False
    days = _DAYS[month - 1]
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        days = 29
    return day <= days and hour <= 23 and minute <= 59 and second <= 59


def _is_version(v):
    if not isinstance(v, str):
        return False
    try:
        semver.parse(v)
    except ValueError:
        return False
    return True


def _is_size(v, low):
    return _is_int(v) and low <= v <= MAX_ARTIFACT_BYTES


def _schema(m):
    for k in m:
        if k not in _FIELDS:
            _bad("unknown field " + k)
    for k in _REQUIRED:
        if m.get(k) is None:
            _bad("missing field " + k)
    if m["schema"] != SCHEMA:
        _bad("schema must be " + SCHEMA)
    if not _is_name(m["name"]):
        _bad("name must be 1-64 of [a-z0-9._-], starting with a letter or digit")
    if not _is_version(m["version"]):
        _bad("version must be SemVer 2.0.0, at most 64 characters, no build metadata")
    sv = m["secure_version"]
    if not _is_int(sv) or not 0 <= sv <= MAX_SECURE_VERSION:
        _bad("secure_version must be an integer 0..2**32-1")
    if m["target"] not in TARGETS:
        _bad("target must be one of esp32, esp32c3, esp32c6, esp32s3")
    kind = m["kind"]
    if kind not in KINDS:
        _bad("kind must be app or image")
    mpv = m.get("min_previous_version")
    if mpv is not None and not _is_version(mpv):
        _bad("min_previous_version must be SemVer 2.0.0")
    if not _is_time(m["created_at"]):
        _bad("created_at must be YYYY-MM-DDTHH:MM:SSZ")
    exp = m.get("expires_at")
    if exp is not None:
        if not _is_time(exp):
            _bad("expires_at must be YYYY-MM-DDTHH:MM:SSZ")
        if exp <= m["created_at"]:
            _bad("expires_at must be after created_at")
    files = m.get("files")
    image = m.get("image")
    if files is not None:
        if not isinstance(files, list) or len(files) > MAX_FILES:
            _bad("files must be a list of at most 256 entries")
        paths = set()
        for f in files:
            if not isinstance(f, dict) or len(f) != 3:
                _bad("a file entry has exactly path, size, sha256")
            path = f.get("path")
            if not _is_path(path):
                _bad("file path must be relative, '/'-separated parts of [A-Za-z0-9._-]")
            if not _is_size(f.get("size"), 0):
                _bad("file size must be an integer 0..16 MiB")
            if not _is_sha256(f.get("sha256")):
                _bad("sha256 must be 64 lowercase hex digits")
            if path in paths:
                _bad("an app release lists a file path twice")
            paths.add(path)
    if image is not None:
        if not isinstance(image, dict) or len(image) != 2:
            _bad("image has exactly size, sha256")
        if not _is_size(image.get("size"), 1):
            _bad("image size must be an integer 1..16 MiB")
        if not _is_sha256(image.get("sha256")):
            _bad("sha256 must be 64 lowercase hex digits")
    if kind == "app":
        if not files or image is not None:
            _bad("an app release lists files and no image")
    elif image is None or files is not None:
        _bad("an image release has an image and no files")


# ---- steps 1-4 ----------------------------------------------------------------------------


def open_envelope(data, trusted, threshold=1):
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    try:
        return _open(data, trusted, threshold)
    except MemoryError:
        raise Refused("too_large", "the envelope does not fit in memory") from None


def _open(data, trusted, threshold):
    payload, entries = _shape(data)
    _signatures(payload, entries, trusted, threshold)
    entries = None
    # The manifest outlives this call: collect the verification's temporaries first, so that
    # it is built in the lowest free blocks instead of splitting the free heap.
    gc.collect()
    try:
        doc = jcs.parse(payload)
    except ValueError as exc:
        raise Refused("invalid_format", "manifest: " + str(exc)) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise Refused("invalid_format", "manifest must declare schema " + SCHEMA)
    try:
        canonical = jcs.equals_canonical(doc, payload)
    except ValueError as exc:
        raise Refused("invalid_format", "manifest: " + str(exc)) from None
    if not canonical:
        raise Refused("invalid_format", "manifest payload is not in canonical form")
    _schema(doc)
    digest = binascii.hexlify(hashlib.sha256(payload).digest()).decode()
    return doc, payload, digest


# ---- step 5: policy -----------------------------------------------------------------------


def time_string(secs=None):
    t = time.gmtime() if secs is None else time.gmtime(secs)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (t[0], t[1], t[2], t[3], t[4], t[5])


def check_installable(manifest, chip, version, secure_version, now=None, time_floor=None):
    if manifest["target"] != chip:
        raise Refused(
            "wrong_target", "release is for " + manifest["target"] + ", device is " + chip
        )
    order = semver.compare(manifest["version"], version)
    if order == 0:
        raise Refused("same_version", "version " + version + " already installed")
    if order < 0:
        raise Refused("downgrade", "release " + manifest["version"] + " is older than " + version)
    if manifest["secure_version"] < secure_version:
        raise Refused(
            "secure_version",
            "secure_version %d is below the device's %d"
            % (manifest["secure_version"], secure_version),
        )
    mpv = manifest.get("min_previous_version")
    if mpv is not None and semver.compare(version, mpv) < 0:
        raise Refused("min_previous_version", "release needs at least " + mpv + " installed first")
    expires = manifest.get("expires_at")
    moment = None
    for t in (now, time_floor):
        if t is not None:
            if not _is_time(t):
                raise ValueError("times are YYYY-MM-DDTHH:MM:SSZ")
            if moment is None or t > moment:
                moment = t
    if expires is not None and moment is not None and moment >= expires:
        raise Refused("expired", "release expired at " + expires)


# ---- step 6: artifacts --------------------------------------------------------------------


class Sha256Stream:
    def __init__(self, size, sha256_hex, name=""):
        self.size = size
        self.sha256 = sha256_hex
        self.name = name
        self.count = 0
        self._h = hashlib.sha256()

    def update(self, chunk):
        self.count += len(chunk)
        if self.count > self.size:
            raise Refused(
                "artifact_mismatch",
                "%s: longer than the manifest's %d bytes" % (self.name, self.size),
            )
        self._h.update(chunk)

    def finish(self):
        if self.count != self.size:
            raise Refused(
                "artifact_mismatch",
                "%s: size %d, manifest says %d" % (self.name, self.count, self.size),
            )
        if binascii.hexlify(self._h.digest()).decode() != self.sha256:
            raise Refused("artifact_mismatch", self.name + ": SHA-256 does not match the manifest")


def verify_file(path, size, sha256_hex, buf=None):
    global _buf
    if buf is None:
        if _buf is None:
            _buf = bytearray(CHUNK)
        buf = _buf
    view = memoryview(buf)
    if len(view) > CHUNK:
        view = view[:CHUNK]
    stream = Sha256Stream(size, sha256_hex, path)
    try:
        f = open(path, "rb")
    except OSError:
        raise Refused("artifact_mismatch", path + ": missing") from None
    try:
        while True:
            n = f.readinto(view)
            if not n:
                break
            stream.update(view[:n])
    finally:
        f.close()
    stream.finish()


def app_file_spans(manifest):
    files = manifest.get("files")
    if manifest.get("kind") != "app" or not files:
        raise ValueError("not an app release")
    spans = []
    offset = 0
    for f in files:
        spans.append((f["path"], offset, f["size"], f["sha256"]))
        offset += f["size"]
    return spans
