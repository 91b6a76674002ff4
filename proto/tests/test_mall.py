from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from navign_proto.mall import (
    COLLECTIONS,
    Area,
    Beacon,
    CollectionName,
    Connection,
    Entity,
    Floor,
    MallData,
    Merchant,
    normalize_mac,
)

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-mall.json"
H = 3_600_000

ENTITY_JSON = """
{
  "id": "mall-riverside",
  "type": "mall",
  "name": "Riverside Plaza",
  "description": "Two-storey shopping centre.",
  "bounds": {"min_lon": 121.47, "min_lat": 31.23, "max_lon": 121.4715, "max_lat": 31.2305,
             "min_altitude": 4.0, "max_altitude": 18.0},
  "city": "Shanghai",
  "nation": "CN",
  "tags": ["shopping", "dining"]
}
"""
AREA_JSON = """
{
  "id": "area-1f-atrium",
  "entity_id": "mall-riverside",
  "name": "Atrium",
  "floor": {"type": "floor", "number": 1},
  "polygon": [[40.0, 0.0], [80.0, 0.0], [80.0, 40.0], [40.0, 40.0]],
  "beacon_code": "F1-ATRIUM"
}
"""
BEACON_JSON = """
{
  "id": "b-1f-atrium-01",
  "entity_id": "mall-riverside",
  "area_id": "area-1f-atrium",
  "connection_id": "c-atrium-escalator",
  "name": "Atrium escalator foot",
  "type": "navigation",
  "location": {"x": 60.0, "y": 18.0},
  "device": "esp32s3",
  "mac": "7c:df:a1:e0:20:01",
  "major": 1,
  "minor": 201
}
"""
MERCHANT_JSON = """
{
  "id": "m-riverside-pharmacy",
  "entity_id": "mall-riverside",
  "area_id": "area-2f-east-wing",
  "name": "Riverside Pharmacy",
  "type": "health",
  "style": "store",
  "location": {"x": 88.0, "y": 8.0},
  "polygon": [[82.0, 2.0], [94.0, 2.0], [94.0, 14.0], [82.0, 14.0]],
  "opening_hours": [
    [[32400000, 43200000], [46800000, 72000000]],
    [[32400000, 43200000], [46800000, 72000000]],
    [[32400000, 43200000], [46800000, 72000000]],
    [[32400000, 43200000], [46800000, 72000000]],
    [[32400000, 43200000], [46800000, 72000000]],
    [[32400000, 72000000]],
    []
  ],
  "tags": ["pharmacy"],
  "contact": {"email": "hi@pharmacy.example.com", "phone": "+86 21 5555 0120",
              "website": "https://pharmacy.example.com/riverside"}
}
"""
CONNECTION_JSON = """
{
  "id": "c-atrium-escalator",
  "entity_id": "mall-riverside",
  "name": "Atrium Escalator",
  "type": "escalator",
  "connected_areas": [
    {"area_id": "area-1f-atrium", "x": 60.0, "y": 20.0},
    {"area_id": "area-2f-atrium", "x": 60.0, "y": 28.0}
  ],
  "tags": []
}
"""

EXAMPLES: dict[type[BaseModel], str] = {
    Entity: ENTITY_JSON,
    Area: AREA_JSON,
    Beacon: BEACON_JSON,
    Merchant: MERCHANT_JSON,
    Connection: CONNECTION_JSON,
}


def example(model: type[BaseModel]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(EXAMPLES[model])
    return value


def document_of(model: type[BaseModel], value: Any) -> dict[str, Any]:
    instance = model.model_validate(value)
    assert isinstance(instance, Entity | Area | Beacon | Merchant | Connection)
    return instance.document()


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(EXAMPLES))
def test_json_round_trip(model: type[Entity | Area | Beacon | Merchant | Connection]) -> None:
    text = EXAMPLES[model]
    instance = model.model_validate_json(text)
    out = instance.document()
    assert out == json.loads(text)
    assert json.loads(json.dumps(out)) == out  # JSON-safe: no tuples, enums or floats as str
    assert model.model_validate(out) == instance


def test_document_leaves_out_none_but_keeps_empty_values() -> None:
    beacon = Beacon.model_validate_json(BEACON_JSON)
    assert beacon.merchant_id is None
    assert "merchant_id" not in beacon.document()
    assert "description" not in beacon.document()
    connection = Connection.model_validate_json(CONNECTION_JSON)
    assert connection.document()["tags"] == []


def test_collections_map_the_four_synced_collections() -> None:
    assert dict(COLLECTIONS) == {
        "areas": Area,
        "beacons": Beacon,
        "merchants": Merchant,
        "connections": Connection,
    }
    assert set(COLLECTIONS) == set(CollectionName)


@pytest.mark.parametrize("model", list(EXAMPLES))
def test_unknown_field_is_rejected(model: type[BaseModel]) -> None:
    value = example(model) | {"nmae": "typo"}
    with pytest.raises(ValidationError, match="nmae"):
        model.model_validate(value)


def test_models_are_frozen() -> None:
    area = Area.model_validate_json(AREA_JSON)
    with pytest.raises(ValidationError, match="frozen"):
        area.name = "Other"  # type: ignore[misc]


def test_names_are_stripped_and_blank_descriptions_dropped() -> None:
    value = example(Area) | {"name": "  Atrium  ", "description": "   "}
    area = Area.model_validate(value)
    assert area.name == "Atrium"
    assert area.description is None
    assert "description" not in area.document()


# --- field rules ---------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def dropper(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


REJECTED: list[tuple[type[BaseModel], str, Mutation, str]] = [
    # ids
    (Entity, "empty id", setter("id", ""), "at least 1 character"),
    (Entity, "id with space", setter("id", "mall riverside"), "pattern"),
    (Entity, "id with slash", setter("id", "mall/1"), "pattern"),
    (Entity, "id too long", setter("id", "m" * 65), "at most 64"),
    (Area, "non-string entity id", setter("entity_id", 42), "valid string"),
    # names and text
    (Entity, "blank name", setter("name", "   "), "at least 1 character"),
    (Entity, "long name", setter("name", "n" * 201), "at most 200"),
    (Entity, "control char in name", setter("name", "Riverside\x00Plaza"), "control"),
    (Entity, "long description", setter("description", "d" * 2001), "at most 2000"),
    (Entity, "unknown entity type", setter("type", "stadium"), "mall"),
    # tags
    (Entity, "duplicate tags", setter("tags", ["food", "food"]), "duplicate tag"),
    (Entity, "duplicate after strip", setter("tags", ["food", " food "]), "duplicate tag"),
    (Entity, "too many tags", setter("tags", [f"t{i}" for i in range(65)]), "at most 64"),
    (Entity, "empty tag", setter("tags", [""]), "at least 1 character"),
    # bounds
    (Entity, "min_lon == max_lon", setter("bounds.max_lon", 121.47), "min_lon"),
    (Entity, "min_lat > max_lat", setter("bounds.min_lat", 31.3), "min_lat"),
    (Entity, "lon beyond 180", setter("bounds.max_lon", 180.5), "less than or equal to 180"),
    (Entity, "lat beyond -90", setter("bounds.min_lat", -90.5), "greater than or equal to -90"),
    (Entity, "NaN lon", setter("bounds.min_lon", float("nan")), "finite"),
    (Entity, "one altitude only", dropper("bounds.max_altitude"), "together"),
    (Entity, "altitudes reversed", setter("bounds.min_altitude", 20.0), "min_altitude"),
    # floors
    (Area, "floor number 0", setter("floor.number", 0), "floor number must be in 1..200"),
    (Area, "basement 0", setter("floor", {"type": "basement", "number": 0}), "1..20"),
    (Area, "level too low", setter("floor", {"type": "level", "number": -21}), "-20..200"),
    (Area, "unknown floor type", setter("floor.type", "deck"), "level"),
    # polygons
    (Area, "two points", setter("polygon", [[0, 0], [1, 1]]), "at least 3"),
    (Area, "identical points", setter("polygon", [[1, 1]] * 4), "identical"),
    (Area, "collinear points", setter("polygon", [[0, 0], [1, 1], [2, 2], [5, 5]]), "collinear"),
    (Area, "too many points", setter("polygon", [[i, i % 2] for i in range(10_001)]), "10000"),
    (Area, "infinite coordinate", setter("polygon.1", [float("inf"), 0]), "finite"),
    (Area, "NaN coordinate", setter("polygon.1", [float("nan"), 0]), "finite"),
    (Area, "huge coordinate", setter("polygon.1", [2e9, 0]), "less than or equal to"),
    (Area, "3-D point", setter("polygon.1", [80, 0, 1]), "at most 2"),
    # beacons
    (Beacon, "major too big", setter("major", 65536), "65535"),
    (Beacon, "minor negative", setter("minor", -1), "greater than or equal to 0"),
    (Beacon, "short MAC", setter("mac", "aa:bb:cc:dd:ee"), "six hex octets"),
    (Beacon, "mixed separators", setter("mac", "aa:bb-cc:dd:ee:ff"), "six hex octets"),
    (Beacon, "non-hex MAC", setter("mac", "gg:bb:cc:dd:ee:ff"), "six hex octets"),
    (Beacon, "dotted MAC", setter("mac", "aabb.ccdd.eeff"), "six hex octets"),
    (Beacon, "zero MAC", setter("mac", "00:00:00:00:00:00"), "all-zero or broadcast"),
    (Beacon, "broadcast MAC", setter("mac", "FF-FF-FF-FF-FF-FF"), "all-zero or broadcast"),
    (Beacon, "unknown device", setter("device", "esp8266"), "esp32"),
    (Beacon, "unknown beacon type", setter("type", "lighting"), "navigation"),
    (Beacon, "location NaN", setter("location.x", float("nan")), "finite"),
    (Beacon, "location missing y", dropper("location.y"), "Field required"),
    # merchants
    (Merchant, "six days", setter("opening_hours", [[]] * 6), "at least 7"),
    (Merchant, "eight days", setter("opening_hours", [[]] * 8), "at most 7"),
    (Merchant, "start == end", setter("opening_hours.0", [[H, H]]), "start < end"),
    (Merchant, "start > end", setter("opening_hours.0", [[2 * H, H]]), "start < end"),
    (Merchant, "past midnight", setter("opening_hours.0", [[H, 86_400_001]]), "86400000"),
    (Merchant, "negative start", setter("opening_hours.0", [[-1, H]]), "greater than"),
    (
        Merchant,
        "overlapping intervals",
        setter("opening_hours.2", [[9 * H, 13 * H], [12 * H, 20 * H]]),
        "overlap",
    ),
    (Merchant, "bad email", setter("contact.email", "pharmacy.example.com"), "e-mail"),
    (Merchant, "email with space", setter("contact.email", "a b@example.com"), "e-mail"),
    (Merchant, "bad phone", setter("contact.phone", "call us"), "phone"),
    (Merchant, "too few digits", setter("contact.phone", "+1"), "phone"),
    (Merchant, "ftp website", setter("contact.website", "ftp://example.com"), "http"),
    (Merchant, "javascript website", setter("contact.website", "javascript:alert(1)"), "http"),
    (Merchant, "unknown merchant type", setter("type", "bank"), "food"),
    (Merchant, "unknown contact field", setter("contact.fax", "123"), "fax"),
    # connections
    (
        Connection,
        "one area",
        setter("connected_areas", [{"area_id": "area-1f-atrium", "x": 0, "y": 0}]),
        "at least 2 distinct",
    ),
    (
        Connection,
        "same area twice",
        setter(
            "connected_areas",
            [{"area_id": "a", "x": 0, "y": 0}, {"area_id": "a", "x": 5, "y": 5}],
        ),
        "at least 2 distinct",
    ),
    (Connection, "unknown type", setter("type", "teleporter"), "gate"),
]


@pytest.mark.parametrize(
    ("model", "mutate", "message"),
    [pytest.param(m, mut, msg, id=f"{m.__name__}: {name}") for m, name, mut, msg in REJECTED],
)
def test_rule_rejects_bad_value(model: type[BaseModel], mutate: Mutation, message: str) -> None:
    value = example(model)
    model.model_validate(value)  # the unmodified example is valid
    mutate(value)
    with pytest.raises(ValidationError) as info:
        model.model_validate(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "raw",
    ["AA:BB:CC:DD:EE:01", "aa-bb-cc-dd-ee-01", "AABBCCDDEE01", "aA:Bb:cC:Dd:eE:01"],
)
def test_mac_is_normalised(raw: str) -> None:
    assert normalize_mac(raw) == "aa:bb:cc:dd:ee:01"
    beacon = Beacon.model_validate(example(Beacon) | {"mac": raw})
    assert beacon.mac == "aa:bb:cc:dd:ee:01"


def test_mac_with_multicast_bit_is_accepted() -> None:
    # A BLE random static address (top bits 11) may have the low bit of its first octet set.
    assert normalize_mac("C5:10:20:30:40:50") == "c5:10:20:30:40:50"


def test_opening_intervals_are_sorted_and_may_touch() -> None:
    value = example(Merchant)
    value["opening_hours"][0] = [[14 * H, 20 * H], [9 * H, 14 * H]]
    merchant = Merchant.model_validate(value)
    assert merchant.opening_hours[0] == ((9 * H, 14 * H), (14 * H, 20 * H))
    assert merchant.document()["opening_hours"][0] == [[9 * H, 14 * H], [14 * H, 20 * H]]


def test_full_day_interval_is_accepted() -> None:
    value = example(Merchant)
    value["opening_hours"] = [[[0, 86_400_000]]] * 7
    assert Merchant.model_validate(value).opening_hours[6] == ((0, 86_400_000),)


def test_polygon_may_repeat_its_first_point_to_close() -> None:
    value = example(Area)
    value["polygon"].append(value["polygon"][0])
    assert len(Area.model_validate(value).polygon) == 5


def test_tiny_but_real_polygon_is_accepted() -> None:
    value = example(Area) | {"polygon": [[0, 0], [1e-6, 0], [0, 1e-6]]}
    Area.model_validate(value)


@pytest.mark.parametrize(
    ("floor", "ordinal", "display"),
    [
        ({"type": "basement", "number": 2}, -2, "B2"),
        ({"type": "floor", "number": 1}, 0, "F1"),
        ({"type": "floor", "number": 3}, 2, "F3"),
        ({"type": "level", "number": -1}, -1, "L-1"),
        ({"type": "level", "number": 0, "label": "G"}, 0, "G"),
    ],
)
def test_floor_ordinal_and_display(floor: dict[str, Any], ordinal: int, display: str) -> None:
    parsed = Floor.model_validate(floor)
    assert parsed.ordinal == ordinal
    assert parsed.display == display


# --- whole mall file -----------------------------------------------------------------------


def load_sample() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return value


def test_sample_mall_validates_and_round_trips() -> None:
    mall = MallData.from_file(SAMPLE)
    assert mall.entity.id == "mall-riverside"
    assert (len(mall.areas), len(mall.beacons), len(mall.merchants), len(mall.connections)) == (
        6,
        12,
        6,
        3,
    )
    assert {a.floor.number for a in mall.areas} == {1, 2}
    assert {c.type for c in mall.connections} == {"escalator", "elevator", "gate"}
    raw = load_sample()
    assert {"entity": mall.entity.document(), **mall.documents()} == raw
    assert mall.collection("beacons") == mall.beacons


def sample_mutation(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw = copy.deepcopy(load_sample())
    mutate(raw)
    return raw


def _first(collection: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw[collection][0].update(changes)

    return mutate


def _duplicate(collection: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw[collection].append(raw[collection][0] | changes)

    return mutate


def _connection_to_unknown_area(raw: dict[str, Any]) -> None:
    raw["connections"][0]["connected_areas"][1]["area_id"] = "area-9f-roof"


CROSS_REFERENCE_ERRORS = [
    ("beacon area", _first("beacons", area_id="area-9f-roof"), "unknown area 'area-9f-roof'"),
    ("beacon merchant", _first("beacons", merchant_id="m-gone"), "unknown merchant 'm-gone'"),
    (
        "beacon connection",
        _first("beacons", connection_id="c-gone"),
        "unknown connection 'c-gone'",
    ),
    ("merchant area", _first("merchants", area_id="area-x"), "merchant 'm-aurora-coffee'"),
    ("connection area", _connection_to_unknown_area, "unknown area 'area-9f-roof'"),
    ("area entity", _first("areas", entity_id="mall-other"), "belongs to entity 'mall-other'"),
    ("beacon entity", _first("beacons", entity_id="mall-other"), "belongs to entity"),
    ("duplicate area id", _duplicate("areas"), "duplicate areas id 'area-1f-west-wing'"),
    (
        "duplicate merchant id",
        _duplicate("merchants"),
        "duplicate merchants id 'm-aurora-coffee'",
    ),
    (
        "duplicate connection id",
        _duplicate("connections"),
        "duplicate connections id 'c-atrium-escalator'",
    ),
    (
        "duplicate major/minor",
        _duplicate("beacons", id="b-new", mac="34:85:18:6a:10:99"),
        "major/minor 1/101",
    ),
    (
        "duplicate MAC in another spelling",
        _duplicate("beacons", id="b-new", minor=999, mac="34-85-18-6A-10-01"),
        "MAC address 34:85:18:6a:10:01",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in CROSS_REFERENCE_ERRORS],
)
def test_mall_cross_references(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        MallData.model_validate(sample_mutation(mutate))
    assert message in str(info.value)


def test_same_major_minor_in_another_entity_file_is_fine() -> None:
    # major/minor uniqueness is per entity: the same numbers in another mall file are valid.
    def rename(raw: dict[str, Any]) -> None:
        raw["entity"]["id"] = "mall-lakeside"
        for name in ("areas", "beacons", "merchants", "connections"):
            for item in raw[name]:
                item["entity_id"] = "mall-lakeside"

    other = MallData.model_validate(sample_mutation(rename))
    sample = MallData.from_file(SAMPLE)
    assert {(b.major, b.minor) for b in other.beacons} == {
        (b.major, b.minor) for b in sample.beacons
    }


def test_many_problems_are_summarised() -> None:
    def break_all(raw: dict[str, Any]) -> None:
        for beacon in raw["beacons"]:
            beacon["area_id"] = "area-gone"
        for merchant in raw["merchants"]:
            merchant["area_id"] = "area-gone"
        for connection in raw["connections"]:
            connection["connected_areas"][0]["area_id"] = "area-gone"

    with pytest.raises(ValidationError, match="and 1 more problems"):
        MallData.model_validate(sample_mutation(break_all))


def test_mall_file_rejects_unknown_top_level_key() -> None:
    with pytest.raises(ValidationError, match="robots"):
        MallData.model_validate(sample_mutation(lambda raw: raw.update(robots=[])))


def test_the_json_schema_documents_that_blank_optional_text_is_accepted() -> None:
    """The API's OpenAPI document is built from these schemas; it said ``minLength: 1`` for
    ``city`` while ``""`` was accepted as absent (found by the API fuzzer)."""
    entity = Entity.model_validate(example(Entity) | {"city": "", "description": " "})
    assert (entity.city, entity.description) == (None, None)
    properties = Entity.model_json_schema()["properties"]
    for name in ("city", "description"):
        assert {"type": "string", "pattern": r"^\s*$"} in properties[name]["anyOf"]
