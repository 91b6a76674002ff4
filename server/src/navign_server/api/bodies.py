"""Reading request bodies as the protocol requires: JSON only, strict, validated."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel

from navign_proto.wire import ErrorCode, InvalidMessageError, MalformedMessageError, decode_message
from navign_server.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")


def parse_body(model: type[M], body: bytes) -> M:
    """``body`` as ``model`` (duplicate keys and NaN refused), or 422 with the field errors."""
    try:
        return decode_message(model, body)
    except MalformedMessageError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, str(exc)) from None
    except InvalidMessageError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"])[:300], "type": e["type"]}
            for e in exc.errors[:20]
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(first["loc"]) or model.__name__
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"{where}: {first['msg']}", details={"errors": errors}
        ) from None


async def read_json(request: Request, model: type[M]) -> tuple[M, bytes]:
    require_json(request)
    body = await request.body()
    return parse_body(model, body), body
