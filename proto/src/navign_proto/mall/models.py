"""The mall data model: one entity and the four collections that are synced to its gateway.

These models validate admin writes, so unknown fields are errors (``extra="forbid"``) and
instances are immutable. ``document()`` is the JSON form the server stores, serves in sync
and checksums.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from navign_proto.mall._fields import (
    Altitude,
    Coordinate,
    Email,
    FloorLabel,
    Identifier,
    Latitude,
    Longitude,
    MacAddress,
    Name,
    OpeningHours,
    OptionalDescription,
    OptionalName,
    Phone,
    Polygon,
    Tags,
    Website,
)

IBEACON_MAX: Final = 65_535
CONNECTED_AREAS_MAX: Final = 256


class EntityType(StrEnum):
    MALL = "mall"
    TRANSPORTATION = "transportation"
    SCHOOL = "school"
    HOSPITAL = "hospital"


class FloorType(StrEnum):
    LEVEL = "level"
    FLOOR = "floor"
    BASEMENT = "basement"


class BeaconType(StrEnum):
    NAVIGATION = "navigation"
    MARKETING = "marketing"
    TRACKING = "tracking"
    ENVIRONMENTAL = "environmental"
    SECURITY = "security"
    OTHER = "other"


class Chip(StrEnum):
    """ESP32 family members a beacon can be built on (also a firmware target)."""

    ESP32 = "esp32"
    ESP32C3 = "esp32c3"
    ESP32C6 = "esp32c6"
    ESP32S3 = "esp32s3"


class MerchantType(StrEnum):
    FOOD = "food"
    ELECTRONICS = "electronics"
    CLOTHING = "clothing"
    SUPERMARKET = "supermarket"
    HEALTH = "health"
    ENTERTAINMENT = "entertainment"
    FACILITY = "facility"
    ROOM = "room"
    OTHER = "other"


class MerchantStyle(StrEnum):
    STORE = "store"
    KIOSK = "kiosk"
    POP_UP = "pop-up"
    FOOD_TRUCK = "food-truck"
    ROOM = "room"


class ConnectionType(StrEnum):
    GATE = "gate"
    ESCALATOR = "escalator"
    ELEVATOR = "elevator"
    STAIRS = "stairs"
    RAIL = "rail"
    SHUTTLE = "shuttle"


class MallModel(BaseModel):
    """Base of every mall model: strict (typos fail) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def document(self) -> dict[str, Any]:
        """The stored, synced and checksummed JSON form (``None`` fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class Point(MallModel):
    """A position in the entity's local map coordinates."""

    x: Coordinate
    y: Coordinate


class Bounds(MallModel):
    """Geographic extent (WGS 84). Bounds crossing the antimeridian are not supported."""

    min_lon: Longitude
    min_lat: Latitude
    max_lon: Longitude
    max_lat: Latitude
    min_altitude: Altitude | None = None
    max_altitude: Altitude | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_lon >= self.max_lon:
            raise ValueError(f"min_lon {self.min_lon} must be less than max_lon {self.max_lon}")
        if self.min_lat >= self.max_lat:
            raise ValueError(f"min_lat {self.min_lat} must be less than max_lat {self.max_lat}")
        if (self.min_altitude is None) != (self.max_altitude is None):
            raise ValueError("min_altitude and max_altitude must be given together")
        if (
            self.min_altitude is not None
            and self.max_altitude is not None
            and self.min_altitude >= self.max_altitude
        ):
            raise ValueError(
                f"min_altitude {self.min_altitude} must be less than "
                f"max_altitude {self.max_altitude}"
            )
        return self


_FLOOR_RANGES: Final[dict[FloorType, tuple[int, int]]] = {
    FloorType.LEVEL: (-20, 200),
    FloorType.FLOOR: (1, 200),
    FloorType.BASEMENT: (1, 20),
}
_FLOOR_PREFIX: Final[dict[FloorType, str]] = {
    FloorType.LEVEL: "L",
    FloorType.FLOOR: "F",
    FloorType.BASEMENT: "B",
}


class Floor(MallModel):
    """Which storey an area is on.

    ``floor`` counts from 1 at ground level (1F, 2F...), ``basement`` counts down from 1
    (B1, B2...), ``level`` counts from 0 at ground level and may be negative (L-1, L0, L1...).
    ``label`` is an optional display name ("G", "LG", "M").
    """

    type: FloorType
    number: int
    label: FloorLabel | None = None

    @model_validator(mode="after")
    def _number_in_range(self) -> Self:
        low, high = _FLOOR_RANGES[self.type]
        if not low <= self.number <= high:
            raise ValueError(f"{self.type} number must be in {low}..{high}, got {self.number}")
        return self

    @property
    def ordinal(self) -> int:
        """Vertical order, 0 at ground level: B1 -> -1, 1F -> 0, 2F -> 1, L2 -> 2."""
        if self.type is FloorType.BASEMENT:
            return -self.number
        if self.type is FloorType.FLOOR:
            return self.number - 1
        return self.number

    @property
    def display(self) -> str:
        return self.label or f"{_FLOOR_PREFIX[self.type]}{self.number}"


class Entity(MallModel):
    """A site with its own gateway: a mall, station, school or hospital."""

    id: Identifier
    type: EntityType
    name: Name
    description: OptionalDescription = None
    bounds: Bounds
    city: OptionalName = None
    region: OptionalName = None
    nation: OptionalName = None
    tags: Tags = ()


class Area(MallModel):
    """A walkable region on one floor (a hall, a wing, a corridor)."""

    id: Identifier
    entity_id: Identifier
    name: Name
    description: OptionalDescription = None
    floor: Floor
    polygon: Polygon
    beacon_code: Identifier


class Beacon(MallModel):
    """A BLE beacon. ``major``/``minor`` are its iBeacon numbers, unique within the entity."""

    id: Identifier
    entity_id: Identifier
    area_id: Identifier
    merchant_id: Identifier | None = None
    connection_id: Identifier | None = None
    name: Name
    description: OptionalDescription = None
    type: BeaconType
    location: Point
    device: Chip
    mac: MacAddress
    major: int = Field(ge=0, le=IBEACON_MAX)
    minor: int = Field(ge=0, le=IBEACON_MAX)


class Contact(MallModel):
    email: Email | None = None
    phone: Phone | None = None
    website: Website | None = None


class Merchant(MallModel):
    """A shop, restaurant, facility or room inside an area."""

    id: Identifier
    entity_id: Identifier
    area_id: Identifier
    name: Name
    description: OptionalDescription = None
    type: MerchantType
    style: MerchantStyle | None = None
    location: Point
    polygon: Polygon
    opening_hours: OpeningHours
    tags: Tags = ()
    contact: Contact = Field(default_factory=Contact)


class ConnectedArea(MallModel):
    """Where a connection meets an area, in that area's coordinates."""

    area_id: Identifier
    x: Coordinate
    y: Coordinate


class Connection(MallModel):
    """A way between areas: gate, escalator, elevator, stairs, rail or shuttle."""

    id: Identifier
    entity_id: Identifier
    name: Name
    description: OptionalDescription = None
    type: ConnectionType
    connected_areas: tuple[ConnectedArea, ...] = Field(max_length=CONNECTED_AREAS_MAX)
    tags: Tags = ()

    @model_validator(mode="after")
    def _links_two_areas(self) -> Self:
        distinct = {end.area_id for end in self.connected_areas}
        if len(distinct) < 2:
            raise ValueError(
                f"a connection must link at least 2 distinct areas, got {sorted(distinct)}"
            )
        return self
