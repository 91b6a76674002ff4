"""A gateway that applies delta pages to its mall copy until it is killed (test_mallcopy's
crash test runs it and sends SIGKILL at random moments).

The change log is a deterministic function of the sequence number, so the parent can compute
the checksum the copy must have at whatever cursor it finds after the kill without running
the same code: ``SLOTS`` document slots, slot ``seq % SLOTS`` changes at ``seq`` (an update,
or a delete when :func:`is_delete`), and some sequence numbers are events, not changes. The
state at ``S`` is therefore, for each slot, its last change at or below ``S``: O(SLOTS) to
compute from scratch, at any ``S``.

Run: ``python mallcopy_crash_worker.py <database path>``. It prints ``ready`` once its copy
exists, then applies pages; it also replays some pages and starts some before its cursor
(both must apply nothing twice). Exit codes: 0 after ``MAX_PAGES`` pages, 3 when a page applied
a wrong number of changes, 4 when a replay applied anything.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from navign_gateway.db import Database
from navign_gateway.mallcopy import MallCopy
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.wire import SyncDeltaResponse, SyncFullResponse

ENTITY: Final = "mall-crash"
SLOTS: Final = 240
#: The first full sync is at this seq: every slot has changed at least once by then.
START: Final = 2 * SLOTS
MAX_PAGES: Final = 100_000
_NOW: Final = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def is_event(seq: int) -> bool:
    """Sequence numbers taken by events (firmware, tasks): gaps in the change log."""
    return seq % 11 == 0


def is_delete(seq: int) -> bool:
    return (seq * 2_654_435_761) % 7 == 0


def slot_of(seq: int) -> tuple[str, str]:
    slot = seq % SLOTS
    collection = COLLECTIONS[slot % 4]
    return collection, f"{collection[:-1]}-{slot // 4:03d}"


def document(seq: int) -> dict[str, Any]:
    """The document written by the change at ``seq`` (not a delete)."""
    collection, doc_id = slot_of(seq)
    base: dict[str, Any] = {"id": doc_id, "entity_id": ENTITY, "name": f"{doc_id} rev {seq}"}
    area = f"area-{seq % (SLOTS // 4):03d}"
    if collection == "areas":
        base["floor"] = {"type": "floor", "number": 1 + seq % 3}
        base["polygon"] = [[0.0, 0.0], [40.5, 0.0], [40.5, 22.25 + seq % 5], [0.0, 22.25]]
        base["beacon_code"] = f"A{seq}"
    elif collection == "beacons":
        base.update(area_id=area, type="navigation", device="esp32c3", major=seq % 65_536)
        base.update(
            location={"x": seq % 40 + 0.5, "y": 3.0}, minor=7, mac=f"02:00:00:00:00:{seq % 256:02x}"
        )
    elif collection == "merchants":
        base.update(area_id=area, type="food", location={"x": 1.25, "y": float(seq % 9)})
        base.update(opening_hours=[[[36_000_000, 79_200_000]]] * 7, tags=["crash"], contact={})
    else:
        ends = [{"area_id": area, "x": 1.0, "y": 2.0}, {"area_id": "area-000", "x": 3.5, "y": 4.0}]
        base.update(type="escalator", connected_areas=ends, tags=[])
    return base


def last_change(slot: int, seq: int) -> int | None:
    """The last change of ``slot`` at or below ``seq``."""
    if seq < 1:
        return None
    last = seq - ((seq - slot) % SLOTS)
    while last >= 1 and is_event(last):
        last -= SLOTS
    return last if last >= 1 else None


def state_at(seq: int) -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
    for slot in range(SLOTS):
        last = last_change(slot, seq)
        if last is not None and not is_delete(last):
            data[slot_of(last)[0]].append(document(last))
    return data


@lru_cache(maxsize=64)
def checksums_at(seq: int) -> MallChecksums:
    return MallChecksums.of(state_at(seq))


def full_at(seq: int) -> SyncFullResponse:
    data = state_at(seq)
    return SyncFullResponse.model_validate(
        {
            "entity_id": ENTITY,
            "sync_id": f"full-{seq}",
            "timestamp": _NOW,
            "checksum": checksums_at(seq).global_checksum,
            "data": data,
            "metadata": {f"total_{name}": len(data[name]) for name in COLLECTIONS},
            "seq": seq,
            "entity": {"id": ENTITY, "type": "mall", "name": "Crash Mall", "tags": []},
        }
    )


def page_after(cursor: int) -> SyncDeltaResponse:
    """The page a server returns for ``cursor``: 1 to 150 changes, the size depending on it."""
    limit = 1 + (cursor * 37) % 150
    changes: list[dict[str, Any]] = []
    seq = cursor
    while len(changes) < limit:
        seq += 1
        if is_event(seq):
            continue
        collection, doc_id = slot_of(seq)
        change: dict[str, Any] = {"type": collection, "id": doc_id, "seq": seq, "updated_at": _NOW}
        if is_delete(seq):
            change["operation"] = "delete"
        else:
            change.update(operation="update", data=document(seq))
        changes.append(change)
    return SyncDeltaResponse.model_validate(
        {
            "entity_id": ENTITY,
            "sync_id": f"delta-{cursor}",
            "timestamp": _NOW,
            "base_checksum": checksums_at(cursor).global_checksum,
            "new_checksum": checksums_at(seq).global_checksum,
            "changes": changes,
            "has_more": True,
            "next_cursor": str(seq),
        }
    )


async def run(path: Path) -> int:
    async with Database(path) as db:
        copy = MallCopy(db, ENTITY)
        await copy.migrate()
        if await copy.cursor() is None:
            await copy.apply_full(full_at(START))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for _ in range(MAX_PAGES):
            cursor = await copy.cursor()
            assert cursor is not None
            # Some pages start before the cursor, as after a lost acknowledgement.
            page = page_after(max(START, cursor - cursor % 4))
            if page.next_cursor is not None and int(page.next_cursor) <= cursor:
                if await copy.apply_delta(page) != 0:
                    return 4
                page = page_after(cursor)
            applied = await copy.apply_delta(page)
            if applied != sum(1 for change in page.changes if change.seq > cursor):
                return 3
            if cursor % 5 == 0 and await copy.apply_delta(page) != 0:
                return 4
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run(Path(sys.argv[1]))))
