"""The synced collections, and a whole mall file checked for cross references."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Self, TypeVar

from pydantic import Field, model_validator

from navign_proto.mall.models import Area, Beacon, Connection, Entity, MallModel, Merchant

COLLECTION_MAX: Final = 10_000
_PROBLEMS_SHOWN: Final = 20


class CollectionName(StrEnum):
    """The four collections the server syncs to a gateway."""

    AREAS = "areas"
    BEACONS = "beacons"
    MERCHANTS = "merchants"
    CONNECTIONS = "connections"


SyncedDocument = Area | Beacon | Merchant | Connection

COLLECTIONS: Final[Mapping[str, type[SyncedDocument]]] = MappingProxyType(
    {
        CollectionName.AREAS: Area,
        CollectionName.BEACONS: Beacon,
        CollectionName.MERCHANTS: Merchant,
        CollectionName.CONNECTIONS: Connection,
    }
)
"""Collection name -> model class; keys are ``CollectionName`` members (plain strings)."""


_T = TypeVar("_T", bound=Hashable)


def _duplicates(values: Iterable[_T]) -> list[_T]:
    return [value for value, count in Counter(values).items() if count > 1]


class MallData(MallModel):
    """A whole mall file: the entity and its four collections, checked together.

    Beyond each document's own rules: every document belongs to ``entity``; ids are unique
    per collection; every referenced area, merchant and connection exists in the file;
    beacon ``(major, minor)`` pairs and MAC addresses are unique.
    """

    entity: Entity
    areas: tuple[Area, ...] = Field(default=(), max_length=COLLECTION_MAX)
    beacons: tuple[Beacon, ...] = Field(default=(), max_length=COLLECTION_MAX)
    merchants: tuple[Merchant, ...] = Field(default=(), max_length=COLLECTION_MAX)
    connections: tuple[Connection, ...] = Field(default=(), max_length=COLLECTION_MAX)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls.model_validate_json(Path(path).read_bytes())

    def collection(self, name: str) -> tuple[SyncedDocument, ...]:
        items: tuple[SyncedDocument, ...] = getattr(self, CollectionName(name).value)
        return items

    def documents(self) -> dict[str, list[dict[str, Any]]]:
        """Stored form of every synced document, by collection name."""
        return {
            name.value: [item.document() for item in self.collection(name)]
            for name in CollectionName
        }

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        problems = self._problems()
        if problems:
            shown = "; ".join(problems[:_PROBLEMS_SHOWN])
            more = len(problems) - _PROBLEMS_SHOWN
            raise ValueError(f"{shown}; and {more} more problems" if more > 0 else shown)
        return self

    def _problems(self) -> list[str]:
        problems: list[str] = []
        entity_id = self.entity.id
        for name in CollectionName:
            items = self.collection(name)
            problems += [
                f"{name} id {item.id!r} belongs to entity {item.entity_id!r}, not {entity_id!r}"
                for item in items
                if item.entity_id != entity_id
            ]
            problems += [f"duplicate {name} id {dup!r}" for dup in _duplicates(i.id for i in items)]

        areas = {a.id for a in self.areas}
        merchants = {m.id for m in self.merchants}
        connections = {c.id for c in self.connections}
        for beacon in self.beacons:
            where = f"beacon {beacon.id!r}"
            if beacon.area_id not in areas:
                problems.append(f"{where} refers to unknown area {beacon.area_id!r}")
            if beacon.merchant_id is not None and beacon.merchant_id not in merchants:
                problems.append(f"{where} refers to unknown merchant {beacon.merchant_id!r}")
            if beacon.connection_id is not None and beacon.connection_id not in connections:
                problems.append(f"{where} refers to unknown connection {beacon.connection_id!r}")
        problems += [
            f"merchant {m.id!r} refers to unknown area {m.area_id!r}"
            for m in self.merchants
            if m.area_id not in areas
        ]
        problems += [
            f"connection {c.id!r} refers to unknown area {end.area_id!r}"
            for c in self.connections
            for end in c.connected_areas
            if end.area_id not in areas
        ]
        problems += [
            f"iBeacon major/minor {major}/{minor} is used by more than one beacon"
            for major, minor in _duplicates((b.major, b.minor) for b in self.beacons)
        ]
        problems += [
            f"MAC address {mac} is used by more than one beacon"
            for mac in _duplicates(b.mac for b in self.beacons)
        ]
        return problems
