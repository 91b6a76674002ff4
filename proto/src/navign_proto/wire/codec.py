"""Decode a peer's JSON text into a message model, with one exception type per cause."""

from __future__ import annotations

from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from navign_proto.canonical import parse_json
from navign_proto.errors import CanonicalJSONError
from navign_proto.wire.errors import InvalidMessageError, MalformedMessageError

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest JSON text decoded at all (a full sync of a big mall is a few MB)."""

_M = TypeVar("_M", bound=BaseModel)


def load_json_object(
    data: str | bytes, *, message_type: str, empty_as: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Parse ``data`` as a JSON object or raise ``MalformedMessageError``.

    ``empty_as`` is returned for blank input when given (an SSE ``ping`` may carry no data).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(
            message_type, f"{len(data)} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit"
        )
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(message_type, f"not UTF-8: {exc}") from exc
    if empty_as is not None and not data.strip():
        return dict(empty_as)
    try:
        # Strict: duplicate keys and NaN/Infinity are refused, as canonical JSON requires.
        value = parse_json(data)
    except CanonicalJSONError as exc:
        raise MalformedMessageError(message_type, f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise MalformedMessageError(message_type, "JSON nested too deeply") from exc
    if not isinstance(value, dict):
        raise MalformedMessageError(
            message_type, f"expected a JSON object, got {type(value).__name__}"
        )
    return value


def validate_message(model: type[_M], value: Any, *, message_type: str | None = None) -> _M:
    """Validate already-parsed JSON, turning ``ValidationError`` into ``InvalidMessageError``."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise InvalidMessageError(message_type or model.__name__, errors) from exc


def decode_message(model: type[_M], data: str | bytes, *, message_type: str | None = None) -> _M:
    """Decode a peer's JSON text into ``model``.

    Raises ``MalformedMessageError`` when the text is not a JSON object and
    ``InvalidMessageError`` when the object does not fit the model.
    """
    name = message_type or model.__name__
    return validate_message(model, load_json_object(data, message_type=name), message_type=name)
