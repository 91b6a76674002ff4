"""The filters of the local read API (:data:`FILTERS`) and the WHERE clause they make.

Each filter checks its value before it becomes a bound parameter, so a bad value is a 422
naming the parameter (:class:`InvalidFilterError`), never an SQL error; the conditions are
constant text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from navign_gateway.mallcopy.errors import InvalidFilterError
from navign_gateway.mallcopy.schema import ID_RE
from navign_proto.mall import normalize_mac

_KEYWORD_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_FLOOR_RE: Final = re.compile(r"[FBL]-?[0-9]{1,3}")
_UINT16_RE: Final = re.compile(r"[0-9]{1,5}")


def _identifier(value: str) -> str:
    if ID_RE.fullmatch(value) is None:
        raise ValueError("must be an id: 1 to 64 letters, digits or ._:-")
    return value


def _keyword(value: str) -> str:
    if _KEYWORD_RE.fullmatch(value) is None:
        raise ValueError("must be a lowercase type name such as 'navigation' or 'food'")
    return value


def _floor(value: str) -> str:
    if _FLOOR_RE.fullmatch(value.upper()) is None:
        raise ValueError("must be a floor code: F<n> (floor), B<n> (basement), L<n> (level)")
    return value.upper()


def _mac(value: str) -> str:
    return normalize_mac(value)  # ValueError says what is wrong


def _uint16(value: str) -> int:
    if _UINT16_RE.fullmatch(value) is None or int(value) > 65_535:
        raise ValueError("must be an integer from 0 to 65535")
    return int(value)


def _substring(value: str) -> str:
    if not 1 <= len(value) <= 200 or any(ord(c) < 32 for c in value):
        raise ValueError("must be 1 to 200 characters without control characters")
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_Filter = tuple[Callable[[str], Any], str]
_AREA_ON_FLOOR: Final = "t.area_id IN (SELECT id FROM mall_areas WHERE floor = ?)"
_Q: Final = "t.name LIKE ? ESCAPE '\\'"
FILTERS: Final[Mapping[str, Mapping[str, _Filter]]] = {
    "areas": {
        "floor": (_floor, "t.floor = ?"),
        "beacon_code": (_identifier, "t.beacon_code = ?"),
        "q": (_substring, _Q),
    },
    "beacons": {
        "area_id": (_identifier, "t.area_id = ?"),
        "merchant_id": (_identifier, "t.merchant_id = ?"),
        "connection_id": (_identifier, "t.connection_id = ?"),
        "floor": (_floor, _AREA_ON_FLOOR),
        "type": (_keyword, "t.type = ?"),
        "mac": (_mac, "t.mac = ?"),
        "major": (_uint16, "t.major = ?"),
        "minor": (_uint16, "t.minor = ?"),
        "q": (_substring, _Q),
    },
    "merchants": {
        "area_id": (_identifier, "t.area_id = ?"),
        "floor": (_floor, _AREA_ON_FLOOR),
        "type": (_keyword, "t.type = ?"),
        "style": (_keyword, "t.style = ?"),
        "q": (_substring, _Q),
    },
    "connections": {
        "area_id": (
            _identifier,
            "t.id IN (SELECT connection_id FROM mall_connection_areas WHERE area_id = ?)",
        ),
        "floor": (
            _floor,
            "t.id IN (SELECT ca.connection_id FROM mall_connection_areas AS ca"
            " JOIN mall_areas AS a ON a.id = ca.area_id WHERE a.floor = ?)",
        ),
        "type": (_keyword, "t.type = ?"),
        "q": (_substring, _Q),
    },
}
"""Per collection: filter name -> (value check, SQL condition). ``q`` is a case-insensitive
(ASCII) substring of ``name``; ``floor`` is a floor code (``F2``, ``B1``, ``L-1``) and, outside
areas, selects the documents of areas on that floor; the other filters are equalities."""


def where(collection: str, filters: Mapping[str, str], after: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (on table alias ``t``) of ``filters`` and the paging cursor ``after``,
    and its parameters."""
    known = FILTERS[collection]
    conditions: list[str] = []
    params: list[Any] = []
    for key, value in sorted(filters.items()):
        if key not in known:
            raise InvalidFilterError(
                key, f"not a filter of {collection}; use one of {sorted(known)}"
            )
        if not isinstance(value, str):
            raise InvalidFilterError(key, "must be a string")
        check, condition = known[key]
        try:
            params.append(check(value))
        except ValueError as exc:
            raise InvalidFilterError(key, str(exc)) from None
        conditions.append(condition)
    if after is not None:
        try:
            params.append(_identifier(after))
        except ValueError as exc:
            raise InvalidFilterError("after", str(exc)) from None
        conditions.append("t.id > ?")
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", params
