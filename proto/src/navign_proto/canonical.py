"""Canonical JSON: the one byte form that checksums, request bodies' hashes and manifests use.

The canonical form is RFC 8785, the JSON Canonicalization Scheme (JCS):

* no insignificant whitespace;
* object members sorted by their names' UTF-16 code units;
* strings in UTF-8 with only the escapes JSON requires (``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t``
  and ``\\u00XX`` for the other control characters); everything else literal;
* numbers as ECMAScript prints them (``1.0`` → ``1``, ``1e21`` → ``1e+21``); integers must lie
  within ±(2**53 - 1) so every implementation reads them exactly; NaN and infinities are refused.

We use the ``rfc8785`` package rather than ``json.dumps(sort_keys=True)``: Python's own number
printing differs from JCS (``1.0``, ``1e-07``, ``1e+16``) and so does its key order for keys
outside the Basic Multilingual Plane.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from navign_proto.errors import CanonicalJSONError

MAX_SAFE_INTEGER = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``value`` (dicts, lists, str, int, float,
    bool, None).

    Raises :class:`CanonicalJSONError` for anything without a canonical form.
    """
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalJSONError(f"no canonical JSON form: {exc}") from exc


def parse_json(data: bytes | str) -> Any:
    """Parse JSON strictly: duplicate object keys and NaN/Infinity literals are refused.

    Python's ``json`` silently keeps the last of duplicate keys, which would let two readers see
    two different documents behind one signature or checksum.
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, item in pairs:
            if key in result:
                raise CanonicalJSONError(f"duplicate object key {key!r}")
            result[key] = item
        return result

    def no_constant(name: str) -> Any:
        raise CanonicalJSONError(f"{name} is not valid JSON")

    try:
        return json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except CanonicalJSONError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise CanonicalJSONError(f"malformed JSON: {exc}") from exc


def is_canonical(data: bytes) -> bool:
    """True when ``data`` is exactly the canonical form of the JSON value it encodes."""
    try:
        return canonical_json(parse_json(data)) == data
    except CanonicalJSONError:
        return False
