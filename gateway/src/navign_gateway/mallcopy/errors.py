"""The mall copy's exceptions: one base, :class:`MallCopyError`, and a subclass per cause.

The sync engine branches on them: a :class:`ChecksumMismatch` asks for a repair (§5.5), a
:class:`NoLocalCopyError` for a full sync, a :class:`SyncRejectedError` means the response
itself is unusable; the local read API answers 404 or 422 for the read errors.
"""

from __future__ import annotations

from typing import Literal

from navign_proto.checksums import COLLECTIONS


class MallCopyError(Exception):
    """Base of every error of the mall copy."""


class UnknownCollectionError(MallCopyError, ValueError):
    def __init__(self, collection: str) -> None:
        super().__init__(f"unknown collection {collection!r}; expected one of {list(COLLECTIONS)}")
        self.collection = collection


class InvalidFilterError(MallCopyError, ValueError):
    """A read's filter, limit or paging cursor breaks a rule (the local API answers 422)."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


class NoLocalCopyError(MallCopyError):
    """A delta needs a complete copy to apply to: run a full sync first."""


class SyncRejectedError(MallCopyError, ValueError):
    """A sync response that cannot be applied as it is (another entity, a bad cursor, changes
    out of order, a snapshot older than the copy). Nothing was written."""


class MalformedDocumentError(SyncRejectedError):
    """A document that cannot be stored: not an object, a wrong id or entity, a filtered field
    of the wrong JSON type, or no canonical JSON form. Nothing was written."""

    def __init__(self, collection: str, doc_id: object, reason: str) -> None:
        super().__init__(f"{collection} document {doc_id!r}: {reason}")
        self.collection = collection
        self.doc_id = doc_id
        self.reason = reason


class ChecksumMismatch(MallCopyError):  # noqa: N818 - the name the sync engine uses
    """The copy's checksum before (``stage`` "base") or after ("full", "new") a sync step
    differs from the server's; the step was rolled back. ``collections`` names collections
    known to differ (by document count); empty when only the global checksum tells, and then
    ``GET /sync/checksum`` with :meth:`MallCopy.compare` tells which (§5.5)."""

    def __init__(
        self,
        stage: Literal["full", "base", "new"],
        expected: str,
        actual: str,
        collections: tuple[str, ...] = (),
    ) -> None:
        which = f" (differing: {', '.join(collections)})" if collections else ""
        super().__init__(f"{stage} checksum mismatch: server {expected}, local {actual}{which}")
        self.stage = stage
        self.expected = expected
        self.actual = actual
        self.collections = collections
