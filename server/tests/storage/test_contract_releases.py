"""The storage contract for firmware releases and assignments: every ``Store`` backend passes
these tests (fixtures in conftest). Only the ``Store`` interface is used, so they run unchanged on
MongoDB when ``NAVIGN_TEST_MONGODB_URL`` is set."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navign_server.storage.base import (
    FIRMWARE_UPDATE_EVENT,
    ConflictError,
    NotFoundError,
    Release,
    ReleaseAssignment,
    ReleaseStatus,
    Store,
    StoredEvent,
)

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
ENTITY = "mall-riverside"
WATCH_TIMEOUT = 5.0
SHA_A = "a" * 64
SHA_B = "b" * 64


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def release(version: str = "1.0.0", **changes: Any) -> Release:
    values: dict[str, Any] = {
        "release_id": f"fw-esp32-{version}-{'0' * 12}",
        "name": "navign-beacon-fw",
        "version": version,
        "target": "esp32",
        "kind": "image",
        "secure_version": 1,
        "min_previous_version": None,
        "manifest_sha256": "c" * 64,
        "envelope": b'{"payload":"e30=","payloadType":"x","signatures":[]}',
        "artifact_size": 1024,
        "device_type": "beacon",
        "channel": "stable",
        "changelog": ("first", "second"),
        "compatible_hardware": ("esp32-devkitc",),
        "status": ReleaseStatus.PENDING_UPLOAD,
        "created_at": at(0),
        "created_by": "test-admin",
    }
    values.update(changes)
    return Release(**values)


def assignment(release_id: str, assignment_id: str = "fwa-1") -> ReleaseAssignment:
    return ReleaseAssignment(
        entity_id=ENTITY,
        assignment_id=assignment_id,
        release_id=release_id,
        policy={"batch_size": 10, "targets": {"chips": ["esp32"]}},
        priority="high",
        created_at=at(5),
        created_by="test-admin",
    )


async def available(store: Store, version: str = "1.0.0", **changes: Any) -> Release:
    record = release(version, **changes)
    await store.create_release(record)
    return await store.mark_release_uploaded(record.release_id, SHA_A, at(1))


async def test_create_get_and_list_releases(store: Store) -> None:
    first = release("1.0.0")
    await store.create_release(first)
    assert await store.get_release(first.release_id) == first
    second = release("1.1.0", channel="beta", created_at=at(1))
    third = release("1.0.0", target="esp32c3", release_id="fw-esp32c3-1.0.0-x", created_at=at(2))
    await store.create_release(second)
    await store.create_release(third)
    assert [r.release_id for r in await store.list_releases()] == [
        first.release_id,
        second.release_id,
        third.release_id,
    ]
    assert await store.list_releases(channel="beta") == [second]
    assert await store.list_releases(target="esp32c3") == [third]
    assert await store.list_releases(target="esp32", channel="stable") == [first]
    assert await store.list_releases(device_type="tag") == []
    assert await store.list_releases(status=ReleaseStatus.AVAILABLE) == []
    with pytest.raises(NotFoundError) as missing:
        await store.get_release("fw-none")
    assert missing.value.kind == "release"


async def test_release_ids_and_name_version_target_are_unique(store: Store) -> None:
    first = release("1.0.0")
    await store.create_release(first)
    with pytest.raises(ConflictError) as same_id:
        await store.create_release(dataclasses.replace(first, version="9.9.9"))
    assert same_id.value.reason == "exists"
    with pytest.raises(ConflictError) as duplicate:
        await store.create_release(release("1.0.0", release_id="fw-other", channel="beta"))
    assert duplicate.value.reason == "duplicate"
    assert await store.list_releases() == [first]


async def test_upload_makes_a_release_available_once(store: Store) -> None:
    record = release()
    await store.create_release(record)
    done = await store.mark_release_uploaded(record.release_id, SHA_A, at(1))
    assert done.status is ReleaseStatus.AVAILABLE
    assert done.artifact_sha256 == SHA_A
    assert done.uploaded_at == at(1)
    assert dataclasses.replace(
        done, status=record.status, artifact_sha256=None, uploaded_at=None
    ) == (record)
    with pytest.raises(ConflictError) as again:
        await store.mark_release_uploaded(record.release_id, SHA_B, at(2))
    assert again.value.reason == "available"
    assert (await store.get_release(record.release_id)).artifact_sha256 == SHA_A
    with pytest.raises(NotFoundError):
        await store.mark_release_uploaded("fw-none", SHA_A, at(1))


async def test_concurrent_uploads_one_wins(store: Store) -> None:
    record = release()
    await store.create_release(record)
    outcomes = await asyncio.gather(
        *(store.mark_release_uploaded(record.release_id, SHA_A, at(i)) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Release) for o in outcomes) == 1
    assert sum(isinstance(o, ConflictError) for o in outcomes) == 4


async def test_withdraw(store: Store) -> None:
    uploaded = await available(store)
    withdrawn = await store.withdraw_release(uploaded.release_id, at(3))
    assert withdrawn.status is ReleaseStatus.WITHDRAWN
    assert withdrawn.withdrawn_at == at(3)
    assert withdrawn.artifact_sha256 == SHA_A  # still downloadable
    assert await store.withdraw_release(uploaded.release_id, at(9)) == withdrawn
    assert await store.list_releases(status=ReleaseStatus.AVAILABLE) == []
    assert await store.list_releases(status=ReleaseStatus.WITHDRAWN) == [withdrawn]
    pending = release("2.0.0")
    await store.create_release(pending)
    await store.withdraw_release(pending.release_id, at(4))
    with pytest.raises(ConflictError):
        await store.mark_release_uploaded(pending.release_id, SHA_A, at(5))
    with pytest.raises(NotFoundError):
        await store.withdraw_release("fw-none", at(1))


async def test_assignment_and_its_event_share_one_seq(mall_store: Store) -> None:
    uploaded = await available(mall_store)
    head = (await mall_store.entity_state(ENTITY)).head
    feed = mall_store.watch_events()
    try:
        data = {"firmware_id": uploaded.release_id, "version": "1.0.0"}
        event = await mall_store.assign_release(assignment(uploaded.release_id), data, at(5))
        received: StoredEvent = await asyncio.wait_for(anext(feed), WATCH_TIMEOUT)
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
    assert event == received
    assert (event.entity_id, event.seq, event.type, event.data) == (
        ENTITY,
        head + 1,
        FIRMWARE_UPDATE_EVENT,
        data,
    )
    assert event.created_at == at(5)
    assert (await mall_store.entity_state(ENTITY)).head == head + 1
    assert await mall_store.events_since(ENTITY, head, 10) == [event]
    assert await mall_store.list_assignments(ENTITY) == [
        dataclasses.replace(assignment(uploaded.release_id), seq=head + 1)
    ]
    later = await mall_store.assign_release(assignment(uploaded.release_id, "fwa-2"), data, at(6))
    assert later.seq == head + 2
    assert [a.assignment_id for a in await mall_store.list_assignments(ENTITY)] == [
        "fwa-1",
        "fwa-2",
    ]


async def test_refused_assignments_write_nothing(mall_store: Store) -> None:
    uploaded = await available(mall_store)
    pending = release("2.0.0")
    await mall_store.create_release(pending)
    await mall_store.assign_release(assignment(uploaded.release_id), {}, at(5))
    head = (await mall_store.entity_state(ENTITY)).head

    with pytest.raises(ConflictError) as taken:
        await mall_store.assign_release(assignment(uploaded.release_id), {}, at(6))
    assert taken.value.reason == "exists"
    with pytest.raises(ConflictError) as not_ready:
        await mall_store.assign_release(assignment(pending.release_id, "fwa-2"), {}, at(6))
    assert not_ready.value.reason == "pending_upload"
    await mall_store.withdraw_release(uploaded.release_id, at(7))
    with pytest.raises(ConflictError) as gone:
        await mall_store.assign_release(assignment(uploaded.release_id, "fwa-3"), {}, at(8))
    assert gone.value.reason == "withdrawn"
    with pytest.raises(NotFoundError) as no_release:
        await mall_store.assign_release(assignment("fw-none", "fwa-4"), {}, at(8))
    assert no_release.value.kind == "release"
    other = dataclasses.replace(assignment(uploaded.release_id, "fwa-5"), entity_id="mall-none")
    with pytest.raises(NotFoundError) as no_entity:
        await mall_store.assign_release(other, {}, at(8))
    assert no_entity.value.kind == "entity"

    assert (await mall_store.entity_state(ENTITY)).head == head
    assert len(await mall_store.list_assignments(ENTITY)) == 1
    with pytest.raises(NotFoundError):
        await mall_store.list_assignments("mall-none")
