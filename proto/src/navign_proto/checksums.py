"""Per-collection and global checksums of a mall's data, maintainable in O(1) per write.

Definition (docs/protocol.md, "Checksums"):

1. A document's digest is ``SHA-256("navign-doc-v1" 0x00 collection 0x00 JCS(document))``,
   read as a 256-bit big-endian integer. ``document`` is the JSON object exactly as served in
   sync (``data`` of a full sync or a delta change); ``collection`` is its collection's name.
2. A collection's state is ``(count, total)``: the number of documents and the sum of their
   digests modulo 2**256. Adding a document adds its digest, removing subtracts it, replacing
   does both: O(1) per write, independent of the collection's size and of order.
3. A collection's checksum is ``"sha256:" + hex(SHA-256("navign-collection-v1" 0x00 collection
   0x00 count as 8 bytes big-endian || total as 32 bytes big-endian))``.
4. The global checksum is ``"sha256:" + hex(SHA-256(JCS({collection: checksum, ...})))`` over
   the four synced collections.

Sums of hashes form a multiset hash (Bellare-Micciancio's AdHash): good to detect divergence
and corruption between server and gateway, which is its job here. It authenticates nothing:
authenticity comes from TLS and the access token; firmware has signatures of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from navign_proto.canonical import canonical_json

COLLECTIONS: tuple[str, ...] = ("areas", "beacons", "merchants", "connections")
_MODULUS = 1 << 256
_DOC_TAG = b"navign-doc-v1\x00"
_COLLECTION_TAG = b"navign-collection-v1\x00"
CHECKSUM_PREFIX = "sha256:"


def document_digest(collection: str, document: Mapping[str, Any]) -> int:
    """The digest of one document of ``collection``, as an integer below 2**256."""
    data = _DOC_TAG + collection.encode("utf-8") + b"\x00" + canonical_json(document)
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


@dataclass(frozen=True, slots=True)
class CollectionDigest:
    """The order-independent running digest of one collection: ``(count, total)``.

    Immutable: each operation returns a new value, so a caller can compute the new state, write
    it in the same transaction as the document, and keep the old one if the transaction fails.
    """

    collection: str
    count: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"{self.collection}: document count below zero")
        if not 0 <= self.total < _MODULUS:
            raise ValueError(f"{self.collection}: total out of range")

    def add(self, document: Mapping[str, Any]) -> CollectionDigest:
        """The digest after inserting ``document``."""
        return self._shift(1, document_digest(self.collection, document))

    def remove(self, document: Mapping[str, Any]) -> CollectionDigest:
        """The digest after deleting ``document`` (exactly as it was stored)."""
        return self._shift(-1, -document_digest(self.collection, document))

    def replace(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> CollectionDigest:
        """The digest after updating ``old`` to ``new``."""
        delta = document_digest(self.collection, new) - document_digest(self.collection, old)
        return self._shift(0, delta)

    def _shift(self, count: int, delta: int) -> CollectionDigest:
        return CollectionDigest(
            self.collection, self.count + count, (self.total + delta) % _MODULUS
        )

    @classmethod
    def of(cls, collection: str, documents: Iterable[Mapping[str, Any]]) -> CollectionDigest:
        """The digest of a whole collection, computed from scratch."""
        count = 0
        total = 0
        for document in documents:
            count += 1
            total += document_digest(collection, document)
        return cls(collection, count, total % _MODULUS)

    @property
    def checksum(self) -> str:
        """``sha256:<hex>`` of this collection's state."""
        data = (
            _COLLECTION_TAG
            + self.collection.encode("utf-8")
            + b"\x00"
            + self.count.to_bytes(8, "big")
            + self.total.to_bytes(32, "big")
        )
        return CHECKSUM_PREFIX + hashlib.sha256(data).hexdigest()

    def to_storage(self) -> tuple[int, str]:
        """``(count, total as 64 hex digits)``: what a database row keeps."""
        return self.count, f"{self.total:064x}"

    @classmethod
    def from_storage(cls, collection: str, count: int, total_hex: str) -> CollectionDigest:
        return cls(collection, count, int(total_hex, 16))


def global_checksum(checksums: Mapping[str, str]) -> str:
    """The global checksum from the four collections' checksums."""
    missing = [name for name in COLLECTIONS if name not in checksums]
    if missing:
        raise ValueError(f"global checksum needs every collection; missing {missing}")
    body = canonical_json({name: checksums[name] for name in COLLECTIONS})
    return CHECKSUM_PREFIX + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class MallChecksums:
    """The four collection digests of one entity, and the checksums derived from them."""

    areas: CollectionDigest
    beacons: CollectionDigest
    merchants: CollectionDigest
    connections: CollectionDigest

    @classmethod
    def empty(cls) -> MallChecksums:
        return cls(*(CollectionDigest(name) for name in COLLECTIONS))

    @classmethod
    def of(cls, data: Mapping[str, Iterable[Mapping[str, Any]]]) -> MallChecksums:
        """From a full snapshot ``{"areas": [...], "beacons": [...], ...}``."""
        return cls(*(CollectionDigest.of(name, data.get(name, ())) for name in COLLECTIONS))

    def get(self, collection: str) -> CollectionDigest:
        if collection not in COLLECTIONS:
            raise KeyError(f"unknown collection {collection!r}")
        digest: CollectionDigest = getattr(self, collection)
        return digest

    def with_digest(self, digest: CollectionDigest) -> MallChecksums:
        parts = {name: self.get(name) for name in COLLECTIONS}
        parts[digest.collection] = digest
        return MallChecksums(**parts)

    def checksums(self) -> dict[str, str]:
        """The four collection checksums and the global one, keyed by name and "global"."""
        result = {name: self.get(name).checksum for name in COLLECTIONS}
        result["global"] = global_checksum(result)
        return result

    @property
    def global_checksum(self) -> str:
        return self.checksums()["global"]
