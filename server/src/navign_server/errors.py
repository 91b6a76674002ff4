"""Every error leaves the server as the protocol's JSON envelope, never as a bare 500.

``{"error": {"code", "message", "details", "request_id"}}`` with the status from
``navign_proto.wire.HTTP_STATUS``.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from navign_proto.wire import HTTP_STATUS, ErrorCode, ErrorEnvelope

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")
#: ``ErrorBody.message`` holds at most this many characters: longer messages are cut, so that an
#: error always renders (it may quote the client's input, e.g. a key in a location).
MAX_MESSAGE_CHARS = 4096
#: Each part of a validation error's location (a key the client chose may be of any length).
MAX_LOCATION_PART_CHARS = 100
MAX_PROBLEMS = 20


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validation_problems(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as the envelope's ``details.errors``: the first few, each bounded."""
    return [
        {
            "loc": [clip(str(p), MAX_LOCATION_PART_CHARS) for p in error.get("loc", ())],
            "msg": clip(str(error.get("msg", "")), 300),
            "type": str(error.get("type", "")),
        }
        for error in itertools.islice(errors, MAX_PROBLEMS)
    ]


class ApiError(Exception):
    """Raised anywhere in a request to answer with the error envelope."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else {}

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


def request_id_for(given: str | None) -> str:
    """The request id: the client's ``X-Request-ID`` when it is well-formed, else a new one."""
    return given if given and _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(12)


def request_id_of(request: Request) -> str:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else "unknown"


def error_response(
    code: ErrorCode,
    message: str,
    request_id: str,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorEnvelope.of(
        code,
        clip(message, MAX_MESSAGE_CHARS),
        request_id=request_id,
        details=dict(details) if details else None,
    )
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=HTTP_STATUS[code],
        headers=all_headers,
    )


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    return {"errors": validation_problems(exc.errors())}


def install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, code: ErrorCode) -> None:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(code.value).inc()

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        count(request, exc.code)
        return error_response(
            exc.code, exc.message, request_id_of(request), details=exc.details, headers=exc.headers
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = _validation_details(exc)
        first = details["errors"][0] if details["errors"] else {"loc": [], "msg": "invalid"}
        where = ".".join(first["loc"]) or "request"
        count(request, ErrorCode.VALIDATION_ERROR)
        return error_response(
            ErrorCode.VALIDATION_ERROR,
            f"{where}: {first['msg']}",
            request_id_of(request),
            details=details,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            code, message = ErrorCode.NOT_FOUND, "no such resource"
        elif exc.status_code == 405:
            code, message = ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this resource"
        elif exc.status_code == 413:
            code, message = ErrorCode.PAYLOAD_TOO_LARGE, "request body too large"
        elif exc.status_code == 415:
            code, message = ErrorCode.UNSUPPORTED_MEDIA_TYPE, str(exc.detail)
        elif 400 <= exc.status_code < 500:
            code, message = ErrorCode.VALIDATION_ERROR, str(exc.detail)
        else:
            code, message = ErrorCode.INTERNAL_ERROR, "internal error"
        headers = dict(exc.headers or {})
        return error_response(code, message, request_id_of(request), headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(ErrorCode.INTERNAL_ERROR, "internal error", request_id_of(request))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _request_id_and_length(scope: Scope) -> tuple[str | None, str | None]:
    """``X-Request-ID`` and ``Content-Length`` from the raw headers (no dict of them all: the
    middleware's frame lives as long as the response, an hour for an event stream)."""
    given = length = None
    for key, value in scope["headers"]:
        name = key.lower()
        if name == b"x-request-id":
            given = value.decode("latin-1")
        elif name == b"content-length":
            length = value.decode("latin-1")
    return given, length


class RequestContextMiddleware:
    """Pure ASGI middleware: assigns the request id and enforces the body size limit.

    The limit is checked against ``Content-Length`` up front and against the bytes actually
    received (a chunked body has no length), so an oversized body is refused with 413 before
    the application buffers it.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given, length = _request_id_and_length(scope)
        request_id = request_id_for(given)
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.limit_for(scope.get("path", ""))

        async def refuse() -> None:
            response = error_response(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request body larger than {limit} bytes",
                request_id,
            )
            await response(scope, receive, send)

        if length is not None:
            if not length.isdigit():
                response = error_response(
                    ErrorCode.VALIDATION_ERROR, "invalid Content-Length", request_id
                )
                await response(scope, receive, send)
                return
            if int(length) > limit:
                await refuse()
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the application, so its ApiError handler answers 413.
                    raise ApiError(
                        ErrorCode.PAYLOAD_TOO_LARGE, f"request body larger than {limit} bytes"
                    )
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                raw = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in raw):
                    raw.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:  # raised where no handler runs (e.g. in another middleware)
            if started:
                raise
            await error_response(exc.code, exc.message, request_id)(scope, receive, send)
