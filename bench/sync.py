"""Sync of a 50,000-document mall: GET /sync/full, and GET /sync/delta after 10 changes.

The mall (2,000 areas, 30,000 beacons, 15,000 merchants, 3,000 connections) is generated with
valid documents and imported through the admin import endpoint in chunks of 10,000 (a mall
file holds at most 10,000 documents per collection). A registered gateway then syncs: times
are from sending the request to the last byte of the response, as the gateway sees them.

    uv run python bench/sync.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
import _mall as mall
import aiohttp

CHUNK = 10_000
TARGETS = {"full_s": 1.5, "delta_ms": 50.0, "delta_bytes": 5_000}


async def timed_get(
    session: aiohttp.ClientSession, path: str, params: dict[str, str]
) -> tuple[float, bytes]:
    """(seconds from request to last byte, body)."""
    started = time.perf_counter()
    async with session.get(path, params=params) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return time.perf_counter() - started, body


async def main_async(args: argparse.Namespace) -> list[h.Figure]:
    bench = f"sync {args.documents // 1000}k"
    with tempfile.TemporaryDirectory(prefix="navign-bench-sync-") as tmp:
        workdir = args.workdir or Path(tmp)
        with h.running_server(workdir) as server:
            started = time.perf_counter()
            total = await mall.import_chunks(server, 0, args.documents // CHUNK, CHUNK)
            import_s = time.perf_counter() - started
            h.say(f"{bench}: imported {total} documents in {import_s:.1f} s")
            token = next(iter((await h.register_gateways(server, 1)).values()))
            headers = {"Authorization": f"Bearer {token}", "X-Entity-ID": h.ENTITY}
            async with aiohttp.ClientSession(
                server.base_url, headers=headers, timeout=h.HTTP_TIMEOUT
            ) as gateway:
                await timed_get(gateway, "/api/orchestrators/sync/full", {})  # warm-up
                full = [await timed_get(gateway, "/api/orchestrators/sync/full", {})
                        for _ in range(args.full_runs)]  # fmt: skip
                body: dict[str, Any] = json.loads(full[-1][1])
                served = sum(len(docs) for docs in body["data"].values())
                deltas, changes = await delta_runs(server, gateway, args.delta_runs)
    full_s = h.median([t for t, _ in full])
    delta_ms = h.median([t for t, _ in deltas]) * 1000
    delta_bytes = len(deltas[-1][1])
    return [
        h.Figure(bench, "import (chunks of 10,000 documents)", import_s, "s"),
        h.Figure(bench, "documents in the full sync", served, "docs", f"= {total}",
                 served == total),
        h.Figure(bench, f"full sync, median of {args.full_runs}", full_s, "s",
                 f"<= {TARGETS['full_s']:g}", full_s <= TARGETS["full_s"], goal=True),
        h.Figure(bench, "full sync response size", len(full[-1][1]) / 2**20, "MiB"),
        h.Figure(bench, "changes in the delta", changes, "changes", "= 10", changes == 10),
        h.Figure(bench, f"delta of 10 changes, median of {args.delta_runs}", delta_ms, "ms",
                 f"<= {TARGETS['delta_ms']:g}", delta_ms <= TARGETS["delta_ms"], goal=True),
        h.Figure(bench, "delta of 10 changes, response size", delta_bytes, "bytes",
                 f"<= {TARGETS['delta_bytes']:g}", delta_bytes <= TARGETS["delta_bytes"],
                 goal=True),
    ]  # fmt: skip


async def delta_runs(
    server: h.Server, gateway: aiohttp.ClientSession, runs: int
) -> tuple[list[tuple[float, bytes]], int]:
    """Make 10 beacon PUTs, then time ``runs`` deltas from the cursor before them."""
    async with h.admin_session(server) as admin:
        cursor = (await h.call(admin, "GET", f"/api/admin/entities/{h.ENTITY}"))["seq"]
        for i in range(10):
            doc = await mall.get_beacon(admin, f"b0-{i}")
            doc["name"] = f"Renamed beacon {i}"
            await mall.put_document(admin, "beacons", doc)
    params = {"cursor": str(cursor)}
    await timed_get(gateway, "/api/orchestrators/sync/delta", params)  # warm-up
    results = [await timed_get(gateway, "/api/orchestrators/sync/delta", params)
               for _ in range(runs)]  # fmt: skip
    changes = len(json.loads(results[-1][1])["changes"])
    return results, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50_000, help="a multiple of 10,000")
    parser.add_argument("--full-runs", type=int, default=5)
    parser.add_argument("--delta-runs", type=int, default=20)
    h.common_arguments(parser)
    args = parser.parse_args()
    h.emit(h.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
