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
# (navign.dsse holds steps 1-2; navign.artifact the artifact checks below)
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
import hashlib
import time

from navign import semver
from navign.errors import Refused

SCHEMA = "navign.release.v1"


# ---- steps 1-4 ----------------------------------------------------------------------------


def keyid(point):
    from navign import dsse

    return dsse.keyid(point)


def open_envelope(data, trusted, threshold=1):
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    import navign
    from navign import dsse

    try:
        payload = dsse.verify(data, trusted, threshold)
        # The signature code is not needed any more; and the manifest outlives this call:
        # collect the verification's temporaries first, so that it is built in the lowest free
        # blocks instead of splitting the free heap.
        dsse = None
        navign.unload(("dsse", "p256"))
        return parse_manifest(payload)
    except MemoryError:
        raise Refused("too_large", "the envelope does not fit in memory") from None


def parse_manifest(payload, check_schema=True):
    # Steps 3-4 on verified payload bytes: (manifest, payload, manifest_sha256). With
    # check_schema=False the caller runs step 4 itself (navign.schema.check), after unloading
    # the JSON parser.
    from navign import jcs

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
    jcs = None
    if check_schema:
        from navign import schema

        schema.check(doc)
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
            if not isinstance(t, str) or len(t) != 20 or t[10] != "T" or t[19] != "Z":
                raise ValueError("times are YYYY-MM-DDTHH:MM:SSZ")
            if moment is None or t > moment:
                moment = t
    if expires is not None and moment is not None and moment >= expires:
        raise Refused("expired", "release expired at " + expires)
