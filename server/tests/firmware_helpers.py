"""Signed releases for the firmware API tests: manifests signed with a generated release key,
uploaded through the admin API of a real server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.mall import Chip
from navign_proto.manifest import (
    FileEntry,
    ReleaseManifest,
    format_time,
)
from navign_server.testing import Releases as Releases

# Re-exported for the firmware tests: the release builders live in navign_server.testing.
from navign_server.testing import image_manifest as image_manifest
from navign_server.testing import payload as payload

from .conftest import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    import_sample_mall,
    run_server,
    server_settings,
)

ENTITY = "mall-riverside"
CREATED = format_time(datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC))


def app_manifest(
    files: dict[str, bytes], *, version: str = "1.0.0", target: str = "esp32c3"
) -> ReleaseManifest:
    entries = [
        FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for path, data in files.items()
    ]
    return ReleaseManifest(
        name="navign-beacon-app",
        version=version,
        secure_version=2,
        target=Chip(target),
        kind="app",
        files=entries,
        min_previous_version="0.9.0",
        created_at=CREATED,
    )


def stray_files(server: RunningServer) -> list[Path]:
    """Every file in the blob store (committed blobs and temporary uploads)."""
    root = server.tmp_path / "data" / "firmware"
    return sorted(p for p in root.rglob("*") if p.is_file())


@asynccontextmanager
async def firmware_server(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, **settings: Any
) -> AsyncIterator[tuple[RunningServer, Releases, TestGateway]]:
    """A server trusting ``key``, with the sample mall and an enrolled gateway."""
    pem = keys.public_key_to_pem(key.public_key())
    configured = server_settings(tmp_path, release_public_keys=[pem], **settings)
    async with run_server(configured, tmp_path) as server:
        await import_sample_mall(server)
        gateway = await enrolled_gateway(server, ENTITY)
        yield server, Releases(server, key), gateway
