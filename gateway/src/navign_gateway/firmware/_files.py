"""The cache's files: partial downloads, staging, atomic install and the start-up reconcile.

Layout under the cache's root::

    releases/<id>/artifact.bin   verified artifact (what /api/firmware/{id}/download served)
    releases/<id>/envelope.json  the envelope bytes as the server sent them
    tmp/<id>.part                a download in progress, resumed with ``Range``
    tmp/<id>.staging/            a verified release on its way into releases/

Everything here blocks (it writes and fsyncs an SD card), so the cache runs it through
:func:`blocking`, in a worker thread. An OSError of our own disk is wrapped in
:class:`LocalWriteError` so that it is never mistaken for aiohttp's ClientOSError (also an
OSError), and becomes a :class:`DiskFullError` or a :class:`FirmwareCacheError`
(:func:`disk_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from navign_gateway.firmware._release import (
    ARTIFACT_FILE,
    ENVELOPE_FILE,
    ID_RE,
    CachedRelease,
    release_from_row,
)
from navign_gateway.firmware._verify import ArtifactCheck, disk_problem
from navign_gateway.firmware.errors import DiskFullError, FirmwareCacheError, FirmwareRejected

# The cache's one logger, whichever of its modules writes.
log = logging.getLogger("navign_gateway.firmware")

PART_SUFFIX: Final = ".part"
STAGING_SUFFIX: Final = ".staging"
#: Bytes read from the network, written and hashed per step.
CHUNK_BYTES = 64 * 1024
#: A partial download untouched for this long is removed at start instead of being resumed.
PART_MAX_AGE_SECONDS = 7 * 24 * 3600

P = ParamSpec("P")
T = TypeVar("T")


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn`` in a worker thread. When the caller is cancelled, the thread's work still ends
    before the CancelledError goes on, so a file descriptor is never closed under a write."""
    future = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


class LocalWriteError(Exception):
    """An OSError of our own disk, kept apart from aiohttp's ClientOSError (also an OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def disk_error(firmware_id: str, error: OSError, what: str) -> FirmwareCacheError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"release {firmware_id}: no space left while writing {what}; nothing was kept",
            firmware_id,
        )
    return FirmwareCacheError(
        f"release {firmware_id}: cannot write {what}: {error.strerror or error}", firmware_id
    )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Remove a file or a directory tree; nothing there is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- partial downloads --------------------------------------------------------------------------


def rehash_part(part: Path, check: ArtifactCheck) -> int:
    """Feed an existing partial download to ``check``; its size, or 0 after removing a part
    that cannot be the start of this artifact (too long, not a file, contradicts a hash)."""
    check.reset()
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode) or info.st_size > check.expected:
        remove(part)
        return 0
    try:
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                check.feed(chunk)
    except FirmwareRejected:
        remove(part)
        check.reset()
        return 0
    return check.received


def open_part(part: Path, offset: int) -> int:
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            if offset == 0:
                os.ftruncate(fd, 0)
            os.lseek(fd, offset, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
    except OSError as exc:
        raise LocalWriteError(exc) from exc
    return fd


def feed_and_write(fd: int, chunk: bytes, check: ArtifactCheck) -> None:
    check.feed(chunk)
    try:
        write_all(fd, chunk)
    except OSError as exc:
        raise LocalWriteError(exc) from exc


def fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise LocalWriteError(exc) from exc


def fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LocalWriteError(exc) from exc


# -- releases -----------------------------------------------------------------------------------


def install(root: Path, firmware_id: str, envelope: bytes) -> Path:
    """Move a verified part and its envelope into releases/<id>/ atomically (a staging
    directory renamed into place), fsyncing files and directories on the way."""
    tmp, releases = root / "tmp", root / "releases"
    part = tmp / f"{firmware_id}{PART_SUFFIX}"
    staging = tmp / f"{firmware_id}{STAGING_SUFFIX}"
    final = releases / firmware_id
    remove(staging)
    try:
        staging.mkdir()
        os.replace(part, staging / ARTIFACT_FILE)
        fd = os.open(staging / ENVELOPE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, envelope)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(staging)
        remove(final)  # a directory a crash left without its row
        os.replace(staging, final)
        fsync_dir(releases)
        fsync_dir(tmp)
    except BaseException:
        remove(staging)
        remove(part)
        raise
    return final


def reconcile(
    root: Path,
    rows: list[dict[str, Any]],
    release_keys: Sequence[ec.EllipticCurvePublicKey],
    now: float,
) -> tuple[list[CachedRelease], list[str]]:
    """The recorded releases still servable, and the ids of those to drop (files missing, of
    the wrong size, or an envelope that no longer verifies). Removes directories without a
    row, staging leftovers and stray temporary files; partial downloads younger than
    PART_MAX_AGE_SECONDS stay for resuming."""
    releases_dir, tmp = root / "releases", root / "tmp"
    releases_dir.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    kept: list[CachedRelease] = []
    dropped: list[str] = []
    for row in rows:
        release = release_from_row(row, releases_dir)
        problem = disk_problem(release, release_keys)
        if problem is None:
            kept.append(release)
            continue
        log.warning("firmware cache: dropping %s: %s", release.firmware_id, problem)
        dropped.append(release.firmware_id)
        if ID_RE.fullmatch(release.firmware_id):
            remove(release.directory)
    known = {r.firmware_id for r in kept}
    for entry in releases_dir.iterdir():
        if entry.name not in known:
            log.warning("firmware cache: removing %s (no record of it)", entry)
            remove(entry)
    for entry in tmp.iterdir():
        firmware_id = entry.name.removesuffix(PART_SUFFIX)
        resumable = (
            entry.name.endswith(PART_SUFFIX)
            and ID_RE.fullmatch(firmware_id) is not None
            and firmware_id not in known
            and entry.is_file()
            and not entry.is_symlink()
            and now - entry.stat().st_mtime < PART_MAX_AGE_SECONDS
        )
        if not resumable:
            remove(entry)
    return kept, dropped
