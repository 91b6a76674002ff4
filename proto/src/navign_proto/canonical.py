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
import math
import re
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


#: ``\uD800``-``\uDFFF`` escapes: only these can put a lone surrogate into a parsed string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _safe_integer(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise CanonicalJSONError(f"integer {text[:40]} is outside ±(2**53 - 1)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CanonicalJSONError(f"number {text[:40]} is too large for a double")
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise CanonicalJSONError("string with a lone UTF-16 surrogate") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(data: bytes | str) -> Any:
    """Parse JSON strictly: what has no canonical form is refused, so that whatever is accepted
    can be stored, checksummed and signed: duplicate object keys, NaN/Infinity literals,
    integers beyond ±(2**53 - 1), numbers too large for a double, and strings with a lone
    UTF-16 surrogate (``"\\ud800"``: no UTF-8 form).

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
        value = json.loads(
            data,
            object_pairs_hook=no_duplicates,
            parse_constant=no_constant,
            parse_int=_safe_integer,
            parse_float=_finite_float,
        )
    except CanonicalJSONError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise CanonicalJSONError(f"malformed JSON: {exc}") from exc
    if isinstance(data, bytes):
        # A NUL byte: UTF-16 or UTF-32 text (json.loads detects those), where the escapes
        # do not read as ASCII. UTF-8 JSON never holds a raw NUL.
        escaped = b"\x00" in data or _SURROGATE_ESCAPE_BYTES.search(data) is not None
    else:
        escaped = _SURROGATE_ESCAPE.search(data) is not None
    if escaped:
        _refuse_lone_surrogates(value)
    return value


def is_canonical(data: bytes) -> bool:
    """True when ``data`` is exactly the canonical form of the JSON value it encodes."""
    try:
        return canonical_json(parse_json(data)) == data
    except CanonicalJSONError:
        return False
