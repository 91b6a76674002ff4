"""The outbox of task status reports: every change queues a ``TaskStatusReport`` in the same
transaction as the change itself (:func:`enqueue`), and :class:`ReportOutbox` delivers them,
in order, to the server.

A failed delivery stays, with its error, for the next flush: a crash or an outage loses no
report. The outbox is bounded (:data:`OUTBOX_MAX`); beyond it the oldest reports are dropped,
since the server keeps only the latest status per task anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import aiosqlite
from pydantic import ValidationError

from navign_gateway.db import Database
from navign_gateway.robots import Clock
from navign_gateway.tasks.model import TaskReporter
from navign_proto.wire import TaskStatusReport

# The engine's one logger, whichever of its modules writes.
log = logging.getLogger("navign_gateway.tasks")

#: Undelivered reports kept; beyond this the oldest are dropped (the server keeps only the
#: latest status per task anyway).
OUTBOX_MAX: Final = 10_000
#: Longest text kept in a report's message or a delivery's error.
MESSAGE_MAX: Final = 1000


async def enqueue(conn: aiosqlite.Connection, report: TaskStatusReport, now: float) -> None:
    """Queue ``report`` in the caller's transaction, dropping the oldest beyond OUTBOX_MAX."""
    await conn.execute(
        "INSERT INTO task_outbox (report, created_at) VALUES (?, ?)",
        (report.model_dump_json(exclude_none=True), now),
    )
    await conn.execute(
        "DELETE FROM task_outbox WHERE id <= (SELECT MAX(id) FROM task_outbox) - ?",
        (OUTBOX_MAX,),
    )


class ReportOutbox:
    """Reads and delivers the ``task_outbox`` table. One flush at a time."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._flush_lock = asyncio.Lock()
        self._failing_since: float | None = None

    async def pending(self) -> list[TaskStatusReport]:
        """The outbox, oldest first."""
        async with self.db.reader.execute("SELECT report FROM task_outbox ORDER BY id") as cur:
            rows = await cur.fetchall()
        return [TaskStatusReport.model_validate_json(r[0]) for r in rows]

    async def flush(self, reporter: TaskReporter, limit: int = OUTBOX_MAX) -> int:
        """Deliver the outbox in order to ``reporter``, stopping at the first failure (which
        stays, with its error, for the next flush). Returns how many were delivered."""
        delivered = 0
        async with self._flush_lock:
            while delivered < limit:
                async with self.db.reader.execute(
                    "SELECT id, report FROM task_outbox ORDER BY id LIMIT 100"
                ) as cursor:
                    rows = await cursor.fetchall()
                if not rows:
                    break
                for row in rows:
                    try:
                        report = TaskStatusReport.model_validate_json(row["report"])
                    except ValidationError as exc:
                        log.error("dropping an unreadable task report %d: %s", row["id"], exc)
                        await self._delete(row["id"])
                        continue
                    try:
                        await reporter.report_task(report)
                    except Exception as exc:  # noqa: BLE001 - any failure: keep it, retry later
                        await self._failed(row["id"], exc)
                        return delivered
                    await self._delete(row["id"])
                    delivered += 1
                    if self._failing_since is not None:
                        log.info("task reports delivered again")
                        self._failing_since = None
        return delivered

    async def _delete(self, report_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM task_outbox WHERE id = ?", (report_id,))

    async def _failed(self, report_id: int, exc: Exception) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE task_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (repr(exc)[:MESSAGE_MAX], report_id),
            )
        if self._failing_since is None:
            self._failing_since = self.clock()
            log.warning("task report not delivered (kept for retry): %r", exc)
        else:
            log.debug("task report still not delivered: %r", exc)
