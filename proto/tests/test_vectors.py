"""The golden vectors in proto/vectors/: produced by proto/scripts/make_vectors.py, checked here.

Each check recomputes the expected bytes from the documented definitions with hashlib and
cryptography directly, independently of the navign_proto code that produced them, and then
runs our own code against them. The MicroPython firmware tests read the same files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from navign_proto.canonical import canonical_json, parse_json
from navign_proto.checksums import CollectionDigest, MallChecksums
from navign_proto.errors import (
    CanonicalJSONError,
    ManifestError,
    ManifestFormatError,
    ManifestPolicyError,
    ManifestSignatureError,
    SignatureError,
)
from navign_proto.manifest import check_installable, open_envelope
from navign_proto.signing import verify_request
from navign_proto.versions import VersionError, compare_versions, parse_version

PROTO = Path(__file__).resolve().parents[1]
VECTORS = PROTO / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


KEYS = {k["name"]: k for k in load("keys.json")["keys"]}


def public(name: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(KEYS[name]["public_pem"].encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def raw_verify(key: ec.EllipticCurvePublicKey, message: bytes, sig: bytes) -> bool:
    """ECDSA-P256-SHA256 over raw r||s, straight from `cryptography`."""
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if r == 0 or s == 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def test_vectors_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTO / "scripts" / "make_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_keys() -> None:
    data = load("keys.json")
    prefix = bytes.fromhex(data["spki_prefix_hex"])
    for record in data["keys"]:
        key = ec.derive_private_key(int(record["private_scalar_hex"], 16), ec.SECP256R1())
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert point.hex() == record["public_point_hex"]
        der = public(record["name"]).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert der == prefix + point
        assert hashlib.sha256(der).hexdigest() == record["keyid"]


RFC8785_PUBLISHED = {
    # Expected outputs as printed in RFC 8785, sections 3.2.2 and 3.2.3.
    "rfc8785-3.2.2": (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ),
    "rfc8785-3.2.3-sorting": (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ),
}


def test_canonical_json_vectors() -> None:
    data = load("canonical_json.json")
    for case in data["valid"]:
        expected = case["canonical"].encode("utf-8")
        assert expected.hex() == case["canonical_hex"]
        assert canonical_json(parse_json(case["input"])) == expected, case["name"]
        if case["name"] in RFC8785_PUBLISHED:
            assert case["canonical"] == RFC8785_PUBLISHED[case["name"]]
    for case in data["rejected"]:
        with pytest.raises(CanonicalJSONError):
            canonical_json(parse_json(case["input"]))


def test_checksum_vectors_from_the_documented_form_alone() -> None:
    data = load("checksums.json")
    totals: dict[str, tuple[int, int]] = {}
    for doc in data["documents"]:
        digest = hashlib.sha256(
            b"navign-doc-v1\x00"
            + doc["collection"].encode()
            + b"\x00"
            + doc["canonical"].encode("utf-8")
        ).hexdigest()
        assert digest == doc["digest_hex"]
        count, total = totals.get(doc["collection"], (0, 0))
        totals[doc["collection"]] = (count + 1, (total + int(digest, 16)) % 2**256)
    for name, expected in data["collections"].items():
        count, total = totals.get(name, (0, 0))
        assert (count, f"{total:064x}") == (expected["count"], expected["total_hex"])
        checksum = hashlib.sha256(
            b"navign-collection-v1\x00"
            + name.encode()
            + b"\x00"
            + count.to_bytes(8, "big")
            + total.to_bytes(32, "big")
        ).hexdigest()
        assert f"sha256:{checksum}" == expected["checksum"] == data["checksums"][name]
    body = (
        "{" + ",".join(f'"{n}":"{data["checksums"][n]}"' for n in sorted(data["collections"])) + "}"
    )
    assert data["checksums"]["global"] == "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def test_checksum_vectors_with_our_code() -> None:
    data = load("checksums.json")
    snapshot: dict[str, list[dict[str, Any]]] = {}
    for doc in data["documents"]:
        assert canonical_json(doc["document"]).decode() == doc["canonical"]
        snapshot.setdefault(doc["collection"], []).append(doc["document"])
    state = MallChecksums.of(snapshot)
    assert state.checksums() == data["checksums"]
    assert MallChecksums.empty().checksums() == data["empty"]
    for step in data["incremental"]["steps"]:
        digest: CollectionDigest = state.get(step["collection"])
        if step["op"] == "create":
            digest = digest.add(step["new"])
        elif step["op"] == "update":
            digest = digest.replace(step["old"], step["new"])
        else:
            digest = digest.remove(step["old"])
        state = state.with_digest(digest)
    assert state.checksums() == data["incremental"]["checksums"]


# Worked by hand from the rules: pairs decoded, sorted, re-encoded keeping only -_.~ literal.
CANONICAL_QUERIES = {
    "query-sorted-and-reencoded": "cursor=42&entity_id=mall-demo&include=areas%2Cbeacons&limit=500"
}


def test_request_signature_vectors() -> None:
    data = load("request_signatures.json")
    key = public(data["key"])
    for case in data["valid"]:
        canonical = "\n".join(
            [
                "NAVIGN-REQUEST-V1",
                case["method"],
                case["path"],
                CANONICAL_QUERIES.get(case["name"], ""),
                str(case["timestamp"]),
                case["nonce"],
                hashlib.sha256(case["body"].encode()).hexdigest(),
            ]
        )
        assert canonical == case["canonical_request"], case["name"]
        signature = bytes.fromhex(case["signature_hex"])
        assert raw_verify(key, canonical.encode(), signature)
        assert base64.b64decode(case["headers"]["X-Signature"]) == signature
        verify_request(
            key,
            case["method"],
            case["path"],
            case["query"],
            case["body"].encode(),
            case["headers"],
            now=case["timestamp"],
        )
    for case in data["tampered"]:
        headers = {
            "X-Signature": base64.b64encode(bytes.fromhex(case["signature_hex"])).decode(),
            "X-Timestamp": str(case["timestamp"]),
            "X-Nonce": case["nonce"],
        }
        with pytest.raises(SignatureError):
            verify_request(
                key,
                case["method"],
                case["path"],
                case["query"],
                case["body"].encode(),
                headers,
                now=case["timestamp"],
            )


def test_every_bit_flip_of_a_request_signature_fails() -> None:
    data = load("request_signatures.json")
    key = public(data["key"])
    case = data["valid"][0]
    message = case["canonical_request"].encode()
    signature = bytes.fromhex(case["signature_hex"])
    for bit in range(len(signature) * 8):
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not raw_verify(key, message, bytes(flipped)), bit


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return (
        b"DSSEv1 "
        + str(len(t)).encode()
        + b" "
        + t
        + b" "
        + str(len(payload)).encode()
        + b" "
        + payload
    )


def test_manifest_vectors_valid() -> None:
    data = load("manifests.json")
    trusted = [public(name) for name in data["trusted_keys"]]
    for case in data["valid"]:
        envelope = json.loads(case["envelope"])
        payload = base64.b64decode(envelope["payload"])
        assert payload.decode() == case["payload_canonical"]
        assert hashlib.sha256(payload).hexdigest() == case["manifest_sha256"]
        assert json.loads(payload) == case["manifest"]
        if "pae_hex" in case:
            assert pae(envelope["payloadType"], payload).hex() == case["pae_hex"]
        by_id = {k["keyid"]: name for name, k in KEYS.items()}
        assert any(
            raw_verify(
                public(by_id[s["keyid"]]),
                pae(data["payload_type"], payload),
                base64.b64decode(s["sig"]),
            )
            for s in envelope["signatures"]
            if by_id.get(s["keyid"]) in data["trusted_keys"]
        )
        verified = open_envelope(case["envelope"].encode(), trusted)
        assert verified.manifest_sha256 == case["manifest_sha256"]
        for path, content in case.get("files", {}).items():
            entry = next(f for f in verified.manifest.files or () if f.path == path)
            assert hashlib.sha256(content.encode()).hexdigest() == entry.sha256


def test_every_bit_flip_of_a_signed_manifest_fails() -> None:
    data = load("manifests.json")
    trusted = [public(name) for name in data["trusted_keys"]]
    envelope = json.loads(data["valid"][0]["envelope"])
    payload = base64.b64decode(envelope["payload"])
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    for blob, field in ((payload, "payload"), (sig, "sig")):
        for bit in range(len(blob) * 8):
            flipped = bytearray(blob)
            flipped[bit // 8] ^= 1 << (bit % 8)
            tampered = json.loads(json.dumps(envelope))
            encoded = base64.b64encode(bytes(flipped)).decode()
            if field == "payload":
                tampered["payload"] = encoded
            else:
                tampered["signatures"][0]["sig"] = encoded
            with pytest.raises(ManifestError):
                open_envelope(json.dumps(tampered).encode(), trusted)


def test_manifest_vectors_invalid() -> None:
    data = load("manifests.json")
    trusted = [public(name) for name in data["trusted_keys"]]
    expected_error = {
        "invalid_signature": ManifestSignatureError,
        "invalid_format": ManifestFormatError,
    }
    assert len(data["invalid"]) >= 10
    for case in data["invalid"]:
        with pytest.raises(expected_error[case["expect"]]):
            open_envelope(case["envelope"].encode(), trusted)


def test_manifest_policy_vectors() -> None:
    data = load("manifests.json")
    trusted = [public(name) for name in data["trusted_keys"]]
    manifest = open_envelope(data["valid"][0]["envelope"].encode(), trusted).manifest
    for case in data["policy"]:
        now = datetime.strptime(case["now"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        kwargs = {
            "target": case["target"],
            "current_version": case["version"],
            "current_secure_version": case["secure_version"],
            "now": now,
        }
        if case["expect"] == "ok":
            check_installable(manifest, **kwargs)
        else:
            with pytest.raises(ManifestPolicyError) as info:
                check_installable(manifest, **kwargs)
            assert info.value.reason == case["expect"]


def test_version_vectors() -> None:
    data = load("versions.json")
    ascending = data["ascending"]
    for i, a in enumerate(ascending):
        for j, b in enumerate(ascending):
            assert compare_versions(a, b) == (i > j) - (i < j), (a, b)
    for text in data["rejected"]:
        with pytest.raises(VersionError):
            parse_version(text)


def test_checksum_documents_are_stored_mall_documents() -> None:
    """The vectors' documents are what a server stores: valid, in their dumped form."""
    from navign_proto.mall import COLLECTIONS as MALL_MODELS

    data = load("checksums.json")
    steps = data["incremental"]["steps"]
    documents = [(d["collection"], d["document"]) for d in data["documents"]] + [
        (s["collection"], s[k]) for s in steps for k in ("old", "new") if k in s
    ]
    for collection, document in documents:
        assert MALL_MODELS[collection].model_validate(document).document() == document
