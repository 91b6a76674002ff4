"""The MongoDB database under :class:`~navign_server.storage.mongo.MongoStore`: the client, the
collections and their indexes, transactions, and how values are stored.

It needs a replica set or a sharded cluster: every write that spans documents is one
multi-document transaction (snapshot read concern, majority write concern), run through
``AsyncClientSession.with_transaction``, which retries the whole callback on a
``TransientTransactionError`` (a write conflict with another transaction, a primary stepping
down) and the commit on ``UnknownTransactionCommitResult``. A callback may therefore run more
than once: callbacks only read and write through their session; whatever must happen once (such
as handing events to watchers) happens after the commit, outside them.

Stored values:

* a time is kept twice: ``<name>_us``, integer microseconds since the Unix epoch (UTC), which is
  what the code reads, compares and sorts, so every comparison is exactly the SQLite backend's;
  and ``<name>``, a BSON date (milliseconds) for people reading the database and for TTL
  indexes;
* synced documents, entity documents and event data are canonical JSON text (RFC 8785), so an
  identical write is detected by comparing bytes; heartbeat bodies, command parameters and audit
  details are compact JSON text. Text, not BSON sub-documents: JSON round-trips exactly (no
  reserved ``$`` or ``.`` keys, integers and floats stay what they were).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import unquote_plus

from bson.timestamp import Timestamp
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.uri_parser import split_options
from pymongo.write_concern import WriteConcern

from navign_server.storage.base import StorageError
from navign_server.storage.mongo_watch import WATCH_QUEUE_SIZE, EventFeed, EventWatch
from navign_server.storage.sqlite_db import StoreClosedError
from navign_server.storage.sqlite_schema import from_us, to_us

log = logging.getLogger(__name__)

Doc = dict[str, Any]
T = TypeVar("T")

DEFAULT_DATABASE: Final = "navign"
#: How long ``open()`` (and any operation) waits to find a usable server, unless the URL says.
SERVER_SELECTION_TIMEOUT_MS: Final = 10_000
_SCHEMES: Final = ("mongodb://", "mongodb+srv://")

ENTITIES: Final = "entities"
DOCUMENTS: Final = "documents"
CHANGES: Final = "changes"
EVENTS: Final = "events"
ORCHESTRATORS: Final = "orchestrators"
ENROLLMENT_TOKENS: Final = "enrollment_tokens"
PREREGISTERED_KEYS: Final = "preregistered_keys"
NONCES: Final = "nonces"
SIGNING_KEYS: Final = "signing_keys"
ADMIN_TOKENS: Final = "admin_tokens"
HEARTBEATS: Final = "heartbeats"
COMMANDS: Final = "commands"
AUDIT: Final = "audit"
RELEASES: Final = "releases"
RELEASE_ASSIGNMENTS: Final = "release_assignments"
BEACON_STATUS: Final = "beacon_status"
FIRMWARE_STATUS: Final = "firmware_status"
TASK_STATUS: Final = "task_status"
ROLLOUT_STATUS: Final = "rollout_status"


def _index(name: str, *keys: tuple[str, int], **options: Any) -> IndexModel:
    return IndexModel(list(keys), name=name, **options)


_ASC, _DESC = ASCENDING, DESCENDING

#: Every collection and its indexes; unique ones are the SQLite backend's primary keys.
INDEXES: Final[Mapping[str, tuple[IndexModel, ...]]] = {
    ENTITIES: (),  # keyed by _id (the entity id)
    DOCUMENTS: (
        _index("by_key", ("entity_id", _ASC), ("collection", _ASC), ("id", _ASC), unique=True),
    ),
    CHANGES: (
        _index("by_seq", ("entity_id", _ASC), ("seq", _ASC), unique=True),
        _index("by_time", ("entity_id", _ASC), ("updated_us", _ASC)),
    ),
    EVENTS: (
        _index("by_seq", ("entity_id", _ASC), ("seq", _ASC), unique=True),
        _index("by_time", ("entity_id", _ASC), ("created_us", _ASC)),
    ),
    ORCHESTRATORS: (_index("by_key", ("entity_id", _ASC), ("orchestrator_id", _ASC), unique=True),),
    ENROLLMENT_TOKENS: (
        _index("by_hash", ("token_hash", _ASC), unique=True),
        _index("by_entity", ("entity_id", _ASC), ("created_us", _ASC)),
    ),
    PREREGISTERED_KEYS: (
        _index("by_key", ("entity_id", _ASC), ("orchestrator_id", _ASC), unique=True),
    ),
    NONCES: (
        _index("by_nonce", ("nonce", _ASC), unique=True),
        # MongoDB deletes old nonces itself, about once a minute (see remember_nonce).
        _index("purge", ("purge_after", _ASC), expireAfterSeconds=0),
    ),
    SIGNING_KEYS: (_index("by_kid", ("kid", _ASC), unique=True),),
    ADMIN_TOKENS: (_index("by_hash", ("token_hash", _ASC), unique=True),),
    HEARTBEATS: (
        _index(
            "by_orchestrator",
            ("entity_id", _ASC),
            ("orchestrator_id", _ASC),
            ("received_us", _DESC),
            ("_id", _DESC),
        ),
    ),
    COMMANDS: (
        _index(
            "by_key",
            ("entity_id", _ASC),
            ("orchestrator_id", _ASC),
            ("command_id", _ASC),
            unique=True,
        ),
        _index("by_expiry", ("expires_us", _ASC)),
    ),
    AUDIT: (
        _index("by_time", ("at_us", _DESC), ("_id", _DESC)),
        _index("by_entity", ("entity_id", _ASC), ("at_us", _DESC), ("_id", _DESC)),
    ),
    BEACON_STATUS: (_index("by_key", ("entity_id", _ASC), ("beacon_id", _ASC), unique=True),),
    FIRMWARE_STATUS: (
        _index("by_release", ("entity_id", _ASC), ("firmware_id", _ASC), ("at_us", _DESC)),
        _index("by_entity", ("entity_id", _ASC), ("_id", _DESC)),
    ),
    TASK_STATUS: (
        _index("by_key", ("entity_id", _ASC), ("task_id", _ASC), unique=True),
        _index("by_time", ("entity_id", _ASC), ("received_us", _DESC)),
    ),
    ROLLOUT_STATUS: (
        _index("by_key", ("entity_id", _ASC), ("rollout_id", _ASC), unique=True),
        _index("by_time", ("entity_id", _ASC), ("at_us", _DESC), ("rollout_id", _ASC)),
    ),
    RELEASES: (
        _index("by_id", ("release_id", _ASC), unique=True),
        _index("by_name", ("name", _ASC), ("version", _ASC), ("target", _ASC), unique=True),
        _index(
            "by_query",
            ("target", _ASC),
            ("device_type", _ASC),
            ("channel", _ASC),
            ("status", _ASC),
        ),
    ),
    RELEASE_ASSIGNMENTS: (
        _index("by_key", ("entity_id", _ASC), ("assignment_id", _ASC), unique=True),
        _index("by_seq", ("entity_id", _ASC), ("seq", _ASC)),
    ),
}

_SNAPSHOT: Final = ReadConcern("snapshot")
_MAJORITY_READ: Final = ReadConcern("majority")
_MAJORITY_WRITE: Final = WriteConcern("majority")


class MongoConnectionError(StorageError):
    """MongoDB could not be reached or refused us (address, credentials, TLS)."""

    def __init__(self, address: str, cause: Exception) -> None:
        super().__init__(f"cannot use MongoDB at {address}: {cause}")
        self.address = address
        self.cause = cause


class TransactionsUnsupportedError(StorageError):
    """The server is a standalone mongod: multi-document transactions need a replica set (a
    single-member one will do) or a sharded cluster."""

    def __init__(self, address: str) -> None:
        super().__init__(
            f"MongoDB at {address} is a standalone server; navign-server needs transactions, "
            "which need a replica set (a single-member one is enough: start mongod with "
            "--replSet and run rs.initiate()) or a sharded cluster"
        )
        self.address = address


# ---------------------------------------------------------------------------------------------
# URLs


def _split_url(url: str) -> tuple[str, str, str, str]:
    """``(scheme, hosts with credentials, database path, options)`` of a MongoDB URL."""
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            break
    else:
        raise ValueError("a MongoDB URL starts with mongodb:// or mongodb+srv://")
    location, _, options = rest.partition("?")
    hosts, _, path = location.partition("/")
    return scheme, hosts, path, options


def database_name(url: str, database: str | None = None) -> str:
    """The database a store uses: ``database`` when given (the tests give each store a database
    of its own), else the URL's path (``mongodb://host/<name>``), else ``navign``."""
    _, _, path, _ = _split_url(url)
    if database:
        return database
    # As PyMongo reads it: percent-decoded, and "db.collection" names the database "db".
    from_url = unquote_plus(path).split(".", 1)[0]
    return from_url or DEFAULT_DATABASE


def redacted(url: str) -> str:
    """The URL's scheme and hosts, without credentials or options: safe to log."""
    scheme, hosts, _, _ = _split_url(url)
    return scheme + hosts.rpartition("@")[2]


def client_options(url: str) -> Doc:
    """Keyword options for ``AsyncMongoClient``. Keywords override the URL's options in
    PyMongo, so a default is only given for what the URL leaves unset."""
    _, _, _, query = _split_url(url)
    in_url = split_options(query) if query else {}
    options: Doc = {"tz_aware": True, "tzinfo": UTC, "appname": "navign-server"}
    if "serverSelectionTimeoutMS" not in in_url:
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
    return options


# ---------------------------------------------------------------------------------------------
# Values


def stamp(name: str, moment: datetime | None) -> Doc:
    """Both stored forms of a time (see the module docstring); None stays None."""
    if moment is None:
        return {f"{name}_us": None, name: None}
    micros = to_us(moment)
    return {f"{name}_us": micros, name: from_us(micros)}


def time_of(doc: Mapping[str, Any], name: str) -> datetime:
    return from_us(doc[f"{name}_us"])


def time_or_none(doc: Mapping[str, Any], name: str) -> datetime | None:
    value = doc.get(f"{name}_us")
    return None if value is None else from_us(value)


async def fetch(cursor: AsyncCursor[Doc], limit: int | None = None) -> list[Doc]:
    """Every document of ``cursor``; ``limit`` as SQLite's ``LIMIT`` reads it (0 returns
    nothing, a negative one returns everything)."""
    if limit is not None:
        if limit == 0:
            return []
        cursor = cursor.limit(max(limit, 0))
    return await cursor.to_list()


# ---------------------------------------------------------------------------------------------


class MongoDatabase:
    """Client, collections, transactions and the event feed; the data lives in the subclasses."""

    def __init__(
        self, url: str, database: str | None = None, *, watch_queue_size: int = WATCH_QUEUE_SIZE
    ) -> None:
        self.url = url
        self.database_name = database_name(url, database)
        self._watch_queue_size = watch_queue_size
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        self._feed: EventFeed | None = None
        #: The latest operation time this store has seen, from its own transactions: every event
        #: this process committed so far has a cluster time at or before it.
        self._seen: Timestamp | None = None
        #: Serialises this process's writes to one entity (they would only conflict and retry).
        self._entity_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def open(self) -> None:
        """Connect, check that the deployment has transactions, create the collections and
        their indexes (idempotent), and start the change stream on events."""
        if self._client is not None:
            return
        address = redacted(self.url)
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.url, **client_options(self.url))
        try:
            db = client.get_database(
                self.database_name, read_concern=_MAJORITY_READ, write_concern=_MAJORITY_WRITE
            )
            async with client.start_session() as session:
                hello = await client.admin.command("hello")
                if "setName" not in hello and hello.get("msg") != "isdbgrid":
                    raise TransactionsUnsupportedError(address)
                await _create_collections(db, session)
                self._note(session.operation_time)
            feed = EventFeed(db[EVENTS], self._watch_queue_size)
            await feed.start()
        except PyMongoError as exc:
            await client.close()
            raise MongoConnectionError(address, exc) from exc
        except BaseException:
            await client.close()
            raise
        self._client, self._db, self._feed = client, db, feed

    async def close(self) -> None:
        """End every watch, stop the change stream, close the client."""
        feed, client = self._feed, self._client
        self._feed = self._client = self._db = None
        if feed is not None:
            await feed.close()
        if client is not None:
            await client.close()

    def watch_events(self) -> EventWatch:
        """Subscribe to events committed from now on (StoreClosedError when not open)."""
        if self._feed is None:
            raise StoreClosedError
        return self._feed.watch(self._seen)

    # -- helpers for the subclasses ---------------------------------------------------------
    def _col(self, name: str) -> AsyncCollection[Doc]:
        if self._db is None:
            raise StoreClosedError
        return self._db[name]

    async def _transaction(self, callback: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """Run ``callback`` in one transaction (retried as the module docstring says)."""
        if self._client is None:
            raise StoreClosedError
        async with self._client.start_session() as session:
            result = await session.with_transaction(
                callback,
                read_concern=_SNAPSHOT,
                write_concern=_MAJORITY_WRITE,
                read_preference=ReadPreference.PRIMARY,
            )
            self._note(session.operation_time)
        return result

    def _entity_lock(self, entity_id: str) -> asyncio.Lock:
        lock = self._entity_locks.get(entity_id)
        if lock is None:
            lock = asyncio.Lock()
            self._entity_locks[entity_id] = lock
        return lock

    def _note(self, operation_time: Timestamp | None) -> None:
        if operation_time is not None and (self._seen is None or operation_time > self._seen):
            self._seen = operation_time


async def _create_collections(db: AsyncDatabase[Doc], session: AsyncClientSession) -> None:
    """Create what is missing. Collections are created up front: older servers cannot create
    one inside a transaction."""
    existing = set(await db.list_collection_names(session=session))
    for name, indexes in INDEXES.items():
        if name not in existing:
            try:
                await db.create_collection(name, session=session)
            except CollectionInvalid:
                pass  # another instance created it since we looked
            except OperationFailure as exc:
                if exc.code != 48:  # NamespaceExists: the same race, reported by the server
                    raise
        if indexes:
            await db[name].create_indexes(list(indexes), session=session)
