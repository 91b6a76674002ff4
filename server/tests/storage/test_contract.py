"""The storage contract: every backend of ``Store`` passes these tests (fixtures in conftest).

Documents come from proto/examples/sample-mall.json in their ``Model.document()`` form.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navign_proto.canonical import canonical_json
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.mall import MallData
from navign_proto.wire.events import DataUpdateEvent, parse_event
from navign_server.storage.base import (
    DATA_UPDATE_EVENT,
    AdminToken,
    AuditRecord,
    ChangePage,
    Command,
    ConflictError,
    DocumentWrite,
    EnrollmentToken,
    Heartbeat,
    HistoryExpiredError,
    JsonObject,
    NotFoundError,
    OrchestratorRegistration,
    OrchestratorStatus,
    PreregisteredKey,
    SigningKey,
    Store,
    StoredEvent,
    WriteResult,
)

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
ENTITY = "mall-riverside"
KEY_A = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
KEY_B = "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n"
WATCH_TIMEOUT = 5.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def creates(mall: MallData) -> list[DocumentWrite]:
    return [
        DocumentWrite(name, "create", doc["id"], doc)
        for name, docs in mall.documents().items()
        for doc in docs
    ]


def beacon(mall: MallData, index: int = 0) -> JsonObject:
    return mall.documents()["beacons"][index]


def renamed(doc: JsonObject, name: str) -> JsonObject:
    return {**doc, "name": name}


async def everything(store: Store, entity_id: str = ENTITY) -> dict[str, list[JsonObject]]:
    """Every stored document, read page by page through list_documents."""
    result: dict[str, list[JsonObject]] = {}
    for name in COLLECTIONS:
        docs: list[JsonObject] = []
        after: str | None = None
        for _ in range(1_000):
            page = await store.list_documents(entity_id, name, after_id=after, limit=7)
            docs += page
            if len(page) < 7:
                break
            after = page[-1]["id"]
        result[name] = docs
    return result


def checksums_of(data: Mapping[str, Iterable[JsonObject]]) -> dict[str, str]:
    return MallChecksums.of(data).checksums()


def registration(orchestrator_id: str = "gw-1", key: str = KEY_A, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "entity_id": ENTITY,
        "orchestrator_id": orchestrator_id,
        "public_key_pem": key,
        "key_id": key[27:31],
        "version": "0.1.0",
        "capabilities": ("firmware_distribution",),
        "local_address": "http://gw.local:8080",
        "heartbeat_interval": 60,
    }
    values.update(changes)
    return OrchestratorRegistration(**values)


async def token(store: Store, hash_: str, orchestrator_id: str = "gw-1", ttl: float = 600) -> None:
    await store.create_enrollment_token(
        EnrollmentToken(hash_, ENTITY, orchestrator_id, T0, at(ttl), "admin:test")
    )


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)


# -- entities ---------------------------------------------------------------------------------


async def test_entities(store: Store, mall: MallData) -> None:
    entity = mall.entity.document()
    await store.create_entity(entity, T0)
    assert await store.get_entity(ENTITY) == entity
    with pytest.raises(ConflictError):
        await store.create_entity(entity, T0)
    await store.update_entity({**entity, "name": "Riverside Plaza II"}, at(1))
    assert (await store.get_entity(ENTITY))["name"] == "Riverside Plaza II"
    await store.create_entity({**entity, "id": "mall-other"}, T0)
    assert [e["id"] for e in await store.list_entities()] == ["mall-other", ENTITY]
    with pytest.raises(NotFoundError):
        await store.get_entity("mall-none")
    with pytest.raises(NotFoundError):
        await store.update_entity({**entity, "id": "mall-none"}, T0)
    state = await store.entity_state(ENTITY)
    assert (state.head, state.floor) == (0, 0)
    assert dict(state.checksums) == MallChecksums.empty().checksums()
    assert dict(state.counts) == dict.fromkeys(COLLECTIONS, 0)
    with pytest.raises(NotFoundError):
        await store.entity_state("mall-none")


# -- data writes ------------------------------------------------------------------------------


async def test_import_allocates_one_seq_per_change_and_one_event(
    mall_store: Store, mall: MallData
) -> None:
    writes = creates(mall)
    result = await mall_store.write_documents(ENTITY, writes, at(1))
    assert [c.seq for c in result.changes] == list(range(1, len(writes) + 1))
    assert all(c.operation == "create" for c in result.changes)
    assert result.event is not None
    assert result.event.seq == result.changes[-1].seq == len(writes)
    assert result.event.type == DATA_UPDATE_EVENT
    # Each change carries the global checksum right after it.
    running: dict[str, list[JsonObject]] = {name: [] for name in COLLECTIONS}
    for change in result.changes:
        assert change.data is not None
        running[change.collection].append(change.data)
        assert change.checksum == checksums_of(running)["global"]
        assert_utc(change.updated_at)
    expected = checksums_of(mall.documents())
    assert dict(result.checksums) == expected
    state = await mall_store.entity_state(ENTITY)
    assert state.head == len(writes)
    assert dict(state.checksums) == expected
    assert dict(state.counts) == {n: len(d) for n, d in mall.documents().items()}
    assert await everything(mall_store) == {
        n: sorted(d, key=lambda doc: doc["id"]) for n, d in mall.documents().items()
    }


async def test_event_payload_is_a_data_update(mall_store: Store, mall: MallData) -> None:
    result = await mall_store.write_documents(ENTITY, creates(mall), at(1))
    assert result.event is not None
    data = result.event.data
    assert set(data) == {"seq", "changes", "checksum"}
    event = parse_event(DATA_UPDATE_EVENT, canonical_json(data))
    assert isinstance(event, DataUpdateEvent)
    assert event.seq == result.event.seq
    assert event.checksum == result.checksums["global"]
    for name, docs in mall.documents().items():
        assert sorted(getattr(event.changes, name)) == sorted(d["id"] for d in docs)
    events = await mall_store.events_since(ENTITY, 0, 10)
    assert events == [result.event]


async def test_identical_put_changes_nothing(mall_store: Store, mall: MallData) -> None:
    first = await mall_store.write_documents(ENTITY, creates(mall), at(1))
    doc = beacon(mall)
    # Same content, other key order: canonical JSON makes it identical.
    shuffled = dict(reversed(list(doc.items())))
    result = await mall_store.write_documents(
        ENTITY,
        [
            DocumentWrite("beacons", "put", doc["id"], shuffled),
            DocumentWrite("beacons", "update", doc["id"], doc),
        ],
        at(2),
    )
    assert result == WriteResult((), first.checksums, None)
    assert (await mall_store.entity_state(ENTITY)).head == first.changes[-1].seq
    assert len(await mall_store.events_since(ENTITY, 0, 100)) == 1


async def test_put_creates_then_updates(mall_store: Store, mall: MallData) -> None:
    doc = beacon(mall)
    created = await mall_store.write_documents(
        ENTITY, [DocumentWrite("beacons", "put", doc["id"], doc)], at(1)
    )
    assert [c.operation for c in created.changes] == ["create"]
    updated = await mall_store.write_documents(
        ENTITY, [DocumentWrite("beacons", "put", doc["id"], renamed(doc, "New name"))], at(2)
    )
    assert [(c.operation, c.seq) for c in updated.changes] == [("update", 2)]
    assert (await mall_store.get_document(ENTITY, "beacons", doc["id"]))["name"] == "New name"


async def test_batch_is_atomic(mall_store: Store, mall: MallData) -> None:
    await mall_store.write_documents(ENTITY, creates(mall), at(1))
    before = await mall_store.entity_state(ENTITY)
    data_before = await everything(mall_store)
    doc = beacon(mall)
    missing = {**doc, "id": "b-missing"}
    bad_batches: list[tuple[list[DocumentWrite], type[Exception]]] = [
        (
            [
                DocumentWrite("beacons", "update", doc["id"], renamed(doc, "changed")),
                DocumentWrite("beacons", "delete", beacon(mall, 1)["id"]),
                DocumentWrite("beacons", "update", "b-missing", missing),
            ],
            NotFoundError,
        ),
        (
            [
                DocumentWrite("beacons", "delete", doc["id"]),
                DocumentWrite("beacons", "create", beacon(mall, 1)["id"], beacon(mall, 1)),
            ],
            ConflictError,
        ),
        ([DocumentWrite("beacons", "delete", "b-missing")], NotFoundError),
    ]
    for writes, error in bad_batches:
        with pytest.raises(error):
            await mall_store.write_documents(ENTITY, writes, at(2))
        assert await mall_store.entity_state(ENTITY) == before
        assert await everything(mall_store) == data_before
    page = await mall_store.changes_since(ENTITY, 0, 1000)
    assert page.changes[-1].seq == before.head
    assert len(await mall_store.events_since(ENTITY, 0, 100)) == 1
    with pytest.raises(NotFoundError):
        await mall_store.write_documents("mall-none", creates(mall)[:1], at(3))


async def test_create_then_delete_in_one_batch(mall_store: Store, mall: MallData) -> None:
    doc = beacon(mall)
    result = await mall_store.write_documents(
        ENTITY,
        [
            DocumentWrite("beacons", "create", doc["id"], doc),
            DocumentWrite("beacons", "update", doc["id"], renamed(doc, "x")),
            DocumentWrite("beacons", "delete", doc["id"]),
        ],
        at(1),
    )
    assert [(c.seq, c.operation) for c in result.changes] == [
        (1, "create"),
        (2, "update"),
        (3, "delete"),
    ]
    assert result.changes[-1].data is None
    assert result.event is not None
    assert result.event.data["changes"] == {"beacons": [doc["id"]]}
    assert dict(result.checksums) == MallChecksums.empty().checksums()
    with pytest.raises(NotFoundError):
        await mall_store.get_document(ENTITY, "beacons", doc["id"])


async def test_events_and_changes_share_one_sequence(mall_store: Store, mall: MallData) -> None:
    writes = creates(mall)
    first = await mall_store.append_event(ENTITY, "config_update", {"type": "x"}, at(1))
    data = await mall_store.write_documents(ENTITY, writes[:3], at(2))
    second = await mall_store.append_event(ENTITY, "task_create", {"task_id": "t-1"}, at(3))
    more = await mall_store.write_documents(ENTITY, writes[3:5], at(4))
    assert first.seq == 1
    assert [c.seq for c in data.changes] == [2, 3, 4]
    assert data.event is not None
    assert data.event.seq == 4
    assert second.seq == 5
    assert [c.seq for c in more.changes] == [6, 7]
    events = await mall_store.events_since(ENTITY, 0, 100)
    assert [(e.seq, e.type) for e in events] == [
        (1, "config_update"),
        (4, DATA_UPDATE_EVENT),
        (5, "task_create"),
        (7, DATA_UPDATE_EVENT),
    ]
    assert [e.seq for e in await mall_store.events_since(ENTITY, 4, 2)] == [5, 7]
    assert events[0] == first
    assert_utc(events[0].created_at)
    assert (await mall_store.entity_state(ENTITY)).head == 7


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_writes_keep_incremental_checksums_exact(
    mall_store: Store, mall: MallData, seed: int
) -> None:
    rng = random.Random(seed)
    pool = [(name, doc) for name, docs in mall.documents().items() for doc in docs]
    model: dict[tuple[str, str], JsonObject] = {}
    head = 0
    for step in range(25):
        writes: list[DocumentWrite] = []
        for _ in range(rng.randint(1, 6)):
            name, doc = rng.choice(pool)
            key = (name, doc["id"])
            present = key in model
            choice = rng.random()
            if present and choice < 0.3:
                writes.append(DocumentWrite(name, "delete", doc["id"]))
                del model[key]
            elif present and choice < 0.45:
                writes.append(DocumentWrite(name, "put", doc["id"], model[key]))  # no change
            else:
                new = renamed(doc, f"{doc['name']} #{rng.randint(0, 3)}")
                op = "put" if rng.random() < 0.5 else ("update" if present else "create")
                writes.append(DocumentWrite(name, op, doc["id"], new))  # type: ignore[arg-type]
                model[key] = new
        result = await mall_store.write_documents(ENTITY, writes, at(step))
        stored = await everything(mall_store)
        expected = {n: [d for (c, _), d in sorted(model.items()) if c == n] for n in COLLECTIONS}
        assert stored == expected
        assert dict(result.checksums) == checksums_of(stored)
        assert dict((await mall_store.entity_state(ENTITY)).checksums) == checksums_of(stored)
        if result.changes:
            head = result.changes[-1].seq
            assert result.event is not None
            assert result.event.seq == head
        else:
            assert result.event is None
        assert (await mall_store.entity_state(ENTITY)).head == head
    # A gateway applying every page from 0 reaches the server's checksum.
    replica = await replay(mall_store, 0, limit=4)
    assert checksums_of(replica) == dict((await mall_store.entity_state(ENTITY)).checksums)


async def replay(
    store: Store, cursor: int, *, limit: int, base: dict[str, list[JsonObject]] | None = None
) -> dict[str, list[JsonObject]]:
    """Apply delta pages like a gateway, checking each page's checksums on the way."""
    docs: dict[str, dict[str, JsonObject]] = {
        n: {d["id"]: d for d in (base or {}).get(n, [])} for n in COLLECTIONS
    }
    for _ in range(10_000):
        page = await store.changes_since(ENTITY, cursor, limit)
        current = {n: list(d.values()) for n, d in docs.items()}
        assert page.base_checksum == checksums_of(current)["global"]
        assert len(page.changes) <= limit
        assert all(c.seq > cursor for c in page.changes)
        assert [c.seq for c in page.changes] == sorted({c.seq for c in page.changes})
        for change in page.changes:
            if change.data is None:
                docs[change.collection].pop(change.id, None)
            else:
                docs[change.collection][change.id] = change.data
        applied = {n: list(d.values()) for n, d in docs.items()}
        assert page.new_checksum == checksums_of(applied)["global"]
        assert page.next_cursor > cursor or not page.changes
        cursor = page.next_cursor
        if not page.has_more:
            assert cursor == (await store.entity_state(ENTITY)).head
            break
        assert page.next_cursor == page.changes[-1].seq
    return {n: list(d.values()) for n, d in docs.items()}


# -- reads ------------------------------------------------------------------------------------


async def test_get_and_list_documents(mall_store: Store, mall: MallData) -> None:
    await mall_store.write_documents(ENTITY, creates(mall), at(1))
    doc = beacon(mall, 3)
    assert await mall_store.get_document(ENTITY, "beacons", doc["id"]) == doc
    with pytest.raises(NotFoundError):
        await mall_store.get_document(ENTITY, "beacons", "b-none")
    with pytest.raises(NotFoundError):
        await mall_store.get_document("mall-none", "beacons", doc["id"])
    ids = sorted(d["id"] for d in mall.documents()["beacons"])
    first = await mall_store.list_documents(ENTITY, "beacons", limit=5)
    assert [d["id"] for d in first] == ids[:5]
    rest = await mall_store.list_documents(ENTITY, "beacons", after_id=ids[4], limit=500)
    assert [d["id"] for d in rest] == ids[5:]


async def test_snapshot(mall_store: Store, mall: MallData) -> None:
    result = await mall_store.write_documents(ENTITY, creates(mall), at(1))
    await mall_store.append_event(ENTITY, "task_create", {"task_id": "t"}, at(2))
    snap = await mall_store.snapshot(ENTITY, list(COLLECTIONS))
    assert snap.seq == 1 + result.changes[-1].seq
    assert snap.entity == mall.entity.document()
    assert checksums_of(snap.documents) == dict(snap.checksums) == dict(result.checksums)
    assert dict(snap.counts) == {n: len(d) for n, d in mall.documents().items()}
    for name in COLLECTIONS:
        assert [d["id"] for d in snap.documents[name]] == sorted(
            d["id"] for d in mall.documents()[name]
        )
    assert_utc(snap.taken_at)
    partial = await mall_store.snapshot(ENTITY, ["areas"])
    assert set(partial.documents) <= {"areas", *COLLECTIONS}
    assert partial.documents["areas"] == snap.documents["areas"]
    assert not any(partial.documents.get(n) for n in ("beacons", "merchants", "connections"))
    assert dict(partial.counts) == dict(snap.counts)  # totals of all four
    assert partial.checksums["global"] == snap.checksums["global"]
    with pytest.raises(NotFoundError):
        await mall_store.snapshot("mall-none", ["areas"])


async def test_snapshot_is_consistent_under_concurrent_writes(
    mall_store: Store, mall: MallData
) -> None:
    await mall_store.write_documents(ENTITY, creates(mall), at(0))
    global_at = {(await mall_store.entity_state(ENTITY)).head: checksums_of(mall.documents())}
    beacons = mall.documents()["beacons"]

    async def writer() -> None:
        for i in range(20):
            doc = beacons[i % len(beacons)]
            moved = renamed(doc, f"moved {i}")
            other = renamed(beacons[(i + 1) % len(beacons)], f"other {i}")
            result = await mall_store.write_documents(
                ENTITY,
                [
                    DocumentWrite("beacons", "put", doc["id"], moved),
                    DocumentWrite("beacons", "put", other["id"], other),
                ],
                at(i + 1),
            )
            global_at[result.changes[-1].seq] = dict(result.checksums)
            await asyncio.sleep(0)

    async def reader() -> list[Any]:
        snaps = []
        for _ in range(20):
            snaps.append(await mall_store.snapshot(ENTITY, list(COLLECTIONS)))
            await asyncio.sleep(0)
        return snaps

    _, snaps = await asyncio.gather(writer(), reader())
    for snap in snaps:
        assert checksums_of(snap.documents) == dict(snap.checksums) == global_at[snap.seq]


# -- delta sync -------------------------------------------------------------------------------


async def test_changes_since_pages_and_tombstones(mall_store: Store, mall: MallData) -> None:
    imported = await mall_store.write_documents(ENTITY, creates(mall), at(1))
    snapshot_seq = imported.changes[-1].seq
    doc = beacon(mall)
    gone = mall.documents()["connections"][0]
    later = await mall_store.write_documents(
        ENTITY,
        [
            DocumentWrite("beacons", "update", doc["id"], renamed(doc, "moved")),
            DocumentWrite("connections", "delete", gone["id"]),
        ],
        at(2),
    )
    tail = await mall_store.append_event(ENTITY, "task_create", {"task_id": "t"}, at(3))
    page = await mall_store.changes_since(ENTITY, snapshot_seq, 500)
    assert [(c.operation, c.id, c.data is None) for c in page.changes] == [
        ("update", doc["id"], False),
        ("delete", gone["id"], True),
    ]
    assert page.base_checksum == imported.checksums["global"]
    assert page.new_checksum == later.checksums["global"]
    assert (page.has_more, page.next_cursor) == (False, tail.seq)
    # Page by page with a small limit, starting from nothing.
    replica = await replay(mall_store, 0, limit=5)
    assert checksums_of(replica)["global"] == later.checksums["global"]
    assert gone["id"] not in {d["id"] for d in replica["connections"]}
    first = await mall_store.changes_since(ENTITY, 0, 5)
    assert (first.has_more, first.next_cursor) == (True, 5)
    # At the head: an empty, final page.
    empty = await mall_store.changes_since(ENTITY, tail.seq, 10)
    assert empty == ChangePage(
        (), later.checksums["global"], later.checksums["global"], tail.seq, False
    )
    # Starting from the resync point of a full sync taken at the event's seq.
    assert (await mall_store.changes_since(ENTITY, tail.seq - 1, 10)).changes == ()


async def test_cursor_outside_history_is_expired(mall_store: Store, mall: MallData) -> None:
    await mall_store.write_documents(ENTITY, creates(mall)[:3], at(1))
    with pytest.raises(HistoryExpiredError) as info:
        await mall_store.changes_since(ENTITY, 4, 10)
    assert (info.value.cursor, info.value.floor, info.value.head) == (4, 0, 3)
    with pytest.raises(HistoryExpiredError):
        await mall_store.events_since(ENTITY, 4, 10)
    with pytest.raises(HistoryExpiredError):
        await mall_store.changes_since(ENTITY, -1, 10)
    with pytest.raises(NotFoundError):
        await mall_store.changes_since("mall-none", 0, 10)


async def test_prune_raises_the_floor(mall_store: Store, mall: MallData) -> None:
    writes = creates(mall)
    old = await mall_store.write_documents(ENTITY, writes[:4], at(0))
    old_event = await mall_store.append_event(ENTITY, "task_create", {"task_id": "t"}, at(10))
    new = await mall_store.write_documents(ENTITY, writes[4:8], at(100))
    assert await mall_store.prune_history(ENTITY, at(50)) == old_event.seq == 5
    state = await mall_store.entity_state(ENTITY)
    assert (state.floor, state.head) == (5, new.changes[-1].seq)
    with pytest.raises(HistoryExpiredError) as info:
        await mall_store.changes_since(ENTITY, 4, 10)
    assert info.value.floor == 5
    with pytest.raises(HistoryExpiredError):
        await mall_store.events_since(ENTITY, 3, 10)
    page = await mall_store.changes_since(ENTITY, 5, 100)
    assert page.base_checksum == old.checksums["global"]  # the checksum at the floor
    assert [c.seq for c in page.changes] == [6, 7, 8, 9]
    assert [e.seq for e in await mall_store.events_since(ENTITY, 5, 10)] == [9]
    # A gateway holding a full sync at the floor catches up exactly.
    base = {
        n: [d for d in mall.documents()[n] if d["id"] in {w.id for w in writes[:4]}]
        for n in COLLECTIONS
    }
    replica = await replay(mall_store, 5, limit=3, base=base)
    assert checksums_of(replica) == dict(new.checksums)
    # Pruning again with an older limit changes nothing; the floor never goes back.
    assert await mall_store.prune_history(ENTITY, at(5)) == 5
    # Everything pruned: the floor is the head and the head's checksum is kept.
    assert await mall_store.prune_history(ENTITY, at(1000)) == state.head
    empty = await mall_store.changes_since(ENTITY, state.head, 10)
    assert empty.base_checksum == empty.new_checksum == new.checksums["global"]
    # Sequence numbers are never reused after pruning.
    event = await mall_store.append_event(ENTITY, "ping", {}, at(1001))
    assert event.seq == state.head + 1


async def test_seq_at(mall_store: Store, mall: MallData) -> None:
    writes = creates(mall)
    assert await mall_store.seq_at(ENTITY, at(0)) == 0
    await mall_store.write_documents(ENTITY, writes[:3], at(10))  # seqs 1-3
    await mall_store.append_event(ENTITY, "task_create", {"task_id": "t"}, at(15))  # 4
    await mall_store.write_documents(ENTITY, writes[3:5], at(20))  # 5-6
    await mall_store.write_documents(ENTITY, writes[5:6], at(30))  # 7
    assert await mall_store.seq_at(ENTITY, at(0)) == 0
    assert await mall_store.seq_at(ENTITY, at(10)) == 0
    for moment, first_seq in ((at(11), 5), (at(20), 5), (at(25), 7), (at(30), 7)):
        cursor = await mall_store.seq_at(ENTITY, moment)
        page = await mall_store.changes_since(ENTITY, cursor, 100)
        assert page.changes[0].seq == first_seq
        assert all(c.updated_at >= moment for c in page.changes)
    assert await mall_store.seq_at(ENTITY, at(31)) == 7
    await mall_store.prune_history(ENTITY, at(15))
    with pytest.raises(HistoryExpiredError):
        await mall_store.seq_at(ENTITY, at(5))
    assert await mall_store.seq_at(ENTITY, at(11)) in (3, 4)


# -- events -----------------------------------------------------------------------------------


async def next_event(feed: Any) -> StoredEvent:
    event: StoredEvent = await asyncio.wait_for(anext(feed), WATCH_TIMEOUT)
    return event


async def test_watch_events_receives_commits_after_subscribing(
    mall_store: Store, mall: MallData
) -> None:
    before = await mall_store.append_event(ENTITY, "ping", {}, at(0))
    feed = mall_store.watch_events()  # subscribed now, before the first __anext__
    try:
        written = await mall_store.write_documents(ENTITY, creates(mall)[:2], at(1))
        task = await mall_store.append_event(ENTITY, "task_create", {"task_id": "t"}, at(2))
        received = [await next_event(feed), await next_event(feed)]
        assert received == [written.event, task]
        assert before not in received
        concurrent = await asyncio.gather(
            *(mall_store.append_event(ENTITY, "ping", {"n": i}, at(3)) for i in range(10))
        )
        got = [await next_event(feed) for _ in range(10)]
        assert [e.seq for e in got] == sorted(e.seq for e in concurrent)
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


# -- orchestrators ----------------------------------------------------------------------------


async def test_enrollment_token_activates_and_pins(mall_store: Store) -> None:
    await token(mall_store, "h1")
    gw = await mall_store.activate(registration(), at(1), token_hash="h1")
    assert gw.status is OrchestratorStatus.ACTIVE
    assert gw.public_key_pem == KEY_A
    assert_utc(gw.created_at)
    assert await mall_store.get_orchestrator(ENTITY, "gw-1") == gw
    [record] = await mall_store.list_enrollment_tokens(ENTITY)
    assert record.used_at == at(1)
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(key=KEY_B), at(2), token_hash="h1")
    assert info.value.reason == "key_mismatch"
    # Re-registration with the pinned key: no token needed, details updated.
    again = await mall_store.activate(registration(version="0.2.0"), at(3), token_hash=None)
    assert (again.version, again.status, again.created_at) == ("0.2.0", gw.status, gw.created_at)
    # A token sent with the pinned key is ignored and not consumed.
    await token(mall_store, "h2")
    await mall_store.activate(registration(), at(4), token_hash="h2")
    used = {t.token_hash: t.used_at for t in await mall_store.list_enrollment_tokens()}
    assert used["h2"] is None


async def test_enrollment_token_is_single_use_under_concurrency(mall_store: Store) -> None:
    await token(mall_store, "h1")
    results = await asyncio.gather(
        mall_store.activate(registration(key=KEY_A), at(1), token_hash="h1"),
        mall_store.activate(registration(key=KEY_B), at(1), token_hash="h1"),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], ConflictError)
    assert losers[0].reason in ("key_mismatch", "used")
    pinned = await mall_store.get_orchestrator(ENTITY, "gw-1")
    assert pinned.public_key_pem == winners[0].public_key_pem


@pytest.mark.parametrize(
    ("hash_", "orchestrator_id", "now", "reason"),
    [
        ("h-none", "gw-1", at(1), "unknown"),
        ("h1", "gw-2", at(1), "wrong_binding"),
        ("h1", "gw-1", at(600), "expired"),
    ],
)
async def test_bad_tokens_record_nothing(
    mall_store: Store, hash_: str, orchestrator_id: str, now: datetime, reason: str
) -> None:
    await token(mall_store, "h1", ttl=600)
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(orchestrator_id), now, token_hash=hash_)
    assert (info.value.kind, info.value.reason) == ("enrollment_token", reason)
    with pytest.raises(NotFoundError):
        await mall_store.get_orchestrator(ENTITY, orchestrator_id)
    assert [t.used_at for t in await mall_store.list_enrollment_tokens(ENTITY)] == [None]


async def test_used_token_and_other_entity(mall_store: Store, mall: MallData) -> None:
    await mall_store.create_enrollment_token(
        EnrollmentToken("h-used", ENTITY, "gw-1", T0, at(600), "admin:test", used_at=at(0))
    )
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(), at(1), token_hash="h-used")
    assert (info.value.kind, info.value.reason) == ("enrollment_token", "used")
    await mall_store.create_entity({**mall.entity.document(), "id": "mall-b"}, T0)
    await mall_store.create_enrollment_token(
        EnrollmentToken("h-b", "mall-b", "gw-1", T0, at(600), "admin:test")
    )
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(), at(1), token_hash="h-b")
    assert info.value.reason == "wrong_binding"
    assert len(await mall_store.list_enrollment_tokens("mall-b")) == 1
    assert len(await mall_store.list_enrollment_tokens()) == 2
    with pytest.raises(NotFoundError):
        await mall_store.activate(registration(entity_id="mall-none"), at(2), token_hash="h-b")
    with pytest.raises(NotFoundError):
        await mall_store.create_enrollment_token(
            EnrollmentToken("h3", "mall-none", "gw-1", T0, at(600), "admin:test")
        )
    with pytest.raises(ConflictError):
        await token(mall_store, "h-b")


async def test_preregistered_key(mall_store: Store) -> None:
    assert await mall_store.get_preregistered_key(ENTITY, "gw-1") is None
    key = PreregisteredKey(ENTITY, "gw-1", KEY_A, "AAAA", T0, "admin:test")
    await mall_store.preregister_key(key)
    assert await mall_store.get_preregistered_key(ENTITY, "gw-1") == key
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(key=KEY_B), at(1), token_hash=None)
    assert info.value.reason == "key_mismatch"
    gw = await mall_store.activate(registration(), at(2), token_hash=None)
    assert (gw.status, gw.public_key_pem) == (OrchestratorStatus.ACTIVE, KEY_A)
    with pytest.raises(ConflictError):
        await mall_store.preregister_key(key)  # already pinned


async def test_pending_then_approved(mall_store: Store) -> None:
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(), at(1), token_hash=None)
    assert info.value.reason == "not_enrolled"
    pending = await mall_store.save_pending(registration(), at(1))
    assert pending.status is OrchestratorStatus.PENDING
    assert pending.public_key_pem == KEY_A
    updated = await mall_store.save_pending(registration(version="0.1.1"), at(2))
    assert (updated.version, updated.created_at) == ("0.1.1", pending.created_at)
    with pytest.raises(ConflictError) as info:
        await mall_store.save_pending(registration(key=KEY_B), at(3))
    assert info.value.reason == "key_mismatch"
    approved = await mall_store.approve(ENTITY, "gw-1", at(4))
    assert (approved.status, approved.public_key_pem) == (OrchestratorStatus.ACTIVE, KEY_A)
    assert (await mall_store.activate(registration(), at(5), token_hash=None)).status == "active"
    with pytest.raises(ConflictError) as info:
        await mall_store.activate(registration(key=KEY_B), at(6), token_hash=None)
    assert info.value.reason == "key_mismatch"
    with pytest.raises(ConflictError):
        await mall_store.save_pending(registration(), at(7))  # active: left alone
    with pytest.raises(NotFoundError):
        await mall_store.approve(ENTITY, "gw-none", at(8))
    with pytest.raises(NotFoundError):
        await mall_store.save_pending(registration(entity_id="mall-none"), at(8))


async def test_token_replaces_pending_record(mall_store: Store) -> None:
    await mall_store.save_pending(registration(key=KEY_B), at(1))
    await token(mall_store, "h1")
    gw = await mall_store.activate(registration(key=KEY_A), at(2), token_hash="h1")
    assert (gw.status, gw.public_key_pem) == (OrchestratorStatus.ACTIVE, KEY_A)


async def test_disable_and_enable(mall_store: Store) -> None:
    await token(mall_store, "h1")
    await mall_store.activate(registration(), at(1), token_hash="h1")
    disabled = await mall_store.disable(ENTITY, "gw-1", at(2))
    assert disabled.status is OrchestratorStatus.DISABLED
    assert disabled.tokens_valid_after == at(2)
    for reg in (registration(), registration(key=KEY_B)):
        with pytest.raises(ConflictError) as info:
            await mall_store.activate(reg, at(3), token_hash=None)
        assert info.value.reason == "disabled"
    with pytest.raises(ConflictError) as info:
        await mall_store.approve(ENTITY, "gw-1", at(3))
    assert info.value.reason == "disabled"
    enabled = await mall_store.enable(ENTITY, "gw-1", at(4))
    assert (enabled.status, enabled.tokens_valid_after) == (OrchestratorStatus.ACTIVE, at(2))
    # A pending gateway disabled and enabled again is still pending: approval is not skipped.
    await mall_store.save_pending(registration("gw-2"), at(5))
    await mall_store.disable(ENTITY, "gw-2", at(6))
    assert (await mall_store.enable(ENTITY, "gw-2", at(7))).status is OrchestratorStatus.PENDING
    assert [g.orchestrator_id for g in await mall_store.list_orchestrators(ENTITY)] == [
        "gw-1",
        "gw-2",
    ]
    assert len(await mall_store.list_orchestrators()) == 2
    assert await mall_store.list_orchestrators("mall-none") == []
    with pytest.raises(NotFoundError):
        await mall_store.disable(ENTITY, "gw-none", at(8))


async def test_nonces(store: Store) -> None:
    assert await store.remember_nonce("n1", at(300), at(0))
    assert not await store.remember_nonce("n1", at(300), at(1))
    assert await store.remember_nonce("n2", at(300), at(1))
    assert not await store.remember_nonce("n1", at(600), at(299))
    assert await store.remember_nonce("n1", at(900), at(301))  # expired: known no more
    assert not await store.remember_nonce("n1", at(1200), at(302))


async def test_signing_keys_and_admin_tokens(store: Store) -> None:
    k1 = SigningKey("k1", "PEM1", at(0))
    k2 = SigningKey("k2", "PEM2", at(10))
    await store.add_signing_key(k2)
    await store.add_signing_key(k1)
    assert await store.list_signing_keys() == [k1, k2]
    with pytest.raises(ConflictError):
        await store.add_signing_key(k1)
    await store.retire_signing_key("k1", at(20), at(3620))
    retired = (await store.list_signing_keys())[0]
    assert (retired.retired_at, retired.expires_at) == (at(20), at(3620))
    with pytest.raises(NotFoundError):
        await store.retire_signing_key("k-none", at(20), at(30))
    admin = AdminToken("hash-a", "ops", at(0))
    await store.create_admin_token(admin)
    assert await store.get_admin_token("hash-a") == admin
    assert await store.get_admin_token("hash-none") is None
    with pytest.raises(ConflictError):
        await store.create_admin_token(admin)


async def test_heartbeats(mall_store: Store) -> None:
    await token(mall_store, "h1")
    await mall_store.activate(registration(), at(0), token_hash="h1")
    for i in (1, 2, 3):
        await mall_store.record_heartbeat(Heartbeat(ENTITY, "gw-1", at(60 * i), {"n": i}))
    await mall_store.record_heartbeat(Heartbeat(ENTITY, "gw-1", at(30), {"n": 0}))  # late
    beats = await mall_store.list_heartbeats(ENTITY, "gw-1")
    assert [b.body["n"] for b in beats] == [3, 2, 1, 0]
    assert [b.body["n"] for b in await mall_store.list_heartbeats(ENTITY, "gw-1", 2)] == [3, 2]
    assert_utc(beats[0].received_at)
    gw = await mall_store.get_orchestrator(ENTITY, "gw-1")
    assert gw.last_heartbeat_at == at(180)
    with pytest.raises(NotFoundError):
        await mall_store.record_heartbeat(Heartbeat(ENTITY, "gw-none", at(1), {}))


async def test_commands(mall_store: Store) -> None:
    await token(mall_store, "h1")
    await mall_store.activate(registration(), at(0), token_hash="h1")
    for i, ttl in ((1, 86_400), (2, 100), (3, 86_400)):
        await mall_store.enqueue_command(
            Command(ENTITY, "gw-1", f"cmd-{i}", "resync", {"i": i}, at(i), at(i + ttl))
        )
    with pytest.raises(ConflictError):
        await mall_store.enqueue_command(
            Command(ENTITY, "gw-1", "cmd-1", "resync", {}, at(5), at(50))
        )
    pending = await mall_store.pending_commands(ENTITY, "gw-1", at(10))
    assert [(c.command_id, c.params) for c in pending] == [
        ("cmd-1", {"i": 1}),
        ("cmd-2", {"i": 2}),
        ("cmd-3", {"i": 3}),
    ]
    await mall_store.ack_commands(ENTITY, "gw-1", ["cmd-1", "cmd-unknown"], at(11))
    later = await mall_store.pending_commands(ENTITY, "gw-1", at(200))  # cmd-2 expired
    assert [c.command_id for c in later] == ["cmd-3"]
    assert await mall_store.pending_commands(ENTITY, "gw-2", at(10)) == []
    with pytest.raises(NotFoundError):
        await mall_store.enqueue_command(
            Command(ENTITY, "gw-none", "c", "resync", {}, at(1), at(50))
        )


async def test_audit(store: Store) -> None:
    records = [
        AuditRecord(at(1), "admin:ops", "entity.create", "ok", ENTITY, {"name": "x"}),
        AuditRecord(at(2), "anonymous:127.0.0.1", "register", "AUTH_KEY_MISMATCH"),
        AuditRecord(at(3), "orchestrator:mall-riverside/gw-1", "sync.full", "ok", ENTITY),
    ]
    for record in records:
        await store.audit(record)
    assert await store.list_audit() == records[::-1]
    assert await store.list_audit(entity_id=ENTITY) == [records[2], records[0]]
    assert await store.list_audit(limit=1) == [records[2]]
    assert_utc((await store.list_audit())[0].at)
