"""``GET /api/firmware/latest`` metadata (also the body of a ``firmware_update`` event)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from navign_proto.mall import Chip, Identifier
from navign_proto.manifest import MAX_ARTIFACT_BYTES, MAX_SECURE_VERSION
from navign_proto.manifest import Version as ReleaseVersion
from navign_proto.wire._types import Keyword, Sha256Checksum, UrlRef, WireMessage


class FirmwareChannel(StrEnum):
    STABLE = "stable"
    BETA = "beta"
    CANARY = "canary"


class FirmwareKind(StrEnum):
    """``app``: a bundle of .mpy files; ``image``: a whole MicroPython image for OTA."""

    APP = "app"
    IMAGE = "image"


ChangelogLine = Annotated[str, StringConstraints(max_length=1000)]
HardwareName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class FirmwareInfo(WireMessage):
    firmware_id: Identifier
    version: ReleaseVersion
    target: Chip
    device_type: Keyword
    channel: FirmwareChannel
    size_bytes: int = Field(ge=1, le=MAX_ARTIFACT_BYTES)
    checksum: Sha256Checksum
    download_url: UrlRef
    fallback_url: UrlRef | None = None
    changelog: list[ChangelogLine] = Field(default_factory=list, max_length=200)
    compatible_hardware: list[HardwareName] = Field(default_factory=list, max_length=64)
    min_previous_version: ReleaseVersion | None = None
    secure_version: int = Field(ge=0, le=MAX_SECURE_VERSION)
    kind: FirmwareKind
    manifest_url: UrlRef | None = None
