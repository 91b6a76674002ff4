"""Delivers the rollout engine's reports to the server, in order, until each is accepted.

The engine saves every report with the change it describes (:mod:`.store`); this loop sends the
oldest first. A report the server refuses for good (4xx other than 401/408/429: a server that
does not know the path, a body it cannot accept) is dropped with a warning instead of blocking
the ones behind it; anything else (no network, 5xx, 429) is retried with backoff, and nothing is
lost while the gateway is offline.

Public: :class:`ReportSender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from navign_gateway.backoff import Backoff, FailureLog
from navign_gateway.db import Database
from navign_gateway.rollout import store

log = logging.getLogger(__name__)

Post = Callable[[str, dict[str, object]], Awaitable[int]]
"""POSTs one report, returning the HTTP status; raises OSError-like errors when unreachable."""


class ReportSender:
    def __init__(self, db: Database, post: Post) -> None:
        self._db = db
        self._post = post
        self._wake = asyncio.Event()
        self._failures = FailureLog(log, "rollout reports")
        self.sent = 0
        self.dropped = 0

    def wake(self) -> None:
        self._wake.set()

    async def flush(self) -> bool:
        """Send what is queued; False when the server could not be reached (retry later)."""
        while True:
            items = await store.outbox_head(self._db)
            if not items:
                return True
            for item in items:
                try:
                    status = await self._post(item.path, item.body)
                except Exception as exc:  # noqa: BLE001 - unreachable, timeouts, TLS: retried
                    self._failures.failed(exc)
                    return False
                if status >= 500 or status in (401, 408, 429):
                    self._failures.failed(RuntimeError(f"HTTP {status} for {item.path}"))
                    return False
                if status >= 400:
                    log.warning("report to %s refused with HTTP %d; dropped", item.path, status)
                    self.dropped += 1
                else:
                    self.sent += 1
                self._failures.recovered()
                await store.outbox_drop(self._db, item.id)

    async def run(self) -> None:
        backoff = Backoff(initial=2.0, maximum=60.0)
        while True:
            delivered = await self.flush()
            delay = 30.0 if delivered else backoff.next_delay()
            if delivered:
                backoff.reset()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
