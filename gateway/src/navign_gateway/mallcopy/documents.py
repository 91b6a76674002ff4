"""From a synced document to its stored row: the checks a document must pass, its filtered
columns, its canonical JSON and its digest.

Everything here is pure and runs before a sync step's transaction (in a worker thread for
large pages), so a malformed document rejects the whole response before anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from navign_gateway.mallcopy.canonical import canonical_bytes
from navign_gateway.mallcopy.errors import MalformedDocumentError, UnknownCollectionError
from navign_gateway.mallcopy.schema import (
    COLUMNS,
    DOC_TAG,
    ID_RE,
    INTEGER_COLUMNS,
    TABLES,
    TAGS,
    DocumentRow,
)
from navign_proto.errors import CanonicalJSONError
from navign_proto.wire import ChangeOperation, SyncDeltaResponse, SyncFullResponse

#: (seq, collection, id, row or None for a delete).
Change = tuple[int, str, str, DocumentRow | None]

_FLOOR_PREFIX: Final = {"floor": "F", "basement": "B", "level": "L"}


def _text(name: str, document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedDocumentError(name, document.get("id"), f"{key!r} is not a string")
    return value


def columns_of(name: str, document: Mapping[str, Any]) -> tuple[Any, ...]:
    """The filtered columns of ``document``. Absent fields are NULL (a newer or older server may
    omit them); a present field of the wrong JSON type makes the document malformed."""
    values: list[Any] = []
    for column in COLUMNS[name]:
        if column == "floor":
            values.append(_floor_code(name, document))
        elif column in INTEGER_COLUMNS:
            value = document.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise MalformedDocumentError(
                    name, document.get("id"), f"{column!r} is not an integer"
                )
            values.append(value)
        else:
            values.append(_text(name, document, column))
    if name == "connections":
        ends = document.get("connected_areas", [])
        if not isinstance(ends, list) or not all(
            isinstance(end, dict) and isinstance(end.get("area_id"), str) for end in ends
        ):
            raise MalformedDocumentError(
                name, document.get("id"), "'connected_areas' is not a list of {area_id, x, y}"
            )
    return tuple(values)


def _floor_code(name: str, document: Mapping[str, Any]) -> str | None:
    """``F2``, ``B1``, ``L-1``: the floor filter's value for an area (None when unknown)."""
    floor = document.get("floor")
    if floor is None:
        return None
    if not isinstance(floor, dict) or not isinstance(floor.get("type"), str):
        raise MalformedDocumentError(name, document.get("id"), "'floor' is not {type, number}")
    number = floor.get("number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise MalformedDocumentError(name, document.get("id"), "'floor.number' is not an integer")
    prefix = _FLOOR_PREFIX.get(floor["type"])
    return None if prefix is None else f"{prefix}{number}"


def prepare_row(
    entity_id: str, collection: str, document: object, doc_id: str | None
) -> DocumentRow:
    """Check ``document`` (of the entity ``entity_id``) and compute its stored row. Pure: it
    runs before the transaction, in a worker thread for large pages."""
    if not isinstance(document, dict):
        raise MalformedDocumentError(collection, doc_id, "not a JSON object")
    found = document.get("id")
    if not isinstance(found, str) or ID_RE.fullmatch(found) is None:
        raise MalformedDocumentError(collection, found, "'id' is not an identifier")
    if doc_id is not None and found != doc_id:
        raise MalformedDocumentError(collection, doc_id, f"data id {found!r} differs")
    if document.get("entity_id") != entity_id:
        owner = document.get("entity_id")
        raise MalformedDocumentError(collection, found, f"entity_id {owner!r} is not ours")
    columns = columns_of(collection, document)
    try:
        text = canonical_bytes(document)
    except (CanonicalJSONError, RecursionError) as exc:
        raise MalformedDocumentError(collection, found, f"no canonical JSON: {exc}") from None
    digest = hashlib.sha256(DOC_TAG + TAGS[collection] + text).digest()
    return (found, text.decode("utf-8"), digest, *columns)


def prepare_snapshot(
    entity_id: str, response: SyncFullResponse, names: tuple[str, ...]
) -> dict[str, list[DocumentRow]]:
    """The rows of each collection in ``names`` of a full sync response."""
    prepared: dict[str, list[DocumentRow]] = {}
    for name in names:
        rows = [prepare_row(entity_id, name, doc, None) for doc in getattr(response.data, name)]
        if len({row[0] for row in rows}) != len(rows):
            raise MalformedDocumentError(name, None, "the same id appears twice")
        prepared[name] = rows
    return prepared


def prepare_changes(entity_id: str, response: SyncDeltaResponse) -> list[Change]:
    """The changes of a delta page, each with its new row (None for a delete)."""
    prepared: list[Change] = []
    for change in response.changes:
        name = str(change.type)
        if name not in TABLES:
            raise UnknownCollectionError(name)
        if change.operation is ChangeOperation.DELETE:
            if change.data is not None:
                raise MalformedDocumentError(name, change.id, "a delete carries data")
            prepared.append((change.seq, name, change.id, None))
        else:
            row = prepare_row(entity_id, name, change.data, change.id)
            prepared.append((change.seq, name, change.id, row))
    return prepared
