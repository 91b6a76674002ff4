from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.errors import KeyFormatError, SignatureInvalidError, SignatureMalformedError


def test_public_key_forms_load_to_the_same_key() -> None:
    public = keys.generate_private_key().public_key()
    pem = keys.public_key_to_pem(public)
    point = keys.public_key_to_point(public)
    assert len(point) == 65
    ids = {keys.key_id(keys.load_public_key(form)) for form in (pem, point, point.hex())}
    assert ids == {keys.key_id(public)}


def test_a_raw_point_whose_last_byte_is_whitespace_loads() -> None:
    # Found by CI: a random key's point ended in b"\r" and was stripped to 64 bytes.
    for scalar in range(1, 2000):
        public = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
        point = keys.public_key_to_point(public)
        if point[-1:] in (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c"):
            break
    else:
        raise AssertionError("no such key among the first 2,000")
    assert keys.key_id(keys.load_public_key(point)) == keys.key_id(public)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "04" + "00" * 64,  # not on the curve
        "02" + "11" * 32,  # compressed points are not accepted
        b"\x04" + b"\x01" * 10,
    ],
)
def test_bad_public_keys(data: str | bytes) -> None:
    with pytest.raises(KeyFormatError):
        keys.load_public_key(data)


def test_rsa_key_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError):
        keys.load_public_key(pem)


def test_key_id_is_sha256_of_spki_der() -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    public = keys.generate_private_key().public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.key_id(public) == hashlib.sha256(der).hexdigest()
    assert keys.fingerprint(public).startswith("SHA256:" + keys.key_id(public)[:4])


def test_sign_verify_and_tamper() -> None:
    key = keys.generate_private_key()
    sig = keys.sign(key, b"message")
    assert len(sig) == 64
    keys.verify(key.public_key(), b"message", sig)
    with pytest.raises(SignatureInvalidError):
        keys.verify(key.public_key(), b"messagE", sig)
    with pytest.raises(SignatureMalformedError):
        keys.verify(key.public_key(), b"message", sig + b"\x00")


def test_deterministic_signatures_repeat() -> None:
    key = keys.private_key_from_scalar(7)
    assert keys.sign(key, b"m", deterministic=True) == keys.sign(key, b"m", deterministic=True)


def test_write_private_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.pem"
    key = keys.generate_private_key()
    keys.write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keys.load_private_key_pem(path.read_bytes())
    assert keys.key_id(loaded.public_key()) == keys.key_id(key.public_key())
    with pytest.raises(FileExistsError):
        keys.write_private_key(path, keys.generate_private_key())
    assert keys.key_id(keys.load_private_key_pem(path.read_bytes()).public_key()) == keys.key_id(
        key.public_key()
    )
    assert [p.name for p in path.parent.iterdir()] == ["identity.pem"]


def test_load_private_key_refuses_garbage() -> None:
    with pytest.raises(KeyFormatError):
        keys.load_private_key_pem(b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
