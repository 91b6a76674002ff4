"""Constrained field types shared by the mall models (and by the wire messages for ids).

Each type is an ``Annotated`` alias: the constraint travels with the type, so a model
field reads as what it is (``Identifier``, ``Polygon``, ``MacAddress``) and the JSON schema
shows the bounds.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

ID_MAX_LENGTH: Final = 64
NAME_MAX_LENGTH: Final = 200
DESCRIPTION_MAX_LENGTH: Final = 2_000
TAG_MAX_LENGTH: Final = 64
TAGS_MAX: Final = 64
POLYGON_MIN_POINTS: Final = 3
POLYGON_MAX_POINTS: Final = 10_000
COORDINATE_LIMIT: Final = 1e9
"""Local map coordinates (x, y) must lie in [-1e9, 1e9]: finite and far beyond any building."""

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$"),
]
"""A document id: 1..64 characters of letters, digits and ``._:-`` (UUIDs fit)."""


def _no_control_characters(value: str) -> str:
    for char in value:
        if unicodedata.category(char) == "Cc":
            raise ValueError(f"must not contain control characters (found {char!r})")
    return value


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX_LENGTH),
    AfterValidator(_no_control_characters),
]
"""A display name: surrounding whitespace stripped, then 1..200 characters, no control chars."""

Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=DESCRIPTION_MAX_LENGTH),
]
"""Free text, 1..2000 characters after stripping."""

Blank = Annotated[str, StringConstraints(pattern=r"^\s*$")]
"""An empty or all-whitespace string (documents what ``_blank_to_none`` accepts)."""

OptionalDescription = Annotated[
    Description | None,
    BeforeValidator(_blank_to_none, json_schema_input_type=Description | Blank | None),
]
"""An optional ``Description``: a blank string is read as absent."""

OptionalName = Annotated[
    Name | None, BeforeValidator(_blank_to_none, json_schema_input_type=Name | Blank | None)
]
"""An optional ``Name`` (city, region, nation): a blank string is read as absent."""

FloorLabel = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=16),
    AfterValidator(_no_control_characters),
]
"""A storey's display name ("G", "LG", "M"): 1..16 characters."""

Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TAG_MAX_LENGTH),
    AfterValidator(_no_control_characters),
]


def _unique_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for tag in tags:
        if tag in seen:
            raise ValueError(f"duplicate tag {tag!r}")
        seen.add(tag)
    return tags


Tags = Annotated[tuple[Tag, ...], Field(max_length=TAGS_MAX), AfterValidator(_unique_tags)]
"""At most 64 tags, each 1..64 characters, no duplicates (compared after stripping)."""

Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-COORDINATE_LIMIT, le=COORDINATE_LIMIT)]
Longitude = Annotated[float, Field(allow_inf_nan=False, ge=-180.0, le=180.0)]
Latitude = Annotated[float, Field(allow_inf_nan=False, ge=-90.0, le=90.0)]
Altitude = Annotated[float, Field(allow_inf_nan=False, ge=-500.0, le=9_000.0)]
"""Metres above sea level; [-500, 9000] covers every place a building stands."""


def _check_polygon(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    origin = points[0]
    # First point distinct from the origin gives a direction; a third point off that line
    # proves the polygon encloses some area. Relative tolerance keeps this scale-free.
    direction = next((p for p in points[1:] if p != origin), None)
    if direction is None:
        raise ValueError("polygon points are all identical")
    dx, dy = direction[0] - origin[0], direction[1] - origin[1]
    length = math.hypot(dx, dy)
    for px, py in points[1:]:
        ex, ey = px - origin[0], py - origin[1]
        cross = dx * ey - dy * ex
        if abs(cross) > 1e-12 * length * math.hypot(ex, ey):
            return points
    raise ValueError("polygon points are all collinear: it encloses no area")


Polygon = Annotated[
    tuple[tuple[Coordinate, Coordinate], ...],
    Field(min_length=POLYGON_MIN_POINTS, max_length=POLYGON_MAX_POINTS),
    AfterValidator(_check_polygon),
]
"""``[[x, y], ...]``: 3..10_000 finite points, not all identical or collinear.

A closing point equal to the first is accepted. Self-intersection is not checked (it costs
O(n²) on large outlines); the admin tooling draws these.
"""

_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")


def normalize_mac(value: str) -> str:
    """Return ``aa:bb:cc:dd:ee:ff`` for a MAC written with ``:``, ``-`` or no separators.

    Separators must be consistent. The all-zero and broadcast addresses are rejected. The
    multicast bit is *not* rejected: BLE random static addresses (top two bits ``11``) may
    have it set, and a beacon may be recorded by its BLE address.
    """
    if _MAC_RE.fullmatch(value) is None:
        raise ValueError(
            "MAC address must be six hex octets separated consistently by ':' or '-', "
            "or 12 hex digits"
        )
    digits = re.sub(r"[:-]", "", value).lower()
    if digits in ("000000000000", "ffffffffffff"):
        raise ValueError("MAC address must not be all-zero or broadcast")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


MacAddress = Annotated[str, StringConstraints(max_length=17), AfterValidator(normalize_mac)]

_EMAIL_RE: Final = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_PHONE_RE: Final = re.compile(r"\+?[0-9()./ -]+")
_WEBSITE_RE: Final = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#]\S*)?")


def _check_email(value: str) -> str:
    local, _, _ = value.partition("@")
    if _EMAIL_RE.fullmatch(value) is None or len(local) > 64:
        raise ValueError("not a valid e-mail address (ASCII user@domain.tld expected)")
    return value


def _check_phone(value: str) -> str:
    digits = sum(char.isdigit() for char in value)
    if _PHONE_RE.fullmatch(value) is None or not 3 <= digits <= 20:
        raise ValueError("phone number must be 3..20 digits with optional + ( ) . / - spaces")
    return value


def _check_website(value: str) -> str:
    if _WEBSITE_RE.fullmatch(value) is None:
        raise ValueError("website must be an absolute http:// or https:// URL")
    return value


Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254), AfterValidator(_check_email)
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=32), AfterValidator(_check_phone)
]
Website = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2048), AfterValidator(_check_website)
]

DAY_MS: Final = 86_400_000
DayMs = Annotated[int, Field(ge=0, le=DAY_MS)]
Interval = tuple[DayMs, DayMs]


def _check_day(intervals: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    ordered = tuple(sorted(intervals))
    for start, end in ordered:
        if start >= end:
            raise ValueError(f"opening interval [{start}, {end}] must have start < end")
    for (start_a, end_a), (start_b, end_b) in itertools.pairwise(ordered):
        if start_b < end_a:
            raise ValueError(
                f"opening intervals [{start_a}, {end_a}] and [{start_b}, {end_b}] overlap"
            )
    return ordered


DayHours = Annotated[tuple[Interval, ...], Field(max_length=48), AfterValidator(_check_day)]
"""One day's ``[start_ms, end_ms]`` intervals: 0 <= start < end <= 86_400_000, no overlap.

Intervals are half-open, so ``[0, 3600000]`` and ``[3600000, 7200000]`` may touch. They are
stored sorted by start.
"""

OpeningHours = Annotated[tuple[DayHours, ...], Field(min_length=7, max_length=7)]
"""Seven days, Monday first (index = ISO weekday - 1). An empty day means closed."""
