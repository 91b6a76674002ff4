"""What the MongoDB backend does without a MongoDB server: URL handling, failing fast and
clearly when the server cannot be reached, and the event watches' filtering and bounds.

The backend's behaviour against a server is the contract suite (test_contract.py), which runs
on MongoDB when NAVIGN_TEST_MONGODB_URL names a replica set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from bson import decode, encode
from bson.codec_options import CodecOptions
from bson.timestamp import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.uri_parser import parse_uri

from navign_server.storage import mongo_db
from navign_server.storage.base import (
    StorageError,
    Store,
    StoredEvent,
    WatchOverflowError,
)
from navign_server.storage.mongo import MongoStore
from navign_server.storage.mongo_db import (
    MongoConnectionError,
    client_options,
    database_name,
    redacted,
    stamp,
    time_of,
)
from navign_server.storage.mongo_watch import (
    EventFeed,
    EventFeedError,
    EventWatch,
    event_document,
    stored_event,
)
from navign_server.storage.sqlite_db import StoreClosedError

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
#: Port 1 on loopback: nothing listens there, so connections are refused at once.
UNREACHABLE = "mongodb://navign:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300"


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mongodb://db.example", "navign"),
        ("mongodb://db.example/", "navign"),
        ("mongodb://db.example/?replicaSet=rs0", "navign"),
        ("mongodb://db.example/malls", "malls"),
        ("mongodb://u:p%40ss@a.example:27017,b.example:27018/malls?replicaSet=rs0", "malls"),
        ("mongodb://db.example/malls.ignored?w=majority", "malls"),
        ("mongodb://db.example/my%2Ddb", "my-db"),
        ("mongodb://%2Ftmp%2Fmongodb-27017.sock/local-malls", "local-malls"),
    ],
)
def test_database_name_from_the_url_as_pymongo_reads_it(url: str, expected: str) -> None:
    assert database_name(url) == expected
    assert MongoStore(url).database_name == expected  # constructing does no I/O
    assert (parse_uri(url)["database"] or "navign") == expected


def test_database_name_of_srv_urls_and_explicit_names() -> None:
    # No DNS lookup is made to read the name.
    srv = "mongodb+srv://user:pw@cluster0.example.invalid/prod?retryWrites=true"
    assert database_name(srv) == "prod"
    assert database_name("mongodb+srv://cluster0.example.invalid") == "navign"
    # An explicit name wins over the URL's: each contract test gets a database of its own.
    assert database_name("mongodb://db.example/malls", "navign_test_1") == "navign_test_1"
    assert MongoStore("mongodb://db.example", database="x").database_name == "x"


@pytest.mark.parametrize("url", ["sqlite:///data/navign.db", "postgres://h/db", "db.example"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="mongodb://"):
        MongoStore(url)


def test_redacted_url_has_no_credentials_or_options() -> None:
    url = "mongodb://admin:hunter2@a.example:27017,b.example/malls?replicaSet=rs0&authSource=x"
    assert redacted(url) == "mongodb://a.example:27017,b.example"
    assert redacted("mongodb+srv://c.example.invalid/p") == "mongodb+srv://c.example.invalid"


def test_client_options_keep_the_urls_own_timeout() -> None:
    default = client_options("mongodb://db.example/malls")
    assert default["serverSelectionTimeoutMS"] == mongo_db.SERVER_SELECTION_TIMEOUT_MS
    assert default["tz_aware"] is True
    # PyMongo lets keywords override the URL: none is given for what the URL sets.
    for query in ("serverSelectionTimeoutMS=300", "replicaSet=rs0&serverselectiontimeoutms=300"):
        assert "serverSelectionTimeoutMS" not in client_options(f"mongodb://db.example/?{query}")


# -- opening and closing ----------------------------------------------------------------------


async def test_open_against_an_unreachable_server_fails_fast_and_clearly() -> None:
    store: Store = MongoStore(UNREACHABLE, database="navign_unit")
    started = time.monotonic()
    with pytest.raises(MongoConnectionError) as info:
        await asyncio.wait_for(store.open(), 20)
    assert time.monotonic() - started < 10
    assert isinstance(info.value, StorageError)
    assert info.value.address == "mongodb://127.0.0.1:1"
    assert "mongodb://127.0.0.1:1" in str(info.value)
    assert "secret" not in str(info.value)
    # Nothing is left half-open: every use says the store is closed, and it can be retried.
    with pytest.raises(StoreClosedError):
        await store.get_entity("mall-riverside")
    with pytest.raises(StoreClosedError):
        store.watch_events()
    with pytest.raises(StoreClosedError):
        await store.append_event("mall-riverside", "ping", {}, T0)
    with pytest.raises(MongoConnectionError):
        await asyncio.wait_for(store.open(), 20)
    await store.close()
    await store.close()


async def test_a_store_never_opened_is_closed() -> None:
    store = MongoStore("mongodb://127.0.0.1:1/")
    with pytest.raises(StoreClosedError):
        await store.list_entities()
    with pytest.raises(StoreClosedError):
        await store.remember_nonce("n", T0, T0)
    await store.close()


# -- stored values ----------------------------------------------------------------------------


def test_times_keep_microseconds_and_a_bson_date() -> None:
    moment = datetime(2026, 11, 27, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    stored = stamp("created", moment)
    assert stored["created_us"] % 1_000_000 == 123456
    assert time_of(stored, "created") == moment
    assert time_of(stored, "created").utcoffset() == timedelta(0)
    # Through BSON: the date keeps milliseconds, the integer every microsecond.
    stored_bson: dict[str, Any] = decode(encode(stored), CodecOptions(tz_aware=True, tzinfo=UTC))
    assert stored_bson["created"] == moment.replace(microsecond=123000)
    assert time_of(stored_bson, "created") == moment
    assert stamp("revoked", None) == {"revoked_us": None, "revoked": None}
    with pytest.raises(ValueError, match="naive"):
        stamp("created", datetime(2026, 11, 27, 10, 0, 0))


def test_events_round_trip_through_their_stored_form() -> None:
    event = StoredEvent("mall-a", 7, "task_create", {"task_id": "t", "n": 1.5}, T0)
    doc = event_document(event)
    assert doc["data"] == '{"n":1.5,"task_id":"t"}'  # canonical JSON
    assert stored_event(doc) == event


# -- event watches ----------------------------------------------------------------------------


@pytest.fixture
async def feed() -> AsyncIterator[EventFeed]:
    """A feed whose change stream is never opened: the tests hand it changes as the stream's
    reader does. The client never connects."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:1/")
    collection: AsyncCollection[dict[str, Any]] = client["navign_unit"]["events"]
    events = EventFeed(collection, maxsize=3)
    try:
        yield events
    finally:
        await events.close()
        await client.close()


def change(seq: int, at: Timestamp, entity_id: str = "mall-a") -> dict[str, Any]:
    event = StoredEvent(entity_id, seq, "ping", {"n": seq}, T0 + timedelta(seconds=seq))
    return {"operationType": "insert", "clusterTime": at, "fullDocument": event_document(event)}


async def drain(watch: EventWatch) -> list[int]:
    """The seqs buffered in ``watch`` (it waits a moment for one more)."""
    seqs = []
    for _ in range(10):
        try:
            seqs.append((await asyncio.wait_for(anext(watch), 0.05)).seq)
        except TimeoutError:
            break
    return seqs


async def test_a_watch_drops_what_was_committed_before_it(feed: EventFeed) -> None:
    everything = feed.watch(None)
    later = feed.watch(Timestamp(1_800_000_000, 5))
    feed.publish(change(1, Timestamp(1_800_000_000, 4)))
    feed.publish(change(2, Timestamp(1_800_000_000, 5)))  # the operation time seen at the call
    feed.publish(change(3, Timestamp(1_800_000_000, 6)))
    assert await drain(everything) == [1, 2, 3]
    assert await drain(later) == [3]


async def test_a_slow_watch_overflows_and_ends(feed: EventFeed) -> None:
    slow = feed.watch(None)
    for seq in range(1, 5):  # one more than the buffer holds
        feed.publish(change(seq, Timestamp(1_800_000_000, seq)))
    with pytest.raises(WatchOverflowError) as info:
        await anext(slow)
    assert info.value.limit == 3
    with pytest.raises(StopAsyncIteration):
        await anext(slow)
    assert len(feed) == 0  # unsubscribed: nothing more is buffered for it


async def test_aclose_and_store_close_end_iteration(feed: EventFeed) -> None:
    closed = feed.watch(None)
    kept = feed.watch(None)
    await closed.aclose()
    feed.publish(change(1, Timestamp(1_800_000_000, 1)))
    with pytest.raises(StopAsyncIteration):
        await anext(closed)
    assert (await anext(kept)).seq == 1
    waiting = asyncio.ensure_future(anext(kept))
    await asyncio.sleep(0)
    await feed.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1)


async def test_a_lost_stream_fails_every_watch(feed: EventFeed) -> None:
    before = feed.watch(None)
    feed.fail_all("history lost")
    with pytest.raises(EventFeedError, match="history lost"):
        await anext(before)
    # Until a new stream is open, new watches end at once: they could miss events.
    during = feed.watch(None)
    with pytest.raises(EventFeedError):
        await anext(during)
    assert len(feed) == 0


async def test_malformed_changes_are_skipped(feed: EventFeed) -> None:
    watch = feed.watch(None)
    feed.publish({"operationType": "insert", "clusterTime": Timestamp(1, 1), "fullDocument": {}})
    feed.publish(change(1, Timestamp(1, 2)))
    assert await drain(watch) == [1]
