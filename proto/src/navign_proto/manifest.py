"""Signed release manifests: what a beacon may install, signed by the operator's release key.

A manifest is a JSON object (:class:`ReleaseManifest`) serialised in canonical form (RFC 8785).
It travels inside a DSSE envelope (the in-toto "Dead Simple Signing Envelope")::

    {"payloadType": "application/vnd.navign.release-manifest+json",
     "payload": "<base64 of the canonical manifest bytes>",
     "signatures": [{"keyid": "<hex SHA-256 of the key's SubjectPublicKeyInfo>",
                     "sig": "<base64 of the raw 64-byte r||s ECDSA-P256-SHA256 signature>"}]}

Each signature covers ``PAE(payloadType, payload)`` = ``"DSSEv1" SP len(type) SP type SP
len(payload) SP payload`` (lengths in ASCII decimal). A verifier checks signatures over the bytes
it received, then parses them: a beacon never re-serialises JSON to check a signature. The
manifest's identity (``manifest_sha256``, announced over mDNS and BLE) is the SHA-256 of those
payload bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal, Self

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from navign_proto import keys
from navign_proto.canonical import canonical_json, parse_json
from navign_proto.errors import (
    ArtifactMismatchError,
    CanonicalJSONError,
    ManifestFormatError,
    ManifestPolicyError,
    ManifestSignatureError,
    SignatureError,
)
from navign_proto.mall import Chip
from navign_proto.versions import compare_versions, validate_version

SCHEMA: Final = "navign.release.v1"
PAYLOAD_TYPE = "application/vnd.navign.release-manifest+json"
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_SIGNATURES = 8
MAX_FILES = 256
#: ESP32 flash is at most 16 MiB: no single artifact can be larger.
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
#: Anti-rollback counters are unsigned 32-bit on the beacon.
MAX_SECURE_VERSION = 2**32 - 1
READ_CHUNK = 64 * 1024

Kind = Literal["app", "image"]
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_PATH_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _check_sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return value


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("name must be 1-64 of [a-z0-9._-], starting with a letter or digit")
    return value


def _check_path(value: str) -> str:
    parts = value.split("/")
    if len(value) > 128 or not all(_PATH_PART_RE.fullmatch(p) for p in parts):
        raise ValueError(
            "file path must be relative, '/'-separated parts of [A-Za-z0-9._-] "
            "(no '..', no leading '/' or '.', at most 128 characters)"
        )
    return value


def _check_time(value: str) -> str:
    if not _TIME_RE.fullmatch(value):
        raise ValueError("time must be RFC 3339 UTC to the second: YYYY-MM-DDTHH:MM:SSZ")
    datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # rejects impossible dates
    return value


Sha256Hex = Annotated[str, AfterValidator(_check_sha256)]
Version = Annotated[str, AfterValidator(validate_version)]
UtcTime = Annotated[str, AfterValidator(_check_time)]


def format_time(moment: datetime) -> str:
    """A datetime in the manifest's time format (UTC, seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FileEntry(_Strict):
    """One file of an app bundle, relative to the app's root on the beacon."""

    path: Annotated[str, AfterValidator(_check_path)]
    size: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)
    sha256: Sha256Hex


class ImageEntry(_Strict):
    """A full firmware image for the inactive OTA partition."""

    size: int = Field(ge=1, le=MAX_ARTIFACT_BYTES)
    sha256: Sha256Hex


class ReleaseManifest(_Strict):
    """The signed description of one release for one chip."""

    schema_: Literal["navign.release.v1"] = Field(SCHEMA, alias="schema")
    name: Annotated[str, AfterValidator(_check_name)]
    version: Version
    #: Anti-rollback counter: a beacon never installs a release below the value it stores.
    secure_version: int = Field(ge=0, le=MAX_SECURE_VERSION)
    # The mall model's Chip enum is the one list of targets; not strict, so "esp32c3" parses.
    target: Annotated[Chip, Field(strict=False)]
    kind: Kind
    files: list[FileEntry] | None = Field(None, max_length=MAX_FILES)
    image: ImageEntry | None = None
    min_previous_version: Version | None = None
    created_at: UtcTime
    expires_at: UtcTime | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "app":
            if not self.files or self.image is not None:
                raise ValueError("an app release lists files and no image")
            paths = [f.path for f in self.files]
            if len(set(paths)) != len(paths):
                raise ValueError("an app release lists a file path twice")
        elif self.image is None or self.files is not None:
            raise ValueError("an image release has an image and no files")
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def document(self) -> dict[str, Any]:
        """The manifest as a JSON object (what is canonicalised and signed)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_bytes(self) -> bytes:
        """The canonical payload bytes."""
        return canonical_json(self.document())

    @property
    def total_size(self) -> int:
        if self.image is not None:
            return self.image.size
        return sum(f.size for f in self.files or ())


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: the bytes a signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_manifest(
    manifest: ReleaseManifest,
    signers: Sequence[ec.EllipticCurvePrivateKey],
    *,
    deterministic: bool = False,
) -> dict[str, Any]:
    """A DSSE envelope carrying ``manifest`` signed by every key in ``signers``."""
    if not signers:
        raise ValueError("at least one release key must sign")
    return add_signatures(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(manifest.to_bytes()).decode("ascii"),
            "signatures": [],
        },
        signers,
        deterministic=deterministic,
    )


def add_signatures(
    envelope: dict[str, Any],
    signers: Sequence[ec.EllipticCurvePrivateKey],
    *,
    deterministic: bool = False,
) -> dict[str, Any]:
    """A copy of ``envelope`` with signatures by ``signers`` added (for key rotation)."""
    payload = base64.b64decode(envelope["payload"], validate=True)
    message = pae(envelope["payloadType"], payload)
    signatures = list(envelope["signatures"])
    present = {s["keyid"] for s in signatures}
    for signer in signers:
        kid = keys.key_id(signer.public_key())
        if kid in present:
            continue
        sig = keys.sign(signer, message, deterministic=deterministic)
        signatures.append({"keyid": kid, "sig": base64.b64encode(sig).decode("ascii")})
        present.add(kid)
    if len(signatures) > MAX_SIGNATURES:
        raise ValueError(f"at most {MAX_SIGNATURES} signatures")
    return {**envelope, "signatures": signatures}


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """The envelope as stored and served (canonical JSON, so identical wherever written)."""
    return canonical_json(envelope)


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    """A manifest whose envelope carried a valid signature by a trusted release key."""

    manifest: ReleaseManifest
    payload: bytes
    signed_by: tuple[str, ...]

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


def _decode_b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ManifestFormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestFormatError(f"{what} is not valid base64") from exc


def open_envelope(
    data: bytes,
    trusted_keys: Iterable[ec.EllipticCurvePublicKey],
    *,
    threshold: int = 1,
) -> VerifiedManifest:
    """Verify an envelope and return its manifest.

    At least ``threshold`` distinct trusted keys must have valid signatures; signatures by keys
    we do not trust are ignored (they may be from a newer key a later release adds). The payload
    must be canonical JSON and a valid :class:`ReleaseManifest`.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ManifestFormatError(f"envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        envelope = parse_json(data)
    except CanonicalJSONError as exc:
        raise ManifestFormatError(f"envelope: {exc}") from exc
    if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload", "signatures"}:
        raise ManifestFormatError("envelope must have exactly payloadType, payload, signatures")
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise ManifestFormatError(f"payloadType must be {PAYLOAD_TYPE}")
    payload = _decode_b64(envelope["payload"], "payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise ManifestFormatError(f"signatures must be a list of 1 to {MAX_SIGNATURES}")

    trusted = {keys.key_id(k): k for k in trusted_keys}
    message = pae(PAYLOAD_TYPE, payload)
    valid: list[str] = []
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise ManifestFormatError("each signature must have exactly keyid and sig")
        key = trusted.get(entry["keyid"]) if isinstance(entry["keyid"], str) else None
        signature = _decode_b64(entry["sig"], "sig")
        if key is None or entry["keyid"] in valid:
            continue
        try:
            keys.verify(key, message, signature)
        except SignatureError:
            continue
        valid.append(entry["keyid"])
    if len(valid) < threshold:
        raise ManifestSignatureError(
            f"{len(valid)} valid signature(s) by trusted release keys, {threshold} required"
        )

    try:
        document = parse_json(payload)
    except CanonicalJSONError as exc:
        raise ManifestFormatError(f"manifest: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ManifestFormatError(f"manifest must declare schema {SCHEMA!r}")
    if canonical_json(document) != payload:
        raise ManifestFormatError("manifest payload is not in canonical form")
    try:
        manifest = ReleaseManifest.model_validate(document)
    except ValidationError as exc:
        raise ManifestFormatError(f"manifest: {exc.errors()[0]['msg']}") from exc
    return VerifiedManifest(manifest, payload, tuple(valid))


def check_installable(
    manifest: ReleaseManifest,
    *,
    target: str,
    current_version: str,
    current_secure_version: int,
    now: datetime | None = None,
) -> None:
    """Refuse a release this device must not install. ``reason`` on the error is one of
    ``wrong_target``, ``same_version``, ``downgrade``, ``secure_version``,
    ``min_previous_version``, ``expired``.
    """
    if manifest.target != target:
        raise ManifestPolicyError(
            "wrong_target", f"release is for {manifest.target}, device is {target}"
        )
    order = compare_versions(manifest.version, current_version)
    if order == 0:
        raise ManifestPolicyError("same_version", f"version {current_version} already installed")
    if order < 0:
        raise ManifestPolicyError(
            "downgrade", f"release {manifest.version} is older than {current_version}"
        )
    if manifest.secure_version < current_secure_version:
        raise ManifestPolicyError(
            "secure_version",
            f"secure_version {manifest.secure_version} is below the device's "
            f"{current_secure_version}",
        )
    if (
        manifest.min_previous_version is not None
        and compare_versions(current_version, manifest.min_previous_version) < 0
    ):
        raise ManifestPolicyError(
            "min_previous_version",
            f"release needs at least {manifest.min_previous_version} installed first",
        )
    if manifest.expires_at is not None:
        moment = now or datetime.now(UTC)
        if moment >= parse_time(manifest.expires_at):
            raise ManifestPolicyError("expired", f"release expired at {manifest.expires_at}")


def file_sha256(path: Path) -> tuple[int, str]:
    """``(size, hex sha256)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def verify_artifact(path: Path, size: int, sha256: str, *, name: str | None = None) -> None:
    """Check one file against the size and SHA-256 its manifest declares."""
    label = name or str(path)
    try:
        actual_size, actual = file_sha256(path)
    except FileNotFoundError as exc:
        raise ArtifactMismatchError(label, "missing") from exc
    if actual_size != size:
        raise ArtifactMismatchError(label, f"size {actual_size}, manifest says {size}")
    if actual != sha256:
        raise ArtifactMismatchError(label, "SHA-256 does not match the manifest")


def verify_bundle(manifest: ReleaseManifest, root: Path) -> None:
    """Check every file of an app release under ``root``, or the image file at ``root``."""
    if manifest.image is not None:
        verify_artifact(root, manifest.image.size, manifest.image.sha256)
        return
    for entry in manifest.files or ():
        verify_artifact(root / entry.path, entry.size, entry.sha256, name=entry.path)


@dataclass(frozen=True, slots=True)
class ReleaseBuild:
    """A manifest and the exact artifact bytes it describes: for an image release the image;
    for an app release the files' bytes concatenated in manifest order (file ``i`` occupies
    ``[sum of the sizes before it, + its size)``), the download format of docs/protocol.md §3.10.
    """

    manifest: ReleaseManifest
    artifact: bytes


def build_release(
    *,
    name: str,
    version: str,
    target: str,
    secure_version: int,
    created_at: datetime,
    min_previous_version: str | None = None,
    expires_at: datetime | None = None,
    app_dir: Path | None = None,
    image: Path | None = None,
) -> ReleaseBuild:
    """Describe an app directory or an image file as a release, from the bytes read once.

    Raises ManifestFormatError for a missing, empty or oversized source, and pydantic's
    ValidationError for fields the manifest refuses.
    """
    if (app_dir is None) == (image is None):
        raise ValueError("give exactly one of app_dir and image")
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "secure_version": secure_version,
        "target": target,
        "min_previous_version": min_previous_version,
        "created_at": format_time(created_at),
        "expires_at": format_time(expires_at) if expires_at is not None else None,
    }
    if image is not None:
        entry, data = collect_image(image)
        fields.update(kind="image", image=entry)
    else:
        assert app_dir is not None
        files, data = collect_app(app_dir)
        fields.update(kind="app", files=files)
    return ReleaseBuild(ReleaseManifest(**fields), data)


def collect_image(path: Path) -> tuple[ImageEntry, bytes]:
    """An image file's manifest entry and bytes."""
    data = _read_artifact(path)
    if not data:
        raise ManifestFormatError(f"{path}: empty image")
    return ImageEntry(size=len(data), sha256=_sha256(data)), data


def collect_app(root: Path) -> tuple[list[FileEntry], bytes]:
    """An app directory's file entries (sorted by path) and its artifact (the files' bytes
    concatenated in that order)."""
    if not root.is_dir():
        raise ManifestFormatError(f"{root}: not a directory")
    entries: list[FileEntry] = []
    parts: list[bytes] = []
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = _read_artifact(path)
        total += len(data)
        if total > MAX_ARTIFACT_BYTES:
            raise ManifestFormatError(f"{root}: the app is larger than {MAX_ARTIFACT_BYTES} bytes")
        relative = PurePosixPath(path.relative_to(root).as_posix())
        entries.append(FileEntry(path=str(relative), size=len(data), sha256=_sha256(data)))
        parts.append(data)
    if not entries:
        raise ManifestFormatError(f"{root}: no files")
    return entries, b"".join(parts)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_artifact(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_ARTIFACT_BYTES:
            raise ManifestFormatError(f"{path}: larger than {MAX_ARTIFACT_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ManifestFormatError(f"{path}: {exc.strerror or exc}") from None
