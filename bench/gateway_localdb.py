"""The gateway's offline mall copy: delta changes applied per second, and the local read API's
latency, on a copy of 100,000 documents.

The copy is the real one (navign_gateway.mallcopy on SQLite, WAL, synchronous=FULL, in the work
directory), filled by a full sync of documents generated like bench/sync.py's (10 chunks of
10,000). Then:

- **apply**: delta pages of 500 and of 5,000 changes (80 % updates of beacons, merchants and
  areas, 10 % new beacons, 10 % deletes), built beforehand with their base and new checksums
  computed independently (navign_proto.checksums), are applied with ``MallCopy.apply_delta``,
  one transaction per page. The figure is changes per second of a run, the median of the runs.
- **read**: the local API is served by a separate process (the gateway's aiohttp handlers on
  127.0.0.1) and read by 16 concurrent clients with a mix of kiosk and robot requests: a document
  by id, beacons of an area, beacons by iBeacon major/minor, merchants of a floor, connections
  of an area, merchants by name substring. Latency is from sending a request to the last byte
  of its answer; p50 and p99 are the medians of the runs.

    uv run --frozen python bench/gateway_localdb.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _harness as h
import _mall as mall
import aiohttp
from aiohttp import web

from navign_gateway.db import Database
from navign_gateway.localapi import add_local_api
from navign_gateway.mallcopy import MallCopy
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.wire import SyncDeltaResponse, SyncFullResponse

CHUNK = 10_000
TARGETS = {"changes_per_s": 20_000.0, "p99_ms": 20.0}
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SERVE_TIMEOUT = 60.0


def mall_data(documents: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    data: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
    for chunk in range(documents // CHUNK):
        part = mall.mall_chunk(chunk, CHUNK)
        for name in COLLECTIONS:
            data[name] += part[name]
    return data, mall.entity_document()


class ChangeLog:
    """The server's side, modelled: the documents now, their checksums (kept incrementally with
    navign_proto.checksums, not with the code under test), and the sequence."""

    def __init__(self, data: dict[str, list[dict[str, Any]]], seq: int, seed: int) -> None:
        self.docs = {name: {d["id"]: d for d in data[name]} for name in COLLECTIONS}
        self.ids: dict[str, list[str]] = {name: list(self.docs[name]) for name in COLLECTIONS}
        self.sums = MallChecksums.of(data)
        self.seq = seq
        self.rng = random.Random(seed)  # noqa: S311 - reproducible bench data
        self.created = 0

    def page(self, size: int) -> SyncDeltaResponse:
        base = self.sums.global_checksum
        changes = [self._change() for _ in range(size)]
        return SyncDeltaResponse.model_validate(
            {"entity_id": h.ENTITY, "sync_id": f"bench-{self.seq}", "timestamp": NOW,
             "base_checksum": base, "new_checksum": self.sums.global_checksum,
             "changes": changes, "has_more": True, "next_cursor": str(self.seq)}
        )  # fmt: skip

    def _change(self) -> dict[str, Any]:
        self.seq += 1
        roll = self.rng.random()
        if roll < 0.1:
            name, doc = "beacons", self._new_beacon()
            operation = "create"
        elif roll < 0.2:
            name = self.rng.choice(("beacons", "merchants"))
            doc_id = self._pick(name)
            self.sums = self.sums.with_digest(
                self.sums.get(name).remove(self.docs[name].pop(doc_id))
            )
            return {"type": name, "operation": "delete", "id": doc_id, "seq": self.seq,
                    "updated_at": NOW}  # fmt: skip
        else:
            name = self.rng.choice(("beacons", "beacons", "merchants", "areas"))
            doc = dict(self.docs[name][self._pick(name)], name=f"Renamed at {self.seq}")
            operation = "update"
        old = self.docs[name].get(doc["id"])
        digest = self.sums.get(name)
        digest = digest.add(doc) if old is None else digest.replace(old, doc)
        self.sums = self.sums.with_digest(digest)
        self.docs[name][doc["id"]] = doc
        return {"type": name, "operation": operation, "id": doc["id"], "data": doc,
                "seq": self.seq, "updated_at": NOW}  # fmt: skip

    def _pick(self, name: str) -> str:
        ids = self.ids[name]
        for _ in range(1000):
            doc_id = ids[self.rng.randrange(len(ids))]
            if doc_id in self.docs[name]:
                return doc_id
        raise RuntimeError(f"no {name} left to change")

    def _new_beacon(self) -> dict[str, Any]:
        self.created += 1
        area = self.ids["areas"][self.created % len(self.ids["areas"])]
        doc = mall.beacon(900 + self.created // 1_000_000, self.created % 1_000_000, area, None)
        self.ids["beacons"].append(doc["id"])
        return doc


async def apply_runs(
    copy: MallCopy, log: ChangeLog, size: int, runs: int, per_run: int
) -> list[float]:
    """Changes per second of each run of ``per_run`` changes in pages of ``size``."""
    rates = []
    for _ in range(runs):
        pages = [log.page(size) for _ in range(max(1, per_run // size))]
        started = time.perf_counter()
        applied = sum([await copy.apply_delta(page) for page in pages])
        elapsed = time.perf_counter() - started
        if applied != sum(len(page.changes) for page in pages):
            raise RuntimeError(f"applied {applied} changes of {len(pages) * size}")
        rates.append(applied / elapsed)
    if (await copy.checksums()).global_checksum != log.sums.global_checksum:
        raise RuntimeError("the copy's checksum differs from the model's")
    return rates


# -- the local API, served by another process -----------------------------------------------------


def serve(path: Path, port: int) -> None:
    """``--serve``: the gateway's local API on 127.0.0.1:port over the copy at ``path``."""

    async def main() -> None:
        async with Database(path) as db:
            copy = MallCopy(db, h.ENTITY)
            await copy.migrate()
            app = web.Application()
            add_local_api(app, copy)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            await runner.cleanup()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(port: int, path: str) -> int:
    """The status of GET ``path``, or 0 when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def api_process(path: Path, workdir: Path) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, __file__, "--serve", str(path), "--port", str(port)]
    with (workdir / "localapi.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while _status(port, "/local/v1/entity") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local API did not start; see {workdir / 'localapi.log'}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=h.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=h.STOP_TIMEOUT)


def request_mix(data: dict[str, list[dict[str, Any]]], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - reproducible bench data
    areas = data["areas"]
    paths = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.40:
            name = rng.choice(("beacons", "beacons", "merchants", "areas"))
            paths.append(f"/local/v1/{name}/{rng.choice(data[name])['id']}")
        elif roll < 0.60:
            paths.append(f"/local/v1/beacons?area_id={rng.choice(areas)['id']}")
        elif roll < 0.70:
            beacon = rng.choice(data["beacons"])
            paths.append(f"/local/v1/beacons?major={beacon['major']}&minor={beacon['minor']}")
        elif roll < 0.85:
            paths.append(f"/local/v1/merchants?floor=F{rng.randint(1, 5)}&limit=50")
        elif roll < 0.95:
            paths.append(f"/local/v1/connections?area_id={rng.choice(areas)['id']}")
        else:
            paths.append(
                f"/local/v1/merchants?q=Shop%20{rng.randint(0, 9)}-{rng.randint(0, 2999)}&limit=20"
            )
    return paths


async def read_run(
    base_url: str, paths: list[str], concurrency: int
) -> tuple[list[float], int, float]:
    """(latencies in ms, answers that were 200, seconds) of reading every path."""
    latencies: list[float] = []
    ok = 0
    queue = iter(paths)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        base_url, connector=connector, timeout=h.HTTP_TIMEOUT
    ) as session:

        async def client() -> None:
            nonlocal ok
            for path in queue:
                sent = time.perf_counter()
                async with session.get(path) as response:
                    await response.read()
                    latencies.append((time.perf_counter() - sent) * 1000)
                    ok += response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, ok, time.perf_counter() - started


def fresh_database(workdir: Path) -> Path:
    """The copy's path in ``workdir``, with no file left there by an earlier run."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    bench = f"local copy {args.documents // 1000}k"
    with tempfile.TemporaryDirectory(prefix="navign-bench-localdb-") as tmp:
        workdir = args.workdir or Path(tmp)
        path = fresh_database(workdir)
        data, entity = mall_data(args.documents)
        total = sum(len(docs) for docs in data.values())
        snapshot = SyncFullResponse.model_validate(
            {"entity_id": h.ENTITY, "sync_id": "bench", "timestamp": NOW, "seq": total,
             "checksum": MallChecksums.of(data).global_checksum, "data": data, "entity": entity,
             "metadata": {f"total_{n}": len(data[n]) for n in COLLECTIONS}}
        )  # fmt: skip
        log = ChangeLog(data, total, seed=7)
        async with Database(path) as db:
            copy = MallCopy(db, h.ENTITY)
            await copy.migrate()
            started = time.perf_counter()
            await copy.apply_full(snapshot)
            full_s = time.perf_counter() - started
            stored = sum((await copy.counts()).values())
            started = time.perf_counter()
            verified = await copy.verify()
            verify_s = time.perf_counter() - started
            h.say(f"{bench}: full sync of {stored} documents applied in {full_s:.1f} s")
            rates = {}
            for size in (500, 5000):
                rates[size] = await apply_runs(copy, log, size, args.apply_runs, args.per_run)
                h.say(f"{bench}: pages of {size}: {[round(r) for r in rates[size]]} changes/s")
        # Ids as the copy holds them after the deltas (some were deleted, some created).
        current = {name: list(log.docs[name].values()) for name in COLLECTIONS}
        paths = request_mix(current, args.requests, seed=11)
        reads = []
        with api_process(path, workdir) as base_url:
            await read_run(base_url, paths[: args.requests // 10], args.concurrency)  # warm-up
            for run in range(args.read_runs):
                latencies, ok, seconds = await read_run(base_url, paths, args.concurrency)
                reads.append((latencies, ok, seconds))
                h.say(f"{bench}: read run {run + 1}: p99 {h.percentile(latencies, 99):.2f} ms")
    p50 = h.median([h.percentile(lat, 50) for lat, _, _ in reads])
    p99 = h.median([h.percentile(lat, 99) for lat, _, _ in reads])
    throughput = h.median([len(lat) / s for lat, _, s in reads])
    answered = min(ok for _, ok, _ in reads)
    target = TARGETS["changes_per_s"]
    figures = [
        h.Figure(bench, "documents in the copy", stored, "docs", f"= {total}", stored == total),
        h.Figure(bench, "verify() finds the copy intact", float(verified), "", "= 1", verified),
        h.Figure(bench, f"full sync of {total:,} documents applied", full_s, "s"),
        h.Figure(bench, "verify() of the whole copy (start-up check)", verify_s, "s"),
    ]
    for size, got in rates.items():
        rate = h.median(got)
        figures.append(
            h.Figure(bench, f"changes applied, pages of {size:,}, median of {len(got)}", rate,
                     "changes/s", f">= {target:g}", rate >= target, goal=True)
        )  # fmt: skip
    runs = len(reads)
    figures += [
        h.Figure(bench, f"local API read p50, {args.concurrency} concurrent, median of {runs}",
                 p50, "ms"),
        h.Figure(bench, f"local API read p99, {args.concurrency} concurrent, median of {runs}",
                 p99, "ms", f"<= {TARGETS['p99_ms']:g}", p99 <= TARGETS["p99_ms"], goal=True),
        h.Figure(bench, "local API reads per second", throughput, "req/s"),
        h.Figure(bench, "local API answers that were 200 (worst run)", answered, "requests",
                 f"= {args.requests}", answered == args.requests),
    ]  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000, help="a multiple of 10,000")
    parser.add_argument("--apply-runs", type=int, default=5)
    parser.add_argument("--per-run", type=int, default=10_000, help="changes in one apply run")
    parser.add_argument("--requests", type=int, default=20_000, help="reads in one read run")
    parser.add_argument("--read-runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    h.common_arguments(parser)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port)
        return
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
