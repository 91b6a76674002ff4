"""The offline mall copy: synced from the real server (full, paged deltas, replays, tampering,
partial repair), the golden checksum vectors, bad input, corruption, and SIGKILL at random
moments while a subprocess applies deltas."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navign_gateway.db import Database
from navign_gateway.mallcopy import (
    ChecksumMismatch,
    InvalidFilterError,
    MalformedDocumentError,
    MallCopy,
    NoLocalCopyError,
    SyncRejectedError,
    UnknownCollectionError,
    canonical_bytes,
)
from navign_proto.canonical import canonical_json
from navign_proto.checksums import COLLECTIONS, MallChecksums
from navign_proto.errors import CanonicalJSONError
from navign_proto.mall import CollectionName
from navign_proto.wire import (
    Change,
    ChangeOperation,
    ChecksumResponse,
    SyncDeltaResponse,
    SyncFullResponse,
)
from navign_server.testing import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    import_sample_mall,
    run_server,
    server_settings,
)

ENTITY = "mall-riverside"
SYNC = "/api/orchestrators/sync"
VECTORS = Path(__file__).resolve().parents[2] / "proto" / "vectors" / "checksums.json"
WORKER = Path(__file__).with_name("mallcopy_crash_worker.py")
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with run_server(server_settings(tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
async def gateway(server: RunningServer) -> TestGateway:
    await import_sample_mall(server)
    return await enrolled_gateway(server, ENTITY)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "gateway" / "gateway.sqlite3") as database:
        yield database


@pytest.fixture
async def copy(db: Database) -> MallCopy:
    mall = MallCopy(db, ENTITY)
    await mall.migrate()
    return mall


async def full(client: httpx.AsyncClient, include: str | None = None) -> SyncFullResponse:
    params = {"entity_id": ENTITY} | ({"include": include} if include else {})
    response = await client.get(f"{SYNC}/full", params=params)
    assert response.status_code == 200, response.text
    return SyncFullResponse.model_validate_json(response.content)


async def delta(client: httpx.AsyncClient, cursor: int, limit: int = 500) -> SyncDeltaResponse:
    params = {"entity_id": ENTITY, "cursor": str(cursor), "limit": str(limit)}
    response = await client.get(f"{SYNC}/delta", params=params)
    assert response.status_code == 200, response.text
    return SyncDeltaResponse.model_validate_json(response.content)


async def pages(client: httpx.AsyncClient, cursor: int, limit: int) -> list[SyncDeltaResponse]:
    """Every page after ``cursor``, following ``next_cursor`` (bounded)."""
    found: list[SyncDeltaResponse] = []
    for _ in range(1000):
        page = await delta(client, cursor, limit)
        found.append(page)
        assert page.next_cursor is not None
        cursor = int(page.next_cursor)
        if not page.has_more:
            return found
    raise AssertionError("delta paging did not end")


async def remote_checksums(client: httpx.AsyncClient) -> ChecksumResponse:
    response = await client.get(f"{SYNC}/checksum", params={"entity_id": ENTITY})
    assert response.status_code == 200, response.text
    return ChecksumResponse.model_validate_json(response.content)


async def assert_like_server(copy: MallCopy, client: httpx.AsyncClient) -> None:
    remote = await remote_checksums(client)
    local = (await copy.checksums()).checksums()
    assert local == remote.checksums.model_dump(by_alias=True)
    assert await copy.cursor() == remote.seq
    assert await copy.compare(remote) == ()
    assert await copy.verify()


async def admin_call(server: RunningServer, method: str, path: str, body: Any = None) -> None:
    async with server.admin() as admin:
        response = await admin.request(method, f"/api/admin/entities/{ENTITY}/{path}", json=body)
    assert response.status_code in (200, 201), response.text


async def rename(server: RunningServer, collection: str, doc_id: str) -> None:
    """Rename a document through the admin API (as it is on the server now)."""
    async with server.admin() as admin:
        response = await admin.get(f"/api/admin/entities/{ENTITY}/{collection}/{doc_id}")
    assert response.status_code == 200, response.text
    document = response.json()
    document["name"] = f"{document['name']} (renamed)"
    await admin_call(server, "PUT", f"{collection}/{doc_id}", document)


async def snapshot(copy: MallCopy) -> tuple[Any, ...]:
    """Everything a failed step must leave as it was."""
    version = await copy.version()
    documents = {}
    for name in COLLECTIONS:
        documents[name], _ = await copy.list(name, filters={}, limit=1000, after=None)
    return version, (await copy.checksums()).checksums(), await copy.floors(), documents


# -- against the real server --------------------------------------------------------------------


async def test_full_sync_matches_the_server(gateway: TestGateway, copy: MallCopy) -> None:
    assert await copy.cursor() is None
    async with gateway.client() as client:
        body = await full(client)
        await copy.apply_full(body)
        await assert_like_server(copy, client)
    assert await copy.counts() == {n: getattr(body.metadata, f"total_{n}") for n in COLLECTIONS}
    assert await copy.entity() == body.entity
    for name in COLLECTIONS:
        served = getattr(body.data, name)
        assert await copy.get(name, served[0]["id"]) == served[0]
    assert await copy.get("beacons", "no-such-beacon") is None


async def test_beacon_identities_come_from_the_columns(
    gateway: TestGateway, copy: MallCopy, db: Database
) -> None:
    assert await copy.beacon_identities() == []  # migrated, never synced
    async with gateway.client() as client:
        body = await full(client)
    await copy.apply_full(body)
    expected = sorted(
        (b["id"], b["device"], b["mac"], b["major"], b["minor"])
        for b in body.data.beacons
        if all(b.get(key) is not None for key in ("device", "mac", "major", "minor"))
    )
    assert expected  # the seeded mall has identified beacons
    assert sorted(await copy.beacon_identities()) == expected
    assert await MallCopy(db, "another-mall").beacon_identities() == []


async def test_admin_edits_arrive_in_delta_pages_and_replays_change_nothing(
    server: RunningServer, gateway: TestGateway, copy: MallCopy
) -> None:
    async with gateway.client() as client:
        start = await full(client)
        await copy.apply_full(start)
        merchant = dict(start.data.merchants[0], id="m-new-tea", name="New Tea")
        await rename(server, "beacons", "b-1f-west-01")
        await rename(server, "areas", "area-2f-atrium")
        await admin_call(server, "DELETE", "connections/c-atrium-escalator")
        await admin_call(server, "POST", "merchants", merchant)
        await rename(server, "beacons", "b-1f-west-01")  # the same document twice
        found = await pages(client, start.seq, limit=2)
        assert len(found) >= 3
        assert found[0].has_more
        applied = [await copy.apply_delta(page) for page in found]
        assert sum(applied) == 5
        await assert_like_server(copy, client)
        after = await snapshot(copy)
        assert [await copy.apply_delta(page) for page in found] == [0] * len(found)
        assert await snapshot(copy) == after
        await assert_like_server(copy, client)
    beacon = await copy.get("beacons", "b-1f-west-01")
    assert beacon is not None
    assert beacon["name"].endswith("(renamed) (renamed)")
    assert await copy.get("connections", "c-atrium-escalator") is None
    assert await copy.get("merchants", "m-new-tea") == merchant


async def test_a_tampered_delta_is_refused_and_changes_nothing(
    server: RunningServer, gateway: TestGateway, copy: MallCopy
) -> None:
    async with gateway.client() as client:
        start = await full(client)
        await copy.apply_full(start)
        await rename(server, "merchants", "m-aurora-coffee")
        await rename(server, "beacons", "b-2f-east-02")
        page = await delta(client, start.seq)
        before = await snapshot(copy)
        change = page.changes[0]
        assert change.data is not None
        forged = change.model_copy(update={"data": dict(change.data, name="Forged in transit")})
        tampered = page.model_copy(update={"changes": [forged, *page.changes[1:]]})
        with pytest.raises(ChecksumMismatch) as caught:
            await copy.apply_delta(tampered)
        assert caught.value.stage == "new"
        assert caught.value.expected == page.new_checksum
        assert await snapshot(copy) == before
        # A page that skips a change (asked from past the cursor) fails its base checksum.
        gap = await delta(client, start.seq + 1)
        with pytest.raises(ChecksumMismatch) as caught:
            await copy.apply_delta(gap)
        assert caught.value.stage == "base"
        assert await snapshot(copy) == before
        # The genuine page still applies.
        assert await copy.apply_delta(page) == 2
        await assert_like_server(copy, client)


async def test_partial_repair_of_differing_collections(
    server: RunningServer, gateway: TestGateway, copy: MallCopy
) -> None:
    async with gateway.client() as client:
        start = await full(client)
        await copy.apply_full(start)
        await rename(server, "merchants", "m-aurora-coffee")
        await rename(server, "beacons", "b-1f-atrium-01")
        assert await copy.compare(await remote_checksums(client)) == ("beacons", "merchants")
        repair = await full(client, include="merchants")
        assert repair.seq == start.seq + 2
        await copy.apply_full(repair, ["merchants"])
        assert await copy.cursor() == start.seq
        assert await copy.floors() == {"merchants": repair.seq}
        # The merchant change (seq ≤ floor) is skipped; the beacon change applies.
        assert await copy.apply_delta(await delta(client, start.seq)) == 1
        assert await copy.floors() == {}
        await assert_like_server(copy, client)
        merchant = await copy.get("merchants", "m-aurora-coffee")
        assert merchant is not None
        assert merchant["name"].endswith("(renamed)")


async def test_a_partial_snapshot_at_the_cursor_is_checked(
    gateway: TestGateway, copy: MallCopy
) -> None:
    async with gateway.client() as client:
        await copy.apply_full(await full(client))
        snapshot_ = await full(client, include="beacons")
    before = await snapshot(copy)
    beacons = snapshot_.data.beacons
    forged = [dict(beacons[0], name="Forged"), *beacons[1:]]
    tampered = snapshot_.model_copy(
        update={"data": snapshot_.data.model_copy(update={"beacons": forged})}
    )
    with pytest.raises(ChecksumMismatch) as caught:
        await copy.apply_full(tampered, ["beacons"])
    assert caught.value.stage == "full"
    assert caught.value.collections == ()
    short = snapshot_.model_copy(
        update={"data": snapshot_.data.model_copy(update={"beacons": beacons[1:]})}
    )
    with pytest.raises(ChecksumMismatch) as caught:
        await copy.apply_full(short, ["beacons"])
    assert caught.value.collections == ("beacons",)
    assert await snapshot(copy) == before
    await copy.apply_full(snapshot_, ["beacons"])  # the genuine one applies
    assert (await snapshot(copy))[1:] == before[1:]


async def test_a_copy_built_one_collection_at_a_time(
    server: RunningServer, gateway: TestGateway, copy: MallCopy
) -> None:
    async with gateway.client() as client:
        areas = await full(client, include="areas")
        await copy.apply_full(areas, ["areas"])
        assert await copy.cursor() is None
        await admin_call(server, "DELETE", "beacons/b-2f-east-01")
        rest = await full(client, include="beacons,merchants,connections")
        await copy.apply_full(rest, ["beacons", "merchants", "connections"])
        assert await copy.cursor() == areas.seq
        assert await copy.floors() == dict.fromkeys(
            ["beacons", "merchants", "connections"], rest.seq
        )
        assert await copy.apply_delta(await delta(client, areas.seq)) == 0
        await assert_like_server(copy, client)
        # The entity document is kept from whichever snapshot carried one last.
        assert await copy.entity() == (rest.entity or areas.entity)


# -- golden vectors and canonical JSON ----------------------------------------------------------


async def test_the_golden_checksum_vectors(db: Database) -> None:
    vectors = json.loads(VECTORS.read_text())
    copy = MallCopy(db, "mall-demo")
    await copy.migrate()
    data: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
    for item in vectors["documents"]:
        data[item["collection"]].append(item["document"])
    await copy.apply_full(full_response("mall-demo", data, 41, vectors["checksums"]["global"]))
    assert (await copy.checksums()).checksums() == vectors["checksums"]
    changes = []
    for seq, step in enumerate(vectors["incremental"]["steps"], start=42):
        doc = step.get("new") or step["old"]
        change = {"type": step["collection"], "operation": step["op"], "id": doc["id"]}
        change |= {"seq": seq, "updated_at": NOW} | ({"data": step["new"]} if "new" in step else {})
        changes.append(change)
    page = delta_response("mall-demo", vectors["checksums"]["global"],
                          vectors["incremental"]["checksums"]["global"], changes, 44)  # fmt: skip
    assert await copy.apply_delta(page) == 3
    assert (await copy.checksums()).checksums() == vectors["incremental"]["checksums"]
    assert await copy.verify()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e-7, 1e-5, 0.0001, 1.5e15, 2.0**53, 1e16, 1e21, 5e-324])
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=800, deadline=None)
@given(JSON_VALUES)
def test_the_fast_canonical_form_is_canonical_json(value: Any) -> None:
    try:
        expected = canonical_json(value)
    except CanonicalJSONError:
        with pytest.raises(CanonicalJSONError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == expected


# -- bad input ----------------------------------------------------------------------------------


def full_response(
    entity: str, data: dict[str, list[dict[str, Any]]], seq: int, checksum: str | None = None
) -> SyncFullResponse:
    return SyncFullResponse.model_validate(
        {
            "entity_id": entity,
            "sync_id": f"full-{seq}",
            "timestamp": NOW,
            "checksum": checksum or MallChecksums.of(data).global_checksum,
            "data": data,
            "metadata": {f"total_{n}": len(data.get(n, [])) for n in COLLECTIONS},
            "seq": seq,
            "entity": {"id": entity, "type": "mall", "name": "Test"},
        }
    )


def delta_response(
    entity: str, base: str, new: str, changes: list[dict[str, Any]], next_cursor: int | str
) -> SyncDeltaResponse:
    return SyncDeltaResponse.model_validate(
        {
            "entity_id": entity,
            "sync_id": "delta",
            "timestamp": NOW,
            "base_checksum": base,
            "new_checksum": new,
            "changes": changes,
            "has_more": False,
            "next_cursor": str(next_cursor),
        }
    )


def area(doc_id: str, floor: Any = 1, **extra: Any) -> dict[str, Any]:
    polygon = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]
    doc = {"id": doc_id, "entity_id": ENTITY, "name": f"Area {doc_id}", "polygon": polygon}
    return doc | {"floor": {"type": "floor", "number": floor}, "beacon_code": "X"} | extra


@pytest.mark.parametrize(
    "document",
    [
        area("a-1", entity_id="another-mall"),
        area("a-1", name=5),
        area("a-1", floor="2"),
        area("a-1", size=2**60),
        area("a-1", ratio=float("nan")),
        area("a 1"),
    ],
    ids=["foreign-entity", "name-not-text", "floor-not-number", "huge-integer", "nan", "bad-id"],
)
async def test_malformed_documents_are_refused_and_change_nothing(
    copy: MallCopy, document: dict[str, Any]
) -> None:
    await copy.apply_full(full_response(ENTITY, {"areas": [area("a-0")]}, 3))
    before = await snapshot(copy)
    any_checksum = MallChecksums.empty().global_checksum
    with pytest.raises(MalformedDocumentError):
        await copy.apply_full(
            full_response(ENTITY, {"areas": [area("a-0"), document]}, 4, any_checksum)
        )
    checksum = MallChecksums.of({"areas": [area("a-0")]}).global_checksum
    # Unvalidated, as a peer's bytes could be: the copy must not rely on the wire model.
    change = Change.model_construct(
        type=CollectionName.AREAS,
        operation=ChangeOperation.UPDATE,
        id=document["id"],
        data=document,
        updated_at=NOW,
        seq=4,
    )
    page = delta_response(ENTITY, checksum, checksum, [], 4).model_copy(
        update={"changes": [change]}
    )
    with pytest.raises(MalformedDocumentError):
        await copy.apply_delta(page)
    assert await snapshot(copy) == before


async def test_bad_sync_responses_are_refused(copy: MallCopy) -> None:
    empty = MallChecksums.empty().global_checksum
    with pytest.raises(NoLocalCopyError):
        await copy.apply_delta(delta_response(ENTITY, empty, empty, [], 1))
    with pytest.raises(SyncRejectedError, match="entity"):
        await copy.apply_full(full_response("another-mall", {}, 1))
    with pytest.raises(UnknownCollectionError):
        await copy.apply_full(full_response(ENTITY, {}, 1), ["areas", "robots"])
    assert await copy.cursor() is None
    await copy.apply_full(full_response(ENTITY, {"areas": [area("a-0")]}, 5))
    before = await snapshot(copy)
    base = (await copy.checksums()).global_checksum
    with pytest.raises(SyncRejectedError, match="next_cursor"):
        await copy.apply_delta(delta_response(ENTITY, base, base, [], "evt-7"))
    twice = [
        {"type": "areas", "operation": "delete", "id": "a-0", "seq": 6, "updated_at": NOW},
        {"type": "areas", "operation": "delete", "id": "a-0", "seq": 6, "updated_at": NOW},
    ]
    with pytest.raises(SyncRejectedError, match="order"):
        await copy.apply_delta(delta_response(ENTITY, base, empty, twice, 6))
    with pytest.raises(SyncRejectedError, match="beyond"):
        await copy.apply_delta(delta_response(ENTITY, base, empty, twice[:1], 5))
    with pytest.raises(SyncRejectedError, match="older"):
        await copy.apply_full(full_response(ENTITY, {}, 4), ["beacons"])
    assert await snapshot(copy) == before


async def test_reads_refuse_bad_filters(copy: MallCopy) -> None:
    await copy.apply_full(full_response(ENTITY, {"areas": [area("a-0")]}, 1))
    for filters, limit, after in [
        ({"colour": "red"}, 10, None),
        ({"floor": "2"}, 10, None),
        ({"area_id": "a 0"}, 10, None),
        ({}, 0, None),
        ({}, 1001, None),
        ({}, 10, "x" * 65),
    ]:
        with pytest.raises(InvalidFilterError):
            await copy.list("areas", filters=filters, limit=limit, after=after)
    with pytest.raises(UnknownCollectionError):
        await copy.get("robots", "r-1")
    with pytest.raises(UnknownCollectionError):
        await copy.list("robots", filters={}, limit=10, after=None)


async def test_filters_and_paging(copy: MallCopy) -> None:
    areas = [area(f"a-{i}", floor=1 + i % 3, name=f"Hall {i} {'East' if i % 2 else 'West'}")
             for i in range(30)]  # fmt: skip
    link: dict[str, Any] = {"id": "c-0", "entity_id": ENTITY, "name": "Lift", "type": "elevator"}
    link["connected_areas"] = [
        {"area_id": "a-1", "x": 0, "y": 0},
        {"area_id": "a-2", "x": 1, "y": 1},
    ]
    beacons = [
        {"id": f"b-{i}", "entity_id": ENTITY, "area_id": f"a-{i % 30}", "name": f"B{i}",
         "type": "navigation" if i % 4 else "security", "mac": f"02:00:00:00:00:{i:02x}",
         "major": 7, "minor": i}
        for i in range(60)
    ]  # fmt: skip
    await copy.apply_full(
        full_response(ENTITY, {"areas": areas, "beacons": beacons, "connections": [link]}, 9)
    )
    ids: list[str] = []
    after: str | None = None
    for _ in range(20):
        page, after = await copy.list("beacons", filters={}, limit=7, after=after)
        ids += [doc["id"] for doc in page]
        if after is None:
            break
    assert ids == sorted(b["id"] for b in beacons)

    async def found(collection: str, **filters: str) -> list[str]:
        docs, _ = await copy.list(collection, filters=filters, limit=1000, after=None)
        return [doc["id"] for doc in docs]

    assert await found("areas", floor="f2") == sorted(f"a-{i}" for i in range(30) if i % 3 == 1)
    assert await found("areas", q="east", floor="F1") == sorted(
        f"a-{i}" for i in range(30) if i % 3 == 0 and i % 2
    )
    assert await found("beacons", floor="F3") == sorted(
        f"b-{i}" for i in range(60) if (i % 30) % 3 == 2
    )
    assert await found("beacons", type="security", area_id="a-4") == ["b-4"]
    assert await found("beacons", mac="02-00-00-00-00-0A") == ["b-10"]
    assert await found("beacons", major="7", minor="33") == ["b-33"]
    assert await found("connections", area_id="a-2") == ["c-0"]
    assert await found("connections", floor="F1") == []  # a-1 is on F2, a-2 on F3
    assert await found("connections", floor="F3") == ["c-0"]
    assert await found("areas", q="%") == []  # LIKE wildcards are literal


async def test_verify_finds_a_corrupted_file(copy: MallCopy, db: Database) -> None:
    await copy.apply_full(full_response(ENTITY, {"areas": [area("a-0"), area("a-1")]}, 1))
    assert await copy.verify()
    raw = sqlite3.connect(db.path)
    try:
        with raw:
            raw.execute("UPDATE mall_areas SET doc = replace(doc, 'Area', 'Arxa') WHERE id = 'a-1'")
        assert not await copy.verify()
        with raw:
            raw.execute("UPDATE mall_areas SET doc = replace(doc, 'Arxa', 'Area') WHERE id = 'a-1'")
        assert await copy.verify()
        with raw:
            raw.execute("UPDATE mall_digests SET count = 3 WHERE collection = 'areas'")
        assert not await copy.verify()
    finally:
        raw.close()


# -- crash safety -------------------------------------------------------------------------------


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mallcopy_crash_worker", WORKER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KILLS = 25
READY_TIMEOUT = 60.0


@pytest.mark.slow
async def test_sigkill_while_applying_deltas_loses_and_repeats_nothing(tmp_path: Path) -> None:
    model = load_worker()
    path = tmp_path / "crash.sqlite3"
    rng = random.Random(20261127)
    cursors: list[int] = []
    for _ in range(KILLS):
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), str(path), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
            assert line == b"ready\n"
            await asyncio.sleep(rng.uniform(0.0, 0.4))
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(process.wait(), READY_TIMEOUT)
        assert process.returncode == -signal.SIGKILL, "the worker ended by itself"
        async with Database(path) as db:
            copy = MallCopy(db, model.ENTITY)
            cursor = await copy.cursor()
            assert cursor is not None
            assert await copy.verify()
            expected = model.checksums_at(cursor)
            assert (await copy.checksums()).checksums() == expected.checksums()
            assert await copy.counts() == {n: expected.get(n).count for n in COLLECTIONS}
        cursors.append(cursor)
    assert cursors == sorted(cursors)
    assert cursors[-1] > model.START + 1000, "the worker hardly applied anything"
