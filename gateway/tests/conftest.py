"""What the gateway's tests share: a clock they drive, a task reporter that records, polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from navign_proto.wire import TaskStatusReport

ENTITY = "mall-1"
T0 = 1_767_225_600.0


class Clock:
    """The time the tests drive (unix seconds)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reporter:
    """Stands in for the server's report endpoint: records, or raises while ``down``."""

    delivered: list[TaskStatusReport] = field(default_factory=list)
    down: bool = False
    calls: int = 0

    async def report_task(self, report: TaskStatusReport) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("server unreachable")
        self.delivered.append(report)


async def wait_until(
    condition: Callable[[], object], *, attempts: int = 500, pause: float = 0.01
) -> None:
    """Poll ``condition`` at most ``attempts`` times (5 s by default)."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError("condition not met in time")
