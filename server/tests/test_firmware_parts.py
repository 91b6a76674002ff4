"""The pieces under the firmware endpoints, without a server: trusted release keys in the
settings, the blob store, the streaming artifact check, release ids and Range parsing."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from navign_proto import keys
from navign_proto.byteranges import ByteRange, RangeNotSatisfiableError, parse_range
from navign_proto.errors import ArtifactMismatchError
from navign_server.blobs import STALE_TEMP_SECONDS, BlobNotFoundError, FilesystemBlobs
from navign_server.cli import EXIT_CONFIG, load_settings
from navign_server.releases import ArtifactCheck, ArtifactTooLargeError, release_id
from navign_server.settings import ServerSettings

from .firmware_helpers import app_manifest, image_manifest, payload

# -- settings ---------------------------------------------------------------------------------


def test_release_keys_as_pem_file_or_point(tmp_path: Path) -> None:
    first, second = keys.generate_private_key(), keys.generate_private_key()
    pem = keys.public_key_to_pem(first.public_key())
    path = tmp_path / "release.pub"
    path.write_text(keys.public_key_to_pem(second.public_key()))
    point = keys.public_key_to_point(first.public_key()).hex()
    settings = ServerSettings(
        environment="development", release_public_keys=[pem, str(path), point]
    )
    # Held as PEM, one per key (the point is the first key again).
    assert settings.release_public_keys == [pem, keys.public_key_to_pem(second.public_key())]


def test_release_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    point = keys.public_key_to_point(keys.generate_private_key().public_key()).hex()
    monkeypatch.setenv("NAVIGN_SERVER_RELEASE_PUBLIC_KEYS", f'["{point}"]')
    assert len(ServerSettings(environment="development").release_public_keys) == 1


@pytest.mark.parametrize(
    "entry",
    [
        "/nonexistent/release.pub",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        "ab" * 65,
    ],
)
def test_invalid_release_keys_stop_the_start(
    entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match="entry 0"):
        ServerSettings(environment="development", release_public_keys=[entry])
    with pytest.raises(SystemExit) as stopped:
        load_settings(environment="development", release_public_keys=[entry])
    assert stopped.value.code == EXIT_CONFIG
    assert "invalid NAVIGN_SERVER_RELEASE_PUBLIC_KEYS" in capsys.readouterr().err


# -- blobs ------------------------------------------------------------------------------------


async def chunks_of(
    data: bytes, size: int = 1000, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if fail_at is not None and start >= fail_at:
            raise RuntimeError("verification failed")
        yield data[start : start + size]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_blobs_put_read_and_size(tmp_path: Path) -> None:
    blobs = FilesystemBlobs(tmp_path / "firmware")
    await blobs.open()
    data = payload(150_000, "blob")
    ref = await blobs.put(chunks_of(data))
    assert (ref.sha256, ref.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert files_under(tmp_path) == [blobs.path_of(ref.sha256)]
    assert await blobs.size(ref.sha256) == len(data)
    assert b"".join([c async for c in blobs.read(ref.sha256)]) == data
    pieces = [c async for c in blobs.read(ref.sha256, 10, 70_000, chunk_size=4096)]
    assert b"".join(pieces) == data[10:70_000]
    assert max(len(p) for p in pieces) == 4096
    again = await blobs.put(chunks_of(data, 777))  # the same bytes: one blob
    assert again == ref
    assert files_under(tmp_path) == [blobs.path_of(ref.sha256)]


async def test_an_aborted_put_leaves_nothing(tmp_path: Path) -> None:
    blobs = FilesystemBlobs(tmp_path / "firmware")
    await blobs.open()
    with pytest.raises(RuntimeError, match="verification failed"):
        await blobs.put(chunks_of(payload(600_000, "big"), 1000, fail_at=500_000))
    assert files_under(tmp_path) == []


async def test_missing_blobs_and_bad_names(tmp_path: Path) -> None:
    blobs = FilesystemBlobs(tmp_path / "firmware")
    await blobs.open()
    with pytest.raises(BlobNotFoundError):
        await blobs.size("0" * 64)
    with pytest.raises(BlobNotFoundError):
        [c async for c in blobs.read("0" * 64)]
    for name in ("../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            blobs.path_of(name)


async def test_open_removes_stale_uploads_only(tmp_path: Path) -> None:
    root = tmp_path / "firmware"
    (root / "tmp").mkdir(parents=True)
    stale, fresh = root / "tmp" / "old.part", root / "tmp" / "new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    past = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (past, past))
    await FilesystemBlobs(root).open()
    assert files_under(root) == [fresh]


# -- artifact check ---------------------------------------------------------------------------


def test_artifact_check_splits_chunks_at_file_boundaries() -> None:
    files = {"empty-first": b"", "a.mpy": b"a" * 10, "mid-empty": b"", "b.mpy": b"b" * 5, "z": b""}
    manifest = app_manifest(files)
    artifact = b"".join(files.values())
    for size in (1, 3, 7, 100):
        check = ArtifactCheck(manifest)
        for start in range(0, len(artifact), size):
            check.feed(artifact[start : start + size])
        check.finish()
    bad = ArtifactCheck(manifest)
    bad.feed(b"a" * 9)
    with pytest.raises(ArtifactMismatchError) as wrong:
        bad.feed(b"b")  # a.mpy is complete (and wrong) now, before the artifact ends
    assert wrong.value.path == "a.mpy"
    with pytest.raises(ArtifactTooLargeError):
        ArtifactCheck(manifest).feed(artifact + b"!")
    short = ArtifactCheck(manifest)
    short.feed(artifact[:-1])
    with pytest.raises(ArtifactMismatchError, match="size 14, manifest says 15"):
        short.finish()


def test_release_ids_fit_the_identifier_rules() -> None:
    image = payload(10, "id")
    digest = "f" * 64
    assert (
        release_id(image_manifest(image, version="1.2.3"), digest) == "fw-esp32-1.2.3-ffffffffffff"
    )
    long_version = "1.0.0-" + "a" * 40 + "." + "b" * 10
    made = release_id(image_manifest(image, version=long_version), digest)
    assert len(made) == 64
    assert made.startswith("fw-esp32-1.0.0-aaa")
    assert made.endswith("-ffffffffffff")


# -- Range ------------------------------------------------------------------------------------


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-0", 100) == ByteRange(0, 0)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=50-1000", 100) == ByteRange(50, 99)
    assert parse_range("bytes=" + "9" * 300, 100) is None  # an absurd header is ignored
    assert parse_range("bytes=0-1, 3-4", 100) is None
    for unsatisfiable in ("bytes=100-", "bytes=100-200", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(unsatisfiable, 100)
