"""The gateway's firmware cache: releases verified as protocol §6.5 says, kept on disk for the
mall's beacons, within a disk budget.

Why it exists: beacons fetch releases from the gateway (over Wi-Fi or BLE), never from the
server, and a gateway is a carrier that must never hand out bytes the release key did not sign.
So a release enters the cache only after its DSSE envelope verified against the gateway's own
release keys, its manifest agreed with the server's metadata, and the artifact's size and
SHA-256 (of the image, or of every app file) matched the signed manifest.

Layout under ``root``::

    releases/<id>/artifact.bin   verified artifact (what /api/firmware/{id}/download served)
    releases/<id>/envelope.json  the envelope bytes as the server sent them
    tmp/<id>.part                a download in progress, resumed with ``Range``
    tmp/<id>.staging/            a verified release on its way into releases/

A release is recorded in SQLite (component ``firmware``) only once its directory is in place,
and :meth:`FirmwareCache.open` drops rows whose files went missing, releases whose envelope no
longer verifies (keys rotated), and leftovers of a crash. Reads (:meth:`FirmwareCache.get`,
:meth:`~FirmwareCache.list`, :meth:`~FirmwareCache.latest`, :meth:`~FirmwareCache.usage`) come
from an in-memory mirror of the table, so serving a beacon costs no database round trip.

Public: :class:`FirmwareCache`, :class:`CachedRelease`, :func:`report_status` and the
exceptions (:class:`FirmwareCacheError` and its subclasses).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from navign_gateway.db import Database
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto import keys
from navign_proto.errors import (
    KeyFormatError,
    ManifestError,
    ManifestFormatError,
    ManifestSignatureError,
)
from navign_proto.manifest import (
    MAX_ENVELOPE_BYTES,
    ReleaseManifest,
    VerifiedManifest,
    open_envelope,
    parse_time,
)
from navign_proto.versions import parse_version
from navign_proto.wire import FirmwareInfo, FirmwareInstallStatus, FirmwareStatusReport

log = logging.getLogger(__name__)

COMPONENT: Final = "firmware"
ARTIFACT_FILE: Final = "artifact.bin"
ENVELOPE_FILE: Final = "envelope.json"
PART_SUFFIX: Final = ".part"
STAGING_SUFFIX: Final = ".staging"
REPORT_PATH: Final = "/api/orchestrators/reports/firmware"
#: Bytes read from the network, written and hashed per step.
CHUNK_BYTES = 64 * 1024
MANIFEST_LIMITS = aiohttp.ClientTimeout(total=60, sock_connect=10)
#: No total limit (16 MiB over a slow mall uplink takes a while); a stalled read fails.
DOWNLOAD_LIMITS = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
REPORT_LIMITS = aiohttp.ClientTimeout(total=10, sock_connect=5)
#: last_used_at is written to SQLite at most this often per release (LRU needs no more, and an
#: SD card should not take a synchronous write per beacon request).
TOUCH_PERSIST_SECONDS = 60.0
#: A partial download untouched for this long is removed at start instead of being resumed.
PART_MAX_AGE_SECONDS = 7 * 24 * 3600
#: Downloads per ensure(): a resume, then a restart from byte 0 (after 416 or a stale part).
MAX_ATTEMPTS = 3

_ID_RE = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
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

P = ParamSpec("P")
T = TypeVar("T")
ReleaseKey = ec.EllipticCurvePublicKey | str | bytes


# -- errors -------------------------------------------------------------------------------------


class FirmwareCacheError(Exception):
    """Base of the cache's errors. ``code`` is what a status report carries."""

    code = "cache_error"

    def __init__(self, message: str, firmware_id: str | None = None) -> None:
        super().__init__(message)
        self.firmware_id = firmware_id


class FirmwareRejected(FirmwareCacheError):  # noqa: N818 - the domain's word for it
    """The release failed verification (§6.5); nothing of it was kept. ``reason``:
    ``envelope_malformed``, ``signature_invalid``, ``metadata_mismatch``, ``expired``,
    ``size_mismatch`` or ``sha256_mismatch``; ``part`` names the failing file for the last two."""

    def __init__(
        self, firmware_id: str, reason: str, message: str, part: str | None = None
    ) -> None:
        super().__init__(f"release {firmware_id} rejected ({reason}): {message}", firmware_id)
        self.reason = reason
        self.part = part
        self.code = reason


class CacheBudgetError(FirmwareCacheError):
    """The release does not fit: larger than the whole budget, or pinned releases fill it."""

    code = "cache_budget"

    def __init__(self, firmware_id: str, message: str, size: int, budget: int) -> None:
        super().__init__(f"release {firmware_id}: {message}", firmware_id)
        self.size = size
        self.budget = budget


class DiskFullError(FirmwareCacheError):
    """The file system is full (ENOSPC or EDQUOT); the partial file was removed."""

    code = "disk_full"


class NotCachedError(FirmwareCacheError, KeyError):
    """The release is not in the cache (pin, unpin)."""

    code = "not_cached"

    def __str__(self) -> str:
        return str(self.args[0])


# -- the record ---------------------------------------------------------------------------------


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


def _stamp(moment: datetime) -> str:
    """Fixed-width UTC text: sorts like the times it stands for."""
    return moment.astimezone(UTC).strftime(_STAMP)


def _unstamp(text: str) -> datetime:
    return datetime.strptime(text, _STAMP).replace(tzinfo=UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_id(firmware_id: str) -> str:
    """Ids become file names: no leading dot, so never ``.`` or ``..``."""
    if not _ID_RE.fullmatch(firmware_id):
        raise FirmwareCacheError(f"firmware id {firmware_id!r} cannot name a cached release")
    return firmware_id


def _load_keys(release_keys: Sequence[ReleaseKey]) -> tuple[ec.EllipticCurvePublicKey, ...]:
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


# -- blocking work off the event loop ----------------------------------------------------------


async def _blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
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


class _LocalWriteError(Exception):
    """An OSError of our own disk, kept apart from aiohttp's ClientOSError (also an OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file or a directory tree; nothing there is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the artifact check -------------------------------------------------------------------------


class _ArtifactCheck:
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


def _rehash_part(part: Path, check: _ArtifactCheck) -> int:
    """Feed an existing partial download to ``check``; its size, or 0 after removing a part
    that cannot be the start of this artifact (too long, not a file, contradicts a hash)."""
    check.reset()
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode) or info.st_size > check.expected:
        _remove(part)
        return 0
    try:
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                check.feed(chunk)
    except FirmwareRejected:
        _remove(part)
        check.reset()
        return 0
    return check.received


def _open_part(part: Path, offset: int) -> int:
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
        raise _LocalWriteError(exc) from exc
    return fd


def _feed_and_write(fd: int, chunk: bytes, check: _ArtifactCheck) -> None:
    check.feed(chunk)
    try:
        _write_all(fd, chunk)
    except OSError as exc:
        raise _LocalWriteError(exc) from exc


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _LocalWriteError(exc) from exc


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _LocalWriteError(exc) from exc


def _install(root: Path, firmware_id: str, envelope: bytes) -> Path:
    """Move a verified part and its envelope into releases/<id>/ atomically (a staging
    directory renamed into place), fsyncing files and directories on the way."""
    tmp, releases = root / "tmp", root / "releases"
    part = tmp / f"{firmware_id}{PART_SUFFIX}"
    staging = tmp / f"{firmware_id}{STAGING_SUFFIX}"
    final = releases / firmware_id
    _remove(staging)
    try:
        staging.mkdir()
        os.replace(part, staging / ARTIFACT_FILE)
        fd = os.open(staging / ENVELOPE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, envelope)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(staging)
        _remove(final)  # a directory a crash left without its row
        os.replace(staging, final)
        _fsync_dir(releases)
        _fsync_dir(tmp)
    except BaseException:
        _remove(staging)
        _remove(part)
        raise
    return final


def _disk_error(firmware_id: str, error: OSError, what: str) -> FirmwareCacheError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"release {firmware_id}: no space left while writing {what}; nothing was kept",
            firmware_id,
        )
    return FirmwareCacheError(
        f"release {firmware_id}: cannot write {what}: {error.strerror or error}", firmware_id
    )


# -- reports ------------------------------------------------------------------------------------


async def report_status(upstream: Upstream, report: FirmwareStatusReport) -> None:
    """POST one firmware status report (the gateway's own, or a beacon's) to the server.
    Raises UpstreamError when the server refuses it or cannot be reached."""
    body = report.model_dump(mode="json", exclude_none=True)
    async with upstream.request("POST", REPORT_PATH, json_body=body, limits=REPORT_LIMITS) as r:
        await raise_for_error(r)


# -- the cache ----------------------------------------------------------------------------------


class FirmwareCache:
    """Verified releases on disk, at most ``budget_bytes`` of them (least recently used out
    first, pinned ones never). One download per release id at a time."""

    def __init__(
        self,
        db: Database,
        root: Path,
        upstream: Upstream,
        release_keys: Sequence[ReleaseKey],
        budget_bytes: int,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if budget_bytes <= 0:
            raise FirmwareCacheError(f"the cache budget must be positive, not {budget_bytes}")
        self._db = db
        self.root = root
        self._releases_dir = root / "releases"
        self._tmp = root / "tmp"
        self._upstream = upstream
        self._keys = _load_keys(release_keys)
        self.budget = budget_bytes
        self._clock = clock
        self._mirror: dict[str, CachedRelease] = {}
        self._persisted_use: dict[str, datetime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._commit_lock = asyncio.Lock()
        self._opened = False
        self._report_failing = False
        registry = REGISTRY if registry is None else registry
        self._downloads = Counter(
            "orchestrator_firmware_downloads_total",
            "Release downloads by outcome (success, rejected, failed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "rejected", "failed"):
            self._downloads.labels(outcome)
        self._bytes = Counter(
            "orchestrator_firmware_download_bytes_total",
            "Artifact bytes received from the server",
            registry=registry,
        )
        self._evictions = Counter(
            "orchestrator_firmware_evictions_total",
            "Releases evicted to stay within the budget",
            registry=registry,
        )
        self._cache_bytes = Gauge(
            "orchestrator_firmware_cache_bytes", "Bytes of verified releases", registry=registry
        )
        self._cache_releases = Gauge(
            "orchestrator_firmware_cache_releases", "Verified releases cached", registry=registry
        )
        Gauge(
            "orchestrator_firmware_cache_budget_bytes", "The cache's budget", registry=registry
        ).set(budget_bytes)

    # -- start-up ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables, then reconcile them with the disk: rows whose files are missing,
        of the wrong size, or whose envelope no longer verifies are dropped; directories
        without a row, staging leftovers and stray temporary files are removed; partial
        downloads younger than PART_MAX_AGE_SECONDS stay for resuming."""
        await self._db.migrate(COMPONENT, MIGRATIONS)
        if not self._keys:
            log.warning("no release public keys configured: every release will be rejected")
        async with self._db.reader.execute("SELECT * FROM firmware_releases") as cursor:
            rows = [dict(row) for row in await cursor.fetchall()]
        kept, dropped = await _blocking(self._reconcile, rows, self._clock().timestamp())
        if dropped:
            async with self._db.transaction() as conn:
                await conn.executemany(
                    "DELETE FROM firmware_releases WHERE firmware_id = ?", [(i,) for i in dropped]
                )
        self._mirror = {r.firmware_id: r for r in kept}
        self._persisted_use = {r.firmware_id: r.last_used_at for r in kept}
        self._opened = True
        self._update_gauges()

    def _reconcile(
        self, rows: builtins.list[dict[str, Any]], now: float
    ) -> tuple[builtins.list[CachedRelease], builtins.list[str]]:
        self._releases_dir.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        kept: list[CachedRelease] = []
        dropped: list[str] = []
        for row in rows:
            release = self._row_release(row)
            problem = self._disk_problem(release)
            if problem is None:
                kept.append(release)
                continue
            log.warning("firmware cache: dropping %s: %s", release.firmware_id, problem)
            dropped.append(release.firmware_id)
            if _ID_RE.fullmatch(release.firmware_id):
                _remove(release.directory)
        known = {r.firmware_id for r in kept}
        for entry in self._releases_dir.iterdir():
            if entry.name not in known:
                log.warning("firmware cache: removing %s (no record of it)", entry)
                _remove(entry)
        for entry in self._tmp.iterdir():
            firmware_id = entry.name.removesuffix(PART_SUFFIX)
            resumable = (
                entry.name.endswith(PART_SUFFIX)
                and _ID_RE.fullmatch(firmware_id) is not None
                and firmware_id not in known
                and entry.is_file()
                and not entry.is_symlink()
                and now - entry.stat().st_mtime < PART_MAX_AGE_SECONDS
            )
            if not resumable:
                _remove(entry)
        return kept, dropped

    def _row_release(self, row: dict[str, Any]) -> CachedRelease:
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
            cached_at=_unstamp(row["cached_at"]),
            last_used_at=_unstamp(row["last_used_at"]),
            pinned=bool(row["pinned"]),
            directory=self._releases_dir / row["firmware_id"],
        )

    def _disk_problem(self, release: CachedRelease) -> str | None:
        """Why a recorded release cannot be served any more, or None."""
        if not _ID_RE.fullmatch(release.firmware_id):
            return "its id cannot name a file"
        try:
            artifact = release.artifact_path.lstat()
            envelope = release.envelope_path.read_bytes()
        except OSError as exc:
            return f"{exc.strerror or exc}: {exc.filename}"
        if not stat.S_ISREG(artifact.st_mode) or artifact.st_size != release.size:
            return f"artifact is {artifact.st_size} bytes, {release.size} expected"
        try:
            verified = open_envelope(envelope, self._keys)
        except ManifestError as exc:
            return f"envelope no longer verifies: {exc}"
        if (verified.manifest_sha256, verified.manifest.total_size) != (
            release.manifest_sha256,
            release.size,
        ):
            return "envelope does not match the record"
        return None

    # -- reads (in memory) -------------------------------------------------------------------

    def get(self, firmware_id: str) -> CachedRelease | None:
        """The verified release, or None (unknown, or still downloading)."""
        return self._mirror.get(firmware_id)

    def list(self) -> list[CachedRelease]:
        """Every verified release, by target then version."""
        return sorted(
            self._mirror.values(), key=lambda r: (r.target, parse_version(r.version), r.firmware_id)
        )

    def latest(self, target: str) -> CachedRelease | None:
        """The cached release for ``target`` with the highest version (SemVer precedence)."""
        candidates = [r for r in self._mirror.values() if r.target == target]
        if not candidates:
            return None
        return max(candidates, key=lambda r: (parse_version(r.version), r.cached_at))

    def usage(self) -> tuple[int, int]:
        """(bytes of verified releases, budget)."""
        return sum(r.size for r in self._mirror.values()), self.budget

    # -- writes ------------------------------------------------------------------------------

    async def touch(self, firmware_id: str) -> bool:
        """Mark a release as used now (LRU). Written to SQLite at most every
        TOUCH_PERSIST_SECONDS; a failed write is logged, never raised (serving goes on).
        False when the release is not cached."""
        release = self._mirror.get(firmware_id)
        if release is None:
            return False
        now = self._clock()
        self._mirror[firmware_id] = replace(release, last_used_at=now)
        persisted = self._persisted_use.get(firmware_id)
        if persisted is not None and (now - persisted).total_seconds() < TOUCH_PERSIST_SECONDS:
            return True
        self._persisted_use[firmware_id] = now
        try:
            async with self._db.transaction() as conn:
                await conn.execute(
                    "UPDATE firmware_releases SET last_used_at = ? WHERE firmware_id = ?",
                    (_stamp(now), firmware_id),
                )
        except (sqlite3.Error, OSError) as exc:
            log.warning("firmware cache: cannot record the use of %s: %s", firmware_id, exc)
        return True

    async def pin(self, firmware_id: str) -> CachedRelease:
        """Keep a release through evictions (a rollout needs it). NotCachedError if unknown:
        to pin what is not cached yet, use ``ensure(info, pin=True)``."""
        return await self._set_pinned(firmware_id, True)

    async def unpin(self, firmware_id: str) -> CachedRelease:
        return await self._set_pinned(firmware_id, False)

    async def _set_pinned(self, firmware_id: str, pinned: bool) -> CachedRelease:
        self._require_open()
        async with self._commit_lock:
            release = self._mirror.get(firmware_id)
            if release is None:
                raise NotCachedError(f"release {firmware_id} is not cached", firmware_id)
            async with self._db.transaction() as conn:
                await conn.execute(
                    "UPDATE firmware_releases SET pinned = ? WHERE firmware_id = ?",
                    (int(pinned), firmware_id),
                )
            release = self._mirror[firmware_id] = replace(release, pinned=pinned)
            return release

    async def ensure(self, info: FirmwareInfo, *, pin: bool = False) -> CachedRelease:
        """The verified release ``info`` names, downloading and verifying it if needed.

        Idempotent: a cached release is returned untouched. Raises FirmwareRejected
        (verification failed; nothing kept), UpstreamError (server refused or unreachable; a
        partial download stays for resuming), CacheBudgetError, DiskFullError."""
        self._require_open()
        firmware_id = _check_id(info.firmware_id)
        lock = self._locks.setdefault(firmware_id, asyncio.Lock())
        async with lock:
            cached = self._mirror.get(firmware_id)
            if cached is not None:
                return await self.pin(firmware_id) if pin and not cached.pinned else cached
            return await self._acquire(info, pin)

    async def _acquire(self, info: FirmwareInfo, pin: bool) -> CachedRelease:
        firmware_id = info.firmware_id
        try:
            self._plan_eviction(firmware_id, info.size_bytes)  # refuse before downloading
            envelope, verified = await self._fetch_manifest(info)
            await self.report(firmware_id, FirmwareInstallStatus.DOWNLOADING)
            sha256 = await self._download(info, verified.manifest)
            release = await self._commit(info, verified, envelope, sha256, pin)
        except FirmwareRejected as exc:
            self._downloads.labels("rejected").inc()
            log.warning("firmware %s: %s", firmware_id, exc)
            await self.report(firmware_id, FirmwareInstallStatus.FAILED, exc.code, str(exc))
            raise
        except UpstreamError as exc:
            self._downloads.labels("failed").inc()
            if exc.status:  # a server that cannot be reached cannot hear the report either
                code = exc.code or f"HTTP_{exc.status}"
                await self.report(firmware_id, FirmwareInstallStatus.FAILED, code, str(exc))
            raise
        except FirmwareCacheError as exc:
            self._downloads.labels("failed").inc()
            log.warning("firmware %s: %s", firmware_id, exc)
            await self.report(firmware_id, FirmwareInstallStatus.FAILED, exc.code, str(exc))
            raise
        self._downloads.labels("success").inc()
        log.info("firmware %s %s for %s cached", firmware_id, release.version, release.target)
        await self.report(firmware_id, FirmwareInstallStatus.SUCCESS)
        return release

    async def _fetch_manifest(self, info: FirmwareInfo) -> tuple[bytes, VerifiedManifest]:
        """The envelope bytes and their verified manifest: §6.5 steps 1-4 (open_envelope),
        the server's metadata checked against the manifest, then step 5 for the release as a
        whole (target and expiry)."""
        firmware_id = info.firmware_id
        path = f"/api/firmware/{firmware_id}/manifest"
        chunks: list[bytes] = []
        received = 0
        try:
            async with self._upstream.request("GET", path, limits=MANIFEST_LIMITS) as response:
                await raise_for_error(response)
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > MAX_ENVELOPE_BYTES:
                        raise FirmwareRejected(
                            firmware_id,
                            "envelope_malformed",
                            f"envelope larger than {MAX_ENVELOPE_BYTES} bytes",
                        )
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(0, None, f"GET {path}: {exc or type(exc).__name__}") from exc
        envelope = b"".join(chunks)
        try:
            verified = open_envelope(envelope, self._keys)
        except ManifestSignatureError as exc:
            raise FirmwareRejected(firmware_id, "signature_invalid", str(exc)) from None
        except ManifestFormatError as exc:
            raise FirmwareRejected(firmware_id, "envelope_malformed", str(exc)) from None
        _check_metadata(info, verified.manifest)
        manifest = verified.manifest
        if manifest.expires_at is not None and self._clock() >= parse_time(manifest.expires_at):
            raise FirmwareRejected(
                firmware_id, "expired", f"the release expired at {manifest.expires_at}"
            )
        return envelope, verified

    async def _download(self, info: FirmwareInfo, manifest: ReleaseManifest) -> str:
        """Stream the artifact into tmp/<id>.part (resuming a part left earlier) and verify it
        (§6.5 step 6); its SHA-256. A part that fails verification after a resume is retried
        once from byte 0 before the release is rejected."""
        firmware_id = info.firmware_id
        part = self._tmp / f"{firmware_id}{PART_SUFFIX}"
        check = _ArtifactCheck(firmware_id, manifest)
        etag = f'"{info.checksum.removeprefix("sha256:")}"'
        for attempt in range(MAX_ATTEMPTS):
            offset = await _blocking(_rehash_part, part, check)
            try:
                if offset < check.expected:
                    if not await self._stream(firmware_id, part, check, offset, etag):
                        continue  # 416 or a range we did not ask for: start again at 0
                else:
                    await self._sync_part(firmware_id, part)
                return check.finish()
            except FirmwareRejected:
                await _blocking(_remove, part)
                if offset > 0 and attempt + 1 < MAX_ATTEMPTS:
                    log.info(
                        "firmware %s: resumed download failed to verify; restarting", firmware_id
                    )
                    continue
                raise
        raise FirmwareCacheError(
            f"release {firmware_id}: no complete download in {MAX_ATTEMPTS} attempts", firmware_id
        )

    async def _sync_part(self, firmware_id: str, part: Path) -> None:
        """A part that was already complete: make sure its bytes are on disk."""
        try:
            await _blocking(_fsync_file, part)
        except _LocalWriteError as exc:
            raise _disk_error(firmware_id, exc.error, "the download") from None

    async def _stream(
        self, firmware_id: str, part: Path, check: _ArtifactCheck, offset: int, etag: str
    ) -> bool:
        """One GET of the artifact from ``offset``; False when the part was dropped and the
        download must start again (416, or a 206 for another range)."""
        path = f"/api/firmware/{firmware_id}/download"
        headers = {"Range": f"bytes={offset}-", "If-Range": etag} if offset else None
        try:
            async with self._upstream.request(
                "GET", path, headers=headers, limits=DOWNLOAD_LIMITS
            ) as response:
                if response.status == 416:
                    log.info("firmware %s: range refused (416); restarting", firmware_id)
                    await _blocking(_remove, part)
                    return False
                await raise_for_error(response)
                if response.status == 206:
                    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                    if match is None or (int(match[1]), int(match[3])) != (offset, check.expected):
                        await _blocking(_remove, part)
                        return False
                elif response.status == 200:
                    offset = 0  # the server sent the whole artifact: the part starts over
                else:
                    raise UpstreamError(
                        response.status, None, f"GET {path}: unexpected {response.status}"
                    )
                await self._write_body(firmware_id, response, part, check, offset)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(0, None, f"GET {path}: {exc or type(exc).__name__}") from exc
        return True

    async def _write_body(
        self,
        firmware_id: str,
        response: aiohttp.ClientResponse,
        part: Path,
        check: _ArtifactCheck,
        offset: int,
    ) -> None:
        if offset == 0:
            check.reset()
        try:
            fd = await _blocking(_open_part, part, offset)
        except _LocalWriteError as exc:
            await _blocking(_remove, part)
            raise _disk_error(firmware_id, exc.error, "the download") from None
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                await _blocking(_feed_and_write, fd, chunk, check)
                self._bytes.inc(len(chunk))
            await _blocking(_fsync, fd)
        except _LocalWriteError as exc:
            await _blocking(os.close, fd)
            await _blocking(_remove, part)
            raise _disk_error(firmware_id, exc.error, "the download") from None
        except BaseException:
            await _blocking(os.close, fd)
            raise
        await _blocking(os.close, fd)

    async def _commit(
        self,
        info: FirmwareInfo,
        verified: VerifiedManifest,
        envelope: bytes,
        sha256: str,
        pin: bool,
    ) -> CachedRelease:
        """Make room, move the verified files into place, then record them."""
        firmware_id = info.firmware_id
        manifest = verified.manifest
        part = self._tmp / f"{firmware_id}{PART_SUFFIX}"
        async with self._commit_lock:
            try:
                victims = self._plan_eviction(firmware_id, manifest.total_size)
            except CacheBudgetError:
                await _blocking(_remove, part)
                raise
            await self._evict(victims)
            try:
                directory = await _blocking(_install, self.root, firmware_id, envelope)
            except OSError as exc:
                raise _disk_error(firmware_id, exc, "the release") from None
            now = self._clock()
            release = CachedRelease(
                firmware_id=firmware_id,
                name=manifest.name,
                version=manifest.version,
                target=str(manifest.target.value),
                kind=manifest.kind,
                secure_version=manifest.secure_version,
                device_type=info.device_type,
                channel=info.channel.value,
                size=manifest.total_size,
                sha256=sha256,
                manifest_sha256=verified.manifest_sha256,
                cached_at=now,
                last_used_at=now,
                pinned=pin,
                directory=directory,
            )
            try:
                async with self._db.transaction() as conn:
                    await conn.execute(
                        "INSERT OR REPLACE INTO firmware_releases (firmware_id, name, version,"
                        " target, kind, secure_version, device_type, channel, size, sha256,"
                        " manifest_sha256, cached_at, last_used_at, pinned)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            firmware_id, release.name, release.version, release.target,
                            release.kind, release.secure_version, release.device_type,
                            release.channel, release.size, sha256, release.manifest_sha256,
                            _stamp(now), _stamp(now), int(pin),
                        ),
                    )  # fmt: skip
            except BaseException:
                await _blocking(_remove, directory)
                raise
            self._mirror[firmware_id] = release
            self._persisted_use[firmware_id] = now
            self._update_gauges()
            return release

    def _plan_eviction(self, firmware_id: str, size: int) -> builtins.list[CachedRelease]:
        """The least recently used unpinned releases to drop so that ``size`` more bytes fit;
        CacheBudgetError when they cannot."""
        if size > self.budget:
            raise CacheBudgetError(
                firmware_id,
                f"{size} bytes is larger than the whole cache budget ({self.budget} bytes)",
                size,
                self.budget,
            )
        others = [r for r in self._mirror.values() if r.firmware_id != firmware_id]
        used = sum(r.size for r in others)
        victims: list[CachedRelease] = []
        candidates = sorted(
            (r for r in others if not r.pinned),
            key=lambda r: (r.last_used_at, r.cached_at, r.firmware_id),
        )
        for candidate in candidates:
            if used + size <= self.budget:
                break
            victims.append(candidate)
            used -= candidate.size
        if used + size > self.budget:
            pinned = sum(r.size for r in others if r.pinned)
            raise CacheBudgetError(
                firmware_id,
                f"{size} bytes do not fit: pinned releases hold {pinned} of the "
                f"{self.budget}-byte budget",
                size,
                self.budget,
            )
        return victims

    async def _evict(self, victims: Iterable[CachedRelease]) -> None:
        victims = list(victims)
        if not victims:
            return
        async with self._db.transaction() as conn:
            await conn.executemany(
                "DELETE FROM firmware_releases WHERE firmware_id = ?",
                [(r.firmware_id,) for r in victims],
            )
        for release in victims:
            self._mirror.pop(release.firmware_id, None)
            self._persisted_use.pop(release.firmware_id, None)
            log.info("firmware cache: evicted %s (last used %s)", release.firmware_id,
                     release.last_used_at.isoformat())  # fmt: skip
            self._evictions.inc()
            # An open file being served to a beacon survives its unlink.
            await _blocking(_remove, release.directory)
        self._update_gauges()

    # -- reports -----------------------------------------------------------------------------

    async def report(
        self,
        firmware_id: str,
        status: FirmwareInstallStatus,
        error_code: str | None = None,
        message: str | None = None,
        *,
        beacon_id: str | None = None,
    ) -> bool:
        """Best effort: tell the server about a release's status (the gateway's own when
        ``beacon_id`` is None). A failure is logged (WARNING once, then DEBUG) and False."""
        try:
            report = FirmwareStatusReport(
                entity_id=self._upstream.entity_id,
                firmware_id=firmware_id,
                beacon_id=beacon_id,
                status=status,
                error_code=error_code[:64] if error_code else None,
                message=message[:1000] if message else None,
                at=self._clock(),
            )
            await report_status(self._upstream, report)
        except (UpstreamError, ValueError) as exc:
            level = logging.DEBUG if self._report_failing else logging.WARNING
            log.log(level, "firmware %s: status report not sent: %s", firmware_id, exc)
            self._report_failing = True
            return False
        self._report_failing = False
        return True

    # -- helpers -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._opened:
            raise FirmwareCacheError("the firmware cache is not open (call open() first)")

    def _update_gauges(self) -> None:
        self._cache_bytes.set(sum(r.size for r in self._mirror.values()))
        self._cache_releases.set(len(self._mirror))


def _check_metadata(info: FirmwareInfo, manifest: ReleaseManifest) -> None:
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
