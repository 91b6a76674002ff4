"""Single byte ranges (RFC 9110 §14) as protocol §3.10 serves them, on the server and on the
gateway alike: one range or the whole artifact, never multipart."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A longer Range header is ignored (served whole) rather than parsed.
MAX_RANGE_HEADER = 200
_RANGE_RE = re.compile(r"([0-9]*)-([0-9]*)")


@dataclass(frozen=True, slots=True)
class ByteRange:
    first: int
    last: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class RangeNotSatisfiableError(Exception):
    """The range starts at or beyond the end (answered 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range to serve, or None to serve everything.

    Ignored (None), as RFC 9110 allows: no header, another unit, several ranges, malformed
    syntax, ``last < first``. RangeNotSatisfiableError: a first byte at or beyond ``size``,
    or a zero-length suffix (``bytes=-0``).
    """
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    match = _RANGE_RE.fullmatch(spec.strip())
    if match is None:  # includes "a-b, c-d": several ranges are served as one 200
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiableError
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiableError
    last = min(int(last_text), size - 1) if last_text else size - 1
    return ByteRange(first, last)
