"""ECDSA P-256 keys and signatures in the forms the protocol uses.

* Public keys travel as PEM (SubjectPublicKeyInfo); beacons, which cannot parse ASN.1 cheaply,
  also accept the raw uncompressed point ``04 || X || Y`` (65 bytes, hex in config files).
* A key's id is the lowercase hex SHA-256 of its DER SubjectPublicKeyInfo: for P-256 that is a
  fixed 26-byte prefix followed by the 65-byte point, so a beacon can compute it too.
* Signatures are ECDSA with SHA-256, encoded raw as ``r || s`` (two 32-byte big-endian integers,
  64 bytes), never DER: fixed length, trivial to parse on a microcontroller.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from navign_proto.errors import KeyFormatError, SignatureInvalidError, SignatureMalformedError

SIGNATURE_LENGTH = 64
POINT_LENGTH = 65
#: DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte uncompressed point follows it.
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_from_scalar(scalar: int) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key with this secret scalar (test vectors only: never for real keys)."""
    return ec.derive_private_key(scalar, ec.SECP256R1())


def private_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file holding it must be mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key and insist that it is P-256."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError("private key is not ECDSA P-256")
    return key


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as PEM to ``path`` with mode 0600, atomically; never overwrite a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, private_key_to_pem(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if path exists: an existing key is never replaced
    finally:
        tmp.unlink()


def public_key_to_pem(key: ec.EllipticCurvePublicKey) -> str:
    """SubjectPublicKeyInfo PEM, as carried in RegisterRequest.public_key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_to_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed point ``04 || X || Y``."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def load_public_key(data: str | bytes) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key from PEM, or from the uncompressed point (raw bytes or hex)."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    # A raw point is binary: its bytes may be anything, whitespace included (never strip it).
    is_raw_point = isinstance(data, bytes) and len(data) == POINT_LENGTH and data[0] == 4
    stripped = raw if is_raw_point else raw.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(stripped)
        else:
            point = stripped
            if len(point) == POINT_LENGTH * 2:
                point = bytes.fromhex(point.decode("ascii"))
            if len(point) != POINT_LENGTH or point[0] != 4:
                raise KeyFormatError("expected PEM or a 65-byte uncompressed P-256 point")
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except KeyFormatError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"not a P-256 public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError("public key is not ECDSA P-256")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(SPKI_PREFIX + public_key_to_point(key)).hexdigest()


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """A short human form of :func:`key_id` for logs and show-key: ``SHA256:ab12:cd34:...``."""
    digest = key_id(key)[:32]
    return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def sign(key: ec.EllipticCurvePrivateKey, message: bytes, *, deterministic: bool = False) -> bytes:
    """ECDSA-SHA256 over ``message``, returned raw as 64 bytes ``r || s``.

    ``deterministic`` uses RFC 6979 nonces (for reproducible test vectors).
    """
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=deterministic))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(key: ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> None:
    """Check a raw 64-byte ``r || s`` ECDSA-SHA256 signature; raise if it does not verify."""
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureMalformedError(
            f"signature must be {SIGNATURE_LENGTH} bytes r||s, got {len(signature)}"
        )
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _ORDER and 0 < s < _ORDER):
        raise SignatureInvalidError("signature r or s out of range")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalidError("signature does not verify") from exc
