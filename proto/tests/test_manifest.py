from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from navign_proto import keys
from navign_proto.errors import (
    ArtifactMismatchError,
    ManifestFormatError,
    ManifestPolicyError,
    ManifestSignatureError,
)
from navign_proto.mall import Chip
from navign_proto.manifest import (
    ImageEntry,
    ReleaseManifest,
    add_signatures,
    check_installable,
    collect_app,
    envelope_bytes,
    open_envelope,
    sign_manifest,
    verify_bundle,
)

RELEASE = keys.private_key_from_scalar(0x1234)
ROTATED = keys.private_key_from_scalar(0x5678)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def image_manifest(**changes: Any) -> ReleaseManifest:
    fields: dict[str, Any] = {
        "name": "navign-beacon-fw",
        "version": "1.2.0",
        "secure_version": 1,
        "target": "esp32",
        "kind": "image",
        "image": ImageEntry(size=4, sha256="a" * 64),
        "created_at": "2026-11-27T10:00:00Z",
    }
    fields.update(changes)
    return ReleaseManifest(**fields)


def test_sign_and_open() -> None:
    manifest = image_manifest()
    data = envelope_bytes(sign_manifest(manifest, [RELEASE]))
    verified = open_envelope(data, [RELEASE.public_key()])
    assert verified.manifest == manifest
    assert verified.signed_by == (keys.key_id(RELEASE.public_key()),)
    assert len(verified.manifest_sha256) == 64


def test_untrusted_key_refused() -> None:
    data = envelope_bytes(sign_manifest(image_manifest(), [RELEASE]))
    with pytest.raises(ManifestSignatureError):
        open_envelope(data, [ROTATED.public_key()])


def test_key_rotation_with_two_signatures_and_threshold() -> None:
    envelope = sign_manifest(image_manifest(), [RELEASE])
    both = add_signatures(envelope, [ROTATED, RELEASE])
    assert len(both["signatures"]) == 2  # RELEASE is not added twice
    data = envelope_bytes(both)
    open_envelope(data, [ROTATED.public_key()])  # a device that already trusts only the new key
    open_envelope(data, [RELEASE.public_key(), ROTATED.public_key()], threshold=2)
    with pytest.raises(ManifestSignatureError):
        open_envelope(envelope_bytes(envelope), [RELEASE.public_key()], threshold=2)


def test_every_bit_flip_in_the_payload_fails() -> None:
    envelope = sign_manifest(image_manifest(), [RELEASE])
    payload = base64.b64decode(envelope["payload"])
    for index in range(len(payload)):
        for bit in (0x01, 0x80):
            tampered = bytearray(payload)
            tampered[index] ^= bit
            data = envelope_bytes({**envelope, "payload": base64.b64encode(tampered).decode()})
            with pytest.raises((ManifestSignatureError, ManifestFormatError)):
                open_envelope(data, [RELEASE.public_key()])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: {**e, "extra": 1},
        lambda e: {k: v for k, v in e.items() if k != "signatures"},
        lambda e: {**e, "signatures": []},
        lambda e: {**e, "payload": "@@@"},
        lambda e: {**e, "payload": 5},
        lambda e: {**e, "signatures": [{"keyid": "x"}]},
        lambda e: {**e, "signatures": [{"keyid": "x", "sig": "!!"}]},
        lambda e: {**e, "signatures": e["signatures"] * 9},
        lambda e: {**e, "payloadType": "text/plain"},
    ],
)
def test_malformed_envelopes(mutate: Any) -> None:
    envelope = sign_manifest(image_manifest(), [RELEASE])
    with pytest.raises(ManifestFormatError):
        open_envelope(envelope_bytes(mutate(envelope)), [RELEASE.public_key()])


def test_oversized_and_non_json_envelopes() -> None:
    with pytest.raises(ManifestFormatError):
        open_envelope(b"{" * 70_000, [RELEASE.public_key()])
    with pytest.raises(ManifestFormatError):
        open_envelope(b"\xff\x00", [RELEASE.public_key()])


def test_signed_but_invalid_manifest_refused() -> None:
    """A validly signed payload that is not a valid manifest is still refused."""
    from navign_proto.canonical import canonical_json
    from navign_proto.manifest import PAYLOAD_TYPE, pae

    document = image_manifest().document()
    document["secure_version"] = -1
    payload = canonical_json(document)
    sig = keys.sign(RELEASE, pae(PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": keys.key_id(RELEASE.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }
    with pytest.raises(ManifestFormatError, match="greater than or equal"):
        open_envelope(json.dumps(envelope).encode(), [RELEASE.public_key()])


@pytest.mark.parametrize(
    "changes",
    [
        {"version": "1.2"},
        {"version": "1.2.0+b1"},
        {"name": "Bad Name"},
        {"target": "esp8266"},
        {"kind": "app"},
        {"secure_version": 2**32},
        {"created_at": "2026-13-01T00:00:00Z"},
        {"created_at": "2026-11-27 10:00:00"},
        {"expires_at": "2026-11-01T00:00:00Z"},
        {"files": [{"path": "a.py", "size": 1, "sha256": "a" * 64}]},
        {"image": {"size": 1, "sha256": "A" * 64}},
        {"secure_version": "1"},
    ],
)
def test_manifest_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        image_manifest(**changes)


@pytest.mark.parametrize("path", ["../x.py", "/abs.py", ".hidden", "a//b.py", "a/./b.py", "a b.py"])
def test_app_file_paths_are_confined(path: str) -> None:
    with pytest.raises(ValidationError):
        ReleaseManifest(
            name="app",
            version="1.0.0",
            secure_version=0,
            target=Chip.ESP32C3,
            kind="app",
            files=[{"path": path, "size": 1, "sha256": "a" * 64}],  # type: ignore[list-item]
            created_at="2026-11-27T10:00:00Z",
        )


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"target": "esp32s3"}, "wrong_target"),
        ({"current_version": "1.2.0"}, "same_version"),
        ({"current_version": "1.10.0"}, "downgrade"),
        ({"current_secure_version": 2}, "secure_version"),
        ({"current_version": "0.9.0"}, "min_previous_version"),
        ({"now": datetime(2027, 1, 1, tzinfo=UTC)}, "expired"),
    ],
)
def test_policy(state: dict[str, Any], reason: str) -> None:
    manifest = image_manifest(min_previous_version="1.0.0", expires_at="2026-12-31T00:00:00Z")
    args: dict[str, Any] = {
        "target": "esp32",
        "current_version": "1.1.0",
        "current_secure_version": 1,
        "now": NOW,
    }
    check_installable(manifest, **args)
    args.update(state)
    with pytest.raises(ManifestPolicyError) as info:
        check_installable(manifest, **args)
    assert info.value.reason == reason


def test_app_bundle_files_and_verification(tmp_path: Path) -> None:
    (tmp_path / "navign").mkdir()
    (tmp_path / "main.py").write_bytes(b"print('hi')\n")
    (tmp_path / "navign" / "adv.mpy").write_bytes(b"\x4d\x06" * 100)
    files, artifact = collect_app(tmp_path)
    assert artifact == b"print('hi')\n" + b"\x4d\x06" * 100  # concatenated in path order
    assert [f.path for f in files] == ["main.py", "navign/adv.mpy"]
    manifest = ReleaseManifest(
        name="app",
        version="1.0.0",
        secure_version=0,
        target=Chip.ESP32C3,
        kind="app",
        files=files,
        created_at="2026-11-27T10:00:00Z",
    )
    verify_bundle(manifest, tmp_path)
    (tmp_path / "navign" / "adv.mpy").write_bytes(b"\x4d\x06" * 99 + b"\x4d\x07")
    with pytest.raises(ArtifactMismatchError, match="SHA-256"):
        verify_bundle(manifest, tmp_path)
    (tmp_path / "navign" / "adv.mpy").write_bytes(b"short")
    with pytest.raises(ArtifactMismatchError, match="size"):
        verify_bundle(manifest, tmp_path)
    (tmp_path / "main.py").unlink()
    with pytest.raises(ArtifactMismatchError, match="missing"):
        verify_bundle(manifest, tmp_path)
