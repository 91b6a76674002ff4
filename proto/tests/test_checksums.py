from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navign_proto.checksums import (
    COLLECTIONS,
    CollectionDigest,
    MallChecksums,
    document_digest,
    global_checksum,
)


def doc(i: int, name: str = "x") -> dict[str, Any]:
    return {"id": f"d{i}", "name": name, "location": {"x": i * 0.5, "y": -i}}


def test_checksum_independent_of_order_and_key_order() -> None:
    docs = [doc(i) for i in range(20)]
    shuffled = [dict(reversed(list(d.items()))) for d in reversed(docs)]
    assert (
        CollectionDigest.of("areas", docs).checksum
        == CollectionDigest.of("areas", shuffled).checksum
    )


def test_checksum_changes_with_any_field_collection_or_count() -> None:
    base = CollectionDigest.of("areas", [doc(1), doc(2)])
    assert CollectionDigest.of("areas", [doc(1), doc(2, "y")]).checksum != base.checksum
    assert CollectionDigest.of("beacons", [doc(1), doc(2)]).checksum != base.checksum
    assert CollectionDigest.of("areas", [doc(1)]).checksum != base.checksum
    # The same document twice is not the same as once (the count is part of the state).
    assert (
        CollectionDigest.of("areas", [doc(1), doc(1)]).checksum
        != CollectionDigest.of("areas", [doc(1)]).checksum
    )


def test_float_and_integer_spellings_agree() -> None:
    a = CollectionDigest.of("areas", [{"id": "a", "x": 1.0}])
    b = CollectionDigest.of("areas", [{"id": "a", "x": 1}])
    assert a.checksum == b.checksum


def test_empty_collection_checksum_is_defined_from_the_documented_form() -> None:
    expected = hashlib.sha256(
        b"navign-collection-v1\x00beacons\x00" + (0).to_bytes(8, "big") + (0).to_bytes(32, "big")
    ).hexdigest()
    assert CollectionDigest("beacons").checksum == "sha256:" + expected


def test_storage_round_trip() -> None:
    digest = CollectionDigest.of("merchants", [doc(i) for i in range(5)])
    count, total = digest.to_storage()
    assert len(total) == 64
    assert CollectionDigest.from_storage("merchants", count, total) == digest


def test_global_checksum_needs_all_collections() -> None:
    checksums = MallChecksums.empty().checksums()
    del checksums["global"]
    assert global_checksum(checksums).startswith("sha256:")
    del checksums["areas"]
    with pytest.raises(ValueError, match="areas"):
        global_checksum(checksums)


def test_digest_value_is_sha256_of_tagged_canonical_bytes() -> None:
    expected = hashlib.sha256(b'navign-doc-v1\x00areas\x00{"id":"a","n":1}').digest()
    assert document_digest("areas", {"n": 1, "id": "a"}) == int.from_bytes(expected, "big")


ops = st.lists(
    st.tuples(
        st.sampled_from(COLLECTIONS),
        st.sampled_from(["put", "delete"]),
        st.integers(0, 7),
        st.text(max_size=5),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_incremental_updates_equal_recomputation(
    operations: list[tuple[str, str, int, str]],
) -> None:
    """Any sequence of creates, updates and deletes, applied in O(1) steps, gives the checksums
    of the final data computed from scratch."""
    state = MallChecksums.empty()
    data: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in COLLECTIONS}
    for collection, op, i, name in operations:
        key = f"d{i}"
        digest = state.get(collection)
        current = data[collection].get(key)
        if op == "put":
            new = {"id": key, "name": name}
            digest = digest.add(new) if current is None else digest.replace(current, new)
            data[collection][key] = new
        elif current is not None:
            digest = digest.remove(current)
            del data[collection][key]
        state = state.with_digest(digest)
    fresh = MallChecksums.of({c: list(data[c].values()) for c in COLLECTIONS})
    assert state.checksums() == fresh.checksums()
    assert state == fresh
