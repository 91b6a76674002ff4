"""Hosted firmware releases: the trusted release keys, release ids, the streaming check of an
uploaded artifact against its verified manifest, and the ``FirmwareInfo`` a gateway reads.

The **artifact** of a release is what ``/api/firmware/{id}/download`` serves:

* ``kind: image``: the image's bytes;
* ``kind: app``: the app files' bytes **concatenated in manifest order**, so file *i* occupies
  ``[sum of the sizes before i, + size_i)``. Its size is the sum of the file sizes, and each
  file is checked by slicing it out and hashing it against the manifest.

``FirmwareInfo.checksum`` is the SHA-256 of the artifact (for an image, the image's own hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.errors import ArtifactMismatchError
from navign_proto.manifest import ReleaseManifest
from navign_proto.versions import parse_version
from navign_proto.wire import FirmwareInfo
from navign_server.blobs import BlobStore
from navign_server.storage.base import Release, ReleaseStatus

#: Characters of the manifest's SHA-256 in a release id.
ID_HASH_CHARS = 12
ID_MAX_LENGTH = 64


class ArtifactTooLargeError(ArtifactMismatchError):
    """More bytes arrived than the manifest declares."""

    def __init__(self, expected: int) -> None:
        super().__init__("artifact", f"larger than the {expected} bytes the manifest declares")
        self.expected = expected


@dataclass(frozen=True, slots=True)
class FirmwareHosting:
    """What the firmware endpoints need besides the store: built once in ``create_app``."""

    trusted_keys: tuple[ec.EllipticCurvePublicKey, ...]
    blobs: BlobStore


def load_release_keys(pems: Iterable[str]) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """The keys of ``ServerSettings.release_public_keys`` (already validated PEM)."""
    return tuple(keys.load_public_key(pem) for pem in pems)


def release_id(manifest: ReleaseManifest, manifest_sha256: str) -> str:
    """``fw-<target>-<version>-<12 hex of the manifest's SHA-256>``, at most 64 characters (a
    long version is shortened; the hash keeps the id unique). Only ``[A-Za-z0-9.-]``."""
    suffix = f"-{manifest_sha256[:ID_HASH_CHARS]}"
    head = f"fw-{manifest.target}-"
    room = ID_MAX_LENGTH - len(head) - len(suffix)
    return f"{head}{manifest.version[:room].rstrip('.-')}{suffix}"


def newest(releases: Iterable[Release]) -> Release | None:
    """The release with the highest version by SemVer precedence (ties: the latest upload)."""
    best: Release | None = None
    for release in releases:
        if best is None or parse_version(release.version) >= parse_version(best.version):
            best = release
    return best


def is_downloadable(release: Release) -> bool:
    """Uploaded and verified; a withdrawn release stays downloadable (it may be assigned)."""
    return release.artifact_sha256 is not None and (
        release.status is not ReleaseStatus.PENDING_UPLOAD
    )


def firmware_info(release: Release, base_url: str) -> FirmwareInfo:
    assert release.artifact_sha256 is not None
    firmware = f"{base_url}/api/firmware/{release.release_id}"
    return FirmwareInfo.model_validate(
        {
            "firmware_id": release.release_id,
            "version": release.version,
            "target": release.target,
            "device_type": release.device_type,
            "channel": release.channel,
            "size_bytes": release.artifact_size,
            "checksum": f"sha256:{release.artifact_sha256}",
            "download_url": f"{firmware}/download",
            "manifest_url": f"{firmware}/manifest",
            "changelog": list(release.changelog),
            "compatible_hardware": list(release.compatible_hardware),
            "min_previous_version": release.min_previous_version,
            "secure_version": release.secure_version,
            "kind": release.kind,
        }
    )


class ArtifactCheck:
    """Checks an artifact against its manifest while it streams in, without holding it.

    ``feed`` each chunk in order, then ``finish``. Each file (or the image) is hashed as its
    bytes pass; a wrong hash raises ``ArtifactMismatchError`` as soon as that file is complete,
    a byte beyond the declared size raises ``ArtifactTooLargeError``, and ``finish`` raises if
    bytes are missing.
    """

    def __init__(self, manifest: ReleaseManifest) -> None:
        if manifest.image is not None:
            parts = [("image", manifest.image.size, manifest.image.sha256)]
        else:
            parts = [(f.path, f.size, f.sha256) for f in manifest.files or ()]
        self._parts: Sequence[tuple[str, int, str]] = parts
        self.expected = manifest.total_size
        self.received = 0
        self._index = 0
        self._remaining = parts[0][1] if parts else 0
        self._digest = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        if self.received + len(chunk) > self.expected:
            raise ArtifactTooLargeError(self.expected)
        view = memoryview(chunk)
        while view:
            self._settle()
            take = min(self._remaining, len(view))
            self._digest.update(view[:take])
            self._remaining -= take
            self.received += take
            view = view[take:]
        self._settle()

    def finish(self) -> None:
        if self.received != self.expected:
            raise ArtifactMismatchError(
                "artifact", f"size {self.received}, manifest says {self.expected}"
            )
        self._settle()

    def _settle(self) -> None:
        """Check every part whose bytes are all in (zero-size files included)."""
        while self._index < len(self._parts) and self._remaining == 0:
            name, _, sha256 = self._parts[self._index]
            if self._digest.hexdigest() != sha256:
                raise ArtifactMismatchError(name, "SHA-256 does not match the manifest")
            self._index += 1
            self._digest = hashlib.sha256()
            if self._index < len(self._parts):
                self._remaining = self._parts[self._index][1]
