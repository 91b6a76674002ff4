"""What a release must pass before the cache keeps it, and keep passing to stay (protocol §6.5).

- the envelope verifies against the gateway's own release keys, the server's metadata agrees
  with the signed manifest, and the release has not expired (:func:`verify_envelope`);
- the artifact's size and the SHA-256 of the image, or of every app file, match the manifest,
  checked while the bytes stream in so that a bad file is found as soon as it is complete
  (:class:`ArtifactCheck`);
- at start-up, a recorded release still has its files and its envelope still verifies, which
  fails once the keys rotated (:func:`disk_problem`).

Every failure of a download is a :class:`FirmwareRejected` naming the reason.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from navign_gateway.firmware._release import ID_RE, CachedRelease
from navign_gateway.firmware.errors import FirmwareCacheError, FirmwareRejected
from navign_proto import keys
from navign_proto.errors import (
    KeyFormatError,
    ManifestError,
    ManifestFormatError,
    ManifestSignatureError,
)
from navign_proto.manifest import ReleaseManifest, VerifiedManifest, open_envelope, parse_time
from navign_proto.wire import FirmwareInfo

ReleaseKey = ec.EllipticCurvePublicKey | str | bytes


def load_keys(release_keys: Sequence[ReleaseKey]) -> tuple[ec.EllipticCurvePublicKey, ...]:
    loaded = []
    for index, key in enumerate(release_keys):
        if isinstance(key, ec.EllipticCurvePublicKey):
            loaded.append(key)
            continue
        try:
            loaded.append(keys.load_public_key(key))
        except KeyFormatError as exc:
            raise FirmwareCacheError(f"release key {index}: {exc}") from None
    return tuple(loaded)


def verify_envelope(
    info: FirmwareInfo,
    envelope: bytes,
    release_keys: Sequence[ec.EllipticCurvePublicKey],
    clock: Callable[[], datetime],
) -> VerifiedManifest:
    """The envelope's verified manifest: §6.5 steps 1-4 (open_envelope), the server's metadata
    checked against the manifest, then step 5 for the release as a whole (target and expiry)."""
    firmware_id = info.firmware_id
    try:
        verified = open_envelope(envelope, release_keys)
    except ManifestSignatureError as exc:
        raise FirmwareRejected(firmware_id, "signature_invalid", str(exc)) from None
    except ManifestFormatError as exc:
        raise FirmwareRejected(firmware_id, "envelope_malformed", str(exc)) from None
    check_metadata(info, verified.manifest)
    manifest = verified.manifest
    if manifest.expires_at is not None and clock() >= parse_time(manifest.expires_at):
        raise FirmwareRejected(
            firmware_id, "expired", f"the release expired at {manifest.expires_at}"
        )
    return verified


def check_metadata(info: FirmwareInfo, manifest: ReleaseManifest) -> None:
    """The server's metadata is a hint (§3.8): it must agree with the signed manifest."""
    expected: dict[str, tuple[object, object]] = {
        "version": (info.version, manifest.version),
        "target": (info.target.value, manifest.target.value),
        "kind": (info.kind.value, manifest.kind),
        "secure_version": (info.secure_version, manifest.secure_version),
        "min_previous_version": (info.min_previous_version, manifest.min_previous_version),
        "size_bytes": (info.size_bytes, manifest.total_size),
    }
    if manifest.image is not None:
        expected["checksum"] = (info.checksum, f"sha256:{manifest.image.sha256}")
    wrong = [
        f"{k}: {hint!r} vs {signed!r}" for k, (hint, signed) in expected.items() if hint != signed
    ]
    if wrong:
        raise FirmwareRejected(
            info.firmware_id,
            "metadata_mismatch",
            "the server's metadata disagrees with the signed manifest (" + "; ".join(wrong) + ")",
        )


class ArtifactCheck:
    """Hashes an artifact as it streams, each app file (or the image) against the manifest and
    the whole for the ETag. A mismatch is found as soon as the failing file is complete."""

    def __init__(self, firmware_id: str, manifest: ReleaseManifest) -> None:
        self.firmware_id = firmware_id
        if manifest.image is not None:
            self._parts = [("image", manifest.image.size, manifest.image.sha256)]
        else:
            self._parts = [(f.path, f.size, f.sha256) for f in manifest.files or ()]
        self.expected = manifest.total_size
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self._index = 0
        self._remaining = self._parts[0][1]
        self._digest = hashlib.sha256()
        self._whole = hashlib.sha256()

    def feed(self, data: bytes | memoryview) -> None:
        if self.received + len(data) > self.expected:
            raise FirmwareRejected(
                self.firmware_id,
                "size_mismatch",
                f"more than the {self.expected} bytes the manifest declares",
                "artifact",
            )
        self._whole.update(data)
        view = memoryview(data)
        while True:
            self._settle()
            if not view:
                return
            take = min(self._remaining, len(view))
            self._digest.update(view[:take])
            self._remaining -= take
            self.received += take
            view = view[take:]

    def _settle(self) -> None:
        while self._index < len(self._parts) and self._remaining == 0:
            name, _size, sha256 = self._parts[self._index]
            if self._digest.hexdigest() != sha256:
                raise FirmwareRejected(
                    self.firmware_id, "sha256_mismatch", f"{name}: SHA-256 differs", name
                )
            self._index += 1
            self._digest = hashlib.sha256()
            if self._index < len(self._parts):
                self._remaining = self._parts[self._index][1]

    def finish(self) -> str:
        """The artifact's SHA-256 once every byte arrived and every file matched."""
        self._settle()
        if self.received != self.expected:
            raise FirmwareRejected(
                self.firmware_id,
                "size_mismatch",
                f"{self.received} bytes, the manifest declares {self.expected}",
                "artifact",
            )
        return self._whole.hexdigest()


def disk_problem(
    release: CachedRelease, release_keys: Sequence[ec.EllipticCurvePublicKey]
) -> str | None:
    """Why a recorded release cannot be served any more, or None."""
    if not ID_RE.fullmatch(release.firmware_id):
        return "its id cannot name a file"
    try:
        artifact = release.artifact_path.lstat()
        envelope = release.envelope_path.read_bytes()
    except OSError as exc:
        return f"{exc.strerror or exc}: {exc.filename}"
    if not stat.S_ISREG(artifact.st_mode) or artifact.st_size != release.size:
        return f"artifact is {artifact.st_size} bytes, {release.size} expected"
    try:
        verified = open_envelope(envelope, release_keys)
    except ManifestError as exc:
        return f"envelope no longer verifies: {exc}"
    if (verified.manifest_sha256, verified.manifest.total_size) != (
        release.manifest_sha256,
        release.size,
    ):
        return "envelope does not match the record"
    return None
