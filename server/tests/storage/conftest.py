"""Fixtures of the storage contract suite: one ``store`` per backend.

SQLite always runs (a file in tmp_path). MongoDB runs only when ``NAVIGN_TEST_MONGODB_URL`` is
set, each test in a database of its own; no MongoDB server can be installed on this machine.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from navign_proto.mall import MallData
from navign_server.storage.base import Store
from navign_server.storage.sqlite import SqliteStore

MONGODB_URL_ENV = "NAVIGN_TEST_MONGODB_URL"
SAMPLE_MALL = Path(__file__).resolve().parents[3] / "proto" / "examples" / "sample-mall.json"
#: The start of the tests' clocks (timezone-aware); test modules keep their own copy.
T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


async def _mongo_store() -> Any:
    url = os.environ.get(MONGODB_URL_ENV)
    if not url:
        pytest.skip(f"{MONGODB_URL_ENV} is not set: the MongoDB backend is not tested here")
    try:
        module = importlib.import_module("navign_server.storage.mongo")
    except ImportError as exc:
        pytest.skip(f"navign_server.storage.mongo cannot be imported: {exc}")
    return module.MongoStore(url, database=f"navign_test_{uuid.uuid4().hex[:12]}")


async def _drop_mongo_database(name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(os.environ[MONGODB_URL_ENV])
    try:
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "sqlite":
        backend = SqliteStore(tmp_path / "navign.db")
    else:
        backend = await _mongo_store()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
        if request.param == "mongodb":
            await _drop_mongo_database(backend.database_name)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def mall() -> MallData:
    """The example mall, validated by the strict models (documents in ``document()`` form)."""
    return MallData.from_file(SAMPLE_MALL)


@pytest.fixture
async def mall_store(store: Store, mall: MallData) -> Store:
    """A store holding the sample mall's entity (no documents yet)."""
    await store.create_entity(mall.entity.document(), T0)
    return store
