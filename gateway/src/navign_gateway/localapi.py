"""The local read API: kiosks and robots on the mall network read the gateway's offline copy of
the mall (:class:`~navign_gateway.mallcopy.MallCopy`) over plain HTTP on the gateway's port.

It only reads the local copy, so it keeps answering while the central server is unreachable.

Routes (``GET`` and ``HEAD``; every other method gets 405):

- ``/local/v1/entity``: ``{"seq": N, "document": {...}}``, the entity document.
- ``/local/v1/{collection}``: ``{"collection", "seq", "documents": [...], "next"}``, one page in
  id order; ``limit`` (1-1000, default 100), ``after`` (the previous page's ``next``), and the
  collection's filters (:data:`navign_gateway.mallcopy.FILTERS`), all of which must match.
- ``/local/v1/{collection}/{id}``: ``{"collection", "seq", "document": {...}}``.

Each 200 carries a strong ``ETag`` that changes whenever the copy changes (it names the sync
cursor); a request whose ``If-None-Match`` holds it gets 304 without a body, so polling costs one
small query. Errors use the server's envelope (:class:`navign_proto.wire.ErrorEnvelope`): 404
``NOT_FOUND``, 405 ``METHOD_NOT_ALLOWED``, 422 ``VALIDATION_ERROR`` for a bad filter, limit or id,
503 ``SERVICE_UNAVAILABLE`` while there is no complete copy yet (with ``Retry-After``) or the
database cannot be read.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from navign_gateway.db import DatabaseError
from navign_gateway.mallcopy import (
    MAX_PAGE,
    TABLES,
    CopyVersion,
    InvalidFilterError,
    MallCopy,
    MallCopyError,
    UnknownCollectionError,
)
from navign_proto.wire import HTTP_STATUS, ErrorCode, ErrorEnvelope

log = logging.getLogger(__name__)

PREFIX: Final = "/local/v1"
DEFAULT_LIMIT: Final = 100
#: Seconds a client is asked to wait while the gateway has no complete copy yet.
RETRY_AFTER_NO_COPY: Final = 5
REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_LIMIT_RE: Final = re.compile(r"[0-9]{1,4}")
_READ_METHODS: Final = frozenset({"GET", "HEAD"})
_JSON: Final = "application/json"

_Body = bytes
_Producer = Callable[[], Awaitable[tuple[CopyVersion, _Body | None]]]


class LocalApiError(Exception):
    """Answered with the error envelope."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def _invalid(parameter: str, reason: str, where: str = "query") -> LocalApiError:
    problem = {"loc": [where, parameter], "msg": reason, "type": "value_error"}
    return LocalApiError(
        ErrorCode.VALIDATION_ERROR, f"{parameter}: {reason}", details={"errors": [problem]}
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison (RFC 9110 §13.1.2): ``W/`` is ignored."""
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


class LocalReadApi:
    """The handlers; :func:`add_local_api` mounts them."""

    def __init__(self, copy: MallCopy) -> None:
        self._copy = copy

    async def entity(self, request: web.Request) -> web.StreamResponse:
        async def produce() -> tuple[CopyVersion, bytes | None]:
            version, text = await self._copy.entity_document()
            if text is None:
                return version, None
            return version, b'{"seq":%d,"document":%s}' % (version.seq or 0, text.encode())

        return await self._answer(request, produce, "the gateway has no entity document yet")

    async def collection(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["collection"]

        async def produce() -> tuple[CopyVersion, bytes | None]:
            filters, limit, after = _page_query(request)
            page = await self._copy.page(name, filters=filters, limit=limit, after=after)
            documents = ",".join(page.documents).encode("utf-8")
            head = b'{"collection":%s,"seq":%d,"documents":[' % (_json(name), page.version.seq or 0)
            return page.version, head + documents + b'],"next":%s}' % _json(page.next)

        return await self._answer(request, produce, "")

    async def document(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["collection"]
        doc_id = request.match_info["doc_id"]

        async def produce() -> tuple[CopyVersion, bytes | None]:
            if name not in TABLES:
                raise UnknownCollectionError(name)
            if _ID_RE.fullmatch(doc_id) is None:
                raise _invalid("id", "must be 1 to 64 letters, digits or ._:-", where="path")
            version, text = await self._copy.lookup(name, doc_id)
            if text is None:
                return version, None
            body = b'{"collection":%s,"seq":%d,"document":%s}' % (
                _json(name),
                version.seq or 0,
                text.encode("utf-8"),
            )
            return version, body

        return await self._answer(request, produce, f"no {name} document {doc_id!r}")

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        request_id = _request_id(request)
        if request.method not in _READ_METHODS:
            return _method_not_allowed(request, request_id)
        return _error(LocalApiError(ErrorCode.NOT_FOUND, f"no route {request.path}"), request_id)

    async def _answer(
        self, request: web.Request, produce: _Producer, missing: str
    ) -> web.StreamResponse:
        """Run ``produce`` and answer: 200 with an ETag, 304 when the client already holds that
        version, 404 when ``produce`` found nothing, the envelope for every error."""
        request_id = _request_id(request)
        if request.method not in _READ_METHODS:
            return _method_not_allowed(request, request_id)
        try:
            if_none_match = request.headers.get("If-None-Match")
            if if_none_match is not None:
                current = await self._copy.version()
                if current.seq is not None and _etag_matches(if_none_match, current.etag):
                    return _not_modified(current, request_id)
            version, body = await produce()
            if version.seq is None:
                raise LocalApiError(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    "the gateway has no complete copy of the mall yet",
                    headers={"Retry-After": str(RETRY_AFTER_NO_COPY)},
                )
            if body is None:
                raise LocalApiError(ErrorCode.NOT_FOUND, missing)
        except LocalApiError as exc:
            return _error(exc, request_id)
        except InvalidFilterError as exc:
            return _error(_invalid(exc.parameter, exc.reason), request_id)
        except UnknownCollectionError as exc:
            return _error(LocalApiError(ErrorCode.NOT_FOUND, str(exc)), request_id)
        except (MallCopyError, DatabaseError, sqlite3.Error) as exc:
            log.warning("local API: the mall copy cannot be read: %s", exc)
            unreadable = LocalApiError(
                ErrorCode.SERVICE_UNAVAILABLE, "the gateway's copy of the mall cannot be read"
            )
            return _error(unreadable, request_id)
        response = web.Response(body=body, status=200, content_type=_JSON, charset="utf-8")
        response.headers.update(_cache_headers(version, request_id))
        return response


def _page_query(request: web.Request) -> tuple[dict[str, str], int, str | None]:
    """``limit`` and ``after``; every other parameter is a filter (checked by the copy)."""
    query = request.query
    for key in query:
        if len(query.getall(key)) > 1:
            raise _invalid(key, "given more than once")
    limit = DEFAULT_LIMIT
    if "limit" in query:
        raw = query["limit"]
        if _LIMIT_RE.fullmatch(raw) is None or not 1 <= int(raw) <= MAX_PAGE:
            raise _invalid("limit", f"must be an integer from 1 to {MAX_PAGE}")
        limit = int(raw)
    after = query.get("after")
    filters = {k: v for k, v in query.items() if k not in ("limit", "after")}
    return filters, limit, after


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    return given if given and _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(12)


def _cache_headers(version: CopyVersion, request_id: str) -> dict[str, str]:
    # no-cache: a client may keep the body but must revalidate it (cheap: 304) before use.
    return {"ETag": version.etag, "Cache-Control": "no-cache", REQUEST_ID_HEADER: request_id}


def _not_modified(version: CopyVersion, request_id: str) -> web.Response:
    response = web.Response(status=304)
    response.headers.update(_cache_headers(version, request_id))
    return response


def _error(exc: LocalApiError, request_id: str) -> web.Response:
    envelope = ErrorEnvelope.of(
        exc.code, exc.message[:4096], request_id=request_id, details=exc.details
    )
    response = web.Response(
        body=_json(envelope.model_dump(mode="json", exclude_none=True)),
        status=HTTP_STATUS[exc.code],
        content_type=_JSON,
        charset="utf-8",
    )
    response.headers.update({REQUEST_ID_HEADER: request_id, **exc.headers})
    return response


def _method_not_allowed(request: web.Request, request_id: str) -> web.Response:
    refusal = LocalApiError(
        ErrorCode.METHOD_NOT_ALLOWED,
        f"{request.method} is not allowed here; the local API is read-only",
        headers={"Allow": "GET, HEAD"},
    )
    return _error(refusal, request_id)


def add_local_api(app: web.Application, copy: MallCopy) -> None:
    """Mount the local read API on ``app``. Every path under ``/local/v1`` answers with JSON,
    errors included."""
    api = LocalReadApi(copy)
    router = app.router
    router.add_route("*", f"{PREFIX}/entity", api.entity)
    router.add_route("*", PREFIX + "/{collection}", api.collection)
    router.add_route("*", PREFIX + "/{collection}/{doc_id}", api.document)
    router.add_route("*", PREFIX, api.not_found)
    router.add_route("*", PREFIX + "/{tail:.*}", api.not_found)
