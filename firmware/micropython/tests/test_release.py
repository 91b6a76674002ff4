"""``navign.release`` on the real MicroPython interpreter (96 KiB heap unless a test says why not).

* The golden vectors (``proto/vectors/manifests.json`` and ``keys.json``, read by MicroPython from
  the repository): every ``valid``, ``invalid`` and ``policy`` case by name, with its outcome.
* A differential corpus: envelopes built here (valid and hostile at every step of §6.5), opened
  by the beacon and by the CPython reference (``navign_proto.manifest.open_envelope``); the
  outcomes must be equal, except for the deliberate divergences pinned in ``DIVERGENCES`` (each
  one is the beacon refusing what the reference accepts or crashes on).
* Thresholds, swapped payloads, truncated and oversized envelopes, expiry without a clock, and
  the artifact checks (``verify_file``, ``Sha256Stream``, ``app_file_spans``).

Each MicroPython process runs many cases and prints one JSON line per case.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from navign_firmware import unix
from navign_proto import keys
from navign_proto.canonical import canonical_json
from navign_proto.errors import ManifestFormatError, ManifestSignatureError
from navign_proto.manifest import PAYLOAD_TYPE, build_release, open_envelope, pae, sign_manifest

VECTORS: Final = Path(__file__).resolve().parents[3] / "proto" / "vectors"
KEY_VECTORS: Final = {k["name"]: k for k in json.loads((VECTORS / "keys.json").read_text())["keys"]}
MANIFESTS: Final = json.loads((VECTORS / "manifests.json").read_text())
APP: Final[dict[str, Any]] = MANIFESTS["valid"][0]["manifest"]
IMAGE: Final[dict[str, Any]] = MANIFESTS["valid"][1]["manifest"]
N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def private(name: str) -> ec.EllipticCurvePrivateKey:
    return keys.private_key_from_scalar(int(KEY_VECTORS[name]["private_scalar_hex"], 16))


def point_hex(name: str) -> str:
    return str(KEY_VECTORS[name]["public_point_hex"])


def keyid(name: str) -> str:
    return str(KEY_VECTORS[name]["keyid"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def signed(
    payload: bytes,
    signers: Sequence[str] = ("release-1",),
    *,
    payload_type: str = PAYLOAD_TYPE,
) -> dict[str, Any]:
    """An envelope whose signatures (RFC 6979) cover ``payload`` under ``payload_type``'s PAE."""
    message = pae(payload_type, payload)
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(payload),
        "signatures": [
            {"keyid": keyid(s), "sig": b64(keys.sign(private(s), message, deterministic=True))}
            for s in signers
        ],
    }


def sig_by(signer: str, payload: bytes, *, as_keyid: str | None = None) -> dict[str, str]:
    sig = keys.sign(private(signer), pae(PAYLOAD_TYPE, payload), deterministic=True)
    return {"keyid": as_keyid or keyid(signer), "sig": b64(sig)}


def canon(value: Any) -> bytes:
    return canonical_json(value)


def doc(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a manifest with fields changed; ``DROP`` removes one."""
    out: dict[str, Any] = json.loads(json.dumps(base))
    for name, value in changes.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


DROP: Final = object()


@dataclass
class Case:
    name: str
    data: bytes
    trusted: list[str] = field(default_factory=lambda: ["release-1"])
    threshold: int = 1


# ---- the reference ------------------------------------------------------------------------


def reference(case: Case) -> str:
    """``ok``, ``invalid_format``, ``invalid_signature`` or ``error:<exception>``."""
    trusted = [private(name).public_key() for name in case.trusted]
    try:
        open_envelope(case.data, trusted, threshold=case.threshold)
    except ManifestFormatError:
        return "invalid_format"
    except ManifestSignatureError:
        return "invalid_signature"
    except (ValueError, RecursionError) as exc:
        return f"error:{type(exc).__name__}"
    return "ok"


# ---- the corpus ---------------------------------------------------------------------------


def _payload_with_residue(residue: int) -> bytes:
    """A valid app payload whose length is ``residue`` mod 3 (so its base64 has 0-2 "=")."""
    for extra in range(3):
        payload = canon(doc(APP, name="navign-beacon-app" + "x" * extra))
        if len(payload) % 3 == residue:
            return payload
    raise AssertionError("unreachable")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def envelope_cases() -> list[Case]:
    payload = canon(APP)
    good = signed(payload)
    good_bytes = canon(good)
    good_sig = good["signatures"][0]
    untrusted = sig_by("attacker", payload)
    cases = [
        Case("env-canonical", good_bytes),
        Case("env-pretty", json.dumps(good, indent=2).encode()),
        Case("env-member-order", json.dumps(dict(reversed(list(good.items())))).encode()),
        Case("env-escaped-slash", good_bytes.replace(b"application/vnd", b"application\\/vnd")),
        Case("env-escaped-name", good_bytes.replace(b'"payloadType"', b'"\\u0070ayloadType"')),
        Case("env-trailing-whitespace", good_bytes + b" \r\n\t"),
        Case("env-trailing-garbage", good_bytes + b"x"),
        Case("env-two-values", good_bytes + good_bytes),
        Case("env-truncated-half", good_bytes[: len(good_bytes) // 2]),
        Case("env-truncated-last-byte", good_bytes[:-1]),
        Case("env-empty", b""),
        Case("env-null", b"null"),
        Case("env-array", canon([good])),
        Case("env-string", canon("x")),
        Case("env-missing-signatures", canon(doc(good, signatures=DROP))),
        Case("env-missing-payload", canon(doc(good, payload=DROP))),
        Case("env-extra-member", canon(doc(good, extra=1))),
        Case("env-payload-type-int", canon(doc(good, payloadType=1))),
        Case("env-payload-type-upper", canon(doc(good, payloadType=PAYLOAD_TYPE.upper()))),
        Case("env-payload-int", canon(doc(good, payload=5))),
        Case("env-payload-null", canon(doc(good, payload=None))),
        Case(
            "env-duplicate-payload",
            good_bytes.replace(b'{"payload":', b'{"payload":"AAAA","payload":', 1),
        ),
        Case(
            "env-duplicate-keyid",
            good_bytes.replace(b'{"keyid":', b'{"keyid":"x","keyid":', 1),
        ),
        Case(
            "env-control-char-in-keyid",
            canon(doc(good, signatures=[good_sig, untrusted])).replace(
                keyid("attacker").encode(), b"a\x01b"
            ),
        ),
        Case(
            "env-invalid-utf8-in-keyid",
            canon(doc(good, signatures=[good_sig, untrusted])).replace(
                keyid("attacker").encode(), b"a\xffb"
            ),
        ),
        Case(
            "env-nan",
            canon(doc(good, signatures=[good_sig, untrusted])).replace(
                b'"' + keyid("attacker").encode() + b'"', b"NaN"
            ),
        ),
        Case(
            "env-depth-20-keyid",
            canon(doc(good, signatures=[good_sig, untrusted])).replace(
                b'"' + keyid("attacker").encode() + b'"', _nested(20)
            ),
        ),
        # signatures
        Case("sigs-empty", canon(doc(good, signatures=[]))),
        Case("sigs-object", canon(doc(good, signatures={"keyid": keyid("release-1")}))),
        Case("sigs-8", canon(doc(good, signatures=[untrusted] * 7 + [good_sig]))),
        Case("sigs-9", canon(doc(good, signatures=[untrusted] * 8 + [good_sig]))),
        Case("sig-entry-extra-key", canon(doc(good, signatures=[{**good_sig, "x": 1}]))),
        Case("sig-entry-missing-sig", canon(doc(good, signatures=[{"keyid": keyid("release-1")}]))),
        Case("sig-entry-string", canon(doc(good, signatures=["abc"]))),
        Case("sig-entry-sig-int", canon(doc(good, signatures=[{**good_sig, "sig": 5}]))),
        Case(
            "sig-bad-base64-after-good",
            canon(doc(good, signatures=[good_sig, {**untrusted, "sig": "!!!!"}])),
        ),
        Case(
            "sig-keyid-uppercase",
            canon(doc(good, signatures=[{**good_sig, "keyid": keyid("release-1").upper()}])),
        ),
    ]
    for label, value in (
        ("int", 7),
        ("list", [1]),
        ("null", None),
        ("object", {"a": 1}),
        ("float", 1.5),
        ("bool", True),
        ("non-ascii", "cl\u00e9"),
        ("emoji", "\U0001f600"),
        ("empty", ""),
        ("long", "k" * 300),
    ):
        entry = {**untrusted, "keyid": value}
        cases.append(
            Case(f"sig-keyid-{label}-ignored", canon(doc(good, signatures=[entry, good_sig])))
        )
    with_untrusted = canon(doc(good, signatures=[untrusted, good_sig]))
    quoted = b'"' + keyid("attacker").encode() + b'"'
    cases += [
        Case("sig-keyid-bigint", with_untrusted.replace(quoted, b"9007199254740992")),
        Case("sig-keyid-max-safe", with_untrusted.replace(quoted, b"9007199254740991")),
        Case("sig-keyid-huge-float", with_untrusted.replace(quoted, b"1e400")),
        Case("sig-keyid-lone-surrogate-escape", with_untrusted.replace(quoted, b'"\\ud800"')),
        Case(
            "sig-keyid-surrogate-pair-escape", with_untrusted.replace(quoted, b'"\\ud83d\\ude00"')
        ),
        # The trusted keyid with its first character escaped: the same string once parsed.
        Case(
            "sig-keyid-escaped-trusted",
            good_bytes.replace(
                b'"keyid":"' + keyid("release-1")[:1].encode(),
                b'"keyid":"\\u%04x' % ord(keyid("release-1")[0]),
            ),
        ),
    ]
    # base64
    p0, p1, p2 = (_payload_with_residue(r) for r in (0, 1, 2))
    e0, e1, e2 = signed(p0), signed(p1), signed(p2)
    # A manifest is ASCII without "~>?", so its base64 never holds "+" or "/": these use a
    # payload that is not a manifest, signed by an untrusted key, so that accepting its base64
    # gives invalid_signature and refusing it invalid_format.
    tilde = b"~~~???"
    assert "+" in b64(tilde)
    assert "/" in b64(tilde)
    tilde_env = signed(tilde, ("attacker",))
    nonzero = e1["payload"][:-3] + chr(ord(e1["payload"][-3]) + 1) + "=="
    assert base64.b64decode(nonzero) == p1
    cases += [
        Case("b64-residue-0", canon(e0)),
        Case("b64-residue-1", canon(e1)),
        Case("b64-residue-2", canon(e2)),
        Case("b64-pad1-missing", canon(doc(e2, payload=e2["payload"][:-1]))),
        Case("b64-pad2-missing", canon(doc(e1, payload=e1["payload"][:-2]))),
        Case("b64-pad2-half", canon(doc(e1, payload=e1["payload"][:-1]))),
        Case("b64-surplus-pad-on-partial", canon(doc(e1, payload=e1["payload"] + "="))),
        Case("b64-pad-in-middle", canon(doc(e0, payload="QQ==" + e0["payload"]))),
        Case("b64-leading-pad", canon(doc(e0, payload="====" + e0["payload"]))),
        Case("b64-nonzero-pad-bits", canon(doc(e1, payload=nonzero))),
        Case("b64-bad-char", canon(doc(e0, payload="!" + e0["payload"][1:]))),
        Case("b64-bad-char-last-group", canon(doc(e1, payload=e1["payload"][:-3] + "!=="))),
        Case("b64-pad-then-data", canon(doc(e1, payload=e1["payload"][:-2] + "=Q"))),
        Case("b64-pad-inside-last-group", canon(doc(e0, payload=e0["payload"][:-2] + "=Q"))),
        Case("b64-non-ascii-char", canon(doc(e0, payload="\u00e9" + e0["payload"][2:]))),
        Case("b64-space", canon(doc(e0, payload=e0["payload"][:8] + " " + e0["payload"][9:]))),
        Case(
            "b64-newline-escape",
            canon(doc(e0, payload=e0["payload"][:8] + "\n" + e0["payload"][8:])),
        ),
        Case("b64-plus-slash", canon(tilde_env)),
        Case("b64-url-safe-minus", canon(doc(tilde_env, payload=b64(tilde).replace("+", "-")))),
        Case(
            "b64-url-safe-underscore", canon(doc(tilde_env, payload=b64(tilde).replace("/", "_")))
        ),
        # The payload's first character escaped: the same string once parsed.
        Case(
            "b64-escaped-char",
            canon(e0).replace(
                b'"payload":"' + e0["payload"][:1].encode(),
                b'"payload":"\\u%04x' % ord(e0["payload"][0]),
            ),
        ),
        Case(
            "b64-sig-unpadded",
            canon(doc(good, signatures=[{**good_sig, "sig": good_sig["sig"].rstrip("=")}])),
        ),
        Case("b64-sig-empty", canon(doc(good, signatures=[{**good_sig, "sig": ""}]))),
        Case("b64-payload-empty", canon(doc(good, payload=""))),
        Case("b64-payload-empty-signed", canon(signed(b""))),
    ]
    return cases


def signature_cases() -> list[Case]:
    app = canon(APP)
    image = canon(IMAGE)
    app_env = signed(app)
    image_env = signed(image, ("release-1", "release-2"))
    good = app_env["signatures"][0]
    forged = sig_by("attacker", app, as_keyid=keyid("release-1"))
    other = keys.sign(private("release-1"), pae(PAYLOAD_TYPE, app))  # random nonce: other bytes
    again = {"keyid": keyid("release-1"), "sig": b64(other)}
    raw = base64.b64decode(good["sig"])
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")

    def with_sig(sig: bytes) -> bytes:
        return canon(doc(app_env, signatures=[{"keyid": keyid("release-1"), "sig": b64(sig)}]))

    wrong_len_pae = b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE) + 1, PAYLOAD_TYPE.encode(), len(app))
    both = ["release-1", "release-2"]
    return [
        Case("sig-valid", canon(app_env)),
        Case("sig-high-s", with_sig(r.to_bytes(32, "big") + (N - s).to_bytes(32, "big"))),
        Case("sig-untrusted-only", canon(signed(app, ("attacker",)))),
        Case("sig-forged-trusted-keyid", canon(doc(app_env, signatures=[forged]))),
        Case("sig-forged-then-good", canon(doc(app_env, signatures=[forged, good]))),
        Case("sig-good-then-forged", canon(doc(app_env, signatures=[good, forged]))),
        Case("sig-empty-bytes", with_sig(b"")),
        Case("sig-63-bytes", with_sig(raw[:63])),
        Case("sig-65-bytes", with_sig(raw + b"\x00")),
        Case("sig-der", with_sig(encode_dss_signature(r, s))),
        Case("sig-over-raw-payload", with_sig(keys.sign(private("release-1"), app))),
        Case(
            "sig-over-wrong-pae-length",
            with_sig(keys.sign(private("release-1"), wrong_len_pae + app)),
        ),
        Case("sig-over-other-type", canon(signed(app, payload_type="application/json"))),
        Case("swap-app-payload-image-sigs", canon(doc(image_env, payload=b64(app))), both),
        Case("swap-image-payload-app-sigs", canon(doc(app_env, payload=b64(image))), both),
        Case("threshold-2-two-keys", canon(image_env), both, 2),
        Case("threshold-2-only-one-trusted", canon(image_env), ["release-1"], 2),
        Case("threshold-1-second-key-only", canon(image_env), ["release-2"]),
        Case("threshold-2-same-key-twice", canon(doc(app_env, signatures=[good, again])), both, 2),
        Case(
            "threshold-2-same-key-four-times",
            canon(doc(app_env, signatures=[good, again, good, again])),
            both,
            2,
        ),
        Case(
            "threshold-2-one-forged",
            canon(
                doc(
                    image_env,
                    signatures=[
                        image_env["signatures"][0],
                        sig_by("attacker", image, as_keyid=keyid("release-2")),
                    ],
                )
            ),
            both,
            2,
        ),
        Case(
            "threshold-2-one-untrusted",
            canon(doc(app_env, signatures=[good, sig_by("attacker", app)])),
            both,
            2,
        ),
        Case(
            "threshold-2-of-three-trusted",
            canon(signed(app, ("attacker", "release-2", "release-1"))),
            ["release-1", "release-2", "gateway"],
            2,
        ),
        Case(
            "threshold-3-of-three-signers-two-trusted",
            canon(signed(app, ("attacker", "release-2", "release-1"))),
            ["release-1", "release-2", "gateway"],
            3,
        ),
        Case("trusted-other-key", canon(app_env), ["gateway"]),
        Case("trusted-none", canon(app_env), []),
    ]


def payload_cases() -> list[Case]:
    app = canon(APP)
    return [
        Case("payload-canonical", canon(signed(app))),
        Case("payload-not-json", canon(signed(b"hello"))),
        Case("payload-array", canon(signed(b"[]"))),
        Case("payload-string", canon(signed(b'"navign.release.v1"'))),
        Case("payload-schema-v2", canon(signed(canon(doc(APP, schema="navign.release.v2"))))),
        Case("payload-schema-int", canon(signed(canon(doc(APP, schema=1))))),
        Case("payload-schema-null", canon(signed(canon(doc(APP, schema=None))))),
        Case("payload-schema-missing", canon(signed(canon(doc(APP, schema=DROP))))),
        Case("payload-trailing-space", canon(signed(app + b" "))),
        Case("payload-leading-newline", canon(signed(b"\n" + app))),
        Case("payload-unsorted", canon(signed(json.dumps(APP, separators=(",", ":")).encode()))),
        Case("payload-escaped-value", canon(signed(app.replace(b'"main.py"', b'"m\\u0061in.py"')))),
        Case("payload-escaped-slash", canon(signed(app.replace(b"navign/adv", b"navign\\/adv")))),
        Case(
            "payload-duplicate-key",
            canon(signed(app.replace(b'{"created_at"', b'{"created_at":"x","created_at"', 1))),
        ),
        Case(
            "payload-float-2.0",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":2.0'))),
        ),
        Case(
            "payload-float-1.5",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":1.5'))),
        ),
        Case(
            "payload-float-2e0",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":2e0'))),
        ),
        Case(
            "payload-big-int",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":9007199254740992'))),
        ),
        Case(
            "payload-minus-zero",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":-0'))),
        ),
        Case(
            "payload-nan",
            canon(signed(app.replace(b'"secure_version":2', b'"secure_version":NaN'))),
        ),
        Case("payload-bom", canon(signed(b"\xef\xbb\xbf" + app))),
        Case("payload-utf16", canon(signed(app.decode().encode("utf-16")))),
        Case("payload-non-ascii-name", canon(signed(canon(doc(APP, name="navign-b\u00ebacon"))))),
        Case("payload-emoji-key", canon(signed(canon(doc(APP, **{"\U0001f600": 1}))))),
        Case("payload-empty", canon(signed(b""))),
        Case("payload-deep", canon(signed(canon(doc(APP, x=json.loads(_nested(10))))))),
    ]


def _files(*entries: tuple[str, int, str]) -> list[dict[str, Any]]:
    return [{"path": p, "size": s, "sha256": h} for p, s, h in entries]


H: Final = "ab" * 32


def schema_cases() -> list[Case]:
    mutations: list[tuple[str, dict[str, Any]]] = [
        ("app", APP),
        ("image", IMAGE),
        ("name-empty", doc(APP, name="")),
        ("name-upper", doc(APP, name="Navign")),
        ("name-leading-dash", doc(APP, name="-navign")),
        ("name-leading-dot", doc(APP, name=".navign")),
        ("name-digit-first", doc(APP, name="9navign")),
        ("name-64", doc(APP, name="n" * 64)),
        ("name-65", doc(APP, name="n" * 65)),
        ("name-space", doc(APP, name="a b")),
        ("name-punct", doc(APP, name="a.b_c-d")),
        ("name-int", doc(APP, name=5)),
        ("version-short", doc(APP, version="1.4")),
        ("version-build", doc(APP, version="1.4.0+build.5")),
        ("version-v", doc(APP, version="v1.4.0")),
        ("version-pre", doc(APP, version="1.4.0-rc.1")),
        ("version-64", doc(APP, version="1.4.0-" + "a" * 58)),
        ("version-65", doc(APP, version="1.4.0-" + "a" * 59)),
        ("version-leading-zero", doc(APP, version="1.04.0")),
        ("version-int", doc(APP, version=1)),
        ("secure-version-negative", doc(APP, secure_version=-1)),
        ("secure-version-zero", doc(APP, secure_version=0)),
        ("secure-version-max", doc(APP, secure_version=2**32 - 1)),
        ("secure-version-over", doc(APP, secure_version=2**32)),
        ("secure-version-bool", doc(APP, secure_version=True)),
        ("secure-version-string", doc(APP, secure_version="2")),
        ("secure-version-null", doc(APP, secure_version=None)),
        ("target-unknown", doc(APP, target="esp32c2")),
        ("target-upper", doc(APP, target="ESP32C3")),
        ("target-int", doc(APP, target=3)),
        ("target-s3", doc(APP, target="esp32s3")),
        ("target-c6", doc(APP, target="esp32c6")),
        ("kind-unknown", doc(APP, kind="bin")),
        ("kind-upper", doc(APP, kind="APP")),
        ("kind-null", doc(APP, kind=None)),
        ("files-empty", doc(APP, files=[])),
        ("files-object", doc(APP, files={"path": "a"})),
        ("files-null", doc(APP, files=None)),
        ("files-entry-string", doc(APP, files=["main.py"])),
        ("files-entry-extra", doc(APP, files=[{**APP["files"][0], "mode": 420}])),
        ("files-entry-missing-size", doc(APP, files=[{"path": "a", "sha256": H}])),
        ("files-duplicate-path", doc(APP, files=_files(("a", 1, H), ("b", 2, H), ("a", 3, H)))),
        ("files-case-differs", doc(APP, files=_files(("a", 1, H), ("A", 2, H)))),
        ("files-size-zero", doc(APP, files=_files(("a", 0, H)))),
        ("files-size-negative", doc(APP, files=_files(("a", -1, H)))),
        ("files-size-max", doc(APP, files=_files(("a", 16 * 1024 * 1024, H)))),
        ("files-size-over", doc(APP, files=_files(("a", 16 * 1024 * 1024 + 1, H)))),
        ("files-size-bool", doc(APP, files=[{"path": "a", "size": True, "sha256": H}])),
        ("files-size-float", doc(APP, files=[{"path": "a", "size": 1.5, "sha256": H}])),
        ("files-size-string", doc(APP, files=[{"path": "a", "size": "1", "sha256": H}])),
        ("files-sha-upper", doc(APP, files=_files(("a", 1, H.upper())))),
        ("files-sha-63", doc(APP, files=_files(("a", 1, H[:63])))),
        ("files-sha-65", doc(APP, files=_files(("a", 1, H + "a")))),
        ("files-sha-non-hex", doc(APP, files=_files(("a", 1, "g" * 64)))),
        ("files-sha-prefixed", doc(APP, files=_files(("a", 1, "sha256:" + H)))),
        ("files-sha-null", doc(APP, files=[{"path": "a", "size": 1, "sha256": None}])),
        ("files-20", doc(APP, files=_files(*((f"f{i}", i, H) for i in range(20))))),
    ]
    for label, path in (
        ("dotdot", "../x"),
        ("dotdot-inner", "a/../b"),
        ("absolute", "/x"),
        ("dot", ".x"),
        ("dot-part", "a/.b"),
        ("double-slash", "a//b"),
        ("trailing-slash", "a/"),
        ("space", "a b"),
        ("backslash", "a\\b"),
        ("non-ascii", "caf\u00e9.py"),
        ("empty", ""),
        ("part-64", "p" * 64),
        ("part-65", "p" * 65),
        ("total-128", "p" * 63 + "/" + "q" * 64),
        ("total-129", "p" * 64 + "/" + "q" * 64),
        ("underscore-first", "_x.py"),
        ("mixed", "A/b.c-d_e/F9"),
        ("dash-first", "-x"),
        ("colon", "a:b"),
        ("newline", "a\nb"),
        ("int", 5),
    ):
        mutations.append(
            (f"path-{label}", doc(APP, files=[{"path": path, "size": 1, "sha256": H}]))
        )
    mutations += [
        ("image-size-zero", doc(IMAGE, image={"size": 0, "sha256": H})),
        ("image-size-one", doc(IMAGE, image={"size": 1, "sha256": H})),
        ("image-size-max", doc(IMAGE, image={"size": 16 * 1024 * 1024, "sha256": H})),
        ("image-size-over", doc(IMAGE, image={"size": 16 * 1024 * 1024 + 1, "sha256": H})),
        ("image-extra", doc(IMAGE, image={"size": 1, "sha256": H, "path": "x"})),
        ("image-missing-sha", doc(IMAGE, image={"size": 1})),
        ("image-sha-upper", doc(IMAGE, image={"size": 1, "sha256": H.upper()})),
        ("image-list", doc(IMAGE, image=[1, H])),
        ("image-null", doc(IMAGE, image=None)),
        ("image-with-files", doc(IMAGE, files=APP["files"])),
        ("image-with-files-null", doc(IMAGE, files=None)),
        ("image-with-files-empty", doc(IMAGE, files=[])),
        ("app-with-image", doc(APP, image=IMAGE["image"])),
        ("app-with-image-null", doc(APP, image=None)),
        ("app-without-files", doc(APP, files=DROP)),
        ("image-without-image", doc(IMAGE, image=DROP)),
        ("min-previous-short", doc(APP, min_previous_version="1.2")),
        ("min-previous-build", doc(APP, min_previous_version="1.2.0+x")),
        ("min-previous-int", doc(APP, min_previous_version=5)),
        ("min-previous-null", doc(APP, min_previous_version=None)),
        ("min-previous-absent", doc(APP, min_previous_version=DROP)),
        ("min-previous-above-version", doc(APP, min_previous_version="9.0.0")),
        ("expires-null", doc(APP, expires_at=None)),
        ("expires-absent", doc(APP, expires_at=DROP)),
        ("expires-equal", doc(APP, expires_at=APP["created_at"])),
        ("expires-before", doc(APP, expires_at="2026-11-27T09:59:59Z")),
        ("expires-one-second-after", doc(APP, expires_at="2026-11-27T10:00:01Z")),
        ("expires-bad-date", doc(APP, expires_at="2027-02-30T00:00:00Z")),
        ("expires-int", doc(APP, expires_at=1800000000)),
        ("unknown-field", doc(APP, extra=1)),
        ("unknown-field-null", doc(APP, extra=None)),
        ("unknown-field-capital", doc(APP, Name="x")),
        ("unknown-field-signatures", doc(APP, signatures=[])),
        ("unknown-field-in-image", doc(IMAGE, image={**IMAGE["image"], "x": None})),
    ]
    for field_name in ("name", "version", "secure_version", "target", "kind", "created_at"):
        mutations.append((f"missing-{field_name}", doc(APP, **{field_name: DROP})))
        mutations.append((f"null-{field_name}", doc(APP, **{field_name: None})))
    for label, value in (
        ("leap-day", "2024-02-29T10:00:00Z"),
        ("not-leap-day", "2026-02-29T10:00:00Z"),
        ("century-not-leap", "2100-02-29T10:00:00Z"),
        ("400-leap", "2000-02-29T10:00:00Z"),
        ("april-31", "2026-04-31T10:00:00Z"),
        ("hour-24", "2026-11-27T24:00:00Z"),
        ("minute-60", "2026-11-27T10:60:00Z"),
        ("second-60", "2026-11-27T10:00:60Z"),
        ("month-13", "2026-13-01T10:00:00Z"),
        ("month-0", "2026-00-10T10:00:00Z"),
        ("day-0", "2026-11-00T10:00:00Z"),
        ("year-0", "0000-01-01T00:00:00Z"),
        ("year-1", "0001-01-01T00:00:00Z"),
        ("space", "2026-11-27 10:00:00Z"),
        ("offset", "2026-11-27T10:00:00+00:00"),
        ("lowercase", "2026-11-27t10:00:00z"),
        ("fraction", "2026-11-27T10:00:00.0Z"),
        ("short-year", "226-11-27T10:00:00Z"),
        ("no-z", "2026-11-27T10:00:00"),
        ("sign", "+026-11-27T10:00:00Z"),
        ("int", 1795000000),
    ):
        mutations.append((f"created-{label}", doc(IMAGE, created_at=value)))
    return [Case(f"schema-{name}", canon(signed(canon(m)))) for name, m in mutations]


#: Deliberate divergences: name -> (the reference's outcome, the beacon's). The beacon only ever
#: refuses more, and never crashes where the reference does.
#: How CPython's base64 treats surplus "=" after a complete group (3.13 refuses it).
_SURPLUS_PAD: Final = "invalid_format" if sys.version_info >= (3, 13) else "ok"
DIVERGENCES: Final[dict[str, tuple[str, str]]] = {
    # CPython's json reads a UTF-8 BOM and UTF-16/32; the beacon wants strict UTF-8.
    "div-env-bom": ("ok", "invalid_format"),
    "div-env-utf16": ("ok", "invalid_format"),
    # CPython decodes with "surrogatepass": a raw (encoded) surrogate passes in an ignored keyid...
    "div-keyid-raw-surrogate": ("ok", "invalid_format"),
    # ...and in a signed payload it escapes open_envelope as CanonicalJSONError.
    "div-payload-raw-surrogate": ("error:CanonicalJSONError", "invalid_format"),
    # The beacon limits nesting to 32 levels; CPython recurses until RecursionError.
    "div-env-depth-33": ("ok", "invalid_format"),
    # (Python 3.13's json no longer recurses: it reads 2,000 levels.)
    "div-env-depth-2000": (
        "ok" if sys.version_info >= (3, 13) else "error:RecursionError",
        "invalid_format",
    ),
    # Python 3.11's strict base64 accepts surplus "=" after a complete group (3.13 refuses it).
    "div-b64-surplus-pad": (_SURPLUS_PAD, "invalid_format"),
    "div-b64-surplus-pad-4": (_SURPLUS_PAD, "invalid_format"),
    # CPython's \d and strptime take any Unicode digit: a created_at in fullwidth digits passes.
    "div-created-fullwidth": ("ok", "invalid_format"),
}


def divergence_cases() -> list[Case]:
    payload = canon(APP)
    good = signed(payload)
    good_bytes = canon(good)
    untrusted = sig_by("attacker", payload)
    quoted = b'"' + keyid("attacker").encode() + b'"'
    with_untrusted = canon(doc(good, signatures=[untrusted, good["signatures"][0]]))
    raw_surrogate = payload[:-1] + b',"z\xed\xa0\x80":1}'
    p0 = _payload_with_residue(0)
    e0 = signed(p0)
    fullwidth = doc(IMAGE, created_at="\uff12\uff10\uff12\uff16-11-27T10:00:00Z")
    return [
        Case("div-env-bom", b"\xef\xbb\xbf" + good_bytes),
        Case("div-env-utf16", good_bytes.decode().encode("utf-16")),
        Case("div-keyid-raw-surrogate", with_untrusted.replace(quoted, b'"k\xed\xa0\x80"')),
        Case("div-payload-raw-surrogate", canon(signed(raw_surrogate))),
        Case("div-env-depth-33", with_untrusted.replace(quoted, _nested(33))),
        Case("div-env-depth-2000", with_untrusted.replace(quoted, _nested(2000))),
        Case("div-b64-surplus-pad", canon(doc(e0, payload=e0["payload"] + "="))),
        Case("div-b64-surplus-pad-4", canon(doc(e0, payload=e0["payload"] + "===="))),
        Case("div-created-fullwidth", canon(signed(canon(fullwidth)))),
    ]


def all_cases() -> list[Case]:
    return [
        *envelope_cases(),
        *signature_cases(),
        *payload_cases(),
        *schema_cases(),
        *divergence_cases(),
    ]


# ---- running on MicroPython ----------------------------------------------------------------

OPEN_SCRIPT: Final = """
import gc, json, binascii
from navign import artifact, release
from navign.errors import Refused
POINTS = json.loads(%r)
for line in open(%r):
    c = json.loads(line)
    line = None
    gc.collect()
    data = open(c["path"], "rb").read()
    trusted = {}
    for name in c["trusted"]:
        point = binascii.unhexlify(POINTS[name])
        trusted[release.keyid(point)] = point
    try:
        manifest, payload, sha = release.open_envelope(data, trusted, c["threshold"])
        out = ["ok", sha, len(payload), manifest]
    except Refused as exc:
        out = [exc.reason, exc.detail]
    except Exception as exc:
        out = ["raised", repr(exc)]
    data = manifest = payload = None
    print(json.dumps([c["name"]] + out))
"""


def run_open(cases: Sequence[Case], directory: Path) -> dict[str, list[Any]]:
    """Open every case on the beacon: each envelope is a file (read as it would arrive)."""
    index = directory / "cases.jsonl"
    with index.open("w") as out:
        for i, c in enumerate(cases):
            path = directory / f"{i:04d}.json"
            path.write_bytes(c.data)
            record = {"name": c.name, "path": str(path), "trusted": c.trusted}
            out.write(json.dumps({**record, "threshold": c.threshold}) + "\n")
    points = {name: point_hex(name) for name in KEY_VECTORS}
    result = unix.run(OPEN_SCRIPT % (json.dumps(points), str(index)), timeout=300)
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {line[0]: line[1:] for line in lines}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    return run_open(all_cases(), tmp_path_factory.mktemp("release"))


def test_corpus_names_are_unique_and_all_ran(corpus: dict[str, list[Any]]) -> None:
    names = [c.name for c in all_cases()]
    assert len(names) == len(set(names))
    assert set(corpus) == set(names)
    assert not [n for n, out in corpus.items() if out[0] == "raised"]


@pytest.mark.parametrize(
    "cases",
    [envelope_cases, signature_cases, payload_cases, schema_cases],
    ids=["envelope", "signature", "payload", "schema"],
)
def test_beacon_agrees_with_the_reference(
    cases: Callable[[], list[Case]], corpus: dict[str, list[Any]]
) -> None:
    group = cases()
    expected = {c.name: reference(c) for c in group}
    # Each group exercises acceptance and refusal.
    assert "ok" in expected.values()
    assert set(expected.values()) - {"ok"}
    assert not [n for n, e in expected.items() if e.startswith("error:")]
    assert {c.name: corpus[c.name][0] for c in group} == expected


def test_deliberate_divergences(corpus: dict[str, list[Any]]) -> None:
    cases = divergence_cases()
    assert {c.name for c in cases} == set(DIVERGENCES)
    assert {c.name: reference(c) for c in cases} == {n: d[0] for n, d in DIVERGENCES.items()}
    assert {c.name: corpus[c.name][0] for c in cases} == {n: d[1] for n, d in DIVERGENCES.items()}


def test_accepted_manifests_are_the_signed_payload(corpus: dict[str, list[Any]]) -> None:
    accepted = 0
    for case in all_cases():
        out = corpus[case.name]
        if out[0] != "ok":
            continue
        accepted += 1
        envelope = json.loads(case.data.decode("utf-8-sig"))
        payload = base64.b64decode(envelope["payload"])
        assert out[1] == hashlib.sha256(payload).hexdigest(), case.name
        assert out[3] == json.loads(payload), case.name
    assert accepted >= 40


def test_threshold_cases(corpus: dict[str, list[Any]]) -> None:
    """Spelled out, independently of the reference: a key counts once toward a threshold."""
    assert corpus["threshold-2-two-keys"][0] == "ok"
    assert corpus["threshold-2-same-key-twice"][0] == "invalid_signature"
    assert corpus["threshold-2-same-key-four-times"][0] == "invalid_signature"
    assert corpus["threshold-2-one-forged"][0] == "invalid_signature"
    assert corpus["threshold-2-of-three-trusted"][0] == "ok"
    assert corpus["threshold-3-of-three-signers-two-trusted"][0] == "invalid_signature"
    assert corpus["swap-app-payload-image-sigs"][0] == "invalid_signature"
    assert corpus["swap-image-payload-app-sigs"][0] == "invalid_signature"
    assert corpus["env-truncated-half"][0] == "invalid_format"
    assert corpus["env-truncated-last-byte"][0] == "invalid_format"


# ---- the golden vectors -------------------------------------------------------------------

VECTOR_SCRIPT: Final = """
import gc, json
# First, while the heap is empty: the vectors, each envelope copied to its own file, so that
# only one envelope at a time is in memory next to the verifier.
K = [(k["name"], k["public_point_hex"]) for k in json.load(open(%r))["keys"]]
M = json.load(open(%r))
DIR = %r
def save(group):
    names = []
    for case in M[group]:
        f = open(DIR + "/" + group + "-" + case["name"], "w")
        f.write(case["envelope"])
        f.close()
        names.append(case["name"])
    return names
valid = save("valid")
invalid = save("invalid")
policy_cases = [(c["expect"], c["target"], c["version"], c["secure_version"], c["now"])
                for c in M["policy"]]
trusted_names = M["trusted_keys"]
M = None
gc.collect()
import binascii
from navign import artifact, release
from navign.errors import Refused
points = {}
for name, point_hex in K:
    point = binascii.unhexlify(point_hex)
    points[name] = point
    print(json.dumps(["keyid", name, release.keyid(point)]))
def trust(names):
    t = {}
    for n in names:
        t[release.keyid(points[n])] = points[n]
    return t
trusted = trust(trusted_names)
def envelope(group, name):
    f = open(DIR + "/" + group + "-" + name, "rb")
    data = f.read()
    f.close()
    return data
def attempt(data, trusted, threshold=1):
    gc.collect()
    try:
        m, p, sha = release.open_envelope(data, trusted, threshold)
        return ["ok", sha, binascii.hexlify(p).decode(), m]
    except Refused as exc:
        return [exc.reason, exc.detail]
for name in valid:
    print(json.dumps(["valid", name] + attempt(envelope("valid", name), trusted)))
image = envelope("valid", valid[1])
both = trust(["release-1", "release-2"])
print(json.dumps(["image-threshold-2", "both"] + attempt(image, both, 2)))
print(json.dumps(["image-threshold-2", "one"] + attempt(image, trusted, 2)))
print(json.dumps(["image-threshold-1", "release-2"] + attempt(image, trust(["release-2"]))))
image = None
for name in invalid:
    print(json.dumps(["invalid", name] + attempt(envelope("invalid", name), trusted)[:1]))
app, _, _ = release.open_envelope(envelope("valid", valid[0]), trusted)
print(json.dumps(["spans", artifact.app_file_spans(app)]))
def policy(**kw):
    try:
        release.check_installable(app, **kw)
        return "ok"
    except Refused as exc:
        return exc.reason
    except ValueError:
        return "ValueError"
for expect, target, version, secure_version, now in policy_cases:
    print(json.dumps(["policy", expect, policy(chip=target, version=version,
          secure_version=secure_version, now=now)]))
extra = json.loads(%r)
for name, kw in extra:
    print(json.dumps(["clock", name, policy(**kw)]))
print(json.dumps(["time_string", release.time_string(0), release.time_string(1795000000)]))
"""

#: Expiry without a trustworthy clock (the app expires at 2027-11-27T10:00:00Z): the effective
#: time is the later of ``now`` and ``time_floor``; with neither, expiry is not checked.
BASE_STATE: Final = {"chip": "esp32c3", "version": "1.3.0", "secure_version": 2}
CLOCK_CASES: Final[list[tuple[str, dict[str, Any], str]]] = [
    ("no-clock-no-floor", {}, "ok"),
    ("floor-before-expiry", {"time_floor": "2027-11-27T09:59:59Z"}, "ok"),
    ("floor-at-expiry", {"time_floor": "2027-11-27T10:00:00Z"}, "expired"),
    ("floor-after-expiry", {"time_floor": "2030-01-01T00:00:00Z"}, "expired"),
    (
        "clock-unset-floor-after",
        {"now": "1970-01-01T00:00:00Z", "time_floor": "2028-01-01T00:00:00Z"},
        "expired",
    ),
    (
        "clock-unset-floor-before",
        {"now": "2000-01-01T00:00:00Z", "time_floor": "2026-11-27T10:00:00Z"},
        "ok",
    ),
    (
        "clock-after-floor-before",
        {"now": "2027-11-27T10:00:00Z", "time_floor": "2026-11-27T10:00:00Z"},
        "expired",
    ),
    ("clock-before-expiry", {"now": "2027-11-27T09:59:59Z"}, "ok"),
    ("clock-garbage", {"now": "yesterday"}, "ValueError"),
    ("floor-garbage", {"time_floor": "2027-11-27"}, "ValueError"),
    # Policy order: target, versions and secure_version come before expiry.
    ("expired-and-wrong-target", {"chip": "esp32", "now": "2030-01-01T00:00:00Z"}, "wrong_target"),
    (
        "expired-and-secure-version",
        {"secure_version": 3, "now": "2030-01-01T00:00:00Z"},
        "secure_version",
    ),
    ("min-previous-equal", {"version": "1.2.0"}, "ok"),
    ("min-previous-pre-release", {"version": "1.2.0-rc.1"}, "min_previous_version"),
    ("secure-version-equal", {"secure_version": 2}, "ok"),
    ("upgrade-from-pre-release", {"version": "1.4.0-rc.1"}, "ok"),
]


@pytest.fixture(scope="module")
def vector_results(tmp_path_factory: pytest.TempPathFactory) -> list[list[Any]]:
    extra = [[name, {**BASE_STATE, **kw}] for name, kw, _ in CLOCK_CASES]
    directory = tmp_path_factory.mktemp("vectors")
    result = unix.run(
        VECTOR_SCRIPT
        % (
            str(VECTORS / "keys.json"),
            str(VECTORS / "manifests.json"),
            str(directory),
            json.dumps(extra),
        )
    )
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_keyids(vector_results: list[list[Any]]) -> None:
    got = {line[1]: line[2] for line in vector_results if line[0] == "keyid"}
    assert got == {name: k["keyid"] for name, k in KEY_VECTORS.items()}


def test_valid_vectors(vector_results: list[list[Any]]) -> None:
    got = {line[1]: line[2:] for line in vector_results if line[0] == "valid"}
    assert set(got) == {c["name"] for c in MANIFESTS["valid"]}
    for case in MANIFESTS["valid"]:
        outcome, sha, payload_hex, manifest = got[case["name"]]
        assert outcome == "ok"
        assert sha == case["manifest_sha256"]
        assert bytes.fromhex(payload_hex) == case["payload_canonical"].encode()
        assert manifest == case["manifest"]


def test_invalid_vectors(vector_results: list[list[Any]]) -> None:
    got = {line[1]: line[2] for line in vector_results if line[0] == "invalid"}
    expected = {c["name"]: c["expect"] for c in MANIFESTS["invalid"]}
    assert len(expected) >= 13
    assert set(expected.values()) == {"invalid_signature", "invalid_format"}
    assert got == expected


def test_image_vector_thresholds(vector_results: list[list[Any]]) -> None:
    got = {(line[0], line[1]): line[2] for line in vector_results if line[0].startswith("image")}
    assert got == {
        ("image-threshold-2", "both"): "ok",
        ("image-threshold-2", "one"): "invalid_signature",
        ("image-threshold-1", "release-2"): "ok",
    }


def test_policy_vectors(vector_results: list[list[Any]]) -> None:
    got = [line[1:] for line in vector_results if line[0] == "policy"]
    assert len(got) == len(MANIFESTS["policy"]) >= 7
    assert [expect for expect, _ in got] == [c["expect"] for c in MANIFESTS["policy"]]
    assert [outcome for _, outcome in got] == [c["expect"] for c in MANIFESTS["policy"]]


def test_expiry_without_a_clock(vector_results: list[list[Any]]) -> None:
    got = {line[1]: line[2] for line in vector_results if line[0] == "clock"}
    assert got == {name: expect for name, _, expect in CLOCK_CASES}


def test_app_file_spans_of_the_vector(vector_results: list[list[Any]]) -> None:
    (spans,) = [line[1] for line in vector_results if line[0] == "spans"]
    files = APP["files"]
    assert spans == [
        [files[0]["path"], 0, files[0]["size"], files[0]["sha256"]],
        [files[1]["path"], files[0]["size"], files[1]["size"], files[1]["sha256"]],
    ]


def test_time_string(vector_results: list[list[Any]]) -> None:
    (line,) = [line for line in vector_results if line[0] == "time_string"]
    moment = datetime.fromtimestamp(1795000000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert line[1:] == ["1970-01-01T00:00:00Z", moment]


# ---- sizes that need a larger heap --------------------------------------------------------

SIZE_SCRIPT: Final = """
import gc, json, binascii
from navign import artifact, release
from navign.errors import Refused
point = binascii.unhexlify(%r)
trusted = {release.keyid(point): point}
for name, path, pad_to in json.loads(%r):
    data = open(path, "rb").read()
    if pad_to:
        data = data + b" " * (pad_to - len(data))
    try:
        m, _, _ = release.open_envelope(data, trusted)
        print(json.dumps([name, "ok", len(data)]))
    except Refused as exc:
        print(json.dumps([name, exc.reason, len(data)]))
    data = None
    gc.collect()
"""


def test_envelope_size_limit_and_file_count(tmp_path: Path) -> None:
    """64 KiB envelopes, 256 files. These need more than 96 KiB of heap: a 64 KiB envelope
    cannot even be held next to the verifier in a 96 KiB heap (see test_memory_limit_is_refused)
    so this test uses 1 MiB to reach the size and count checks themselves."""
    small = canon(signed(canon(APP)))
    (tmp_path / "small.json").write_bytes(small)
    many = {n: doc(APP, files=_files(*((f"f{i}", i, H) for i in range(n)))) for n in (256, 257)}
    jobs: list[list[Any]] = [
        ["exactly-64-KiB", str(tmp_path / "small.json"), 65536],
        ["64-KiB-plus-one", str(tmp_path / "small.json"), 65537],
    ]
    for n, manifest in many.items():
        (tmp_path / f"files-{n}.json").write_bytes(canon(signed(canon(manifest))))
        jobs.append([f"files-{n}", str(tmp_path / f"files-{n}.json"), 0])
    # The reference says the same.
    trusted = [private("release-1").public_key()]
    open_envelope(small + b" " * (65536 - len(small)), trusted)
    with pytest.raises(ManifestFormatError):
        open_envelope(small + b" " * (65537 - len(small)), trusted)
    open_envelope((tmp_path / "files-256.json").read_bytes(), trusted)
    with pytest.raises(ManifestFormatError):
        open_envelope((tmp_path / "files-257.json").read_bytes(), trusted)

    result = unix.run(SIZE_SCRIPT % (point_hex("release-1"), json.dumps(jobs)), heapsize="1M")
    assert result.stderr == ""
    got = {line[0]: line[1:] for line in map(json.loads, result.stdout.splitlines())}
    assert got == {
        "exactly-64-KiB": ["ok", 65536],
        "64-KiB-plus-one": ["invalid_format", 65537],
        "files-256": ["ok", (tmp_path / "files-256.json").stat().st_size],
        "files-257": ["invalid_format", (tmp_path / "files-257.json").stat().st_size],
    }


MEMORY_SCRIPT: Final = """
data = open(%r, "rb").read()  # first, while the heap is empty
import binascii
from navign import artifact, release
from navign.errors import Refused
point = binascii.unhexlify(%r)
try:
    manifest, _, _ = release.open_envelope(data, {release.keyid(point): point})
    print(len(manifest["files"]))
except Refused as exc:
    print(exc.reason)
"""


@pytest.mark.parametrize(("count", "expect"), [(20, "20"), (120, "too_large")])
def test_memory_limit_is_refused(count: int, expect: str, tmp_path: Path) -> None:
    """In the default 96 KiB heap, an envelope too large to parse (120 files, which the reference
    accepts) is refused as too_large, not with a MemoryError escaping; a typical one verifies."""
    files = _files(*((f"navign/module_{i:03d}.mpy", i, H) for i in range(count)))
    data = canon(signed(canon(doc(APP, files=files))))
    open_envelope(data, [private("release-1").public_key()])
    (tmp_path / "envelope.json").write_bytes(data)
    result = unix.run(MEMORY_SCRIPT % (str(tmp_path / "envelope.json"), point_hex("release-1")))
    assert result.stderr == ""
    assert result.stdout.strip() == expect


# ---- artifacts ----------------------------------------------------------------------------

ARTIFACT_SCRIPT: Final = """
import json, binascii
from navign import artifact, release
from navign.errors import Refused
jobs = %r
def check(fn):
    try:
        fn()
        return "ok"
    except Refused as exc:
        return exc.reason
    except ValueError:
        return "ValueError"
for name, path, size, sha, bufsize in jobs["files"]:
    buf = bytearray(bufsize) if bufsize else None
    print(json.dumps([name, check(lambda: artifact.verify_file(path, size, sha, buf))]))
    buf = None
chunks = bytearray(4096)
def stream(size, sha, cut, chunk):
    # Feed the first `cut` bytes of the blob, `chunk` bytes at a time.
    s = artifact.Sha256Stream(size, sha, "x")
    f = open(jobs["blob"], "rb")
    left = cut
    while left:
        n = f.readinto(memoryview(chunks)[:min(left, chunk)])
        s.update(memoryview(chunks)[:n])
        left -= n
    f.close()
    s.finish()
for name, size, sha, cut, chunk in jobs["streams"]:
    print(json.dumps([name, check(lambda: stream(size, sha, cut, chunk))]))
s = artifact.Sha256Stream(10, "00" * 32, "x")
s.update(b"0123456789")
print(json.dumps(["stream-over-on-update", check(lambda: s.update(b"a"))]))
point = binascii.unhexlify(jobs["point"])
envelope = open(jobs["envelope"], "rb").read()
manifest, _, _ = release.open_envelope(envelope, {release.keyid(point): point})
envelope = None
spans = artifact.app_file_spans(manifest)
print(json.dumps(["spans", spans]))
def check_artifact(path):
    f = open(path, "rb")
    for fpath, offset, size, sha in spans:
        s = artifact.Sha256Stream(size, sha, fpath)
        f.seek(offset)
        left = size
        while left:
            n = f.readinto(memoryview(chunks)[:min(left, 4096)])
            if not n:
                break
            s.update(memoryview(chunks)[:n])
            left -= n
        s.finish()
    f.close()
for name, path in jobs["artifacts"]:
    try:
        check_artifact(path)
        print(json.dumps([name, "ok", ""]))
    except Refused as exc:
        print(json.dumps([name, exc.reason, exc.detail]))
image, _, _ = release.open_envelope(open(jobs["image"], "rb").read(), {release.keyid(point): point})
print(json.dumps(["spans-of-image", check(lambda: artifact.app_file_spans(image))]))
"""


def test_artifacts(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 39 + b"tail"  # 9988 bytes: three 4 KiB chunks
    sha = hashlib.sha256(blob).hexdigest()
    (tmp_path / "blob").write_bytes(blob)
    tampered = bytearray(blob)
    tampered[5000] ^= 0x01
    (tmp_path / "tampered").write_bytes(tampered)
    (tmp_path / "truncated").write_bytes(blob[:-1])
    (tmp_path / "longer").write_bytes(blob + b"\x00")
    (tmp_path / "empty").write_bytes(b"")
    main_py = MANIFESTS["valid"][0]["files"]["main.py"].encode()
    (tmp_path / "main.py").write_bytes(main_py)
    files: list[tuple[str, str, int, str, int, str]] = [
        ("file-ok", "blob", len(blob), sha, 0, "ok"),
        ("file-ok-small-buffer", "blob", len(blob), sha, 100, "ok"),
        ("file-ok-large-buffer", "blob", len(blob), sha, 6000, "ok"),
        ("file-tampered", "tampered", len(blob), sha, 0, "artifact_mismatch"),
        ("file-truncated", "truncated", len(blob), sha, 0, "artifact_mismatch"),
        ("file-truncated-claimed", "truncated", len(blob) - 1, sha, 0, "artifact_mismatch"),
        ("file-longer", "longer", len(blob), sha, 0, "artifact_mismatch"),
        ("file-missing", "missing", len(blob), sha, 0, "artifact_mismatch"),
        ("file-empty", "empty", 0, hashlib.sha256(b"").hexdigest(), 0, "ok"),
        (
            "file-empty-claimed-size",
            "empty",
            1,
            hashlib.sha256(b"").hexdigest(),
            0,
            "artifact_mismatch",
        ),
        ("file-wrong-sha", "blob", len(blob), "00" * 32, 0, "artifact_mismatch"),
        ("file-upper-sha", "blob", len(blob), sha.upper(), 0, "artifact_mismatch"),
        (
            "file-vector-main-py",
            "main.py",
            APP["files"][0]["size"],
            APP["files"][0]["sha256"],
            0,
            "ok",
        ),
    ]
    streams = [
        ("stream-ok-1", len(blob), sha, len(blob), 1000, "ok"),
        ("stream-ok-4096", len(blob), sha, len(blob), 4096, "ok"),
        ("stream-ok-odd-chunks", len(blob), sha, len(blob), 999, "ok"),
        ("stream-short", len(blob), sha, len(blob) - 1, 4096, "artifact_mismatch"),
        ("stream-long", len(blob) - 1, sha, len(blob), 4096, "artifact_mismatch"),
        ("stream-wrong-sha", len(blob), "11" * 32, len(blob), 4096, "artifact_mismatch"),
    ]

    # A real app release: three files (one empty) concatenated in manifest order.
    app_dir = tmp_path / "app"
    (app_dir / "navign").mkdir(parents=True)
    (app_dir / "main.py").write_bytes(main_py)
    (app_dir / "navign" / "adv.mpy").write_bytes(blob)
    (app_dir / "navign" / "empty.py").write_bytes(b"")
    build = build_release(
        name="navign-beacon-app",
        version="1.5.0",
        target="esp32",
        secure_version=2,
        created_at=datetime(2026, 11, 27, tzinfo=UTC),
        app_dir=app_dir,
    )
    envelope = canon(sign_manifest(build.manifest, [private("release-1")], deterministic=True))
    (tmp_path / "envelope.json").write_bytes(envelope)
    (tmp_path / "image.json").write_bytes(canon(signed(canon(IMAGE))))
    (tmp_path / "artifact").write_bytes(build.artifact)
    bad = bytearray(build.artifact)
    bad[len(main_py) + 10] ^= 0x80  # inside navign/adv.mpy
    (tmp_path / "artifact-bad").write_bytes(bad)
    (tmp_path / "artifact-short").write_bytes(build.artifact[:-1])

    jobs = {
        "files": [[n, str(tmp_path / p), size, h, buf] for n, p, size, h, buf, _ in files],
        "blob": str(tmp_path / "blob"),
        "streams": [[n, size, h, cut, chunk] for n, size, h, cut, chunk, _ in streams],
        "point": point_hex("release-1"),
        "envelope": str(tmp_path / "envelope.json"),
        "image": str(tmp_path / "image.json"),
        "artifacts": [
            ["artifact-ok", str(tmp_path / "artifact")],
            ["artifact-bad", str(tmp_path / "artifact-bad")],
            ["artifact-short", str(tmp_path / "artifact-short")],
        ],
    }
    # The script loads the artifact checks and the whole verifier at once, compiled from source
    # (the compiler needs heap too): the beacon loads them one step at a time from .mpy, and
    # the device tests and benchmarks check that in 96 KiB.
    result = unix.run(ARTIFACT_SCRIPT % jobs, heapsize="192K")
    assert result.stderr == ""
    got = {line[0]: line[1:] for line in map(json.loads, result.stdout.splitlines())}

    assert {n: got[n][0] for n, *_ in files} == {n: f[-1] for n, *f in files}
    assert {n: got[n][0] for n, *_ in streams} == {n: s[-1] for n, *s in streams}
    assert got["stream-over-on-update"] == ["artifact_mismatch"]
    entries = build.manifest.files or []
    assert [e.path for e in entries] == ["main.py", "navign/adv.mpy", "navign/empty.py"]
    offsets = [0, len(main_py), len(main_py) + len(blob)]
    assert got["spans"] == [
        [[e.path, off, e.size, e.sha256] for e, off in zip(entries, offsets, strict=True)]
    ]
    assert got["artifact-ok"] == ["ok", ""]
    assert got["artifact-bad"][0] == "artifact_mismatch"
    assert got["artifact-bad"][1].startswith("navign/adv.mpy")
    assert got["artifact-short"][0] == "artifact_mismatch"
    assert got["spans-of-image"] == ["ValueError"]
