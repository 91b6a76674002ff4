"""Rollouts to simulated beacons through the real server and gateway (issue 6).

Three figures, each from a real mall on this machine (``tests/e2e/mall.py``: the server and the
gateway as processes, beacons running the real firmware on the MicroPython unix port):

* **Wi-Fi scheduler efficiency.** One beacon alone is updated first: its update time (offered →
  confirmed, as the gateway's ``WatchRollout`` stream shows it) is the single-transfer time.
  Then ``--wifi`` beacons get a release in one wave. Reported: the rollout's total time (first
  offer → last confirmation), the sum of the beacons' own update times, and the speed-up over
  doing them one at a time (beacons × single-transfer time ÷ total).
* **BLE against the link model.** ``--ble`` beacons reachable only over BLE, each connection
  shaped to ``--ble-rate`` bytes/s, at most 3 connections: an image release of ``--image-kib``.
  The bound is every byte the link carries (envelope and image, per beacon) over the aggregate
  rate (3 × rate). Reported: the transfer phase (first offer → last beacon done with its
  transfer) and the whole rollout (→ last confirmation, which adds the last reboot and check-in)
  against that bound; the target (within 15 %) is on the transfer phase.
* **The gateway's CPU and memory** while the Wi-Fi rollout runs (``/proc``, every 0.5 s).

    uv run python bench/rollout.py --wifi 100 --ble 9 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _harness as h
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2_grpc as pb_grpc
from navign_proto.testing import OWN_SUBCHANNELS
from tests.e2e.mall import Mall, wait_for

NAME = "rollout"
DONE = {pb.OTA_STATE_CONFIRMED, pb.OTA_STATE_FAILED, pb.OTA_STATE_ROLLED_BACK}
TRANSFERRED = {pb.OTA_STATE_INSTALLING, pb.OTA_STATE_REBOOTING, *DONE}
TIMEOUT = 900.0


class Watch:
    """Records, per beacon, when the gateway's WatchRollout stream first showed each state."""

    def __init__(self, mall: Mall, rollout_id: str) -> None:
        assert mall.gateway is not None
        self.seen: dict[str, dict[int, float]] = {}
        self.final: Any = None
        self.error: BaseException | None = None
        self._channel = grpc.insecure_channel(
            f"127.0.0.1:{mall.gateway.grpc_port}", options=[OWN_SUBCHANNELS]
        )
        stub = pb_grpc.RolloutServiceStub(self._channel)
        metadata = (("authorization", f"Bearer {mall.grpc_token}"),)
        self._stream = stub.WatchRollout(
            pb.WatchRolloutRequest(rollout_id=rollout_id), metadata=metadata, timeout=TIMEOUT
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _note(self, beacons: Any) -> None:
        now = time.monotonic()
        for beacon in beacons:
            self.seen.setdefault(beacon.beacon_id, {}).setdefault(beacon.state, now)

    def _run(self) -> None:
        try:
            for message in self._stream:
                self._note(message.rollout.beacons)
                self._note(message.changed_beacons)
                self.final = message.rollout
        except grpc.RpcError as exc:
            self.error = exc

    def join(self) -> Any:
        self._thread.join(TIMEOUT)
        self._channel.close()
        if self.final is None or self.final.state != pb.ROLLOUT_STATE_COMPLETED:
            raise RuntimeError(f"the rollout did not complete: {self.final} {self.error}")
        return self.final

    def first(self, beacon: str, states: set[int]) -> float:
        return min(t for s, t in self.seen[beacon].items() if s in states)


def watch_rollout(mall: Mall, rollout_id: str) -> Watch:
    wait_for("the gateway's rollout", lambda: mall.grpc_rollout(rollout_id), 120, every=0.05)
    return Watch(mall, rollout_id)


@contextmanager
def running_mall(root: Path, **kwargs: Any) -> Iterator[Mall]:
    mall = Mall(root, **kwargs)
    try:
        mall.start()
        wait_for(
            "every beacon in the server's inventory",
            lambda: set(mall.beacon_statuses()) >= set(mall.ids),
            300,
        )
        yield mall
    finally:
        mall.stop()


def update_times(watch: Watch, ids: list[str]) -> list[float]:
    return [
        watch.first(b, {pb.OTA_STATE_CONFIRMED}) - watch.first(b, {pb.OTA_STATE_OFFERED})
        for b in ids
    ]


def single_wifi_update(root: Path, runs: int) -> float:
    """Median over ``runs`` rollouts of one release each to a lone Wi-Fi beacon."""
    times: list[float] = []
    with running_mall(root, wifi=1, ble=0, report_interval_s=5) as mall:
        for run in range(runs):
            release = mall.release_id(mall.publish_app(f"1.{run + 1}.0"))
            rollout_id = mall.assign(release, "--canary", "100%")
            watch = watch_rollout(mall, rollout_id)
            watch.join()
            times += update_times(watch, mall.ids)
    return statistics.median(times)


class Sampler:
    """CPU seconds and RSS of a process, every ``period`` seconds, in a thread."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid = pid
        self.rss: list[int] = []
        self._stop = threading.Event()
        self.cpu0 = h.cpu_seconds(pid)
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.rss.append(h.rss_kib(self.pid))

    def stop(self) -> tuple[float, float]:
        """Mean CPU (percent of one core) and peak RSS (MiB)."""
        self._stop.set()
        self._thread.join(5)
        cpu = (h.cpu_seconds(self.pid) - self.cpu0) / (time.monotonic() - self.t0) * 100
        return cpu, max(self.rss or [h.rss_kib(self.pid)]) / 1024


def wifi_rollout(root: Path, count: int, single: float) -> list[h.Figure]:
    with running_mall(root, wifi=count, ble=0, report_interval_s=10) as mall:
        assert mall.gateway is not None
        assert mall.gateway.process is not None
        release = mall.release_id(mall.publish_app("1.1.0"))
        sampler = Sampler(mall.gateway.process.pid)
        rollout_id = mall.assign(release, "--canary", "100%")
        watch = watch_rollout(mall, rollout_id)
        watch.join()
        cpu, rss = sampler.stop()
        start = min(watch.first(b, {pb.OTA_STATE_OFFERED}) for b in mall.ids)
        end = max(watch.first(b, {pb.OTA_STATE_CONFIRMED}) for b in mall.ids)
        total = end - start
        own = update_times(watch, mall.ids)
    h.say(f"   {count} Wi-Fi beacons: {total:.1f} s; own update times sum {sum(own):.0f} s")
    speedup = count * single / total
    return [
        h.Figure(NAME, "Wi-Fi: one beacon alone, offered -> confirmed (median)", single, "s"),
        h.Figure(NAME, f"Wi-Fi: {count} beacons, first offer -> last confirmed", total, "s"),
        h.Figure(NAME, f"Wi-Fi: sum of the {count} beacons' own update times", sum(own), "s"),
        h.Figure(NAME, f"Wi-Fi: median own update time among {count}", statistics.median(own), "s"),
        h.Figure(
            NAME,
            f"Wi-Fi: speed-up over one at a time ({count} x single / total)",
            speedup,
            "x",
        ),
        h.Figure(NAME, f"gateway CPU during the {count}-beacon rollout (mean)", cpu, "% of a core"),
        h.Figure(NAME, f"gateway RSS during the {count}-beacon rollout (peak)", rss, "MiB"),
    ]


def ble_rollout(root: Path, count: int, rate: int, image_kib: int) -> list[h.Figure]:
    link = {"throughput_bytes_per_s": rate}
    with running_mall(root, wifi=0, ble=count, link=link) as mall:
        published = mall.publish_image("1.1.0", image_kib * 1024)
        release = mall.release_id(published)
        rollout_id = mall.assign(release, "--canary", "100%")
        watch = watch_rollout(mall, rollout_id)
        watch.join()
        envelope = envelope_size(mall, release)
        start = min(watch.first(b, {pb.OTA_STATE_OFFERED}) for b in mall.ids)
        transferred = max(watch.first(b, TRANSFERRED) for b in mall.ids)
        end = max(watch.first(b, {pb.OTA_STATE_CONFIRMED}) for b in mall.ids)
    bound = count * (image_kib * 1024 + envelope) / (3 * rate)
    h.say(f"   {count} BLE beacons: transfers {transferred - start:.1f} s, bound {bound:.1f} s")
    ratio = (transferred - start) / bound
    return [
        h.Figure(
            NAME, f"BLE: link-model bound, {count} x {image_kib} KiB at 3 x {rate} B/s", bound, "s"
        ),
        h.Figure(NAME, "BLE: first offer -> last transfer done", transferred - start, "s"),
        h.Figure(NAME, "BLE: first offer -> last confirmed", end - start, "s"),
        h.Figure(
            NAME,
            "BLE: transfer phase / link-model bound",
            ratio,
            "x",
            "<= 1.15",
            ratio <= 1.15,
            goal=True,
        ),
        h.Figure(NAME, "BLE: whole rollout / link-model bound", (end - start) / bound, "x"),
    ]


def envelope_size(mall: Mall, release: str) -> int:
    for path in (mall.root / "gateway" / "data" / "firmware").rglob("envelope.json"):
        if release in str(path):
            return path.stat().st_size
    raise RuntimeError("the release's envelope is not in the gateway's cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wifi", type=int, default=100, help="beacons in the Wi-Fi rollout")
    parser.add_argument("--single-runs", type=int, default=3, help="lone-beacon rollouts")
    parser.add_argument("--ble", type=int, default=9, help="beacons in the BLE rollout")
    parser.add_argument("--ble-rate", type=int, default=15_000, help="bytes/s per connection")
    parser.add_argument("--image-kib", type=int, default=128, help="image size for BLE")
    h.common_arguments(parser)
    args = parser.parse_args()
    h.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="navign-bench-rollout-") as tmp:
        root = args.workdir or Path(tmp)
        figures: list[h.Figure] = []
        h.say("== BLE rollout against the link model")
        figures += ble_rollout(root / "ble", args.ble, args.ble_rate, args.image_kib)
        h.say("== one Wi-Fi beacon alone")
        single = single_wifi_update(root / "single", args.single_runs)
        h.say(f"== {args.wifi} Wi-Fi beacons")
        figures += wifi_rollout(root / "wifi", args.wifi, single)
    h.emit(figures, args.json)


if __name__ == "__main__":
    main()
