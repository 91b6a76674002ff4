"""The gateway's firmware cache: releases verified as protocol §6.5 says, kept on disk for the
mall's beacons, within a disk budget.

Why it exists: beacons fetch releases from the gateway (over Wi-Fi or BLE), never from the
server, and a gateway is a carrier that must never hand out bytes the release key did not sign.
So a release enters the cache only after its DSSE envelope verified against the gateway's own
release keys, its manifest agreed with the server's metadata, and the artifact's size and
SHA-256 (of the image, or of every app file) matched the signed manifest.

A release is recorded in SQLite (component ``firmware``) only once its directory is in place
(the layout is in :mod:`._files`), and :meth:`FirmwareCache.open` drops rows whose files went
missing, releases whose envelope no longer verifies (keys rotated), and leftovers of a crash.
Reads (:meth:`FirmwareCache.get`, :meth:`~FirmwareCache.list`, :meth:`~FirmwareCache.latest`,
:meth:`~FirmwareCache.usage`) come from an in-memory mirror of the table, so serving a beacon
costs no database round trip.

This module is the public face; the work is in private modules: ``_verify`` (what a release
must pass), ``_download`` (fetching and resuming), ``_files`` (part files, staging, install,
fsync) and ``_release`` (the record and its row).

Public: :class:`FirmwareCache`, :class:`CachedRelease`, :func:`report_status` and the
exceptions (:class:`FirmwareCacheError` and its subclasses, in :mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Final

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from navign_gateway.db import Database
from navign_gateway.firmware._download import ArtifactDownload, fetch_envelope
from navign_gateway.firmware._files import (
    PART_SUFFIX,
    blocking,
    disk_error,
    install,
    reconcile,
    remove,
)
from navign_gateway.firmware._release import MIGRATIONS, CachedRelease, check_id, stamp, utcnow
from navign_gateway.firmware._verify import ReleaseKey, load_keys, verify_envelope
from navign_gateway.firmware.errors import (
    CacheBudgetError,
    DiskFullError,
    FirmwareCacheError,
    FirmwareRejected,
    NotCachedError,
)
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.manifest import ReleaseManifest, VerifiedManifest
from navign_proto.versions import parse_version
from navign_proto.wire import FirmwareInfo, FirmwareInstallStatus, FirmwareStatusReport

__all__ = [
    "COMPONENT",
    "REPORT_LIMITS",
    "REPORT_PATH",
    "TOUCH_PERSIST_SECONDS",
    "CacheBudgetError",
    "CachedRelease",
    "DiskFullError",
    "FirmwareCache",
    "FirmwareCacheError",
    "FirmwareRejected",
    "NotCachedError",
    "ReleaseKey",
    "report_status",
]

log = logging.getLogger(__name__)

COMPONENT: Final = "firmware"
REPORT_PATH: Final = "/api/orchestrators/reports/firmware"
REPORT_LIMITS = aiohttp.ClientTimeout(total=10, sock_connect=5)
#: last_used_at is written to SQLite at most this often per release (LRU needs no more, and an
#: SD card should not take a synchronous write per beacon request).
TOUCH_PERSIST_SECONDS = 60.0


async def report_status(upstream: Upstream, report: FirmwareStatusReport) -> None:
    """POST one firmware status report (the gateway's own, or a beacon's) to the server.
    Raises UpstreamError when the server refuses it or cannot be reached."""
    body = report.model_dump(mode="json", exclude_none=True)
    async with upstream.request("POST", REPORT_PATH, json_body=body, limits=REPORT_LIMITS) as r:
        await raise_for_error(r)


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
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if budget_bytes <= 0:
            raise FirmwareCacheError(f"the cache budget must be positive, not {budget_bytes}")
        self._db = db
        self.root = root
        self._releases_dir = root / "releases"
        self._tmp = root / "tmp"
        self._upstream = upstream
        self._keys = load_keys(release_keys)
        self.budget = budget_bytes
        self._clock = clock
        self._mirror: dict[str, CachedRelease] = {}
        self._persisted_use: dict[str, datetime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._commit_lock = asyncio.Lock()
        self._opened = False
        self._report_failing = False
        self._listeners: list[Callable[[], None]] = []
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
        kept, dropped = await blocking(
            reconcile, self.root, rows, self._keys, self._clock().timestamp()
        )
        if dropped:
            async with self._db.transaction() as conn:
                await conn.executemany(
                    "DELETE FROM firmware_releases WHERE firmware_id = ?", [(i,) for i in dropped]
                )
        self._mirror = {r.firmware_id: r for r in kept}
        self._persisted_use = {r.firmware_id: r.last_used_at for r in kept}
        self._opened = True
        self._update_gauges()
        self._changed()

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
                    (stamp(now), firmware_id),
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
        firmware_id = check_id(info.firmware_id)
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
        """The envelope bytes and their verified manifest (:func:`._verify.verify_envelope`)."""
        envelope = await fetch_envelope(self._upstream, info.firmware_id)
        return envelope, verify_envelope(info, envelope, self._keys, self._clock)

    async def _download(self, info: FirmwareInfo, manifest: ReleaseManifest) -> str:
        """The artifact in tmp/<id>.part, verified; its SHA-256."""
        part = self._tmp / f"{info.firmware_id}{PART_SUFFIX}"
        return await ArtifactDownload(self._upstream, info, manifest, part, self._bytes.inc).run()

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
                await blocking(remove, part)
                raise
            await self._evict(victims)
            try:
                directory = await blocking(install, self.root, firmware_id, envelope)
            except OSError as exc:
                raise disk_error(firmware_id, exc, "the release") from None
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
                            stamp(now), stamp(now), int(pin),
                        ),
                    )  # fmt: skip
            except BaseException:
                await blocking(remove, directory)
                raise
            self._mirror[firmware_id] = release
            self._persisted_use[firmware_id] = now
            self._update_gauges()
            self._changed()
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
            await blocking(remove, release.directory)
        self._update_gauges()
        self._changed()

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

    # -- change listeners --------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (in the event loop) whenever the set of verified releases may
        have changed: after :meth:`open`, after a release is committed, after an eviction. An
        exception it raises is logged, never raised into the cache."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("firmware cache: a change listener failed")

    # -- helpers -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._opened:
            raise FirmwareCacheError("the firmware cache is not open (call open() first)")

    def _update_gauges(self) -> None:
        self._cache_bytes.set(sum(r.size for r in self._mirror.values()))
        self._cache_releases.set(len(self._mirror))
