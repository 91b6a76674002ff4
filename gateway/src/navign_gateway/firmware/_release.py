"""A cached release as the cache records it: :class:`CachedRelease`, its SQLite table
(component ``firmware``) and the conversions between the two.

Kept apart from the cache itself so that the file and verification modules can speak of a
release without importing the class that drives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from navign_gateway.firmware.errors import FirmwareCacheError

ARTIFACT_FILE: Final = "artifact.bin"
ENVELOPE_FILE: Final = "envelope.json"

ID_RE: Final = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}")
_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"

MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE firmware_releases (
        firmware_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('app', 'image')),
        secure_version INTEGER NOT NULL,
        device_type TEXT NOT NULL,
        channel TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size > 0),
        sha256 TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        cached_at TEXT NOT NULL,
        last_used_at TEXT NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1))
    ) WITHOUT ROWID;
    """,
]


@dataclass(frozen=True, slots=True)
class CachedRelease:
    """A verified release on disk. ``sha256``/``size`` describe the artifact (the strong ETag
    served to beacons); ``manifest_sha256`` names the signed manifest (§6.3)."""

    firmware_id: str
    name: str
    version: str
    target: str
    kind: str
    secure_version: int
    device_type: str
    channel: str
    size: int
    sha256: str
    manifest_sha256: str
    cached_at: datetime
    last_used_at: datetime
    pinned: bool
    directory: Path

    @property
    def artifact_path(self) -> Path:
        return self.directory / ARTIFACT_FILE

    @property
    def envelope_path(self) -> Path:
        return self.directory / ENVELOPE_FILE


def stamp(moment: datetime) -> str:
    """Fixed-width UTC text: sorts like the times it stands for."""
    return moment.astimezone(UTC).strftime(_STAMP)


def unstamp(text: str) -> datetime:
    return datetime.strptime(text, _STAMP).replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_id(firmware_id: str) -> str:
    """Ids become file names: no leading dot, so never ``.`` or ``..``."""
    if not ID_RE.fullmatch(firmware_id):
        raise FirmwareCacheError(f"firmware id {firmware_id!r} cannot name a cached release")
    return firmware_id


def release_from_row(row: dict[str, Any], releases_dir: Path) -> CachedRelease:
    """The release a ``firmware_releases`` row records, its directory under ``releases_dir``."""
    return CachedRelease(
        firmware_id=row["firmware_id"],
        name=row["name"],
        version=row["version"],
        target=row["target"],
        kind=row["kind"],
        secure_version=int(row["secure_version"]),
        device_type=row["device_type"],
        channel=row["channel"],
        size=int(row["size"]),
        sha256=row["sha256"],
        manifest_sha256=row["manifest_sha256"],
        cached_at=unstamp(row["cached_at"]),
        last_used_at=unstamp(row["last_used_at"]),
        pinned=bool(row["pinned"]),
        directory=releases_dir / row["firmware_id"],
    )
