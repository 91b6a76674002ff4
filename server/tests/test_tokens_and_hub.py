"""TokenService key rotation and EventHub back-pressure, against a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from navign_server.auth.tokens import TokenService
from navign_server.errors import ApiError
from navign_server.events.hub import EventHub, LiveEvent, Subscription, SubscriptionClosedError
from navign_server.storage.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    backend = SqliteStore(tmp_path / "navign.db")
    await backend.open()
    await backend.create_entity({"id": "mall-1", "type": "mall", "name": "Mall"}, T0)
    yield backend
    await backend.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_rotation_keeps_old_tokens_valid_until_they_expire(store: SqliteStore) -> None:
    clock = Clock()
    tokens = TokenService(
        store, issuer="navign-server", ttl_seconds=3600, rotation=timedelta(days=30), clock=clock
    )
    await tokens.start()
    old_token, _ = tokens.issue("mall-1", "gw-1")
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    clock.now += timedelta(days=31)  # due: a new key takes over
    await tokens.rotate_if_due()
    new_token, _ = tokens.issue("mall-1", "gw-1")
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != old_kid
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {old_kid, new_kid}

    # A second instance started later verifies both (the keys live in the store).
    other = TokenService(store, issuer="navign-server", ttl_seconds=3600, clock=clock)
    await other.start()
    assert (await other.verify(new_token)).subject == "gw-1"
    assert {k["kid"] for k in other.jwks()["keys"]} == {old_kid, new_kid}

    # Past the old key's grace (token lifetime + 5 min) it is gone from the key set.
    clock.now += timedelta(seconds=3600 + 301)
    again = TokenService(store, issuer="navign-server", ttl_seconds=3600, clock=clock)
    await again.start()
    assert {k["kid"] for k in again.jwks()["keys"]} == {new_kid}
    with pytest.raises(ApiError) as refused:
        await again.verify(old_token)
    assert refused.value.code == "AUTH_INVALID_TOKEN"


async def test_rotation_is_not_repeated_before_it_is_due(store: SqliteStore) -> None:
    tokens = TokenService(store, issuer="navign-server", ttl_seconds=3600)
    await tokens.start()
    await tokens.rotate_if_due()
    await TokenService(store, issuer="navign-server", ttl_seconds=3600).start()
    assert len(await store.list_signing_keys()) == 1


async def take(subscription: Subscription, wait: float = 5.0) -> list[LiveEvent] | None:
    """The subscription's next batch, or None when nothing arrives within ``wait`` seconds."""
    try:
        return await asyncio.wait_for(subscription.take(), wait)
    except TimeoutError:
        return None


async def test_a_slow_subscriber_is_dropped_not_buffered(store: SqliteStore) -> None:
    hub = EventHub(store, queue_size=5)
    await hub.start()
    try:
        slow = hub.subscribe("mall-1")
        fast = hub.subscribe("mall-1")
        other = hub.subscribe("mall-2")
        for i in range(8):
            await store.append_event("mall-1", "config_update", {"n": i}, T0)
            batch = await take(fast)  # the fast one keeps up
            assert batch is not None
            assert [event.type for event in batch] == ["config_update"]
            assert batch[0].frame.endswith(b'data: {"n":%d}\r\n\r\n' % i)
        with pytest.raises(SubscriptionClosedError) as closed:
            await take(slow)  # 8 events for a queue of 5: dropped, nothing delivered
        assert closed.value.reason == "subscriber fell behind"
        assert slow.pending == 0  # its buffered events were released
        assert await take(other, 0.05) is None  # another entity's events never arrive
        assert hub.subscriber_count == 3
        slow.close()
        assert hub.subscriber_count == 2
    finally:
        await hub.close()
    with pytest.raises(SubscriptionClosedError):
        await take(fast, 1)


async def test_a_reader_gets_everything_queued_in_one_batch(store: SqliteStore) -> None:
    hub = EventHub(store)
    await hub.start()
    try:
        subscription = hub.subscribe("mall-1")
        for i in range(3):
            await store.append_event("mall-1", "config_update", {"n": i}, T0)
        await asyncio.sleep(0.05)
        batch = await take(subscription)
        assert batch is not None
        assert [event.seq for event in batch] == [1, 2, 3]
    finally:
        await hub.close()


async def test_hub_close_ends_waiting_subscribers(store: SqliteStore) -> None:
    hub = EventHub(store)
    await hub.start()
    subscription = hub.subscribe("mall-1")
    waiter = asyncio.create_task(subscription.take())
    await asyncio.sleep(0.05)
    await hub.close()
    with pytest.raises(SubscriptionClosedError) as closed:
        await asyncio.wait_for(waiter, 5)
    assert closed.value.reason == "server shutting down"
    with pytest.raises(SubscriptionClosedError):
        hub.subscribe("mall-1")


async def test_begin_shutdown_from_another_thread_ends_subscribers(store: SqliteStore) -> None:
    hub = EventHub(store)
    await hub.start()
    try:
        subscription = hub.subscribe("mall-1")
        waiter = asyncio.create_task(subscription.take())
        await asyncio.sleep(0.02)
        await asyncio.to_thread(hub.begin_shutdown)
        with pytest.raises(SubscriptionClosedError) as closed:
            await asyncio.wait_for(waiter, 5)
        assert closed.value.reason == "server shutting down"
        with pytest.raises(SubscriptionClosedError):
            hub.subscribe("mall-1")
    finally:
        await hub.close()


async def test_subscriptions_end_when_their_token_expires(store: SqliteStore) -> None:
    clock = Clock()
    hub = EventHub(store, clock=clock, sweep_seconds=0.05)
    await hub.start()
    try:
        expiring = hub.subscribe("mall-1", deadline=clock.now + timedelta(seconds=60))
        lasting = hub.subscribe("mall-1", deadline=clock.now + timedelta(hours=2))
        clock.now += timedelta(seconds=61)
        with pytest.raises(SubscriptionClosedError) as closed:
            await take(expiring)
        assert closed.value.reason == "token expired"
        assert await take(lasting, 0.2) is None  # still open
    finally:
        await hub.close()


async def test_keepalive_pings_reach_every_subscriber_outside_the_sequence(
    store: SqliteStore,
) -> None:
    clock = Clock()
    hub = EventHub(store, clock=clock, ping_seconds=0.05)
    await hub.start()
    try:
        first, second = hub.subscribe("mall-1"), hub.subscribe("mall-2")
        for subscription in (first, second):
            batch = await take(subscription)
            assert batch is not None
            assert batch[0].seq is None
            assert batch[0].frame.startswith(b'event: ping\r\ndata: {"server_time":')
    finally:
        await hub.close()


async def test_a_stream_stalled_in_send_is_cancelled(store: SqliteStore) -> None:
    hub = EventHub(store, send_timeout=30.0, sweep_seconds=3600)
    await hub.start()
    try:
        blocked = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            subscription = hub.subscribe("mall-1")
            subscription.send_started = 100.0  # as if its send began at loop time 100
            try:
                await blocked  # a send that never returns
            finally:
                subscription.close()

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.02)
        hub.sweep(120.0)  # 20 s: not yet
        assert not task.done()
        hub.sweep(131.0)  # 31 s: cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hub.subscriber_count == 0
    finally:
        await hub.close()


def test_frames_are_encoded_once_as_the_protocol_says() -> None:
    from navign_server.events.hub import encode_frame
    from navign_server.storage.base import StoredEvent

    frame = encode_frame(StoredEvent("mall-1", 42, "data_update", {"seq": 42, "é": [1]}, T0))
    assert frame == 'id: 42\r\nevent: data_update\r\ndata: {"seq":42,"é":[1]}\r\n\r\n'.encode()
