"""Host figures for the heartbeat (protocol §3.7), read from Linux's ``/proc`` and ``/sys``.

Every figure is optional: a missing or unparsable file (a container without ``/sys/class/thermal``,
a kernel that words a file differently) gives None for that figure and never an exception, since
a heartbeat with a gap is better than no heartbeat. The roots are parameters so that tests can
point them at fake trees.

Reads are small files of procfs/sysfs and one ``statvfs``, all served from memory; still, a
daemon should call :meth:`HostMetrics.sample` through ``asyncio.to_thread`` rather than in the
event loop.

Public: :class:`HostMetrics`, :class:`HostSample`.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
_MAX_FILE_BYTES: Final = 1 << 20  # /proc/stat of a 1,000-core machine is still far below this
#: HeartbeatMetrics' upper bound for its amounts (``Amount``: 0 to 1e9); a figure beyond it
#: can only come from a garbled file and is left out rather than failing the heartbeat.
_AMOUNT_MAX: Final = 1e9
_MILLIDEGREES: Final = re.compile(r"-?[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class _CpuTimes:
    busy: int
    total: int


@dataclass(frozen=True, slots=True)
class HostSample:
    """One reading of the host. Sizes are bytes, times seconds; None = not available."""

    cpu_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    disk_used_bytes: int | None
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    load_average: tuple[float, float, float] | None
    uptime_seconds: float | None
    process_rss_bytes: int | None
    soc_temperature_celsius: float | None

    def heartbeat_fields(self) -> dict[str, float]:
        """The ``HeartbeatMetrics`` fields this sample can fill, in that model's units.

        ``memory_used_mb`` is the host's memory in use (MemTotal − MemAvailable) in MiB,
        ``disk_used_gb`` the data directory's file system in GiB, ``cpu_percent`` the host's
        CPU use since the previous sample. ``cache_size_mb`` is the firmware cache's, not the
        host's, and is left to the daemon, as is ``cpu_percent`` on the first sample.
        """
        fields: dict[str, float] = {}
        if self.cpu_percent is not None and 0 <= self.cpu_percent <= 100:
            fields["cpu_percent"] = round(self.cpu_percent, 1)
        if self.memory_used_bytes is not None and 0 <= self.memory_used_bytes / MIB <= _AMOUNT_MAX:
            fields["memory_used_mb"] = round(self.memory_used_bytes / MIB, 1)
        if self.disk_used_bytes is not None and 0 <= self.disk_used_bytes / GIB <= _AMOUNT_MAX:
            fields["disk_used_gb"] = round(self.disk_used_bytes / GIB, 2)
        return fields


def _read(path: Path) -> str:
    with path.open("rb") as file:
        # Replacement, not an error: a process name in /proc/self/status may be any bytes.
        return file.read(_MAX_FILE_BYTES).decode("ascii", "replace")


def _non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a non-negative integer: {text[:40]!r}")
    return int(text)


def _finite_non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a finite non-negative number: {text[:40]!r}")
    return value


def _kib_fields(text: str) -> dict[str, int]:
    """``Key:   1234 kB`` lines (meminfo, status) → bytes; other lines are skipped, so one
    garbled line costs only its own figure."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, rest = line.partition(":")
        parts = rest.split()
        if colon and len(parts) == 2 and parts[1] == "kB":
            try:
                values[key.strip()] = _non_negative_int(parts[0]) * 1024
            except ValueError:
                continue
    return values


def _cpu_times(text: str) -> _CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal
    (guest time is already inside user and nice, so it is not added again)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [_non_negative_int(p) for p in parts[1:9]]
            if len(ticks) < 4:
                raise ValueError("the cpu line of /proc/stat has fewer than 4 counters")
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            total = sum(ticks)
            return _CpuTimes(busy=total - idle, total=total)
    raise ValueError("no cpu line in /proc/stat")


class HostMetrics:
    """Samples the host; remembers the previous CPU counters to report use between samples."""

    def __init__(
        self, data_dir: Path, proc: Path = Path("/proc"), sys: Path = Path("/sys")
    ) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self.sys = sys
        self._previous_cpu: _CpuTimes | None = None

    def sample(self) -> HostSample:
        """Read every figure now; CPU use is since the previous call (None on the first)."""
        memory = self._memory()
        disk = self._disk()
        return HostSample(
            cpu_percent=self._cpu_percent(),
            memory_used_bytes=memory[0],
            memory_total_bytes=memory[1],
            disk_used_bytes=disk[0],
            disk_free_bytes=disk[1],
            disk_total_bytes=disk[2],
            load_average=self._load_average(),
            uptime_seconds=self._uptime(),
            process_rss_bytes=self._rss(),
            soc_temperature_celsius=self._temperature(),
        )

    def _cpu_percent(self) -> float | None:
        try:
            current = _cpu_times(_read(self.proc / "stat"))
        except (OSError, ValueError):
            self._previous_cpu = None
            return None
        previous, self._previous_cpu = self._previous_cpu, current
        if previous is None:
            return None
        total = current.total - previous.total
        busy = current.busy - previous.busy
        if total <= 0 or busy < 0 or busy > total:
            return None  # no tick elapsed, or counters went backwards (garbage, a reset)
        return 100.0 * busy / total

    def _memory(self) -> tuple[int | None, int | None]:
        try:
            fields = _kib_fields(_read(self.proc / "meminfo"))
        except (OSError, ValueError):
            return None, None
        total = fields.get("MemTotal")
        available = fields.get("MemAvailable")
        if total is None or total == 0:
            return None, None
        if available is None or available > total:
            return None, total
        return total - available, total

    def _disk(self) -> tuple[int | None, int | None, int | None]:
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return None, None, None
        return usage.used, usage.free, usage.total

    def _load_average(self) -> tuple[float, float, float] | None:
        try:
            parts = _read(self.proc / "loadavg").split()
            if len(parts) < 3:
                return None
            return (
                _finite_non_negative(parts[0]),
                _finite_non_negative(parts[1]),
                _finite_non_negative(parts[2]),
            )
        except (OSError, ValueError):
            return None

    def _uptime(self) -> float | None:
        try:
            parts = _read(self.proc / "uptime").split()
            return _finite_non_negative(parts[0]) if parts else None
        except (OSError, ValueError):
            return None

    def _rss(self) -> int | None:
        try:
            return _kib_fields(_read(self.proc / "self" / "status")).get("VmRSS")
        except (OSError, ValueError):
            return None

    def _temperature(self) -> float | None:
        """The SoC's temperature on a Raspberry Pi (thermal zone 0, in millidegrees Celsius)."""
        try:
            text = _read(self.sys / "class" / "thermal" / "thermal_zone0" / "temp").strip()
        except OSError:
            return None
        value = int(text) / 1000 if _MILLIDEGREES.fullmatch(text) else None
        # Outside what silicon survives: a broken sensor, not a reading.
        if value is None or not -60.0 <= value <= 200.0:
            return None
        return value
