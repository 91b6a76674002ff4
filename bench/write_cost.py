"""Cost of one write as the mall grows from 10,000 to 200,000 documents (it must stay flat:
checksums and the change log are updated incrementally).

One database per size, each behind its own server process, built by importing chunks of
10,000 documents, plus a second database of the smallest size as a control (two identical
malls differ only by noise). Single-beacon PUTs through the admin API are then timed in
interleaved rounds (a round on each mall in turn, starting with another one each time, so
the noise of a shared machine falls on every mall alike). Then, with the servers stopped and
each WAL emptied, the same writes are timed in-process with SqliteStore.write_documents on
the same files (no HTTP, no auth, no audit row: the store's own cost), interleaved the same
way.

    uv run python bench/write_cost.py --sizes 10000 200000
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _harness as h
import _mall as mall

from navign_server.storage.base import DocumentWrite
from navign_server.storage.sqlite import SqliteStore

CHUNK = 10_000
WARMUP = 20
ROUNDS = 5
#: "Flat": the largest/smallest ratio of medians may not exceed this (the machine is noisy).
FLAT_RATIO = 1.25


async def http_writes(server: h.Server, doc: dict[str, Any], count: int) -> list[float]:
    """Seconds per PUT, from request to response."""
    times: list[float] = []
    async with h.admin_session(server) as admin:
        for _ in range(count):
            doc["name"] = f"Written over HTTP {time.perf_counter_ns()}"
            _, sent, done = await mall.put_document(admin, "beacons", doc)
            times.append(done - sent)
    return times


async def store_writes(store: SqliteStore, doc: dict[str, Any], count: int) -> list[float]:
    """Seconds per SqliteStore.write_documents of one changed beacon, in this process."""
    times: list[float] = []
    for _ in range(count):
        data = {**doc, "name": f"Written in-process {time.perf_counter_ns()}"}
        write = DocumentWrite("beacons", "update", data["id"], data)
        started = time.perf_counter()
        await store.write_documents(h.ENTITY, [write], datetime.now(UTC))
        times.append(time.perf_counter() - started)
    return times


def checkpoint(database: Path) -> None:
    """Empty the WAL, so that every size starts in the same WAL state: a write that grows the
    WAL file costs more than one that reuses it, which is noise here, not mall size."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def build(server: h.Server, size: int) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = await mall.import_chunks(server, 0, size // CHUNK, CHUNK)
    h.say(f"mall of {loaded} documents imported in {time.perf_counter() - started:.1f} s")
    async with h.admin_session(server) as admin:
        return await mall.get_beacon(admin, "b0-7")


def rotated(names: list[str], by: int) -> list[str]:
    """Each round starts with another mall: going first or last in a round costs nothing."""
    by %= len(names)
    return names[by:] + names[:by]


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    sizes: list[int] = sorted(args.sizes)
    # A second database of the smallest size is the control: the ratio between two identical
    # malls shows how far this machine's noise alone moves the figures.
    malls = {f"{size // 1000}k docs": size for size in sizes}
    control = f"{sizes[0] // 1000}k docs (control copy)"
    malls[control] = sizes[0]
    http: dict[str, list[float]] = {name: [] for name in malls}
    store: dict[str, list[float]] = {name: [] for name in malls}
    per_round = args.writes // ROUNDS
    with tempfile.TemporaryDirectory(prefix="navign-bench-write-") as tmp:
        paths = {name: (args.workdir or Path(tmp)) / f"m{i}" for i, name in enumerate(malls)}
        with contextlib.ExitStack() as stack:
            servers = {n: stack.enter_context(h.running_server(paths[n])) for n in malls}
            docs = {name: await build(servers[name], size) for name, size in malls.items()}
            for name in malls:
                checkpoint(paths[name] / "navign.db")
                await http_writes(servers[name], docs[name], WARMUP)
            for r in range(ROUNDS):
                for name in rotated(list(malls), r):
                    http[name] += await http_writes(servers[name], docs[name], per_round)
        stores = {name: SqliteStore(paths[name] / "navign.db") for name in malls}
        for name, opened in stores.items():
            checkpoint(paths[name] / "navign.db")
            await opened.open()
        try:
            for name in malls:
                await store_writes(stores[name], docs[name], WARMUP)
            for r in range(ROUNDS):
                for name in rotated(list(malls), r):
                    store[name] += await store_writes(stores[name], docs[name], per_round)
        finally:
            for opened in stores.values():
                await opened.close()
    figures: list[h.Figure] = []
    for name in malls:
        figures += [
            h.Figure("write cost", f"PUT via admin API at {name}, median of {len(http[name])}",
                     h.median(http[name]) * 1000, "ms"),
            h.Figure("write cost", f"PUT via admin API at {name}, p90",
                     h.percentile(http[name], 90) * 1000, "ms"),
            h.Figure("write cost", f"SqliteStore.write_documents at {name}, median",
                     h.median(store[name]) * 1000, "ms"),
        ]  # fmt: skip
    small, large = sizes[0] // 1000, sizes[-1] // 1000
    for what, times in (("admin API", http), ("store", store)):
        base = h.median(times[f"{small}k docs"])
        ratio = h.median(times[f"{large}k docs"]) / base
        noise = h.median(times[control]) / base
        figures += [
            h.Figure("write cost", f"{what}: {large}k/{small}k ratio of medians", ratio, "x",
                     f"<= {FLAT_RATIO:g}", ratio <= FLAT_RATIO, goal=True),
            h.Figure("write cost", f"{what}: control copy/{small}k ratio (noise)", noise, "x"),
        ]  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000],
                        help="mall sizes, multiples of 10,000")  # fmt: skip
    parser.add_argument("--writes", type=int, default=400, help="timed writes per size")
    h.common_arguments(parser)
    args = parser.parse_args()
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
