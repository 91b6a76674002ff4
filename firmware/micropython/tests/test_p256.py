"""``navign.p256.verify`` on the real MicroPython interpreter against ``cryptography``.

Every case is a (point, digest, signature) triple with the answer it must get, written down from
how the case was built (a signature made by ``cryptography``, or a tampered one). ``cryptography``
(OpenSSL) is asked too, as an independent oracle, and must agree with that answer. The cases go
to one MicroPython process (96 KiB heap) as a JSON-lines file; it prints one JSON line per case.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from navign_firmware import measure, unix
from navign_proto import keys, manifest

VECTORS: Final = Path(__file__).resolve().parents[3] / "proto" / "vectors"

# P-256 (SEC 2 / FIPS 186-4), for building special cases on the host.
P: Final = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G: Final = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)

Point = tuple[int, int] | None  # None: the point at infinity


def _add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def _mul(k: int, point: Point) -> Point:
    result: Point = None
    addend = point
    while k:
        if k & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        k >>= 1
    return result


def _encode(point: Point) -> bytes:
    assert point is not None
    return b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


def _raw(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def oracle(point: bytes, digest: bytes, sig: bytes) -> bool:
    """OpenSSL's answer under the protocol's rules (§2.1): a 65-byte uncompressed point, a
    32-byte SHA-256, a raw 64-byte r||s with 0 < r, s < n."""
    if len(point) != 65 or point[0] != 4 or len(digest) != 32 or len(sig) != 64:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (ValueError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class Case:
    name: str
    point: bytes
    digest: bytes
    sig: bytes
    expect: bool


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (7 - bit % 8)
    return bytes(out)


def golden_cases() -> Iterator[Case]:
    key_vectors = {k["name"]: k for k in json.loads((VECTORS / "keys.json").read_text())["keys"]}
    requests = json.loads((VECTORS / "request_signatures.json").read_text())
    gateway = bytes.fromhex(key_vectors[requests["key"]]["public_point_hex"])
    for case in requests["valid"]:
        yield Case(
            f"request-{case['name']}",
            gateway,
            hashlib.sha256(case["canonical_request"].encode()).digest(),
            bytes.fromhex(case["signature_hex"]),
            True,
        )
    manifests = json.loads((VECTORS / "manifests.json").read_text())
    by_keyid = {k["keyid"]: bytes.fromhex(k["public_point_hex"]) for k in key_vectors.values()}
    for case in manifests["valid"]:
        envelope = json.loads(case["envelope"])
        pae = manifest.pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
        for i, entry in enumerate(envelope["signatures"]):
            yield Case(
                f"manifest-{case['name']}-{i}",
                by_keyid[entry["keyid"]],
                hashlib.sha256(pae).digest(),
                base64.b64decode(entry["sig"]),
                True,
            )


def random_cases(count: int = 50, seed: int = 20261127) -> Iterator[Case]:
    """``count`` keys and messages from a seeded generator, signed by ``cryptography`` (RFC 6979),
    each also in its high-S form, and tampered: one bit flipped in r, s, the digest, the point."""
    rng = random.Random(seed)
    for i in range(count):
        scalar = rng.randrange(1, N)
        key = keys.private_key_from_scalar(scalar)
        point = keys.public_key_to_point(key.public_key())
        message = rng.randbytes(rng.randrange(0, 200))
        digest = hashlib.sha256(message).digest()
        sig = keys.sign(key, message, deterministic=True)
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        yield Case(f"random-{i}", point, digest, sig, True)
        yield Case(f"random-{i}-other-s-form", point, digest, _raw(r, N - s), True)
        yield Case(f"random-{i}-flip-r", point, digest, _flip(sig, rng.randrange(256)), False)
        yield Case(f"random-{i}-flip-s", point, digest, _flip(sig, 256 + rng.randrange(256)), False)
        yield Case(f"random-{i}-flip-digest", point, _flip(digest, rng.randrange(256)), sig, False)
        yield Case(
            f"random-{i}-flip-point", _flip(point, 8 + rng.randrange(512)), digest, sig, False
        )


def edge_cases() -> Iterator[Case]:
    rng = random.Random(7)
    key = keys.private_key_from_scalar(0x1234567890ABCDEF)
    point = keys.public_key_to_point(key.public_key())
    digest = hashlib.sha256(b"edge").digest()
    sig = keys.sign(key, b"edge", deterministic=True)
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    yield Case("edge-reference", point, digest, sig, True)
    small_r = 0x00FF  # r + n fits in 32 bytes: the same value mod n, still refused
    for name, rr, ss in (
        ("range-r-zero", 0, s),
        ("range-s-zero", r, 0),
        ("range-both-zero", 0, 0),
        ("range-r-equals-n", N, s),
        ("range-s-equals-n", r, N),
        ("range-r-plus-n", small_r + N, s),
        ("range-s-plus-n-wrapped", r, (s + N) % 2**256),
        ("range-r-n-plus-1", N + 1, s),
        ("range-s-n-plus-1", r, N + 1),
        ("range-r-all-ones", 2**256 - 1, s),
        ("range-s-all-ones", r, 2**256 - 1),
        ("range-r-one", 1, s),
        ("range-s-one", r, 1),
    ):
        yield Case(name, point, digest, _raw(rr, ss), False)
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    yield Case("point-off-curve-y+1", _encode((x, (y + 1) % P)), digest, sig, False)
    yield Case("point-negated", _encode((x, P - y)), digest, sig, False)
    yield Case("point-x-equals-p", _encode((P, y)), digest, sig, False)
    yield Case("point-y-equals-p", _encode((x, P)), digest, sig, False)
    yield Case("point-all-zero", b"\x04" + bytes(64), digest, sig, False)
    yield Case("point-all-ones", b"\x04" + b"\xff" * 64, digest, sig, False)
    yield Case("point-prefix-02", b"\x02" + point[1:], digest, sig, False)
    yield Case("point-prefix-06-hybrid", b"\x06" + point[1:], digest, sig, False)
    yield Case("point-prefix-00", b"\x00" + point[1:], digest, sig, False)
    compressed = bytes([2 + (y & 1)]) + point[1:33]
    yield Case("point-compressed-33", compressed, digest, sig, False)
    yield Case("point-infinity-sec1", b"\x00", digest, sig, False)
    yield Case("point-64-bytes", point[1:], digest, sig, False)
    yield Case("point-66-bytes", point + b"\x00", digest, sig, False)
    yield Case("point-empty", b"", digest, sig, False)
    yield Case("sig-63-bytes", point, digest, sig[:63], False)
    yield Case("sig-65-bytes", point, digest, sig + b"\x00", False)
    yield Case("sig-empty", point, digest, b"", False)
    yield Case("sig-der", point, digest, encode_dss_signature(r, s), False)
    yield Case("digest-31-bytes", point, digest[:31], sig, False)
    yield Case("digest-33-bytes", point, digest + b"\x00", sig, False)
    yield Case("digest-sha512", point, hashlib.sha512(b"edge").digest(), sig, False)
    yield Case("digest-empty", point, b"", sig, False)

    # u1*G + u2*Q at infinity: Q = k*G and e = -r*k (mod n), so (e + r*k) / s = 0.
    for i in range(4):
        k = rng.randrange(1, N)
        q = _mul(k, G)
        rr = rng.randrange(1, N)
        ss = rng.randrange(1, N)
        e = (-rr * k) % N
        yield Case(f"sum-at-infinity-{i}", _encode(q), e.to_bytes(32, "big"), _raw(rr, ss), False)
    # Keys +-G, +-2G: the sum meets the table points (doubling and cancelling additions).
    for label, d in (("G", 1), ("2G", 2), ("minus-G", N - 1), ("minus-2G", N - 2)):
        small = keys.private_key_from_scalar(d)
        q_bytes = keys.public_key_to_point(small.public_key())
        for j in range(3):
            message = b"small key %d" % j
            sig_small = keys.sign(small, message, deterministic=True)
            yield Case(
                f"key-{label}-{j}",
                q_bytes,
                hashlib.sha256(message).digest(),
                sig_small,
                True,
            )
            rs = int.from_bytes(sig_small[:32], "big")
            # e = r: for Q = G, R = 2*(r/s)*G; for Q = -G, R = infinity. Not valid signatures.
            yield Case(
                f"key-{label}-{j}-e-equals-r",
                q_bytes,
                rs.to_bytes(32, "big"),
                sig_small,
                False,
            )
    # x(R) in [n, p): r = x(R) - n is small and only "r + n" matches (a rare branch, forced):
    # pick R with x = n + t on the curve, any u1, u2, then Q = (R - u1*G) / u2.
    t = 1
    while True:
        xr = N + t
        rhs = (xr**3 - 3 * xr + B) % P
        yr = pow(rhs, (P + 1) // 4, P)
        if yr * yr % P == rhs:
            break
        t += 1
    big_r = (xr, yr)
    for i in range(3):
        u1 = rng.randrange(1, N)
        u2 = rng.randrange(1, N)
        minus_u1g = _mul(N - u1, G)
        q = _mul(pow(u2, -1, N), _add(big_r, minus_u1g))
        ss = t * pow(u2, -1, N) % N
        e = u1 * ss % N
        yield Case(f"x-above-n-{i}", _encode(q), e.to_bytes(32, "big"), _raw(t, ss), True)
        yield Case(
            f"x-above-n-{i}-wrong-r", _encode(q), e.to_bytes(32, "big"), _raw(t + 1, ss), False
        )
        # r = x(R) itself, which is >= n: out of range even though it "matches".
        yield Case(f"x-above-n-{i}-r-is-x", _encode(q), e.to_bytes(32, "big"), _raw(xr, ss), False)
    # A point with a small x also has the encoding (x + p, y), which is not canonical: refused.
    # Its signature is made without its private key (ECDSA admits signatures on chosen digests:
    # R = u1*G + u2*Q, r = x(R), s = r/u2, e = u1*s), which is all this needs.
    xs = 0
    while True:
        rhs = (xs**3 - 3 * xs + B) % P
        ys = pow(rhs, (P + 1) // 4, P)
        if ys * ys % P == rhs:
            break
        xs += 1
    u1 = rng.randrange(1, N)
    u2 = rng.randrange(1, N)
    big_r3 = _add(_mul(u1, G), _mul(u2, (xs, ys)))
    assert big_r3 is not None
    rr = big_r3[0] % N
    ss = rr * pow(u2, -1, N) % N
    forged = (u1 * ss % N).to_bytes(32, "big")
    yield Case("point-small-x", _encode((xs, ys)), forged, _raw(rr, ss), True)
    yield Case("point-small-x-plus-p", _encode((xs + P, ys)), forged, _raw(rr, ss), False)
    # Valid signatures with a small s (built the same way: any R, then Q), so that s + n still
    # fits in 32 bytes: the same s mod n, out of range.
    for i in range(3):
        k = rng.randrange(1, N)
        big_r2 = _mul(k, G)
        assert big_r2 is not None
        rr = big_r2[0] % N
        ss = 7 + i
        u2 = rr * pow(ss, -1, N) % N
        u1 = rng.randrange(1, N)
        q = _mul(pow(u2, -1, N), _add(big_r2, _mul(N - u1, G)))
        e = u1 * ss % N
        yield Case(f"small-s-{i}", _encode(q), e.to_bytes(32, "big"), _raw(rr, ss), True)
        yield Case(
            f"small-s-{i}-plus-n", _encode(q), e.to_bytes(32, "big"), _raw(rr, ss + N), False
        )


def all_cases() -> list[Case]:
    return [*golden_cases(), *random_cases(), *edge_cases()]


SCRIPT: Final = """
import json, binascii
from navign import p256
u = binascii.unhexlify
for line in open(%r):
    c = json.loads(line)
    try:
        got = p256.verify(u(c["point"]), u(c["digest"]), u(c["sig"]))
    except Exception as exc:
        got = "raised " + repr(exc)
    print(json.dumps([c["name"], got]))
# Hostile types: never an exception.
Q = u(%r)
ok = []
for args in ((None, bytes(32), bytes(64)), ("04" * 65, bytes(32), bytes(64)), (7, [], {}),
             (Q, None, bytes(64)), (Q, "d" * 32, bytes(64)), (Q, bytes(32), "s" * 64),
             (Q, bytes(32), None), (Q, bytes(32), [1] * 64)):
    try:
        ok.append(p256.verify(*args))
    except Exception as exc:
        ok.append("raised " + repr(exc))
print(json.dumps(["hostile-types", ok]))
print(json.dumps(["valid_point", [p256.valid_point(Q), p256.valid_point(b"\\x04" + bytes(64)),
                                   p256.valid_point(None), p256.valid_point(Q[:64])]]))
"""


def run_cases(cases: list[Case], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "cases.jsonl"
    with path.open("w") as out:
        for c in cases:
            record = {
                "name": c.name,
                "point": c.point.hex(),
                "digest": c.digest.hex(),
                "sig": c.sig.hex(),
            }
            out.write(json.dumps(record) + "\n")
    result = unix.run(SCRIPT % (str(path), cases[0].point.hex()))
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {name: got for name, got in lines}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_cases(all_cases(), tmp_path_factory.mktemp("p256"))


def test_the_cases_are_what_they_claim() -> None:
    """The oracle agrees with every case's stated answer (so the cases test what they say)."""
    cases = all_cases()
    assert len({c.name for c in cases}) == len(cases)
    assert sum(c.expect for c in cases) >= 100
    assert sum(not c.expect for c in cases) >= 200
    wrong = [c.name for c in cases if oracle(c.point, c.digest, c.sig) != c.expect]
    assert wrong == []


GROUPS: Final = (
    "request-",
    "manifest-",
    "random-",
    "edge-",
    "range-",
    "point-",
    "sig-",
    "digest-",
    "sum-at-infinity-",
    "key-",
    "x-above-n-",
    "small-s-",
)


@pytest.mark.parametrize("group", GROUPS)
def test_verify_agrees(group: str, results: dict[str, Any]) -> None:
    cases = [c for c in all_cases() if c.name.startswith(group)]
    assert cases
    mismatches = {c.name: results.get(c.name) for c in cases if results.get(c.name) != c.expect}
    assert mismatches == {}


def test_every_case_ran_and_is_grouped(results: dict[str, Any]) -> None:
    names = {c.name for c in all_cases()}
    assert set(results) >= names
    assert all(any(n.startswith(g) for g in GROUPS) for n in names)


def test_hostile_types_return_false(results: dict[str, Any]) -> None:
    assert results["hostile-types"] == [False] * 8


def test_valid_point(results: dict[str, Any]) -> None:
    assert results["valid_point"] == [True, False, False, False]


def test_measure_signature_verification() -> None:
    times = measure.signature_verification_ms(3)
    assert len(times) == 3
    assert all(0 < t < 2000 for t in times)
    assert measure.host_cpu()
