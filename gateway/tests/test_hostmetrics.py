"""Host metrics against this machine's real /proc and against fake trees (good, garbled, gone)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from navign_gateway.hostmetrics import GIB, MIB, HostMetrics, HostSample
from navign_proto.wire.heartbeat import HeartbeatMetrics

# A Raspberry Pi 4 (4 cores, 4 GiB), trimmed.
STAT_1 = """cpu  100 0 50 800 50 0 0 0 0 0
cpu0 25 0 12 200 12 0 0 0 0 0
intr 123456 0 0
ctxt 987654
btime 1764237600
"""
# 900 more ticks, of which 750 idle or iowait: 150 busy = 16.67 %.
STAT_2 = """cpu  200 0 100 1500 100 0 0 0 3 0
cpu0 50 0 25 375 25 0 0 0 0 0
"""
MEMINFO = """MemTotal:        3884096 kB
MemFree:         2950000 kB
MemAvailable:    3359808 kB
Buffers:           60000 kB
Cached:           400000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""
STATUS = """Name:\tnavign-gateway
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  301232 kB
VmRSS:\t   49356 kB
Threads:\t7
"""


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def pi_tree(tmp_path: Path) -> tuple[Path, Path]:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    write_tree(
        proc,
        {
            "stat": STAT_1,
            "meminfo": MEMINFO,
            "loadavg": "0.52 0.58 0.59 2/331 14822\n",
            "uptime": "350735.47 1234388.90\n",
            "self/status": STATUS,
        },
    )
    write_tree(sys, {"class/thermal/thermal_zone0/temp": "48312\n"})
    return proc, sys


FIELD_NAMES = {field.name for field in dataclasses.fields(HostSample)}


def with_host_fields(fields: Mapping[str, float], **extra: float) -> HeartbeatMetrics:
    """Validate against the wire model, adding what the daemon must supply itself."""
    return HeartbeatMetrics.model_validate({"cache_size_mb": 0.0, **extra, **fields})


# --- A fake Raspberry Pi -----------------------------------------------------------------------


def test_a_fake_pi_gives_every_figure(tmp_path: Path) -> None:
    proc, sys = pi_tree(tmp_path)
    metrics = HostMetrics(tmp_path, proc=proc, sys=sys)
    first = metrics.sample()
    assert first.cpu_percent is None  # nothing to compare with yet
    assert first.memory_total_bytes == 3884096 * 1024
    assert first.memory_used_bytes == (3884096 - 3359808) * 1024  # 512 MiB
    assert first.load_average == (0.52, 0.58, 0.59)
    assert first.uptime_seconds == 350735.47
    assert first.process_rss_bytes == 49356 * 1024
    assert first.soc_temperature_celsius == 48.312
    stat = os.statvfs(tmp_path)
    assert first.disk_total_bytes == stat.f_blocks * stat.f_frsize
    assert first.disk_used_bytes == (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    (proc / "stat").write_text(STAT_2)
    second = metrics.sample()
    assert second.cpu_percent == pytest.approx(100 * 150 / 900)

    fields = second.heartbeat_fields()
    assert fields == {
        "cpu_percent": 16.7,
        "memory_used_mb": 512.0,
        "disk_used_gb": round(second.disk_used_bytes / GIB, 2),  # type: ignore[operator]
    }
    model = with_host_fields(fields, cache_size_mb=12.0)
    assert model.memory_used_mb == 512.0


def test_cpu_percent_needs_two_good_samples_in_a_row(tmp_path: Path) -> None:
    proc, sys = pi_tree(tmp_path)
    metrics = HostMetrics(tmp_path, proc=proc, sys=sys)
    metrics.sample()
    (proc / "stat").write_text("garbage\n")
    assert metrics.sample().cpu_percent is None
    (proc / "stat").write_text(STAT_2)
    assert metrics.sample().cpu_percent is None  # the garbage broke the chain
    (proc / "stat").write_text(STAT_2)
    assert metrics.sample().cpu_percent is None  # no tick elapsed: unknown, not 0 %
    (proc / "stat").write_text(STAT_1)
    assert metrics.sample().cpu_percent is None  # counters went backwards
    (proc / "stat").write_text(STAT_2)
    assert metrics.sample().cpu_percent == pytest.approx(100 * 150 / 900)


def test_an_old_kernel_cpu_line_with_four_counters(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_tree(proc, {"stat": "cpu 10 0 10 80\n"})
    metrics = HostMetrics(tmp_path, proc=proc, sys=tmp_path / "sys")
    metrics.sample()
    (proc / "stat").write_text("cpu 20 0 20 160\n")
    assert metrics.sample().cpu_percent == pytest.approx(20.0)


def test_missing_everything_gives_none_not_an_exception(tmp_path: Path) -> None:
    metrics = HostMetrics(tmp_path / "no-data", proc=tmp_path / "no-proc", sys=tmp_path / "no-sys")
    for _ in range(2):
        sample = metrics.sample()
        assert sample == HostSample(
            cpu_percent=None,
            memory_used_bytes=None,
            memory_total_bytes=None,
            disk_used_bytes=None,
            disk_free_bytes=None,
            disk_total_bytes=None,
            load_average=None,
            uptime_seconds=None,
            process_rss_bytes=None,
            soc_temperature_celsius=None,
        )
        assert sample.heartbeat_fields() == {}


@pytest.mark.parametrize(
    ("files", "attribute"),
    [
        ({"proc/meminfo": "MemTotal: lots kB\nMemAvailable: 10 kB\n"}, "memory_total_bytes"),
        ({"proc/meminfo": "MemTotal: 0 kB\nMemAvailable: 0 kB\n"}, "memory_total_bytes"),
        ({"proc/meminfo": "MemTotal: -5 kB\n"}, "memory_total_bytes"),
        ({"proc/meminfo": b"\xff\xfe\x00binary"}, "memory_total_bytes"),
        ({"proc/meminfo": "MemTotal: 100 kB\nMemAvailable: 200 kB\n"}, "memory_used_bytes"),
        ({"proc/meminfo": "MemTotal: 100 kB\n"}, "memory_used_bytes"),
        ({"proc/meminfo": "MemTotal: 100 MB\nMemAvailable: 50 kB\n"}, "memory_total_bytes"),
        ({"proc/loadavg": "0.5 0.5\n"}, "load_average"),
        ({"proc/loadavg": "0.5 nan 0.5 1/2 3\n"}, "load_average"),
        ({"proc/loadavg": "-1 0.5 0.5 1/2 3\n"}, "load_average"),
        ({"proc/loadavg": ""}, "load_average"),
        ({"proc/uptime": "inf 1\n"}, "uptime_seconds"),
        ({"proc/uptime": "up 3 days\n"}, "uptime_seconds"),
        ({"proc/uptime": "\n"}, "uptime_seconds"),
        ({"proc/self/status": "Name:\tx\nVmRSS:\tmany kB\n"}, "process_rss_bytes"),
        ({"proc/self/status": "Name:\tx\n"}, "process_rss_bytes"),
        ({"proc/stat": "cpu 1 2 x 4\n"}, "cpu_percent"),
        ({"proc/stat": "cpu 1 2\n"}, "cpu_percent"),
        ({"sys/class/thermal/thermal_zone0/temp": "hot\n"}, "soc_temperature_celsius"),
        ({"sys/class/thermal/thermal_zone0/temp": "48.3\n"}, "soc_temperature_celsius"),
        ({"sys/class/thermal/thermal_zone0/temp": "-273150\n"}, "soc_temperature_celsius"),
        ({"sys/class/thermal/thermal_zone0/temp": "9" * 5000}, "soc_temperature_celsius"),
        ({"sys/class/thermal/thermal_zone0/temp": ""}, "soc_temperature_celsius"),
    ],
)
def test_one_garbled_file_costs_only_its_own_figure(
    tmp_path: Path, files: dict[str, str | bytes], attribute: str
) -> None:
    proc, sys = pi_tree(tmp_path)
    write_tree(tmp_path, files)
    metrics = HostMetrics(tmp_path, proc=proc, sys=sys)
    metrics.sample()
    if "proc/stat" in files:  # CPU needs a second sample to be judged
        (proc / "stat").write_text(files["proc/stat"])  # type: ignore[arg-type]
    sample = metrics.sample()
    assert getattr(sample, attribute) is None
    # Everything else matches an untouched Pi (disk figures aside: tests write to that disk).
    good_proc, good_sys = pi_tree(tmp_path / "good")
    healthy = HostMetrics(tmp_path, proc=good_proc, sys=good_sys)
    healthy.sample()
    reference = healthy.sample()
    affected = {attribute, "disk_used_bytes", "disk_free_bytes", "disk_total_bytes"}
    if attribute.startswith("memory_"):
        affected |= {"memory_used_bytes", "memory_total_bytes"}  # used is total - available
    for name in FIELD_NAMES - affected:
        assert getattr(sample, name) == getattr(reference, name), name


def test_a_negative_temperature_and_odd_process_names(tmp_path: Path) -> None:
    proc, sys = pi_tree(tmp_path)
    write_tree(sys, {"class/thermal/thermal_zone0/temp": "-5250\n"})
    write_tree(proc, {"self/status": b"Name:\t\xe7\xbd\x91\xff\nVmRSS:\t  1024 kB\n"})
    sample = HostMetrics(tmp_path, proc=proc, sys=sys).sample()
    assert sample.soc_temperature_celsius == -5.25
    assert sample.process_rss_bytes == 1024 * 1024


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    contents=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.text(alphabet="0123456789 .:-\nkBcpuMemTotalAvailableVmRS\t", max_size=200),
        ),
        min_size=6,
        max_size=6,
    )
)
def test_arbitrary_file_contents_never_raise(tmp_path: Path, contents: list[bytes | str]) -> None:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    names = [
        "proc/stat",
        "proc/meminfo",
        "proc/loadavg",
        "proc/uptime",
        "proc/self/status",
        "sys/class/thermal/thermal_zone0/temp",
    ]
    write_tree(tmp_path, dict(zip(names, contents, strict=True)))
    metrics = HostMetrics(tmp_path, proc=proc, sys=sys)
    for _ in range(2):
        sample = metrics.sample()
        # Whatever the sample could fill is within the wire model's ranges; the daemon fills
        # the rest (here with zeros) as it must when a figure is missing.
        defaults = {"cpu_percent": 0.0, "memory_used_mb": 0.0, "disk_used_gb": 0.0}
        with_host_fields(sample.heartbeat_fields(), **defaults)
        if sample.memory_used_bytes is not None:
            assert sample.memory_total_bytes is not None
            assert 0 <= sample.memory_used_bytes <= sample.memory_total_bytes
        if sample.cpu_percent is not None:
            assert 0 <= sample.cpu_percent <= 100
        for value in (sample.uptime_seconds, *(sample.load_average or ())):
            assert value is None or (math.isfinite(value) and value >= 0)


# --- heartbeat_fields ----------------------------------------------------------------------------


def sample_with(**values: object) -> HostSample:
    base: dict[str, object] = dict.fromkeys(FIELD_NAMES)
    base.update(values)
    return HostSample(**base)  # type: ignore[arg-type]


def test_heartbeat_fields_units_and_rounding() -> None:
    sample = sample_with(
        cpu_percent=12.46, memory_used_bytes=int(48.2 * MIB), disk_used_bytes=int(1.7 * GIB)
    )
    assert sample.heartbeat_fields() == {
        "cpu_percent": 12.5,
        "memory_used_mb": 48.2,
        "disk_used_gb": 1.7,
    }


def test_heartbeat_fields_leave_out_what_the_wire_cannot_carry() -> None:
    sample = sample_with(cpu_percent=None, memory_used_bytes=2 * 10**9 * MIB, disk_used_bytes=0)
    assert sample.heartbeat_fields() == {"disk_used_gb": 0.0}


def test_the_daemon_must_supply_cache_size_and_a_first_cpu_figure(tmp_path: Path) -> None:
    fields = HostMetrics(tmp_path).sample().heartbeat_fields()
    assert set(fields) == {"memory_used_mb", "disk_used_gb"}
    with pytest.raises(ValidationError) as info:
        HeartbeatMetrics.model_validate(fields)
    assert {error["loc"][0] for error in info.value.errors()} == {"cpu_percent", "cache_size_mb"}


# --- This machine's real /proc -------------------------------------------------------------------


def test_the_real_proc_of_this_machine(tmp_path: Path) -> None:
    metrics = HostMetrics(tmp_path)
    first = metrics.sample()
    assert first.cpu_percent is None
    time.sleep(0.3)  # let the tick counters advance (10 ms per tick and core)
    sample = metrics.sample()

    assert sample.cpu_percent is not None
    assert 0 <= sample.cpu_percent <= 100

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert sample.memory_total_bytes is not None
    assert sample.memory_used_bytes is not None
    assert 0 < sample.memory_total_bytes <= physical
    assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes

    stat = os.statvfs(tmp_path)
    assert sample.disk_total_bytes == stat.f_blocks * stat.f_frsize
    assert sample.disk_used_bytes is not None
    assert sample.disk_free_bytes is not None
    assert sample.disk_used_bytes + sample.disk_free_bytes <= sample.disk_total_bytes

    assert sample.load_average is not None
    assert all(abs(a - b) < 2.0 for a, b in zip(sample.load_average, os.getloadavg(), strict=True))

    assert sample.uptime_seconds is not None
    assert 0 < sample.uptime_seconds <= time.clock_gettime(time.CLOCK_BOOTTIME) + 1

    # The same counter through another file (statm, in pages), read just after: RSS moves a
    # little between the two reads, never by half.
    resident = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert sample.process_rss_bytes is not None
    assert resident / 2 < sample.process_rss_bytes < resident * 2

    if Path("/sys/class/thermal/thermal_zone0/temp").exists():
        assert sample.soc_temperature_celsius is not None
    else:
        assert sample.soc_temperature_celsius is None

    metrics_model = with_host_fields(sample.heartbeat_fields())
    assert metrics_model.memory_used_mb == round(sample.memory_used_bytes / MIB, 1)
