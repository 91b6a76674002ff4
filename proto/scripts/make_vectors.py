"""Write (or, with --check, verify) the golden test vectors in proto/vectors/.

The vectors are the byte-for-byte agreement between every implementation of the protocol: the
CPython packages, the MicroPython beacon firmware, and anyone else's. They are deterministic
(fixed test keys, RFC 6979 signatures, fixed times), so regenerating them must change nothing.

    uv run python proto/scripts/make_vectors.py          # rewrite proto/vectors/*.json
    uv run python proto/scripts/make_vectors.py --check  # exit 1 if a committed file drifted

The keys below are TEST KEYS, published here: never trust them on a real device.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.checksums import COLLECTIONS, MallChecksums, document_digest
from navign_proto.mall import COLLECTIONS as MALL_MODELS
from navign_proto.mall import Chip
from navign_proto.manifest import (
    PAYLOAD_TYPE,
    FileEntry,
    ImageEntry,
    ReleaseManifest,
    envelope_bytes,
    pae,
    sign_manifest,
)
from navign_proto.signing import canonical_request, sign_request

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Test-only secret scalars. Public on purpose.
RELEASE_KEY_SCALAR = 0x6E61766967_6E2D72656C65617365_2D746573742D6B6579_2D31
RELEASE_KEY_2_SCALAR = 0x6E61766967_6E2D72656C65617365_2D746573742D6B6579_2D32
GATEWAY_KEY_SCALAR = 0x6E61766967_6E2D676174657761792D_746573742D6B6579
ATTACKER_KEY_SCALAR = 0x61747461636B65722D6B6579


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_record(name: str, scalar: int) -> dict[str, Any]:
    key = keys.private_key_from_scalar(scalar)
    public = key.public_key()
    return {
        "name": name,
        "private_scalar_hex": f"{scalar:064x}",
        "public_pem": keys.public_key_to_pem(public),
        "public_point_hex": keys.public_key_to_point(public).hex(),
        "keyid": keys.key_id(public),
    }


def keys_vectors() -> dict[str, Any]:
    return {
        "description": (
            "TEST KEYS ONLY (private scalars are public). keyid = hex SHA-256 of the DER "
            "SubjectPublicKeyInfo = SHA-256(spki_prefix || public point)."
        ),
        "spki_prefix_hex": keys.SPKI_PREFIX.hex(),
        "keys": [
            _key_record("release-1", RELEASE_KEY_SCALAR),
            _key_record("release-2", RELEASE_KEY_2_SCALAR),
            _key_record("gateway", GATEWAY_KEY_SCALAR),
            _key_record("attacker", ATTACKER_KEY_SCALAR),
        ],
    }


# RFC 8785 section 3.2.2 and 3.2.3 examples, plus our own edge cases.
CANONICAL_CASES: list[tuple[str, str]] = [
    (
        "rfc8785-3.2.2",
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}',
    ),
    (
        "rfc8785-3.2.3-sorting",
        '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With'
        ' Dagesh", "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
        ' "\\u00f6": "Latin Small Letter O With Diaeresis"}',
    ),
    ("nested-and-empty", '{"b": [], "a": {"z": {}, "y": [1, [2, []]]}, "c": ""}'),
    ("integers", "[0, -0, 1, -1, 9007199254740991, -9007199254740991, 1.0, 100e-2]"),
    ("floats", "[0.1, -1.5, 1e21, 1e-7, 123456789.125, 5e-324, 1.7976931348623157e308]"),
    ("unicode-literal", '{"name": "Caf\\u00e9 \\u5546\\u573a", "tab": "a\\tb", "nul": "\\u0000"}'),
    (
        "mall-area",
        '{"id": "area-1", "entity_id": "mall-1", "name": "Atrium", "floor": {"type": "floor",'
        ' "name": 1}, "polygon": [[0, 0], [40.5, 0], [40.5, 22.25], [0, 22.25]],'
        ' "beacon_code": "A1"}',
    ),
]

REJECTED_CASES: list[tuple[str, str]] = [
    ("integer-beyond-2^53", "[9007199254740992]"),
    ("duplicate-key", '{"a": 1, "a": 2}'),
    ("nan-literal", "[NaN]"),
    ("infinity-literal", "[Infinity]"),
]


def canonical_vectors() -> dict[str, Any]:
    from navign_proto.canonical import parse_json

    valid = []
    for name, text in CANONICAL_CASES:
        output = canonical_json(parse_json(text))
        valid.append(
            {
                "name": name,
                "input": text,
                "canonical": output.decode("utf-8"),
                "canonical_hex": output.hex(),
            }
        )
    return {
        "description": "RFC 8785 (JCS) canonical JSON: input text -> canonical UTF-8 bytes.",
        "valid": valid,
        "rejected": [{"name": name, "input": text} for name, text in REJECTED_CASES],
    }


_RAW_MALL_DOCS: dict[str, list[dict[str, Any]]] = {
    "areas": [
        {
            "id": "area-atrium",
            "entity_id": "mall-demo",
            "name": "Atrium",
            "floor": {"type": "floor", "number": 1},
            "polygon": [[0, 0], [40.5, 0], [40.5, 22.25], [0, 22.25]],
            "beacon_code": "A1",
        },
        {
            "id": "area-food-court",
            "entity_id": "mall-demo",
            "name": "Food Court \u7f8e\u98df\u5e7f\u573a",
            "floor": {"type": "floor", "number": 2},
            "polygon": [[0, 0], [30, 0], [30, 30], [0, 30]],
            "beacon_code": "F2",
        },
    ],
    "beacons": [
        {
            "id": "beacon-0001",
            "entity_id": "mall-demo",
            "area_id": "area-atrium",
            "name": "Atrium north",
            "type": "navigation",
            "location": {"x": 12.5, "y": 3},
            "device": "esp32c3",
            "mac": "24:6f:28:00:00:01",
            "major": 100,
            "minor": 1,
        }
    ],
    "merchants": [],
    "connections": [
        {
            "id": "conn-escalator-1",
            "entity_id": "mall-demo",
            "name": "Escalator 1",
            "type": "escalator",
            "connected_areas": [
                {"area_id": "area-atrium", "x": 20, "y": 11},
                {"area_id": "area-food-court", "x": 2, "y": 2},
            ],
            "tags": ["accessible"],
        }
    ],
}


def _stored(collection: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A document in the form the server stores and serves: validated, defaults filled in."""
    return MALL_MODELS[collection].model_validate(raw).document()


MALL_DOCS = {c: [_stored(c, d) for d in docs] for c, docs in _RAW_MALL_DOCS.items()}


def checksum_vectors() -> dict[str, Any]:
    docs = []
    for collection in COLLECTIONS:
        for document in MALL_DOCS[collection]:
            docs.append(
                {
                    "collection": collection,
                    "document": document,
                    "canonical": canonical_json(document).decode("utf-8"),
                    "digest_hex": f"{document_digest(collection, document):064x}",
                }
            )
    state = MallChecksums.of(MALL_DOCS)
    collections = {}
    for collection in COLLECTIONS:
        digest = state.get(collection)
        count, total = digest.to_storage()
        collections[collection] = {"count": count, "total_hex": total, "checksum": digest.checksum}

    # One incremental step: update the beacon, delete the escalator, add a merchant.
    updated_beacon = _stored(
        "beacons", {**MALL_DOCS["beacons"][0], "name": "Atrium north (moved)", "minor": 2}
    )
    merchant = _stored(
        "merchants",
        {
            "id": "merchant-tea",
            "entity_id": "mall-demo",
            "area_id": "area-food-court",
            "name": "Tea House",
            "type": "food",
            "location": {"x": 5, "y": 6},
            "polygon": [[4, 5], [7, 5], [7, 8], [4, 8]],
            "opening_hours": [[[36_000_000, 79_200_000]]] * 7,
            "tags": [],
        },
    )
    after = state.with_digest(state.beacons.replace(MALL_DOCS["beacons"][0], updated_beacon))
    after = after.with_digest(after.connections.remove(MALL_DOCS["connections"][0]))
    after = after.with_digest(after.merchants.add(merchant))
    return {
        "description": (
            "Mall checksums. digest = SHA-256('navign-doc-v1' 0x00 collection 0x00 canonical); "
            "collection checksum = 'sha256:' + hex SHA-256('navign-collection-v1' 0x00 "
            "collection 0x00 count(8 bytes BE) total(32 bytes BE)), total = sum of digests "
            "mod 2^256; global = 'sha256:' + hex SHA-256(JCS({collection: checksum}))."
        ),
        "documents": docs,
        "collections": collections,
        "checksums": state.checksums(),
        "empty": MallChecksums.empty().checksums(),
        "incremental": {
            "steps": [
                {
                    "op": "update",
                    "collection": "beacons",
                    "old": MALL_DOCS["beacons"][0],
                    "new": updated_beacon,
                },
                {"op": "delete", "collection": "connections", "old": MALL_DOCS["connections"][0]},
                {"op": "create", "collection": "merchants", "new": merchant},
            ],
            "checksums": after.checksums(),
        },
    }


def _request_case(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    method: str,
    path: str,
    query: str,
    body: bytes,
    timestamp: int,
    nonce: str,
) -> dict[str, Any]:
    # sign_request uses random ECDSA nonces; vectors need RFC 6979 ones, so sign directly.
    canonical = canonical_request(method, path, query, timestamp, nonce, body)
    signature = keys.sign(key, canonical, deterministic=True)
    # The random-nonce signer must agree on every header but the signature itself.
    headers = sign_request(key, method, path, query, body, timestamp=timestamp, nonce=nonce)
    headers["X-Signature"] = _b64(signature)
    return {
        "name": name,
        "method": method,
        "path": path,
        "query": query,
        "body": body.decode("utf-8"),
        "timestamp": timestamp,
        "nonce": nonce,
        "canonical_request": canonical.decode("utf-8"),
        "signature_hex": signature.hex(),
        "headers": headers,
    }


def request_vectors() -> dict[str, Any]:
    gateway = keys.private_key_from_scalar(GATEWAY_KEY_SCALAR)
    register_body = canonical_json(
        {
            "entity_id": "mall-demo",
            "orchestrator_id": "gw-mall-demo-1",
            "version": "0.1.0",
            "capabilities": ["firmware_distribution", "beacon_management"],
            "public_key": keys.public_key_to_pem(gateway.public_key()),
            "heartbeat_interval": 60,
            "local_address": "http://gw-mall-demo-1.local:8080",
            "enrollment_token": "enr_test_0123456789abcdef",
        }
    )
    valid = [
        _request_case(
            "register",
            gateway,
            "POST",
            "/api/orchestrators/register",
            "",
            register_body,
            1_795_000_000,
            "bm9uY2UtcmVnaXN0ZXIx",
        ),
        _request_case(
            "refresh",
            gateway,
            "POST",
            "/api/orchestrators/token",
            "",
            canonical_json({"entity_id": "mall-demo", "orchestrator_id": "gw-mall-demo-1"}),
            1_795_000_100,
            "bm9uY2UtcmVmcmVzaDE",
        ),
        _request_case(
            "query-sorted-and-reencoded",
            gateway,
            "GET",
            "/api/orchestrators/sync/delta",
            "limit=500&cursor=42&entity_id=mall%2Ddemo&include=areas%2Cbeacons",
            b"",
            1_795_000_200,
            "bm9uY2UtZGVsdGEtMDE",
        ),
    ]
    base = valid[0]
    tampered = []
    for field, value in (
        ("method", "PUT"),
        ("path", "/api/orchestrators/register/"),
        ("query", "x=1"),
        ("body", base["body"].replace("mall-demo", "mall-evil", 1)),
        ("timestamp", base["timestamp"] + 1),
        ("nonce", "bm9uY2UtcmVnaXN0ZXIy"),
    ):
        case = copy.deepcopy(base)
        case["name"] = f"tampered-{field}"
        case[field] = value
        case["expect"] = "invalid_signature"
        tampered.append(case)
    attacker = keys.private_key_from_scalar(ATTACKER_KEY_SCALAR)
    forged = copy.deepcopy(base)
    forged["name"] = "signed-by-another-key"
    forged["signature_hex"] = keys.sign(
        attacker, base["canonical_request"].encode("utf-8"), deterministic=True
    ).hex()
    forged["expect"] = "invalid_signature"
    tampered.append(forged)
    return {
        "description": (
            "Signed requests. canonical_request = 'NAVIGN-REQUEST-V1', METHOD, path, canonical "
            "query, timestamp, nonce, hex SHA-256(body), joined by LF. Signature: ECDSA P-256 "
            "SHA-256, raw r||s, base64 in X-Signature. Verify with the 'gateway' key of "
            "keys.json; tampered cases keep the original signature."
        ),
        "key": "gateway",
        "public_pem": keys.public_key_to_pem(gateway.public_key()),
        "valid": valid,
        "tampered": tampered,
    }


def _set_sig(envelope: dict[str, Any], index: int, signature: bytes) -> dict[str, Any]:
    result = copy.deepcopy(envelope)
    result["signatures"][index]["sig"] = _b64(signature)
    return result


def manifest_vectors() -> dict[str, Any]:
    release = keys.private_key_from_scalar(RELEASE_KEY_SCALAR)
    release2 = keys.private_key_from_scalar(RELEASE_KEY_2_SCALAR)
    attacker = keys.private_key_from_scalar(ATTACKER_KEY_SCALAR)
    main_py = b"import navign\nnavign.run()\n"
    app = ReleaseManifest(
        name="navign-beacon-app",
        version="1.4.0",
        secure_version=2,
        target=Chip.ESP32C3,
        kind="app",
        files=[
            FileEntry(
                path="main.py", size=len(main_py), sha256=hashlib.sha256(main_py).hexdigest()
            ),
            FileEntry(path="navign/advertise.mpy", size=2048, sha256="ab" * 32),
        ],
        min_previous_version="1.2.0",
        created_at="2026-11-27T10:00:00Z",
        expires_at="2027-11-27T10:00:00Z",
    )
    image = ReleaseManifest(
        name="navign-beacon-fw",
        version="2.0.0-rc.1",
        secure_version=3,
        target=Chip.ESP32,
        kind="image",
        image=ImageEntry(size=1_572_864, sha256="cd" * 32),
        created_at="2026-11-27T10:00:00Z",
    )
    app_env = sign_manifest(app, [release], deterministic=True)
    image_env = sign_manifest(image, [release, release2], deterministic=True)

    payload = base64.b64decode(app_env["payload"])
    message = pae(PAYLOAD_TYPE, payload)
    good_sig = base64.b64decode(app_env["signatures"][0]["sig"])
    r = int.from_bytes(good_sig[:32], "big")
    s = int.from_bytes(good_sig[32:], "big")

    def raw(r_value: int, s_value: int) -> bytes:
        return r_value.to_bytes(32, "big") + s_value.to_bytes(32, "big")

    invalid: list[dict[str, Any]] = []

    def add(name: str, envelope: dict[str, Any], expect: str) -> None:
        invalid.append(
            {"name": name, "envelope": envelope_bytes(envelope).decode("ascii"), "expect": expect}
        )

    flipped_payload = bytearray(payload)
    flipped_payload[len(flipped_payload) // 2] ^= 0x01
    add(
        "payload-bit-flip",
        {**app_env, "payload": _b64(bytes(flipped_payload))},
        "invalid_signature",
    )
    flipped_sig = bytearray(good_sig)
    flipped_sig[10] ^= 0x80
    add("signature-bit-flip", _set_sig(app_env, 0, bytes(flipped_sig)), "invalid_signature")
    add(
        "signed-by-untrusted-key",
        sign_manifest(app, [attacker], deterministic=True),
        "invalid_signature",
    )
    forged = sign_manifest(app, [attacker], deterministic=True)
    forged["signatures"][0]["keyid"] = app_env["signatures"][0]["keyid"]
    add("untrusted-signature-claiming-trusted-keyid", forged, "invalid_signature")
    add("r-zero", _set_sig(app_env, 0, raw(0, s)), "invalid_signature")
    add("s-zero", _set_sig(app_env, 0, raw(r, 0)), "invalid_signature")
    add("r-equals-order", _set_sig(app_env, 0, raw(ORDER, s)), "invalid_signature")
    add("s-plus-order", _set_sig(app_env, 0, raw(r, (s + ORDER) % (1 << 256))), "invalid_signature")
    add("signature-truncated", _set_sig(app_env, 0, good_sig[:63]), "invalid_signature")
    add("wrong-payload-type", {**app_env, "payloadType": "application/json"}, "invalid_format")
    evil = json.loads(payload)
    evil["secure_version"] = 0
    evil_payload = json.dumps(evil, indent=1).encode()  # not canonical, but validly signed
    add(
        "signed-non-canonical-payload",
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": _b64(evil_payload),
            "signatures": [
                {
                    "keyid": keys.key_id(release.public_key()),
                    "sig": _b64(
                        keys.sign(release, pae(PAYLOAD_TYPE, evil_payload), deterministic=True)
                    ),
                }
            ],
        },
        "invalid_format",
    )
    no_schema_payload = canonical_json(
        {k: v for k, v in json.loads(payload).items() if k != "schema"}
    )
    add(
        "signed-manifest-without-schema",
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": _b64(no_schema_payload),
            "signatures": [
                {
                    "keyid": keys.key_id(release.public_key()),
                    "sig": _b64(
                        keys.sign(release, pae(PAYLOAD_TYPE, no_schema_payload), deterministic=True)
                    ),
                }
            ],
        },
        "invalid_format",
    )
    # A valid signature under the PAE of a different payload type: must not verify.
    cross = keys.sign(release, pae("application/json", payload), deterministic=True)
    add("signature-over-other-payload-type", _set_sig(app_env, 0, cross), "invalid_signature")

    # high-S: (r, n - s) is the same signature in the other form; ECDSA accepts both.
    high_s = _set_sig(app_env, 0, raw(r, ORDER - s))
    return {
        "description": (
            "Release manifests in DSSE envelopes. Trust the 'release-1' key of keys.json "
            "(image-esp32 is also signed by 'release-2'). Each signature: ECDSA P-256 SHA-256, "
            "raw r||s, over PAE = 'DSSEv1' SP len(type) SP type SP len(payload) SP payload."
        ),
        "payload_type": PAYLOAD_TYPE,
        "trusted_keys": ["release-1"],
        "valid": [
            {
                "name": "app-esp32c3",
                "envelope": envelope_bytes(app_env).decode("ascii"),
                "manifest": app.document(),
                "payload_canonical": payload.decode("ascii"),
                "pae_hex": message.hex(),
                "manifest_sha256": hashlib.sha256(payload).hexdigest(),
                "files": {"main.py": main_py.decode("ascii")},
            },
            {
                "name": "image-esp32",
                "envelope": envelope_bytes(image_env).decode("ascii"),
                "manifest": image.document(),
                "payload_canonical": image.to_bytes().decode("ascii"),
                "manifest_sha256": hashlib.sha256(image.to_bytes()).hexdigest(),
            },
            {
                "name": "app-esp32c3-high-s",
                "envelope": envelope_bytes(high_s).decode("ascii"),
                "manifest": app.document(),
                "payload_canonical": payload.decode("ascii"),
                "manifest_sha256": hashlib.sha256(payload).hexdigest(),
            },
        ],
        "invalid": invalid,
        "policy": [
            # device state -> expected outcome for the app-esp32c3 manifest
            {
                "target": "esp32c3",
                "version": "1.3.0",
                "secure_version": 2,
                "now": "2026-12-01T00:00:00Z",
                "expect": "ok",
            },
            {
                "target": "esp32",
                "version": "1.3.0",
                "secure_version": 2,
                "now": "2026-12-01T00:00:00Z",
                "expect": "wrong_target",
            },
            {
                "target": "esp32c3",
                "version": "1.4.0",
                "secure_version": 2,
                "now": "2026-12-01T00:00:00Z",
                "expect": "same_version",
            },
            {
                "target": "esp32c3",
                "version": "1.10.0",
                "secure_version": 2,
                "now": "2026-12-01T00:00:00Z",
                "expect": "downgrade",
            },
            {
                "target": "esp32c3",
                "version": "1.3.0",
                "secure_version": 3,
                "now": "2026-12-01T00:00:00Z",
                "expect": "secure_version",
            },
            {
                "target": "esp32c3",
                "version": "1.1.9",
                "secure_version": 1,
                "now": "2026-12-01T00:00:00Z",
                "expect": "min_previous_version",
            },
            {
                "target": "esp32c3",
                "version": "1.3.0",
                "secure_version": 2,
                "now": "2027-11-27T10:00:00Z",
                "expect": "expired",
            },
        ],
    }


def version_vectors() -> dict[str, Any]:
    # SemVer 2.0.0 section 11's precedence example, in ascending order, and more.
    ascending = [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.2.0",
        "1.10.0",
        "2.0.0",
        "10.0.0",
    ]
    return {
        "description": "SemVer 2.0.0 precedence; build metadata and other forms are refused.",
        "ascending": ascending,
        "rejected": [
            "1.2",
            "v1.2.3",
            "01.2.3",
            "1.2.3+build.5",
            "1.2.3-",
            " 1.2.3",
            "1.2.3.4",
            "1.0.0-01",
        ],
    }


def build_all() -> dict[str, bytes]:
    vectors = {
        "keys.json": keys_vectors(),
        "canonical_json.json": canonical_vectors(),
        "checksums.json": checksum_vectors(),
        "request_signatures.json": request_vectors(),
        "manifests.json": manifest_vectors(),
        "versions.json": version_vectors(),
    }
    return {
        name: (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        for name, data in vectors.items()
    }


def check(directory: Path = VECTORS_DIR) -> list[str]:
    """Names of the vector files whose committed content differs from a fresh build."""
    drifted = []
    for name, content in build_all().items():
        path = directory / name
        if not path.exists() or path.read_bytes() != content:
            drifted.append(name)
    return drifted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if committed files drifted")
    args = parser.parse_args()
    if args.check:
        drifted = check()
        if drifted:
            print(
                f"golden vectors drifted: {', '.join(drifted)}; run "
                "`uv run python proto/scripts/make_vectors.py` and review the diff",
                file=sys.stderr,
            )
            return 1
        print("golden vectors up to date")
        return 0
    VECTORS_DIR.mkdir(parents=True, exist_ok=True)
    for name, content in build_all().items():
        (VECTORS_DIR / name).write_bytes(content)
        print(f"wrote {VECTORS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
