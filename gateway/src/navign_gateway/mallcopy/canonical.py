"""Canonical JSON (RFC 8785) for the mall copy, fast: :func:`canonical_bytes`.

Every stored document is kept as the exact bytes the checksums hash, and applying a delta page
spends most of its time producing them; the C ``json`` encoder produces the same bytes for
most documents at about twice the speed of the general canonicalizer.
"""

from __future__ import annotations

import json
from typing import Any, Final

from navign_proto.canonical import canonical_json

_SAFE_INTEGER: Final = 2**53 - 1


class _NeedsFullCanonicalizer(Exception):  # noqa: N818 - control flow, never escapes
    pass


def _plain(value: Any) -> Any:
    """``value`` with integral floats as ints; raises when some value is outside the subset
    where ``json.dumps`` prints what RFC 8785 prints: ASCII keys (so code-point and UTF-16
    order agree), safe integers, floats either integral below 2**53 or with ``repr`` in plain
    decimal notation (1e-4 <= |f| < 1e16: the same shortest digits ECMAScript prints)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            return value
        raise _NeedsFullCanonicalizer
    if kind is float:
        if value.is_integer():
            if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
                return int(value)
        elif 1e-4 <= abs(value) < 1e16:
            return value
        raise _NeedsFullCanonicalizer
    if kind is dict:
        plain = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _NeedsFullCanonicalizer
            plain[key] = _plain(item)
        return plain
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    raise _NeedsFullCanonicalizer


def canonical_bytes(document: Any) -> bytes:
    """Exactly :func:`navign_proto.canonical.canonical_json` (the checksums depend on it), about
    twice as fast for typical documents: the C ``json`` encoder does the work when the
    document lies in the subset where its output is RFC 8785's, and ``canonical_json`` does
    it otherwise (and raises what it raises). Applying a delta page spends most of its time
    here."""
    try:
        text = json.dumps(
            _plain(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return text.encode("utf-8")
    except (_NeedsFullCanonicalizer, UnicodeEncodeError, RecursionError):
        return canonical_json(document)
