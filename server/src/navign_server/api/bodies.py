"""Reading request bodies as the protocol requires: JSON only, strict, validated."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from navign_proto.wire import ErrorCode, InvalidMessageError, MalformedMessageError, decode_message
from navign_server.errors import ApiError, validation_problems

M = TypeVar("M", bound=BaseModel)


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by the definition of X."""
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:
            raise ValueError(f"recursive schema {name!r} cannot be inlined")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target = _inline(defs[name], defs, (*seen, name))
        return {**target, **_inline(rest, defs, seen)}
    return {k: _inline(v, defs, seen) for k, v in node.items() if k != "$defs"}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` as a request body, self-contained: pydantic's local
    ``#/$defs/...`` references would resolve against the root of the OpenAPI document, where
    they do not exist, so they are inlined."""
    schema = model.model_json_schema()
    return dict(_inline(schema, schema.get("$defs", {})))


def json_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body that the handler reads itself (with
    :func:`read_json`, or raw for signed requests), so FastAPI cannot see it. Several models:
    the body is any one of them."""
    schemas = [body_schema(model) for model in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


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
        errors = validation_problems(exc.errors)
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(first["loc"]) or model.__name__
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"{where}: {first['msg']}", details={"errors": errors}
        ) from None


async def read_json(request: Request, model: type[M]) -> tuple[M, bytes]:
    require_json(request)
    body = await request.body()
    return parse_body(model, body), body
