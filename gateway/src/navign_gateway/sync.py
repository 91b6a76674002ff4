"""Keeping the offline mall copy in step with the server (protocol §5).

:class:`SyncEngine` runs one sync at a time:

- **full** (``GET /sync/full``): the first time, after ``410 SYNC_CURSOR_EXPIRED``, after
  ``resync_required``, and for the collections a checksum mismatch names;
- **delta** (``GET /sync/delta``), page after page until ``has_more`` is false; each page is
  applied with its cursor in one transaction by :class:`~navign_gateway.mallcopy.MallCopy`, which
  checks the page's base and new checksums;
- **repair** (§5.5): when a page's checksums do not match the local copy, the engine asks
  ``GET /sync/checksum``, compares each collection with its own, and full-syncs only those that
  differ, then continues with deltas.

Every step is bounded: at most :data:`MAX_DELTA_PAGES` pages per call and
:data:`MAX_REPAIRS` repairs, so a server that keeps answering inconsistently cannot keep the
gateway busy forever; the uplink loop tries again later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from navign_gateway.mallcopy import ChecksumMismatch, MallCopy, SyncRejectedError
from navign_gateway.memory import release_memory
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.mall import COLLECTIONS
from navign_proto.wire import ChecksumResponse, SyncDeltaResponse, SyncFullResponse

log = logging.getLogger(__name__)

SYNC_PATH = "/api/orchestrators/sync"
DELTA_LIMIT = 1000
MAX_DELTA_PAGES = 10_000
MAX_REPAIRS = 3
#: A full sync of a big mall takes a while on a Pi: a generous read limit.
FULL_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=10, sock_read=120)
DELTA_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=60)


class SyncError(Exception):
    """The copy could not be brought in step this time (the uplink loop retries later)."""


@dataclass
class SyncResult:
    kind: str  # "full", "delta", "repair", "current"
    changes: int
    seq: int | None


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.duration = Histogram(
            "orchestrator_sync_duration_seconds",
            "Time to bring the local copy in step, by kind",
            ["kind"],
            registry=registry,
        )
        self.changes = Counter(
            "orchestrator_sync_changes_applied",
            "Changes applied to the local copy by delta sync",
            registry=registry,
        )
        self.failures = Counter(
            "orchestrator_sync_failures",
            "Syncs that failed, by reason",
            ["reason"],
            registry=registry,
        )
        self.mismatches = Counter(
            "orchestrator_sync_checksum_mismatches",
            "Checksum mismatches found (each repaired by a partial full sync)",
            registry=registry,
        )


class SyncEngine:
    def __init__(
        self,
        upstream: Upstream,
        copy: MallCopy,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._upstream = upstream
        self._copy = copy
        self._lock = asyncio.Lock()
        self._metrics = SyncMetrics(registry)
        self._clock = clock
        #: Wall-clock time of the last successful sync step, for status and health.
        self.last_success: float | None = None
        #: Set when the copy failed verification: the next sync is a full one.
        self._rebuild = False

    async def verify_local(self) -> bool:
        """Recompute the copy's checksums from its rows (at start-up: an SD card can rot). A copy
        that disagrees with itself is rebuilt by a full sync at the next opportunity; until then
        it is still served (better a slightly wrong map than none)."""
        ok = await self._copy.verify()
        if not ok:
            log.error("the local copy failed verification; it will be rebuilt by a full sync")
            self._metrics.failures.labels("corrupt").inc()
            self._rebuild = True
        return ok

    @property
    def entity_id(self) -> str:
        return self._upstream.entity_id

    async def _get_json(
        self, path: str, params: dict[str, str], limits: aiohttp.ClientTimeout
    ) -> bytes:
        async with self._upstream.request("GET", path, params=params, limits=limits) as response:
            await raise_for_error(response)
            return await response.read()

    async def cursor(self) -> int | None:
        """The copy's sync cursor; None before the first full sync."""
        return await self._copy.cursor()

    async def full(self, collections: Collection[str] | None = None) -> SyncResult:
        """Replace ``collections`` (default all) with the server's snapshot."""
        async with self._lock:
            return await self._full(collections)

    async def _full(self, collections: Collection[str] | None) -> SyncResult:
        params = {"entity_id": self.entity_id}
        if collections is not None:
            params["include"] = ",".join(c for c in COLLECTIONS if c in collections)
        started = time.perf_counter()
        raw = await self._get_json(f"{SYNC_PATH}/full", params, FULL_TIMEOUT)
        snapshot = SyncFullResponse.model_validate_json(raw)
        if snapshot.entity_id != self.entity_id:
            raise SyncError(f"full sync answered for entity {snapshot.entity_id!r}")
        await self._copy.apply_full(snapshot, collections)
        seq = snapshot.seq
        total = sum(len(getattr(snapshot.data, c)) for c in COLLECTIONS)
        del snapshot, raw
        release_memory()  # the parsed snapshot was the process's peak; give it back
        kind = "full" if collections is None else "repair"
        self._metrics.duration.labels(kind).observe(time.perf_counter() - started)
        self.last_success = self._clock()
        what = "full sync" if collections is None else f"full sync of {', '.join(collections)}"
        log.info("%s at seq %d: %d documents", what, seq, total)
        return SyncResult(kind, total, seq)

    async def delta(self) -> SyncResult:
        """Apply every change since the copy's cursor (a full sync when there is no copy yet,
        or the server no longer has the history)."""
        async with self._lock:
            return await self._delta()

    async def catch_up(self, seq: int) -> SyncResult | None:
        """A ``data_update`` for ``seq``: nothing when the copy is already there."""
        cursor = await self._copy.cursor()
        if cursor is not None and seq <= cursor:
            return None
        return await self.delta()

    async def _delta(self) -> SyncResult:
        started = time.perf_counter()
        applied = 0
        repairs = 0
        if self._rebuild:
            result = await self._full(None)
            self._rebuild = False
            return result
        for _ in range(MAX_DELTA_PAGES):
            cursor = await self._copy.cursor()
            if cursor is None:
                return await self._full(None)
            params = {"entity_id": self.entity_id, "cursor": str(cursor), "limit": str(DELTA_LIMIT)}
            try:
                raw = await self._get_json(f"{SYNC_PATH}/delta", params, DELTA_TIMEOUT)
            except UpstreamError as exc:
                if exc.code == "SYNC_CURSOR_EXPIRED" or exc.status == 410:
                    log.warning("the server no longer has changes after %d: full sync", cursor)
                    self._metrics.failures.labels("cursor_expired").inc()
                    return await self._full(None)
                raise
            page = SyncDeltaResponse.model_validate_json(raw)
            try:
                applied += await self._copy.apply_delta(page)
            except SyncRejectedError as exc:
                # E.g. the server's sequence went backwards (restored from a backup): start over.
                log.warning("delta page refused (%s): full sync", exc)
                self._metrics.failures.labels("rejected").inc()
                return await self._full(None)
            except ChecksumMismatch as exc:
                self._metrics.mismatches.inc()
                repairs += 1
                if repairs > MAX_REPAIRS:
                    self._metrics.failures.labels("mismatch").inc()
                    raise SyncError(f"checksums still differ after {MAX_REPAIRS} repairs") from exc
                log.warning("checksum mismatch at cursor %d (%s); repairing", cursor, exc)
                await self._repair()
                continue
            if not page.has_more:
                break
        else:
            raise SyncError(f"more than {MAX_DELTA_PAGES} delta pages in one go")
        elapsed = time.perf_counter() - started
        self._metrics.changes.inc(applied)
        self._metrics.duration.labels("delta").observe(elapsed)
        self.last_success = self._clock()
        now_at = await self._copy.cursor()
        if applied:  # an operator following the journal sees the mall move, not only full syncs
            log.info(
                "delta sync: %d changes applied, now at seq %s (%.2f s)", applied, now_at, elapsed
            )
        return SyncResult("delta" if applied else "current", applied, now_at)

    async def _repair(self) -> None:
        """Full-sync the collections whose checksums differ from the server's (§5.5)."""
        raw = await self._get_json(
            f"{SYNC_PATH}/checksum", {"entity_id": self.entity_id}, DELTA_TIMEOUT
        )
        remote = ChecksumResponse.model_validate_json(raw)
        differing = list(await self._copy.compare(remote))
        if not differing:
            # Same data, different cursor position: a full sync realigns the cursor.
            differing = list(COLLECTIONS)
        log.warning("repairing %s with a full sync", ", ".join(differing))
        try:
            await self._full(None if len(differing) == len(COLLECTIONS) else differing)
        except SyncRejectedError as exc:
            log.warning("partial repair refused (%s): full sync of everything", exc)
            await self._full(None)
