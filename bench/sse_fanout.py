"""SSE fan-out: N concurrent authenticated event streams on one server process.

For each N (a fresh server each time): register N/25 gateways (each may open 30 streams a
minute), open N streams, wait until every stream has received a keepalive ping, and read the
server's RSS before and after (memory per idle stream). Then publish changes (admin PUTs of
beacon documents, paced at --rate per second) and time, for every (stream, event) pair, the
arrival of the data_update event whose id is the seq the PUT returned, from the moment the
PUT's response arrived (the commit).

    uv run python bench/sse_fanout.py --streams 100 1000 5000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from array import array
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast
from urllib.parse import urlencode

import _harness as h
import _mall as mall
import aiohttp

STREAMS_PER_GATEWAY = 25
OPEN_CONCURRENCY = 50
OPEN_TIMEOUT = 30.0
#: The server's keepalive interval (its default); every stream must see a ping within it.
PING_SECONDS = 15.0
#: After the last PUT, how long the streams get to receive every event.
DRAIN_TIMEOUT = 120.0
#: The beacons whose PUTs are published (cycled through).
PUBLISHED_BEACONS = 100
#: Put on the server's PYTHONPATH by --server-gc off: its sitecustomize disables the collector.
GC_OFF = Path(__file__).resolve().parent / "gc_off"
TARGETS = {"held": 5000, "p99_ms_at_1000": 250.0, "kib_per_stream": 20.0}


class EventStream(asyncio.Protocol):
    """One SSE stream over a raw connection: records when each event id arrives, counts pings."""

    def __init__(self, request: bytes, arrivals: defaultdict[int, array[float]]) -> None:
        self.request = request
        self.arrivals = arrivals
        self.status = 0
        self.pings = 0
        self.events = 0
        self.last_id = 0
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.answered = asyncio.get_running_loop().create_future()
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"id: "):
                seq = int(line[4:])
                self.arrivals[seq].append(now)
                self.events += 1
                self.last_id = seq
            elif line.startswith(b"event: ping"):
                self.pings += 1
            elif self.status == 0 and line.startswith(b"HTTP/1.1 "):
                self.status = int(line[9:12])
                if not self.answered.done():
                    self.answered.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.answered.done():
            self.answered.set_result(0)


def stream_request(port: int, token: str) -> bytes:
    return (
        f"GET /api/orchestrators/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nX-Entity-ID: {h.ENTITY}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


async def open_streams(
    server: h.Server, tokens: list[str], count: int, arrivals: defaultdict[int, array[float]]
) -> list[EventStream]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(index: int) -> EventStream:
        request = stream_request(server.port, tokens[index // STREAMS_PER_GATEWAY])
        async with gate:
            _, stream = await loop.create_connection(
                lambda: EventStream(request, arrivals), "127.0.0.1", server.port
            )
            await asyncio.wait_for(stream.answered, OPEN_TIMEOUT)
            return stream

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.2)
    return condition()


@dataclass
class Published:
    """Per seq, perf_counter() times: PUT sent, its response, the server's write stamp."""

    sent: dict[int, float] = field(default_factory=dict)
    answered: dict[int, float] = field(default_factory=dict)
    written: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


async def publish(server: h.Server, changes: int, rate: float) -> Published:
    """``changes`` beacon PUTs, one after another, started every 1/rate s at most."""
    published = Published()
    async with h.admin_session(server) as admin:
        docs = [await mall.get_beacon(admin, f"b0-{i}") for i in range(PUBLISHED_BEACONS)]
        start = time.perf_counter()
        for n in range(changes):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            doc = docs[n % len(docs)]
            doc["name"] = f"Beacon published {n}"
            seq, published.sent[seq], published.answered[seq] = await mall.put_document(
                admin, "beacons", doc
            )
        published.seconds = time.perf_counter() - start
    return published


async def stamp_writes(server: h.Server, token: str, published: Published) -> None:
    """The server's own time of each write (the change's updated_at, taken just before its
    commit), moved to this process's perf_counter() clock: the wall clock is shared."""
    wall_minus_perf = time.time() - time.perf_counter()
    headers = {"Authorization": f"Bearer {token}", "X-Entity-ID": h.ENTITY}
    params = {"cursor": str(min(published.sent) - 1), "limit": "5000"}
    async with aiohttp.ClientSession(server.base_url, headers=headers) as gateway:
        delta = await h.call(gateway, "GET", f"/api/orchestrators/sync/delta?{urlencode(params)}")
    for change in delta["changes"]:
        stamp = datetime.fromisoformat(change["updated_at"].replace("Z", "+00:00"))
        published.written[change["seq"]] = stamp.timestamp() - wall_minus_perf


def latencies_ms(arrivals: defaultdict[int, array[float]], since: dict[int, float]) -> list[float]:
    return [
        (arrived - since[seq]) * 1000
        for seq, times in arrivals.items()
        if seq in since
        for arrived in times
    ]


async def measure(
    count: int, changes: int, rate: float, workdir: Path, *, gc_off: bool = False
) -> list[h.Figure]:
    bench = f"sse n={count} @{rate:g}/s" + (" gc off" if gc_off else "")
    env = {"PYTHONPATH": os.pathsep.join([str(GC_OFF), os.environ.get("PYTHONPATH", "")])}
    with h.running_server(workdir, **(env if gc_off else {})) as server:
        await mall.import_chunks(server, 0, 1, 1000)
        gateways = math.ceil(count / STREAMS_PER_GATEWAY)
        tokens = list((await h.register_gateways(server, gateways)).values())
        await asyncio.sleep(2.0)
        rss_before = server.rss_kib()
        arrivals: defaultdict[int, array[float]] = defaultdict(lambda: array("d"))
        opened = time.perf_counter()
        streams = await open_streams(server, tokens, count, arrivals)
        open_seconds = time.perf_counter() - opened
        await wait_until(lambda: all(s.pings > 0 or s.closed for s in streams), PING_SECONDS + 15)
        held = sum(1 for s in streams if s.status == 200 and s.pings > 0 and not s.closed)
        rss_after = server.rss_kib()
        per_stream = (rss_after - rss_before) / count
        h.say(f"{bench}: {held} held, opened in {open_seconds:.1f} s, {per_stream:.1f} KiB each")
        cpu = server.cpu_seconds()
        published = await publish(server, changes, rate)
        last = max(published.sent)
        await wait_until(lambda: all(s.last_id >= last or s.closed for s in streams), DRAIN_TIMEOUT)
        cpu = server.cpu_seconds() - cpu
        still_open = sum(1 for s in streams if not s.closed)
        for stream in streams:
            if stream.transport is not None:
                stream.transport.close()
        await stamp_writes(server, tokens[0], published)
    committed = latencies_ms(arrivals, published.written)
    first = max(
        (
            (min(arrivals[seq]) - at) * 1000
            for seq, at in published.written.items()
            if seq in arrivals
        ),
        default=math.inf,
    )
    answered = latencies_ms(arrivals, published.answered)
    sent = latencies_ms(arrivals, published.sent)
    expected = count * len(published.sent)
    p99 = h.percentile(committed, 99)
    p99_target = TARGETS["p99_ms_at_1000"]
    kib_target = TARGETS["kib_per_stream"]
    achieved = len(published.sent) / published.seconds
    judged = not gc_off  # a diagnosis run is never held against the targets
    return [
        h.Figure(bench, "streams held (connected, pinged)", held, "streams",
                 f">= {count}", held == count, goal=judged and count == TARGETS["held"]),
        h.Figure(bench, "streams open after publishing", still_open, "streams"),
        h.Figure(bench, "server RSS before streams", rss_before / 1024, "MiB"),
        h.Figure(bench, "server RSS with streams open", rss_after / 1024, "MiB"),
        # With few streams the growth hides in the allocator's slack: judged from 1,000 up.
        h.Figure(bench, "memory per idle stream", per_stream, "KiB",
                 *((f"<= {kib_target:g}", per_stream <= kib_target, True)
                   if judged and count >= 1000 else ())),
        h.Figure(bench, "changes published per second (achieved)", achieved, "1/s"),
        h.Figure(bench, f"events delivered (of {expected})", len(committed), "events",
                 f"= {expected}", len(committed) == expected),
        h.Figure(bench, "commit->receive p50", h.median(committed), "ms"),
        h.Figure(bench, "commit->receive p99", p99, "ms",
                 *((f"<= {p99_target:g}", p99 <= p99_target, True)
                   if judged and count == 1000 else ())),
        h.Figure(bench, "commit->first stream, worst event (a loop stall)", first, "ms"),
        h.Figure(bench, "PUT response->receive p50", h.median(answered), "ms"),
        h.Figure(bench, "PUT response->receive p99", h.percentile(answered, 99), "ms"),
        h.Figure(bench, "PUT sent->receive p99", h.percentile(sent, 99), "ms"),
        h.Figure(bench, "server CPU per delivered event", cpu / max(1, len(sent)) * 1e6, "us"),
    ]  # fmt: skip


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    h.raise_nofile()
    figures: list[h.Figure] = []
    with tempfile.TemporaryDirectory(prefix="navign-bench-sse-") as tmp:
        root = args.workdir or Path(tmp)
        for count in args.streams:
            changes = min(args.changes, args.max_pairs // count)
            workdir = root / f"n{count}-r{args.rate:g}-gc-{args.server_gc}"
            gc_off = args.server_gc == "off"
            figures += await measure(count, changes, args.rate, workdir, gc_off=gc_off)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--changes", type=int, default=1000, help="PUTs published per run")
    parser.add_argument("--max-pairs", type=int, default=1_000_000,
                        help="at most this many (stream, event) pairs per run: fewer changes "
                        "at large N (200 at 5,000 streams)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=50.0, help="PUTs per second (0: unpaced)")
    parser.add_argument("--server-gc", choices=["on", "off"], default="on",
                        help="off: the server runs without its cyclic garbage collector "
                        "(diagnosis of pauses; never how it is deployed)")  # fmt: skip
    h.common_arguments(parser)
    args = parser.parse_args()
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
