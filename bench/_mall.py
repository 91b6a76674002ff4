"""Generated mall data for the benchmarks, in chunks that import independently, and the admin
calls that load and change it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from _harness import ENTITY, Server, admin_session, call

#: Realistic proportions of a mall's documents: areas, beacons, merchants, connections.
PROPORTIONS = (0.04, 0.60, 0.30, 0.06)


def entity_document(entity_id: str = ENTITY) -> dict[str, Any]:
    bounds = {"min_lon": 121.47, "min_lat": 31.23, "max_lon": 121.48, "max_lat": 31.24}
    return {"id": entity_id, "type": "mall", "name": "Benchmark Mall", "bounds": bounds}


def beacon(chunk: int, i: int, area: str, merchant: str | None, version: int = 0) -> dict[str, Any]:
    serial = chunk * 1_000_000 + i  # unique across chunks: iBeacon numbers and MAC
    doc: dict[str, Any] = {
        "id": f"b{chunk}-{i}",
        "entity_id": ENTITY,
        "area_id": area,
        "name": f"Beacon {chunk}-{i} rev {version}",
        "type": "navigation" if i % 3 else "marketing",
        "location": {"x": float(i % 40), "y": float(i % 30)},
        "device": "esp32c3",
        "mac": ":".join(f"{b:02x}" for b in (2, 0, *serial.to_bytes(4, "big"))),
        "major": serial // 65_536,
        "minor": serial % 65_536,
    }
    if merchant is not None:
        doc["merchant_id"] = merchant
    return doc


def mall_chunk(chunk: int, documents: int) -> dict[str, Any]:
    """A self-contained mall file of about ``documents`` documents (ids unique per chunk):
    it can be imported next to any other chunk of the same entity."""
    n_areas, n_beacons, n_merchants, n_links = (max(2, round(documents * p)) for p in PROPORTIONS)
    square = [[0.0, 0.0], [40.0, 0.0], [40.0, 40.0], [0.0, 40.0]]
    areas = [
        {
            "id": f"a{chunk}-{i}",
            "entity_id": ENTITY,
            "name": f"Area {chunk}-{i}",
            "floor": {"type": "floor", "number": 1 + i % 5},
            "polygon": square,
            "beacon_code": f"A{chunk}-{i}",
        }
        for i in range(n_areas)
    ]
    hours = [[[25_200_000, 79_200_000]]] * 7
    merchants = [
        {
            "id": f"m{chunk}-{i}",
            "entity_id": ENTITY,
            "area_id": f"a{chunk}-{i % n_areas}",
            "name": f"Shop {chunk}-{i}",
            "type": "food" if i % 2 else "clothing",
            "style": "store",
            "location": {"x": 12.0, "y": 8.0},
            "polygon": [[8.0, 4.0], [16.0, 4.0], [16.0, 12.0], [8.0, 12.0]],
            "opening_hours": hours,
            "tags": ["bench", f"floor-{1 + i % 5}"],
            "contact": {"phone": "+86 21 5555 0101", "website": "https://shop.example.com/x"},
        }
        for i in range(n_merchants)
    ]
    beacons = [
        beacon(
            chunk, i, f"a{chunk}-{i % n_areas}", f"m{chunk}-{i % n_merchants}" if i % 2 else None
        )
        for i in range(n_beacons)
    ]
    links = [
        {
            "id": f"c{chunk}-{i}",
            "entity_id": ENTITY,
            "name": f"Escalator {chunk}-{i}",
            "type": "escalator",
            "connected_areas": [
                {"area_id": f"a{chunk}-{i % n_areas}", "x": 1.0, "y": 2.0},
                {"area_id": f"a{chunk}-{(i + 1) % n_areas}", "x": 3.0, "y": 4.0},
            ],
        }
        for i in range(n_links)
    ]
    return {
        "entity": entity_document(),
        "areas": areas,
        "beacons": beacons,
        "merchants": merchants,
        "connections": links,
    }


async def import_chunks(server: Server, first: int, chunks: int, per_chunk: int) -> int:
    """Import ``chunks`` generated chunks (numbered from ``first``); returns documents written."""
    written = 0
    async with admin_session(server) as admin:
        for chunk in range(first, first + chunks):
            made = await call(
                admin, "POST", f"/api/admin/entities/{ENTITY}/import", mall_chunk(chunk, per_chunk)
            )
            written += made["documents"]
    return written


async def get_beacon(admin: aiohttp.ClientSession, beacon_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = await call(
        admin, "GET", f"/api/admin/entities/{ENTITY}/beacons/{beacon_id}"
    )
    return doc


async def put_document(
    admin: aiohttp.ClientSession, collection: str, doc: dict[str, Any]
) -> tuple[int, float, float]:
    """PUT one changed document: (seq of the change, request sent at, response received at)."""
    path = f"/api/admin/entities/{ENTITY}/{collection}/{doc['id']}"
    sent = time.perf_counter()
    made = await call(admin, "PUT", path, doc)
    done = time.perf_counter()
    if made["seq"] is None:
        raise RuntimeError(f"PUT {path} changed nothing")
    return int(made["seq"]), sent, done
