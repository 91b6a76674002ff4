"""What the operator gives ``navign-admin``: files, and argument values parsed for argparse.

Argument parsers raise ``argparse.ArgumentTypeError`` (a usage error, exit 2); reading and
validating files raises :class:`CommandError` (one line, exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import BaseModel

from navign_proto.canonical import parse_json
from navign_proto.errors import CanonicalJSONError
from navign_proto.wire import InvalidMessageError, MalformedMessageError, decode_message

#: Largest file read (a mall file; the server's import limit is what really applies).
MAX_FILE_BYTES: Final = 64 * 1024 * 1024

M = TypeVar("M", bound=BaseModel)


class CommandError(Exception):
    """A local failure (a file, a check before sending): one line, exit 1."""


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise CommandError(f"{path}: larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None


def read_model(path: Path, model: type[M], what: str) -> tuple[M, bytes]:
    """``path`` decoded and validated as ``model`` (strict JSON), and its bytes."""
    raw = read_file(path)
    try:
        return decode_message(model, raw, message_type=what), raw
    except MalformedMessageError as exc:
        raise CommandError(f"{path}: {exc.reason}") from None
    except InvalidMessageError as exc:
        first = exc.errors[0] if exc.errors else None
        where = ".".join(str(p) for p in first["loc"]) if first else ""
        message = str(first["msg"]).removeprefix("Value error, ") if first else "invalid"
        more = f" (and {len(exc.errors) - 1} more problems)" if len(exc.errors) > 1 else ""
        raise CommandError(f"invalid {what} {path}: {where or 'file'}: {message}{more}") from None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (duplicate keys and NaN refused)."""
    raw = read_file(path)
    try:
        value = parse_json(raw)
    except (CanonicalJSONError, UnicodeDecodeError, RecursionError) as exc:
        raise CommandError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{path}: {what} must be a JSON object")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what} must be finite")
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def task_location(spec: str) -> dict[str, Any]:
    """``AREA:X:Y[:FLOOR]`` as a task location.

    Area ids may themselves contain ``:``, so the spec is read from the right: when the last
    three parts are ``X:Y:FLOOR`` with numbers for X and Y, that reading wins (write the floor
    to make an id like ``hall:2`` unambiguous).
    """
    parts = spec.split(":")
    if len(parts) >= 4 and _is_number(parts[-3]) and _is_number(parts[-2]):
        area, x, y, floor = ":".join(parts[:-3]), parts[-3], parts[-2], parts[-1]
    elif len(parts) >= 3:
        area, x, y, floor = ":".join(parts[:-2]), parts[-2], parts[-1], None
    else:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected AREA:X:Y or AREA:X:Y:FLOOR")
    if not area:
        raise argparse.ArgumentTypeError(f"{spec!r}: the area id is empty")
    location: dict[str, Any] = {
        "area_id": area,
        "x": _number(x, "X"),
        "y": _number(y, "Y"),
    }
    if floor:
        location["floor"] = floor
    return location


def key_value(spec: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a string value)."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected KEY=VALUE")
    return key, value


def param(spec: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (a string) or ``KEY:=JSON`` (a number, boolean, list or object)."""
    key, sep, raw = spec.partition(":=")
    if sep and key and "=" not in key:
        try:
            return key, json.loads(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{spec!r}: the value after := is not JSON") from None
    return key_value(spec)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def fraction(text: str) -> float:
    """``5%`` or ``0.05`` as a fraction in [0, 1]."""
    percent = text.endswith("%")
    value = _number(text.removesuffix("%"), "threshold")
    if percent:
        value /= 100
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (or 0% and 100%)")
    return value
